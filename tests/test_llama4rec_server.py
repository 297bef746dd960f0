"""Llama4Rec's data augmentation from an OpenAI-compatible server (vLLM,
llama.cpp server), end to end through ``run_recbole_llm`` against a fake
server on 127.0.0.1: the prompts reach the server, its free-text answers
become training rows, the key never reaches the cache, and a second run asks
the server nothing (answers cached)."""
import math
import os

import pytest

from conftest import send, send_json, serve
from test_llama4rec import TINY


def choose(handler, n, body):
    """Answers every augmentation prompt with a label in free text, as a chat
    model would."""
    if handler.path.endswith("/chat/completions"):
        send_json(handler, {"choices": [{"index": 0, "message": {"content": "I would pick B."}}]})
    elif handler.path.endswith("/completions"):
        send_json(handler, {"choices": [{"index": i, "text": " [A] is the one" if i % 2 else " B"}
                                        for i in range(len(body["prompt"]))]})
    else:
        send(handler, 404)


@pytest.fixture
def server():
    with serve(choose, max_requests=100) as (url, requests):
        yield url, requests


@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_augmentation_from_a_served_model_end_to_end(server, mode, tmp_path, monkeypatch, caplog):
    from recbole_llm.quick_start import run_recbole_llm

    monkeypatch.setenv("SERVED_KEY", "sk-never-stored")
    server, requests = server
    settings = dict(TINY, base_model="BPR", llm_api_base=server, llm_api_model="served-7b",
                    llm_api_key_env="SERVED_KEY", llm_api_mode=mode, llm_api_batch_size=4,
                    llm_cache_dir=str(tmp_path / "cache"), state="INFO")
    with caplog.at_level("INFO"):
        result = run_recbole_llm(model="Llama4Rec", dataset="ml-tiny", config_dict=settings, argv=[])
    assert math.isfinite(result["test_result"]["ndcg@5"])

    # the augmentation prompts went to the server, with the key, as the configured API
    asked = [r["body"] for r in requests]
    assert asked and all(r["path"].endswith("/chat/completions" if mode == "chat" else "/v1/completions")
                         for r in requests)
    assert all(r["auth"] == "Bearer sk-never-stored" for r in requests)
    assert all(body["model"] == "served-7b" for body in asked)
    prompts = [m["content"] for b in asked for m in b["messages"]] if mode == "chat" else \
        [p for b in asked for p in b["prompt"]]
    assert len(prompts) == TINY["aug_users"] and all("[A]" in p and "[B]" in p for p in prompts)
    # every free-text answer named a candidate and became a training row
    line = next(r.getMessage() for r in caplog.records if "data augmentation:" in r.getMessage())
    assert f"{TINY['aug_users']} valid answers, 0 dropped" in line, line

    # the key is nowhere in the cache
    for root, _, files in os.walk(tmp_path / "cache"):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert b"sk-never-stored" not in f.read()

    # a second run asks the server nothing: its answers are cached
    before = len(requests)
    again = run_recbole_llm(model="Llama4Rec", dataset="ml-tiny", config_dict=settings, argv=[])
    assert len(requests) == before
    assert again["test_result"]["ndcg@5"] == pytest.approx(result["test_result"]["ndcg@5"])
