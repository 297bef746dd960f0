import os

import numpy as np
import pytest
import torch

from conftest import ML_TINY, send, send_json, serve
from recbole_llm.config import Config
from recbole_llm.errors import InputError
from recbole_llm.llm.backbone import (add_tokens, apply_tuning, count_trainable, load_backbone,
                                      small_llama, train_tokenizer)
from recbole_llm.llm.cache import Cache
from recbole_llm.llm.client import CachedClient, LLMServerError, LocalClient, OpenAIClient
from recbole_llm.llm.generation import constrained_beam_search, to_full_sort_scores
from recbole_llm.tokenization import ItemIndex, hierarchical_kmeans

CORPUS = ["the user watched a comedy and a drama then a thriller"] * 20 + \
         ["which movie will the user watch next ? answer with the item"] * 20


@pytest.fixture(scope="module")
def tiny_lm():
    tok = train_tokenizer(CORPUS, 300)
    model = small_llama(len(tok), hidden=32, layers=2, heads=2, pad_token_id=tok.pad_token_id)
    return model, tok


def _config(**extra):
    return Config(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, **extra))


def test_new_tokens_resize_model(tiny_lm):
    model, tok = tiny_lm
    model, tok = small_llama(len(tok), 32, 2, 2), train_tokenizer(CORPUS, 300)
    before = model.get_input_embeddings().num_embeddings
    ids = add_tokens(model, tok, ["<a_0>", "<a_1>", "[CON]"])
    assert len(set(ids)) == 3 and min(ids) >= before
    assert model.get_input_embeddings().num_embeddings == len(tok) == before + 3
    assert model.get_output_embeddings().weight.shape[0] == before + 3
    assert tok.tokenize("<a_1>") == ["<a_1>"]
    assert add_tokens(model, tok, ["<a_0>"]) == [ids[0]]          # idempotent


def _lm_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


def test_lora_wraps_trains_and_leaves_base_weights(tiny_lm):
    _, tok = tiny_lm
    model = small_llama(len(tok), 32, 2, 2)
    new_ids = add_tokens(model, tok, ["<a_0>", "<a_1>", "<b_0>", "<b_1>"])
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    old_rows = model.lm_head.weight[:new_ids[0]].detach().clone()
    config = _config(llm_tuning="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0)
    peft_model = apply_tuning(model, config, new_ids)
    trainable, total = count_trainable(peft_model)
    assert 0 < trainable < 0.1 * total
    # toy task: after the prompt, emit the item code <a_1><b_0>
    batch = torch.tensor([tok(CORPUS[0])["input_ids"] + [new_ids[1], new_ids[2]]])
    labels = batch.clone()
    labels[:, :-2] = -100
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-2)
    first = peft_model(input_ids=batch, labels=labels).loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = peft_model(input_ids=batch, labels=labels).loss
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    base = peft_model.base_model.model
    assert torch.equal(base.model.layers[0].self_attn.q_proj.base_layer.weight, base_q)
    merged = peft_model.merge_and_unload()
    assert torch.equal(merged.lm_head.weight[:new_ids[0]], old_rows)   # old tokens untouched


def test_small_default_dropout_only_while_training():
    """llm_dropout reaches the embeddings, attention and MLP outputs in training
    (two forward passes differ) and nothing at inference; 0 adds no hook."""
    ids = torch.randint(3, 300, (2, 12))
    model = small_llama(300, 32, 2, 2, dropout=0.3)
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)
    hooked = [m for m in model.modules() if m._forward_hooks]
    assert len(hooked) == 1 + 2 * 2  # embeddings + (attention, MLP) per layer
    plain = small_llama(300, 32, 2, 2, dropout=0.0)
    plain.train()
    assert torch.equal(plain(ids).logits, plain(ids).logits)
    assert not [m for m in plain.modules() if m._forward_hooks]


def test_tied_small_default_scores_with_its_embeddings(tmp_path):
    """llm_tie_embeddings: the output layer is the token table, also after code
    tokens are added; a gradient on an answer token reaches its input row."""
    config = _config(llm_tie_embeddings=True, llm_hidden_size=32, llm_num_layers=1,
                     llm_num_heads=2, llm_vocab_size=300)
    model, tok = load_backbone(config, CORPUS, Cache(str(tmp_path)))
    (new,) = add_tokens(model, tok, ["<a_1>"])
    assert model.lm_head.weight is model.get_input_embeddings().weight
    ids = torch.tensor([[tok.convert_tokens_to_ids("the"), 5]])
    model(ids).logits[0, -1, new].backward()
    assert model.get_input_embeddings().weight.grad[new].abs().sum() > 0
    untied, _ = load_backbone(_config(llm_hidden_size=32, llm_num_layers=1, llm_num_heads=2,
                                      llm_vocab_size=300),
                              CORPUS, Cache(str(tmp_path)))
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight


def test_auto_tuning_picks_per_backbone():
    from recbole_llm.llm.backbone import resolve_tuning
    assert resolve_tuning(_config()) == "full"
    assert resolve_tuning(_config(llm_path="/some/llama")) == "lora"


def test_full_tuning_trains_everything(tiny_lm):
    _, tok = tiny_lm
    model = apply_tuning(small_llama(len(tok), 32, 2, 2), _config(llm_tuning="full"))
    trainable, total = count_trainable(model)
    assert trainable == total
    with pytest.raises(ValueError, match="llm_tuning"):
        apply_tuning(model, _config(llm_tuning="qlora"))
    assert count_trainable(apply_tuning(small_llama(len(tok), 32, 2, 2), _config()))[0] > 0


@pytest.fixture(scope="module")
def lm_with_items(tiny_lm):
    _, tok = tiny_lm
    tok = train_tokenizer(CORPUS, 300)
    x = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)
    index = ItemIndex.build(hierarchical_kmeans(x, 6, 2))
    model = small_llama(len(tok), 32, 2, 2, pad_token_id=tok.pad_token_id)
    add_tokens(model, tok, index.tokens())
    trie = index.bind(tok)
    torch.manual_seed(0)
    with torch.no_grad():  # distinct scores per item
        model.lm_head.weight.normal_(0, 1.0)
    return model.eval(), tok, index, trie


def _exact_scores(model, tok, index, prompt):
    ids = tok([prompt])["input_ids"][0]
    seqs = torch.tensor([ids + index.token_ids(i) for i in range(1, index.n_items)])
    logp = torch.log_softmax(model(seqs).logits[:, :-1], -1)
    n = len(ids)
    picked = logp[:, n - 1:, :].gather(-1, seqs[:, n:, None]).squeeze(-1)
    return picked.sum(-1).detach().numpy()


def test_constrained_beam_search_valid_distinct_sorted_and_exact(lm_with_items):
    model, tok, index, trie = lm_with_items
    prompts = ["the user watched a comedy", "which movie will the user watch next ? answer"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    items, scores = constrained_beam_search(model, enc["input_ids"], enc["attention_mask"],
                                            trie, num_beams=20, top_k=10)
    assert items.shape == scores.shape == (2, 10)
    for b, prompt in enumerate(prompts):
        row = items[b].tolist()
        assert all(1 <= i < index.n_items for i in row) and len(set(row)) == 10
        assert torch.all(scores[b][:-1] >= scores[b][1:])
        exact = _exact_scores(model, tok, index, prompt)
        assert np.allclose(scores[b].numpy(), exact[np.array(row) - 1], atol=1e-4)
    # exhaustive beam == brute force ranking, padded row included
    items, scores = constrained_beam_search(model, enc["input_ids"], enc["attention_mask"],
                                            trie, num_beams=index.n_items)
    exact = _exact_scores(model, tok, index, prompts[1])
    assert items[1, :5].tolist() == (np.argsort(-exact)[:5] + 1).tolist()


def test_renormalised_beam_search_is_exact_over_valid_children(lm_with_items):
    """``renormalize``: each step's softmax over the prefix's valid children; with
    every item in the beam, the ranking equals brute force under that softmax."""
    model, tok, index, trie = lm_with_items
    prompt = "which movie will the user watch next ? answer"
    enc = tok([prompt], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    seqs = torch.tensor([ids + index.token_ids(i) for i in range(1, index.n_items)])
    with torch.no_grad():
        logits = model(seqs).logits[:, len(ids) - 1:-1]
    exact = torch.zeros(len(seqs))
    for row, item in enumerate(range(1, index.n_items)):
        node = 0
        for level, token in enumerate(index.token_ids(item)):
            allowed = torch.as_tensor(trie.allowed(level, node))
            logp = torch.log_softmax(logits[row, level, allowed], 0)
            exact[row] += logp[int((allowed == token).nonzero())]
            node = trie.child(level, node, token)
    items, scores = constrained_beam_search(model, enc["input_ids"], enc["attention_mask"], trie,
                                            num_beams=index.n_items - 1, renormalize=True)
    assert torch.allclose(scores[0], exact[items[0] - 1], atol=1e-4)
    assert torch.allclose(scores[0], exact.sort(descending=True).values, atol=1e-4)
    assert torch.logsumexp(scores[0], 0).item() == pytest.approx(0.0, abs=1e-4)  # a distribution


def test_full_sort_scores_row():
    items = torch.tensor([[3, 1, 0]])
    scores = torch.tensor([[-0.5, -1.0, float("-inf")]])
    full = to_full_sort_scores(items, scores, n_items=5)
    assert full.shape == (1, 5) and full[0, 3] == -0.5 and full[0, 1] == -1.0
    low = torch.finfo(torch.float32).min
    assert full[0, 0] == low and full[0, 2] == low and full[0, 4] == low
    assert full[0].topk(2).indices.tolist() == [3, 1]


def test_backbone_from_local_folder_and_clear_errors(tmp_path, tiny_lm):
    model, tok = tiny_lm
    folder = tmp_path / "my-llm"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded, loaded_tok = load_backbone(_config(llm_path=str(folder)))
    assert loaded.config.hidden_size == 32 and loaded_tok.padding_side == "left"
    with pytest.raises(InputError, match="llm_path '.*nowhere' is not a folder"):
        load_backbone(_config(llm_path=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_backbone(_config(llm_path=str(tmp_path / "empty")))
    partial = tmp_path / "partial"
    model.config.save_pretrained(partial)
    with pytest.raises(InputError, match="has no tokenizer"):
        load_backbone(_config(llm_path=str(partial)))
    tok.save_pretrained(partial)
    with pytest.raises(InputError, match="has no weights"):
        load_backbone(_config(llm_path=str(partial)))


def test_small_default_backbone_tokenizer_is_cached(tmp_path):
    config = _config(llm_cache_dir=str(tmp_path), llm_hidden_size=32, llm_num_layers=1,
                     llm_num_heads=2, llm_vocab_size=300)
    model, tok = load_backbone(config, corpus=CORPUS)
    assert model.config.num_hidden_layers == 1 and len(tok) <= 300
    saved = [p for p in os.listdir(tmp_path) if p.startswith("tokenizer-")]
    assert len(saved) == 1
    _, tok2 = load_backbone(config, corpus=CORPUS)
    assert tok2.get_vocab() == tok.get_vocab()


def test_text_encoder_offline_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from recbole_llm.data import TextDataset
    from recbole_llm.llm import encoder as enc_module
    enc = enc_module.TextEncoder()
    emb = enc.encode(["a funny animated movie for children", "a cartoon comedy for kids",
                      "a violent war drama"])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    config = _config(llm_cache_dir=str(tmp_path))
    dataset = TextDataset(config)
    first = enc_module.item_text_embeddings(dataset, config)
    assert first.shape == (dataset.item_num, 384) and not first[0].any()

    def no_encoder(*args, **kwargs):
        raise AssertionError("cache miss: the encoder ran again")

    monkeypatch.setattr(enc_module, "TextEncoder", no_encoder)
    assert np.array_equal(enc_module.item_text_embeddings(dataset, config), first)


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    cache = Cache(str(tmp_path))
    key = cache.key("emb", dataset="x", dim=4)
    assert key == cache.key("emb", dim=4, dataset="x") != cache.key("emb", dataset="y", dim=4)

    def killed(f, **arrays):
        f.write(b"PK\x03\x04 half an npz")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.save_arrays(key, a=np.ones(3))
    monkeypatch.undo()
    assert not cache.has_arrays(key) and os.listdir(tmp_path) == []
    cache.save_arrays(key, a=np.ones(3))
    assert cache.load_arrays(key)["a"].tolist() == [1, 1, 1]


def test_batch_job_resumes_where_it_stopped(tmp_path):
    cache = Cache(str(tmp_path))
    calls = []

    def flaky(batch):
        calls.append(list(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return [x * 10 for x in batch]

    with pytest.raises(KeyboardInterrupt):
        cache.map_batches("job", list(range(10)), flaky, batch_size=3, show_progress=False)
    calls.clear()
    result = cache.map_batches("job", list(range(10)), lambda b: [x * 10 for x in b] if not
                               calls.append(list(b)) else None, batch_size=3, show_progress=False)
    assert result == [x * 10 for x in range(10)]
    assert calls == [[6, 7, 8], [9]]                      # the first two chunks were kept
    calls.clear()
    assert cache.map_batches("job", list(range(10)), None, 3, show_progress=False) == result


def _echo(handler, n, body):
    """The first request fails (503); then echo the prompts (completions, in
    reversed order: the client must sort by index) or the chat message."""
    if n == 0:
        send(handler, 503)
    elif handler.path.endswith("/chat/completions"):
        send_json(handler, {"choices": [{"index": 0, "message": {
            "content": "chat:" + body["messages"][0]["content"]}}]})
    else:
        send_json(handler, {"choices": [{"index": i, "text": f"echo:{p}"}
                                        for i, p in reversed(list(enumerate(body["prompt"])))]})


@pytest.fixture
def server():
    with serve(_echo) as (url, requests):
        yield url, requests


def test_http_client_batches_retries_and_caches_without_the_key(server, tmp_path, monkeypatch):
    server, requests = server
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    client = OpenAIClient(server, "qwen-7b", api_key_env="MY_LLM_KEY", batch_size=2, backoff=0.01)
    cached = CachedClient(client, str(tmp_path), show_progress=False)
    prompts = ["p1", "p2", "p3", "p1"]
    assert cached.complete(prompts, max_new_tokens=8) == ["echo:p1", "echo:p2", "echo:p3", "echo:p1"]
    paths = [r["path"] for r in requests]
    assert paths == ["/v1/completions"] * 3                # one 503, then 2 batches
    assert requests[1]["auth"] == "Bearer sk-secret-123"
    assert [r["body"]["prompt"] for r in requests[1:]] == [["p1", "p2"], ["p3"]]
    assert cached.calls == 3
    again = CachedClient(client, str(tmp_path), show_progress=False)
    assert again.complete(["p3", "p2"], max_new_tokens=8) == ["echo:p3", "echo:p2"]
    assert again.calls == 0 and len(requests) == 3
    for name in os.listdir(tmp_path):
        assert "sk-secret" not in open(tmp_path / name).read()


def test_http_chat_mode_and_errors(server, tmp_path):
    client = OpenAIClient(server[0], "m", mode="chat", backoff=0.01)
    assert client.complete(["hi"]) == ["chat:hi"]
    dead = OpenAIClient("http://127.0.0.1:9/v1", "m", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(LLMServerError, match="unreachable after 2 attempt"):
        dead.complete(["x"])


def test_torn_cache_line_is_ignored_and_local_client_generates(tmp_path, tiny_lm):
    model, tok = tiny_lm
    cached = CachedClient(LocalClient(model, tok), str(tmp_path), show_progress=False)
    out = cached.complete(["the user watched", "which movie"], max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    with open(cached.path, "a") as f:
        f.write('{"k": "abc", "v": "half')
    again = CachedClient(LocalClient(model, tok), str(tmp_path), show_progress=False)
    assert again.complete(["which movie"], max_new_tokens=4) == [out[1]] and again.calls == 0


def test_packed_batch_loss_equals_unpacked_loss(tiny_lm):
    from recbole_llm.llm.prompts import answer_lm_loss, answer_logprob, training_batch
    model, tok = tiny_lm
    texts = ("the user watched a comedy and then a long drama", "which movie", "a", "b c d")
    prompts = [tok(t)["input_ids"] for t in texts]
    answers = [[5, 6, 7], [8], [9, 10], [11]]
    batch = training_batch(prompts, answers, tok.pad_token_id, 64)
    # several sequences share a row, each row at most the longest sequence's width
    assert batch.input_ids.shape[0] < len(prompts)
    assert batch.input_ids.shape[1] == max(len(p) + len(a) for p, a in zip(prompts, answers))
    loss, hidden = answer_lm_loss(model, batch)
    # reference: each sequence alone through the ordinary forward
    nll, count, alone = 0.0, 0, []
    for p, a in zip(prompts, answers):
        ids = torch.tensor([p + a])
        labels = torch.tensor([[-100] * len(p) + a])
        out = model(input_ids=ids, labels=labels, output_hidden_states=True)
        nll, count = nll + out.loss * len(a), count + len(a)
        logp = torch.log_softmax(out.logits[0, len(p) - 1:-1], -1)
        alone.append(logp.gather(1, torch.tensor(a)[:, None]).sum())
    assert torch.allclose(loss, nll / count, atol=1e-5)
    # the last token of each sequence sees only its own sequence
    ref = model.model(input_ids=torch.tensor([prompts[1] + answers[1]])).last_hidden_state[0, -1]
    r, c = batch.ends[1].tolist()
    assert torch.allclose(hidden[r, c], ref, atol=1e-5)
    assert torch.allclose(answer_logprob(model, prompts, answers, tok.pad_token_id, 64),
                          torch.stack(alone), atol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "cohere"])
def test_answer_logprob_keeps_the_models_own_logit_transform(family):
    """Projecting only answer positions must give the logits the model's own
    forward gives, soft-capping (Gemma 2) and logit scaling (Cohere) included."""
    import transformers

    from recbole_llm.llm.prompts import answer_logprob
    small = {"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2, "pad_token_id": 0}
    if family == "gemma2":
        config = transformers.Gemma2Config(head_dim=8, final_logit_softcapping=0.5, **small)
        model = transformers.Gemma2ForCausalLM(config)
    else:
        config = transformers.CohereConfig(logit_scale=3.0, **small)
        model = transformers.CohereForCausalLM(config)
    model.eval()
    prompts, answers = [[3, 4, 5, 6], [7, 8]], [[9, 10], [11]]
    expected = []
    for p, a in zip(prompts, answers):
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
        expected.append(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)))
    got = answer_logprob(model, prompts, answers, 0, 64)
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)


def test_small_default_dropout_acts_in_training_only():
    from recbole_llm.llm.backbone import small_llama

    model = small_llama(50, hidden=16, layers=1, heads=2, dropout=0.5)
    assert model.config.attention_dropout == 0.5
    ids = torch.randint(0, 50, (2, 12))
    model.train()
    torch.manual_seed(1)
    a = model(ids).logits
    torch.manual_seed(2)
    b = model(ids).logits
    assert not torch.allclose(a, b)                     # training: dropout draws differ
    model.eval()
    assert torch.allclose(model(ids).logits, model(ids).logits)
