import copy
import dataclasses
import math
import os
import zlib

import numpy as np
import pytest
import torch

from conftest import (BEAUTY_TINY, ML_TINY_ARGS, build_model, check_recommender,
                      logged_test_metric, recbole_reloaded_test_result, send_json, serve)
from recbole_llm.model.eimf.esim import (affinity_clusters, parse_interests, recent_text,
                                         semantic_interests)
from recbole_llm.model.eimf.ibim import IBIM

TINY_EIMF = dict(BEAUTY_TINY, prompt_item_field="title", llm_hidden_size=32, llm_num_layers=1,
                 llm_num_heads=2, llm_vocab_size=400, MAX_ITEM_LIST_LENGTH=5, epochs=1,
                 train_batch_size=256, esim_max_new_tokens=12, ap_max_users=100, hidden_size=16,
                 attention_hidden=32)


@pytest.fixture(scope="module")
def eimf(tmp_path_factory):
    config, data, model, trainer = build_model(tmp_path_factory, "EIMF", "beauty-tiny", TINY_EIMF)
    model.prepare_semantics(config, data[0].dataset)  # as EIMFTrainer.fit does
    return config, data, model, trainer


@pytest.mark.parametrize("extractor,positions,layers", [("self_attentive", "first", 0),
                                                         ("self_attentive", "latest", 0),
                                                         ("routing", "first", 0),
                                                         ("self_attentive", "latest", 2),
                                                         ("routing", "first", 1)])
def test_k_distinct_interests_that_ignore_padding(extractor, positions, layers):
    torch.manual_seed(0)
    ibim = IBIM(50, 16, 4, extractor, 3, 32, 6, 0.0, positions, encoder_layers=layers).eval()
    seq = torch.randint(1, 50, (5, 6))
    lens = torch.tensor([6, 4, 3, 1, 5])
    seq[torch.arange(6)[None] >= lens[:, None]] = 0
    v = ibim.interests(seq, lens)
    assert v.shape == (5, 4, 16)
    for row, n in zip(v, lens):  # K different vectors per user with two items or more
        if n > 1:
            assert torch.cdist(row, row)[~torch.eye(4, dtype=torch.bool)].min() > 1e-4
    other = seq.clone()
    other[1, 4:] = 7  # items past the history's length change nothing
    assert torch.allclose(ibim.interests(other, lens)[1], v[1], atol=1e-6)
    table = ibim.item_embedding.weight
    scores = ibim.full_scores(v, "target")
    assert scores.shape == (5, 50)
    assert torch.allclose(scores, (v @ table.T).max(1).values)
    # candidate: item by item, its own attention over these users' interests; in blocks
    # of 7 items as in 50
    by_item = torch.stack([((v @ e).softmax(dim=1) * (v @ e)).sum(1) for e in table], dim=1)
    assert torch.allclose(ibim.full_scores(v, "candidate"), by_item, atol=1e-6)
    ibim.SERVING_BLOCK = 7 * 5 * 4
    assert torch.allclose(ibim.full_scores(v, "candidate"), by_item, atol=1e-6)
    assert torch.allclose(ibim.full_scores(v, "target"), scores, atol=1e-6)
    with pytest.raises(ValueError, match="interest_scoring"):
        ibim.full_scores(v, "best")


@pytest.mark.parametrize("positions", ["first", "latest"])
def test_self_attentive_positions_count_from_the_first_or_the_latest_item(positions):
    """Position 0 made to draw all attention picks the first item (ComiRec) or
    the latest one, whatever the history's length."""
    from recbole_llm.model.eimf.ibim import SelfAttentive

    sa = SelfAttentive(4, 1, 4, 6, positions)
    with torch.no_grad():
        sa.position.weight.zero_()
        sa.position.weight[0, 0] = 50.0
        sa.w1.weight.copy_(torch.eye(4))
        sa.w2.weight.copy_(torch.tensor([[100.0, 0.0, 0.0, 0.0]]))
    h = torch.rand(3, 6, 4) * 0.1
    lens = torch.tensor([6, 3, 1])
    mask = torch.arange(6)[None] < lens[:, None]
    out = sa(h, mask)[:, 0]
    picked = torch.zeros(3, dtype=torch.long) if positions == "first" else lens - 1
    assert torch.allclose(out, h[torch.arange(3), picked], atol=1e-5)


def test_encoder_layers_give_each_item_its_context():
    """With Transformer layers an item's vector depends on the rest of the history
    (so the interests do too, through items the extractor leaves out); without
    them it is the item's embedding alone."""
    torch.manual_seed(0)
    seq = torch.tensor([[3, 4, 5, 0], [9, 4, 5, 0]])   # the first item differs
    lens = torch.tensor([3, 3])
    mask = torch.arange(4)[None] < lens[:, None]
    for layers in (0, 2):
        ibim = IBIM(20, 8, 2, "self_attentive", 3, 16, 4, 0.0, "latest",
                    encoder_layers=layers).eval()
        h = ibim.item_embedding(seq)
        if ibim.encoder is not None:
            h = ibim.encoder(h, mask)
            # SASRec's initialisation: positions as small as the items, not N(0, 1)
            assert ibim.encoder.position.weight.std() < 0.05
        moved = (h[0, 2] - h[1, 2]).abs().max()   # the latest item, the same in both
        assert (moved > 1e-3) if layers else (moved == 0)
        # interests() reads the encoded history, not the bare embeddings
        v = ibim.interests(seq, lens)
        assert torch.allclose(v, ibim.extractor(h, mask), atol=1e-6)
        bare = ibim.extractor(ibim.item_embedding(seq), mask)
        assert torch.allclose(v, bare) == (layers == 0)


def test_target_attention_leans_on_the_interest_nearest_the_target():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]) * 5
    user = IBIM.target_attention(interests, torch.tensor([[1.0, 0.0]]))
    assert user[0, 0] > 4.9 and user[0, 1] < 0.1


def test_candidate_scoring_attends_per_item_and_keeps_the_targets_logit():
    """``candidate``: each item attends over the interests with its own affinity, so
    the target's logit is the target-attended vector's, a negative is scored through
    the interest that favours it (pushed down there in training, as served), one
    interest gives the plain dot product, and sharp interests approach the max."""
    torch.manual_seed(0)
    interests, items = torch.randn(3, 4, 8), torch.randn(20, 8)
    cand = IBIM.candidate_scores(interests, items)
    assert cand.shape == (3, 20)
    target = torch.tensor([2, 5, 11])
    user = IBIM.target_attention(interests, items[target])
    assert torch.allclose(cand[torch.arange(3), target], (user * items[target]).sum(-1), atol=1e-5)
    assert not torch.allclose(cand, user @ items.T, atol=1e-3)   # negatives differ from target's rule
    assert torch.allclose(IBIM.candidate_scores(interests[:, :1], items), interests[:, 0] @ items.T)
    sharp = IBIM.candidate_scores(interests * 100, items)
    assert torch.allclose(sharp, (interests * 100 @ items.T).max(1).values, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("scoring", ["target", "candidate"])
def test_training_logits_and_serving_follow_interest_scoring(eimf, scoring):
    """The cross-entropy's logits and both prediction paths use the configured rule,
    and ``predict`` agrees with ``full_sort_predict``."""
    import torch.nn.functional as F

    _, (train, _, test), model, _ = eimf
    model = copy.deepcopy(model)
    model.eval()
    model.settings = dataclasses.replace(model.settings, interest_scoring=scoring,
                                         align_weight=0.0, semantic_weight=0.0)
    with torch.no_grad():   # scores far from 0, so that the rules tell apart
        model.ibim.item_embedding.weight.mul_(100)
    batch = next(iter(train))
    v = model.ibim.interests(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    table = model.ibim.item_embedding.weight
    targets = batch[model.POS_ITEM_ID]
    rules = {"candidate": IBIM.candidate_scores(v, table),
             "target": IBIM.target_attention(v, table[targets]) @ table.T,
             "mean": v.mean(1) @ table.T}
    for other in set(rules) - {scoring}:
        assert (rules[scoring] - rules[other]).abs().max() > 1e-2
    logits = model.train_scores(v, targets)
    assert torch.allclose(logits, rules[scoring], atol=1e-4)
    assert torch.allclose(model.calculate_loss(batch), F.cross_entropy(logits, targets), atol=1e-5)
    rows = next(iter(test))[0]
    full = model.full_sort_predict(rows)
    v = model.ibim.interests(rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN])
    served = IBIM.candidate_scores(v, table) if scoring == "candidate" else \
        (v @ table.T).max(1).values
    assert torch.allclose(full, served, atol=1e-5)
    rows.interaction[model.ITEM_ID] = torch.randint(1, model.n_items, (len(rows),))
    one = model.predict(rows)
    assert torch.allclose(one, full[torch.arange(len(rows)), rows[model.ITEM_ID]], atol=1e-5)


def test_affinity_propagation_gives_exemplars_and_assigns_everyone():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 6
    x = centres[np.repeat(np.arange(4), 30)] + rng.normal(size=(120, 8)) * 0.3
    for max_users in (1000, 40):  # all users clustered, or a sample and the rest joined
        labels, exemplars, clustered = affinity_clusters(x, None, 0.9, max_users, 500, 0)
        assert clustered == min(120, max_users)
        assert len(labels) == 120 and labels.min() >= 0 and labels.max() == len(exemplars) - 1
        assert all(labels[e] == c for c, e in enumerate(exemplars))
        # the planted groups are never split across... users of one group share a label
        for g in range(4):
            assert len(set(labels[g * 30:(g + 1) * 30])) == 1


def test_interest_answers_are_parsed_and_user_texts_keep_the_latest_items():
    assert parse_interests("1. skin care\n2) hair styling\n- nail art\n", 4) == \
        ["skin care", "hair styling", "nail art"]
    assert parse_interests("skin care; lipstick, perfume", 2) == ["skin care", "lipstick"]
    assert parse_interests("   \n", 3) == []
    text, kept = recent_text(["old one", "middle", "newest"], lambda t: len(t) <= 14, "14")
    assert (text, kept) == ("middle; newest", 2)
    from recbole_llm.errors import InputError
    with pytest.raises(InputError, match="does not fit the limit that names its settings"):
        recent_text(["a very long item name"], lambda t: len(t) < 5,
                    "the limit that names its settings")


class _Encoder:
    """Deterministic text vectors (a hash per word), no model."""
    max_length = 64

    class tokenizer:
        def __new__(cls, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    def encode(self, texts, batch_size=64, show_progress=False):
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % 8] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class _CountingClient:
    identity = "counting"

    def __init__(self):
        self.prompts = []

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        self.prompts += prompts
        return [f"interest {len(self.prompts) - len(prompts) + i}\nmore" for i in range(len(prompts))]


@dataclasses.dataclass(frozen=True)
class _ESIM:
    seed: int = 0
    esim_source: str = "llm"
    esim_history_items: int = 5
    esim_prompt: str = "History: {history}. Interests:"
    esim_max_new_tokens: int = 8
    llm_max_prompt_tokens: int = 64
    esim_max_interests: int = 3
    ap_preference: float = None
    ap_damping: float = 0.9
    ap_max_iter: int = 500
    ap_max_users: int = 1000
    text_encoder_batch_size: int = 16


def test_the_llm_is_asked_once_per_cluster_and_every_user_gets_its_clusters_interests():
    names = ["pad"] + [f"lipstick{i}" for i in range(10)] + [f"shampoo{i}" for i in range(10)]
    histories = [np.zeros(0, dtype=np.int64)] + \
        [np.array([1 + (u % 10), 1 + ((u + 3) % 10)]) for u in range(20)] + \
        [np.array([11 + (u % 10), 11 + ((u + 3) % 10)]) for u in range(20)] + [np.zeros(0, dtype=np.int64)]
    client = _CountingClient()
    out = semantic_interests(histories, names, _ESIM(), _Encoder().encode, client, lambda p: True,
                             lambda t: len(t.split()) <= 62)
    r = out["report"]
    assert len(client.prompts) == r["llm_calls"] == r["clusters"] == len(out["exemplars"])
    assert r["users"] == 40 and r["llm_calls_saved"] == 40 - r["clusters"] and r["clusters"] < 40
    assert out["user_cluster"][0] == -1 and out["user_cluster"][-1] == -1  # no history
    assert (out["user_cluster"][1:41] >= 0).all() and out["semantic"].shape == (r["clusters"], 3, 8)
    assert (out["semantic_mask"].sum(1) == 2).all()  # "interest N", "more"
    for c, exemplar in enumerate(out["exemplars"]):  # an exemplar's prompt holds its own items
        assert out["user_cluster"][exemplar] == c
        assert all(names[i] in client.prompts[c] for i in histories[exemplar])


def test_a_prompt_that_cannot_fit_is_refused_with_its_settings():
    """A prompt and answer that cannot fit even without items are refused before
    any text is encoded; an exemplar whose latest item alone overflows the prompt
    is an error naming the settings to change, never a cut prompt."""
    from recbole_llm.errors import InputError

    names = ["pad", "short", "a very long name " * 10]
    # three users whose latest item is the long one
    histories = [np.zeros(0, dtype=np.int64), np.array([1, 2]), np.array([2]), np.array([1, 1, 2])]

    def encode(texts):
        raise AssertionError("encoded before the prompt check")

    with pytest.raises(InputError, match=r"with no item .* does not fit llm_max_prompt_tokens \(64\)"):
        semantic_interests(histories, names, _ESIM(), encode, _CountingClient(),
                           lambda p: False, lambda t: True)
    with pytest.raises(InputError, match=r"does not fit llm_max_prompt_tokens \(64\).*esim_max_new_tokens"):
        semantic_interests(histories, names, _ESIM(), _Encoder().encode, _CountingClient(),
                           lambda p: len(p.split()) <= 20, lambda t: True)
    # without the LLM (esim_source: history) there is no prompt to fit
    out = semantic_interests(histories, names, _ESIM(esim_source="history"), _Encoder().encode,
                             _CountingClient(), lambda p: False, lambda t: True)
    assert out["report"]["users"] == 3


def test_history_source_asks_no_llm_and_uses_the_exemplars_items():
    names = ["pad"] + [f"item{i}" for i in range(10)]
    histories = [np.zeros(0, dtype=np.int64)] + [np.array([1 + u % 10, 1 + (u + 1) % 10, 1 + (u + 2) % 10])
                                                  for u in range(12)]
    client = _CountingClient()
    out = semantic_interests(histories, names, _ESIM(esim_source="history", esim_max_interests=2),
                             _Encoder().encode, client, lambda p: True, lambda t: True)
    assert not client.prompts and out["report"]["llm_prompts_sent"] == 0
    for exemplar, answer in zip(out["exemplars"], out["answers"]):
        assert answer.splitlines() == [names[i] for i in histories[exemplar][-2:]]


def test_semantic_interests_come_from_a_served_model_once(tmp_path):
    """The exemplars' prompts go to an OpenAI-compatible server; a second
    build reads the cached answers and asks nothing."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build

    def answer(handler, n, body):
        send_json(handler, {"choices": [{"index": i, "text": "skin care\nmakeup"}
                                        for i in range(len(body["prompt"]))]})

    with serve(answer, max_requests=50) as (url, requests):
        settings = dict(TINY_EIMF, llm_api_base=url, llm_api_model="served-7b",
                        llm_cache_dir=str(tmp_path / "cache"))
        config = Config(model="EIMF", dataset="beauty-tiny", config_dict=settings, argv=[])
        _, (train, _, _), model, _ = build(config)
        assert not requests  # building the model asks nothing
        esim = model.prepare_semantics(config, train.dataset)
        asked = [p for r in requests for p in r["body"]["prompt"]]
        assert len(asked) == model.esim_report["llm_calls"] == len(esim["exemplars"]) > 0
        assert all(r["body"]["model"] == "served-7b" for r in requests)
        assert model.semantic_mask.sum(1).max() == 2  # "skin care", "makeup"
        model.prepare_semantics(config, train.dataset)  # ESIM's cache
        for name in os.listdir(tmp_path / "cache"):  # without it: the answer cache
            if name.startswith("eimf-esim"):
                os.remove(tmp_path / "cache" / name)
        model.prepare_semantics(config, train.dataset)
        assert len([p for r in requests for p in r["body"]["prompt"]]) == len(asked)


def test_alignment_and_semantic_losses_reach_ibim(eimf):
    _, (train, _, _), model, _ = eimf
    model = copy.deepcopy(model)
    model.eval()  # no dropout: two forward passes differ only by the auxiliary term
    batch = next(iter(train))
    s = model.settings
    model.settings = dataclasses.replace(s, align_weight=1.0, semantic_weight=0.0)
    with_align = model.calculate_loss(batch)
    model.settings = dataclasses.replace(s, align_weight=0.0, semantic_weight=0.0)
    plain = model.calculate_loss(batch)
    model.zero_grad()
    (with_align - plain).backward()  # the alignment term alone
    assert model.ibim.extractor.w1.weight.grad.abs().sum() > 0
    assert model.ibim.item_embedding.weight.grad.abs().sum() > 0
    assert model.sem_proj.weight.grad.abs().sum() > 0
    model.settings = dataclasses.replace(s, align_weight=0.0, semantic_weight=1.0)
    model.zero_grad()
    (model.calculate_loss(batch) - plain.detach()).backward()
    assert model.sem_head.weight.grad.abs().sum() > 0
    assert model.ibim.extractor.w1.weight.grad.abs().sum() > 0


def test_esim_cache_key_follows_what_shapes_it(eimf, monkeypatch):
    """Read back for a setting ESIM does not read (IBIM's), recomputed for one it
    does and for another scikit-learn (Affinity Propagation's results)."""
    import sklearn

    config, (train, _, _), model, _ = eimf
    model = copy.deepcopy(model)
    base = model.settings
    assert model.prepare_semantics(config, train.dataset)["report"]["cached"]
    model.settings = dataclasses.replace(base, num_interests=base.num_interests + 1)
    assert model.prepare_semantics(config, train.dataset)["report"]["cached"]
    model.settings = dataclasses.replace(base, esim_max_interests=base.esim_max_interests + 1)
    assert not model.prepare_semantics(config, train.dataset)["report"].get("cached")
    model.settings = base
    monkeypatch.setattr(sklearn, "__version__", sklearn.__version__ + "-other")
    assert not model.prepare_semantics(config, train.dataset)["report"].get("cached")


def test_loss_falls(eimf):
    _, (train, _, _), model, _ = eimf
    model = copy.deepcopy(model)
    model.train()
    batch = next(iter(train))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_serving_uses_ibim_alone(eimf, monkeypatch, tmp_path):
    """Building a model to predict and predicting touch no LLM, text encoder or
    cluster, and none of them is in the checkpoint."""
    import recbole_llm.llm.backbone as backbone
    import recbole_llm.llm.client as client
    import recbole_llm.llm.encoder as encoder
    import recbole_llm.model.eimf.model as eimf_model
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build

    config, (_, _, test), trained, _ = eimf

    def forbidden(*args, **kwargs):
        raise AssertionError("serving touched the LLM side")

    for module, name in [(backbone, "load_backbone"), (client, "client_from_config"),
                         (encoder.TextEncoder, "encode"), (encoder.TextEncoder, "__init__"),
                         (eimf_model, "semantic_interests"), (eimf_model.EIMF, "prepare_semantics")]:
        monkeypatch.setattr(module, name, forbidden)
    settings = dict(TINY_EIMF, llm_cache_dir=str(tmp_path / "empty-cache"))
    _, _, model, _ = build(Config(model="EIMF", dataset="beauty-tiny", config_dict=settings,
                                  argv=[]))
    state = trained.state_dict()
    assert not any(k in state for k in ("semantic", "semantic_mask", "user_cluster"))
    assert not any("llm" in k for k in state)
    model.load_state_dict(state)
    model.eval()
    assert model.semantic is None and model.user_cluster is None
    batch = next(iter(test))[0]
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), model.n_items) and torch.isfinite(scores).all()
    trained.eval()
    assert torch.equal(scores, trained.full_sort_predict(batch))
    assert torch.isfinite(model.predict(batch)).all()


def test_an_unreadable_text_encoder_is_named(tmp_path):
    """The heads are sized by the encoder's config: a folder without one is an
    input error naming the setting, not a transformers traceback."""
    from recbole_llm.errors import InputError
    from recbole_llm.model.eimf.model import encoder_dim

    assert encoder_dim(None) > 0                                     # the installed default
    with pytest.raises(InputError, match="text_encoder_path"):
        encoder_dim(str(tmp_path))


def test_end_to_end_on_ml_tiny(cli, tmp_path):
    args = ["--model=EIMF", "--dataset=ml-tiny", "--MAX_ITEM_LIST_LENGTH=5", "--epochs=2",
            "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
            "--llm_vocab_size=400", "--esim_max_new_tokens=8", "--hidden_size=16",
            "--interest_extractor=routing", "--state=INFO",
            f"--llm_cache_dir={tmp_path / 'cache'}", "--prompt_item_field=title",
            *ML_TINY_ARGS]
    out = cli(*args, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "EIMF ESIM:" in log and "llm_calls_saved" in log
    ndcg = logged_test_metric(log, "ndcg@10")
    assert math.isfinite(ndcg) and 0.0 <= ndcg <= 1.0
    checkpoint = next((tmp_path / "saved").glob("EIMF-*.pth"))
    check_recommender(checkpoint, llm_cache_dir=str(tmp_path / "cache"))
    # RecBole's own load_data_and_model knows the plugin model and its splits
    reloaded = recbole_reloaded_test_result(checkpoint, tmp_path)
    assert reloaded["ndcg@10"] == pytest.approx(ndcg, abs=1e-4)
    # a checkpoint from before IBIM's defaults changed (no such keys) is rebuilt with
    # the values it was trained with, not today's defaults
    from recbole_llm.model.eimf.model import EIMF
    from recbole_llm.serving import load_model

    saved = torch.load(checkpoint, weights_only=True)
    assert saved["config"]["final_config_dict"]["interest_scoring"] == "candidate"  # today's
    for key in EIMF.DEFAULTS_BEFORE:
        del saved["config"]["final_config_dict"][key]
    torch.save(saved, tmp_path / "old.pth")
    _, _, old = load_model(str(tmp_path / "old.pth"), llm_cache_dir=str(tmp_path / "cache"))
    assert {k: getattr(old.settings, k) for k in EIMF.DEFAULTS_BEFORE} == EIMF.DEFAULTS_BEFORE
    # resuming it under today's defaults would read its weights by other rules: refused
    # (exit 2, before any data loads), unless the run names the old values
    from recbole_llm.errors import InputError
    from recbole_llm.trainer import check_resume_checkpoint

    today = {"model": "EIMF", "dataset": "ml-tiny", "interest_positions": "latest",
             "interest_scoring": "candidate"}
    with pytest.raises(InputError, match="interest_positions='first'.*--interest_positions=first"):
        check_resume_checkpoint(str(tmp_path / "old.pth"), today)
    check_resume_checkpoint(str(tmp_path / "old.pth"), dict(today, **EIMF.DEFAULTS_BEFORE))
    check_resume_checkpoint(str(checkpoint), today)  # today's checkpoint, today's defaults


def test_exemplar_interests_from_a_pretrained_llm_path(tiny_llm_path, tmp_path):
    """ESIM's LLM step on a saved pretrained-style model folder (``llm_path``);
    the checkpoint holds IBIM alone and reloads into a fresh model."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build, run_recbole_llm
    from recbole_llm.trainer import load_checkpoint

    settings = dict(TINY_EIMF, llm_path=tiny_llm_path, llm_cache_dir=str(tmp_path / "cache"),
                    checkpoint_dir=str(tmp_path / "saved"))
    result = run_recbole_llm(model="EIMF", dataset="beauty-tiny", config_dict=settings, argv=[])
    assert math.isfinite(result["test_result"]["ndcg@10"])
    state = load_checkpoint(result["saved_model_file"])["state_dict"]
    assert not any("llm" in k or "lora" in k for k in state)
    config = Config(model="EIMF", dataset="beauty-tiny", config_dict=settings, argv=[])
    _, (train, _, _), fresh, trainer = build(config)
    report = fresh.prepare_semantics(config, train.dataset)["report"]
    assert report["llm_calls"] > 0 and report["cached"]  # the run's ESIM, from the cache
    trainer.load_model_weights(result["saved_model_file"])
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[name]), name
