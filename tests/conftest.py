import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

import recbole_llm  # noqa: F401  (compat shims first)
from recbole_llm.utils import configure_cpu

TESTS = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(TESTS, "data")
REPO = os.path.dirname(TESTS)

configure_cpu(1)

# Settings that make the tiny slices train in seconds.
ML_TINY = {
    "data_path": DATA,
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    "item_text_fields": ["title", "release_year", "genre"],
    "show_progress": False,
    "state": "WARNING",
    "eval_batch_size": 4096,
    "train_batch_size": 512,
}
BEAUTY_TINY = dict(ML_TINY, load_col={"inter": ["user_id", "item_id", "timestamp"]},
                   item_text_fields=["title", "brand", "categories"])


# The same slice on the command line (``cli``): ml-tiny's fields, its item text.
ML_TINY_ARGS = [f"--data_path={DATA}", "--item_text_fields=['title','release_year','genre']",
                "--load_col={'inter': ['user_id','item_id','rating','timestamp']}",
                "--show_progress=False"]


def logged_test_metric(log: str, metric: str) -> float:
    """``metric`` of the last ``test result`` line of a run's log."""
    import ast
    line = [l for l in log.splitlines() if "test result" in l][-1]
    return ast.literal_eval(line.split("test result", 1)[1].split(": ", 1)[1].strip())[metric]


RECBOLE_RELOAD = """
import json, sys
import recbole_llm
from recbole.quick_start import load_data_and_model
from recbole.trainer import Trainer
config, model, dataset, train, valid, test = load_data_and_model(sys.argv[1])
result = Trainer(config, model).evaluate(test, load_best_model=False)
print("RELOADED", json.dumps({k: float(v) for k, v in result.items()}))
"""


def recbole_reloaded_test_result(checkpoint, cwd) -> dict:
    """The test result of ``checkpoint`` reloaded in a fresh interpreter through
    RecBole's own ``load_data_and_model`` and evaluated by RecBole's ``Trainer``."""
    out = subprocess.run([sys.executable, "-c", RECBOLE_RELOAD, str(checkpoint)], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RELOADED", 1)[1])


def check_recommender(checkpoint, k: int = 5, **overrides):
    """``recbole_llm.load`` on a trained checkpoint answers a user's top ``k`` in raw
    ids: best first, known items, none of the user's own (unless served from a
    generative model's top-K cache); a sequential model also answers an item
    history.  Returns the recommender and the answer."""
    import recbole_llm

    rec = recbole_llm.load(str(checkpoint), show_progress=False, state="WARNING", **overrides)
    dataset = rec.dataset
    uid = next(u for u in range(1, len(rec.histories)) if len(rec.histories[u]))
    user = dataset.id2token(dataset.uid_field, uid)
    answer = rec.recommend(user=user, k=k)
    assert 0 < len(answer) <= k
    scores = [score for _, score in answer]
    assert scores == sorted(scores, reverse=True)
    items = [item for item, _ in answer]
    assert all(int(dataset.token2id(dataset.iid_field, i)) > 0 for i in items)
    seen = set(dataset.id2token(dataset.iid_field, rec.histories[uid]).tolist())
    assert not seen & set(items)  # a top-K cache's answer too
    if rec.sequential:
        history = list(dataset.id2token(dataset.iid_field, rec.histories[uid][:3]))
        again = rec.recommend(history=history, k=k)
        assert 0 < len(again) <= k and not set(history) & {i for i, _ in again}
    return rec, answer


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """RecBole writes log/ and saved/ in the cwd and reads sys.argv as options."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["recbole-llm-tests"])
    yield tmp_path


@pytest.fixture
def cli(tmp_path):
    """The command line, run as a child process from the test's scratch folder.

    ``out = cli("--model=BPR", "--dataset=ml-tiny", timeout=120)`` runs
    ``python run_recbole_llm.py --model=BPR --dataset=ml-tiny`` with ``tmp_path``
    as its working directory (its log/ and saved/ land there) and returns the
    finished :class:`subprocess.CompletedProcess`, stdout and stderr captured as
    text; a run past ``timeout`` seconds raises :class:`subprocess.TimeoutExpired`.
    """
    script = os.path.join(REPO, "run_recbole_llm.py")

    def run(*args, timeout=300):
        return subprocess.run([sys.executable, script, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of the test datasets, for tests that damage files."""
    dst = tmp_path / "data"
    shutil.copytree(DATA, dst)
    return dst


def build_model(tmp_path_factory, model, dataset, settings):
    """Dataset, splits, model and trainer of a plugin model, built once per test
    module in a scratch folder (RecBole writes logs to the cwd and reads argv)."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build

    cache = tmp_path_factory.mktemp("cache")
    argv, sys.argv = sys.argv, ["tests"]
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("run"))
    try:
        config = Config(model=model, dataset=dataset,
                        config_dict=dict(settings, llm_cache_dir=str(cache)))
        _, data, net, trainer = build(config)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return config, data, net, trainer


def save_tiny_pretrained(folder, architecture: str = "llama") -> str:
    """A pretrained-style model folder, as a user would pass it as ``llm_path``:
    a tiny random causal LM (``llama`` or ``gpt2``) and its tokenizer saved with
    ``save_pretrained``."""
    from recbole_llm.llm.backbone import small_llama, train_tokenizer

    texts = [line.split("\t", 2)[1] for line in
             open(os.path.join(DATA, "beauty-tiny", "beauty-tiny.item"), encoding="utf-8")][1:]
    tokenizer = train_tokenizer(texts + ["The user has purchased the following items"] * 5, 500)
    if architecture == "llama":
        model = small_llama(len(tokenizer), hidden=32, layers=2, heads=2,
                            pad_token_id=tokenizer.pad_token_id)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llm_path(tmp_path_factory):
    """A tiny pretrained-style Llama folder (see :func:`save_tiny_pretrained`)."""
    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny-llama"))


@contextlib.contextmanager
def serve(answer, max_requests: int = 10):
    """A server on 127.0.0.1 whose every request (GET or POST) is recorded, then
    answered by ``answer(handler, n, body)`` (n: 0-based request count); yields
    (base URL, requests), each ``{method, path, auth, body}``."""
    requests, lock = [], threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with lock:
                n = len(requests)
                requests.append({"method": self.command, "path": self.path,
                                 "auth": self.headers.get("Authorization"), "body": body})
            if n >= max_requests:  # bounded: a runaway client gets errors, not answers
                self.send_error(410)
                return
            answer(self, n, body)

        do_GET = do_POST = handle_any

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def send(handler, status: int, body: bytes = b"", headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def send_json(handler, payload) -> None:
    """Reply 200 with ``payload`` as JSON (fake OpenAI-compatible servers)."""
    send(handler, 200, json.dumps(payload).encode(), [("Content-Type", "application/json")])
