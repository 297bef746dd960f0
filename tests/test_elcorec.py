import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from conftest import ML_TINY, build_model, check_recommender, logged_test_metric
from recbole_llm.errors import InputError
from recbole_llm.config import Config
from recbole_llm.data import CTRTextDataset
from recbole_llm.data.history import Timeline, earlier_interaction_counts
from recbole_llm.llm.cache import Cache
from recbole_llm.model.elcorec.expert import (Rows, build_expert, held_out_split, pretrain,
                                              pretrained_expert)
from recbole_llm.model.elcorec.row_graph import RowGraphs
from recbole_llm.model.elcorec.settings import GATSettings
from recbole_llm.model.elcorec.user_graph import build_hetero_graph
from recbole_llm.quick_start import create_dataset

TINY_CTR = dict(
    ML_TINY, threshold={"rating": 4},
    load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
              "user": ["user_id", "age", "gender", "occupation"],
              "item": ["item_id", "release_year", "genre"]},
    prompt_item_field="title", llm_hidden_size=32, llm_num_layers=1, llm_num_heads=2,
    llm_vocab_size=500, gat_epochs=1, gat_dim=8, gat_heads=2, gat_history_len=5,
    gat_batch_size=2048, epochs=1, train_batch_size=128)
GAT = GATSettings(gat_mode="sample", gat_history_len=4, gat_dim=16, gat_layers=2, gat_heads=2,
                  gat_epochs=30, gat_learning_rate=0.01, gat_weight_decay=0.0, gat_batch_size=64,
                  gat_patience=30, gat_valid_share=0.2, gat_time_buckets=4)


def _write(folder, name, suffix, text):
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / f"{name}.{suffix}").write_text(text)


def _handmade(tmp_path, name, inter_rows, model="ELCoRec", **settings):
    """A dataset of ``(user, item, rating, time)`` rows; items i<n> of genre a
    (n even) or b, users of gender F or M, through the plugin's create_dataset."""
    users = sorted({r[0] for r in inter_rows})
    items = sorted({r[1] for r in inter_rows})
    _write(tmp_path, name, "inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
           + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in inter_rows))
    _write(tmp_path, name, "user", "user_id:token\tgender:token\n"
           + "".join(f"{u}\t{'FM'[n % 2]}\n" for n, u in enumerate(users)))
    _write(tmp_path, name, "item", "item_id:token\ttitle:token_seq\tgenre:token_seq\n"
           + "".join(f"{i}\tT{i}\t{'ab'[int(i[1:]) % 2]}\n" for i in items))
    config = Config(model=model, dataset=name, config_dict={
        "data_path": str(tmp_path), "state": "WARNING", "item_text_fields": ["title"],
        "threshold": {"rating": 4}, "normalize_all": False,
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": None,
                      "mode": "labeled"},
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                     "user": ["user_id", "gender"], "item": ["item_id", "genre"]}, **settings})
    return config, create_dataset(config)


# ----------------------------------------------------------- histories
def test_history_is_strictly_before_the_row_and_never_its_item():
    rng = np.random.default_rng(0)
    users, items = rng.integers(1, 6, 300), rng.integers(1, 9, 300)   # repeats of (u, i)
    times = rng.integers(0, 20, 300).astype(float)                   # ties
    timeline = Timeline(users, items, times, rng.integers(1, 6, 300), user_num=7)
    for u, i, t in zip(rng.integers(0, 7, 200), rng.integers(0, 10, 200), rng.integers(-1, 22, 200)):
        seen, when, _ = timeline.history(u, i, t)
        expected = (users == u) & (times < t) & (items != i)
        assert sorted(seen) == sorted(items[expected]) and (when < t).all() and (seen != i).all()
        assert timeline.history_lengths([u], [i], [t])[0] == expected.sum()
        recent, recent_times, _, mask = timeline.recent([u], [i], [t], 3)
        assert mask.sum() == min(3, expected.sum())
        assert list(recent_times[0][mask[0]]) == sorted(times[expected])[::-1][:3]  # newest first
        assert i not in recent[0][mask[0]]
    assert (earlier_interaction_counts(users, items, times)
            == timeline.history_lengths(users, items, times)).all()


def test_min_history_drops_exactly_the_short_rows_and_baselines_get_the_same(tmp_path):
    rows = [("u1", "i1", 5, 1), ("u1", "i2", 3, 2), ("u1", "i3", 4, 2), ("u1", "i4", 5, 3),
            ("u1", "i1", 2, 4), ("u1", "i5", 4, 5), ("u2", "i1", 4, 1), ("u2", "i2", 1, 1),
            ("u2", "i3", 5, 1), ("u2", "i4", 4, 9), ("u3", "i2", 5, 3)]
    # earlier interactions on other items: u1: 0, 1, 1, 3, 3 (i1 again: its first time is
    # not history), 5; u2: 0, 0, 0, 3; u3: 0
    config, ctr = _handmade(tmp_path, "mh", rows, min_history=3)
    kept = sorted(zip(ctr.id2token("user_id", ctr.inter_feat["user_id"]),
                      ctr.id2token("item_id", ctr.inter_feat["item_id"]),
                      ctr.inter_feat["timestamp"]))
    assert kept == [("u1", "i1", 4), ("u1", "i4", 3), ("u1", "i5", 5), ("u2", "i4", 9)]
    assert len(ctr.timeline()) == len(rows)            # dropped rows stay histories
    _, deepfm = _handmade(tmp_path, "mh", rows, model="DeepFM", min_history=3)
    assert type(deepfm).__name__ == "Dataset"          # RecBole's own dataset class
    splits = [[sorted(zip(d.inter_feat["user_id"].tolist(), d.inter_feat["item_id"].tolist()))
               for d in dataset.build()] for dataset in (ctr, deepfm)]
    assert splits[0] == splits[1]


def test_min_history_needs_a_time_field(tmp_path):
    from recbole_llm.errors import InputError
    with pytest.raises(InputError, match="min_history=2 counts earlier interactions by time"):
        _handmade(tmp_path, "nt", [("u1", "i1", 5, 1)], model="DeepFM", min_history=2,
                  load_col={"inter": ["user_id", "item_id", "rating"]},
                  eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": "labeled"})


@pytest.fixture(scope="module")
def elcorec(tmp_path_factory):
    return build_model(tmp_path_factory, "ELCoRec", "ml-tiny", TINY_CTR)


def test_rows_of_every_split_read_only_their_past(elcorec):
    _, (train, valid, test), model, _ = elcorec
    timeline = model.timeline
    assert len(timeline) > sum(len(d.dataset) for d in (train, valid, test))  # short rows dropped
    train_end = train.dataset.inter_feat["timestamp"].max().item()
    test_reads = set()
    for data in (train, valid, test):
        inter = data.dataset.inter_feat
        for n in range(0, len(inter), 37):
            u, i, t = (inter[f][n].item() for f in ("user_id", "item_id", "timestamp"))
            seen, when, _ = timeline.history(u, i, t)
            assert len(seen) >= 5 and (when < t).all() and i not in seen   # min_history 5
            if data is test:
                test_reads |= {"train" if w <= train_end else "later" for w in when}
    assert test_reads == {"train", "later"}   # test rows read the training split and beyond


# ----------------------------------------------------------- the per-row graph
def test_row_graph_shapes_and_edges(elcorec):
    _, (train, _, _), model, _ = elcorec
    graphs = RowGraphs(train.dataset, model.timeline, history_len=5)
    inter = train.dataset.inter_feat[torch.arange(3)]
    users, items, times = (inter[f].numpy() for f in ("user_id", "item_id", "timestamp"))
    batch = graphs.build(users, items, times)
    lengths = np.minimum(model.timeline.history_lengths(users, items, times), 5)
    assert len(batch.users) == 3 and len(batch.item_ids) == 3 + lengths.sum()
    assert batch.targets.tolist() == np.concatenate([[0], np.cumsum(1 + lengths)[:-1]]).tolist()
    assert batch.item_ids[batch.targets].tolist() == items.tolist()
    assert (batch.item_ratings[batch.targets] == 0).all() and (batch.item_deltas[batch.targets] == 0).all()
    history = np.ones(len(batch.item_ids), bool)
    history[batch.targets.numpy()] = False
    assert (batch.item_deltas[history] > 0).all() and (batch.item_ratings[history] > 0).all()
    for n in range(3):  # no target leakage: a row's history nodes are never its target
        nodes = (batch.item_rows == n).numpy() & history
        assert items[n] not in batch.item_ids[nodes].tolist()
    src, dst = batch.edges[("user", "interacted", "item")]
    assert (batch.item_rows[dst] == src).all()                 # a user joins its own row's items
    src, dst = batch.edges[("item", "belongto", "feature")]
    pairs = set(zip(batch.item_rows[src].tolist(), batch.feature_ids[dst].tolist()))
    assert len(pairs) == len(batch.feature_ids)                 # one node per value per row
    genres = train.dataset.item_feat["genre"][torch.as_tensor(items[0])]
    assert (genres > 0).sum() <= (batch.item_rows[src] == 0).sum()


def test_soft_token_depends_on_target_and_past_only(elcorec):
    _, (train, _, _), model, _ = elcorec
    inter = train.dataset.inter_feat
    n = int(np.argmax(model.timeline.history_lengths(inter["user_id"].numpy(), inter["item_id"].numpy(),
                                                     inter["timestamp"].numpy())))
    u, i, t = (inter[f][n].item() for f in ("user_id", "item_id", "timestamp"))
    other = 1 + (i % (model.n_items - 1))
    tokens = model.expert.tokens([u, u], [i, other], [t, t])
    assert tokens.shape == (2, 8) and not torch.allclose(tokens[0], tokens[1])
    # the interactions at or after t (the row itself included) cannot change its token
    tl = model.timeline
    past = tl.times < t
    model.expert.graphs.timeline = Timeline(tl.users[past], tl.items[past], tl.times[past],
                                            tl.ratings[past], tl.user_num)
    try:
        assert torch.allclose(model.expert.tokens([u], [i], [t]), tokens[:1])
    finally:
        model.expert.graphs.timeline = tl


def test_expert_is_frozen_and_the_projection_learns(elcorec):
    _, (train, valid, _), model, _ = elcorec
    assert 0 <= model.gat_valid_auc <= 1 and model.expert_report["epochs"] >= 1
    before = {k: v.clone() for k, v in model.expert.state_dict().items()}
    model.train()
    assert not model.expert.training
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.calculate_loss(next(iter(train))).backward()
    assert model.soft_proj.weight.grad.abs().sum() > 0
    opt.step()
    assert all(torch.equal(v, model.expert.state_dict()[k]) for k, v in before.items())
    model.eval()
    p = model.predict(next(iter(valid))[0])
    assert ((p > 0) & (p < 1)).all()


def test_soft_token_changes_output_and_can_be_switched_off(elcorec):
    _, (_, valid, _), model, _ = elcorec
    batch = next(iter(valid))[0][torch.arange(8)]
    model.eval()
    with torch.no_grad():
        base = model.yes_no_logits(batch)
        saved = model.soft_proj.weight.clone()
        model.soft_proj.weight.mul_(-3.0)
        try:
            assert not torch.equal(model.yes_no_logits(batch), base)  # deterministic forward
        finally:
            model.soft_proj.weight.copy_(saved)
    assert all(model.pref_id in p for p in model.prompts(batch))
    model.use_soft_prompt = False
    try:
        assert all(model.pref_id not in p for p in model.prompts(batch))
        model.predict(batch)
    finally:
        model.use_soft_prompt = True


def test_rap_picks_similar_and_recent_items_on_a_handmade_history(elcorec):
    import faiss

    _, _, model, _ = elcorec
    saved = (model.timeline, model.text_emb, model.text_index, model.k_similar, model.k_recent)
    emb = np.zeros((model.n_items, 4), np.float32)
    emb[:, 3] = 1.0
    for item, vec in {10: [1, 0, 0, 0], 11: [0.9, 0.1, 0, 0], 12: [0, 1, 0, 0], 13: [0, 0, 1, 0],
                      14: [0.8, 0, 0.2, 0], 15: [1, 0, 0, 0], 20: [1, 0, 0, 0]}.items():
        emb[item] = np.array(vec) / np.linalg.norm(vec)
    index = faiss.IndexFlatIP(4)
    index.add(emb)
    model.timeline = Timeline([1] * 7, [10, 11, 12, 13, 14, 15, 20], [1, 2, 3, 4, 5, 6, 5.5],
                              [5.0] * 7, model.n_users)
    model.text_emb, model.text_index = emb, index
    try:
        model.k_similar, model.k_recent = 2, 2
        similar, recent = model.rap_items(1, target=20, time=5.5)   # history before t: 10..14
        assert recent == [13, 14]
        assert similar == [10, 11]                                  # closest to the target, not recent
        model.use_rap = False
        assert model.rap_items(1, target=20, time=5.5) == ([], [11, 12, 13, 14])
    finally:
        model.use_rap = True
        model.timeline, model.text_emb, model.text_index, model.k_similar, model.k_recent = saved


# ----------------------------------------------------------- pre-training
def _taste_rows(seed=0):
    """Users 0-11 like genre a (even items), 12-23 genre b: rating 5 or 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(24):
        for n, i in enumerate(rng.choice(20, size=14, replace=False)):
            liked = (i % 2 == 0) == (u < 12)
            rows.append((f"u{u}", f"i{i}", 5 if liked else 1, 10 * n + u))
    return rows


@pytest.mark.parametrize("mode", ["sample", "user"])
def test_gat_pretraining_learns_a_synthetic_taste(tmp_path, mode):
    _, dataset = _handmade(tmp_path, "taste", _taste_rows(), min_history=0)
    train = dataset.build()[0]
    s = dataclasses.replace(GAT, gat_mode=mode)
    rows = Rows.of(train)
    fit, held = held_out_split(rows, s.gat_valid_share)
    assert rows.times[fit].max() <= rows.times[held].min()        # the latest rows held out
    torch.manual_seed(0)
    expert = build_expert(train, dataset.timeline(), s, "cpu", held_out=held)
    if mode == "user":  # the held-out rows are no edges of the training graph
        edges = expert.graph["user", "interacts", "item"].edge_index
        assert edges.shape[1] == len(fit)
    report = pretrain(expert, rows.take(fit), rows.take(held), s, seed=0)
    assert report["train_loss"][-1] < 0.7 * report["train_loss"][0]
    assert report["valid_auc"] > 0.75 and report["valid_auc"] == max(report["valid_auc_curve"])


@pytest.mark.parametrize("mode", ["sample", "user"])
def test_pretrained_expert_is_cached_with_its_report(tmp_path, mode):
    _, dataset = _handmade(tmp_path, "taste", _taste_rows(), min_history=0)
    train = dataset.build()[0]
    s = dataclasses.replace(GAT, gat_epochs=3, gat_mode=mode)
    cache = Cache(str(tmp_path / "cache"))
    first, report = pretrained_expert(train, dataset.timeline(), s, 1, cache, False, "cpu")
    second, again = pretrained_expert(train, dataset.timeline(), s, 1, cache, False, "cpu")
    assert report == again and report["epochs"] == 3
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert not any(p.requires_grad for p in second.parameters())
    user = dataset.token2id("user_id", "u3")
    tokens = second.tokens([user, user], [1, 2], [500.0, 500.0])
    assert torch.allclose(tokens[0], tokens[1]) == (mode == "user")   # user mode: per user only
    assert tokens.abs().sum() > 0


def test_user_graph_has_every_node_and_edge_type(tmp_path):
    _write(tmp_path, "g", "inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
           "u1\ti1\t5\t1\nu1\ti2\t3\t2\nu2\ti1\t4\t3\nu2\ti3\t4\t4\nu3\ti2\t1\t5\n")
    _write(tmp_path, "g", "user", "user_id:token\tgender:token\nu1\tF\nu2\tM\nu3\tF\n")
    _write(tmp_path, "g", "item", "item_id:token\ttitle:token_seq\tgenre:token_seq\n"
           "i1\tA\tdrama comedy\ni2\tB\tdrama\ni3\tC\twar\n")
    config = Config(model="ELCoRec", dataset="g", config_dict={
        "data_path": str(tmp_path), "state": "WARNING", "item_text_fields": ["title"],
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                     "user": ["user_id", "gender"], "item": ["item_id", "genre"]}})
    dataset = CTRTextDataset(config)
    dataset._change_feat_format()
    graph, info = build_hetero_graph(dataset, time_buckets=2)
    assert set(graph.node_types) == {"user", "item", "rating", "time", "user_gender", "item_genre"}
    assert graph["rating"].num_nodes == 4 and info["rating_levels"] == [1.0, 3.0, 4.0, 5.0]
    assert graph["user", "interacts", "item"].edge_index.shape[1] == 5
    # u2 gave two 4s: one (user, rating) edge whose attribute counts both
    gives = graph["user", "gives", "rating"]
    assert gives.edge_index.shape[1] == 4 and torch.isclose(gives.edge_attr.max(), torch.log1p(torch.tensor(2.0)))
    assert graph["item", "has_genre", "item_genre"].edge_index.shape[1] == 4   # drama, comedy, drama, war
    assert graph["user", "has_gender", "user_gender"].edge_index.shape[1] == 3
    for (src, rel, dst) in graph.edge_types:
        if not rel.startswith("rev_"):
            assert (dst, f"rev_{rel}", src) in graph.edge_types
    part, _ = build_hetero_graph(dataset, time_buckets=2, rows=[0, 1, 2])   # held-out rows left out
    assert part["user", "interacts", "item"].edge_index.shape[1] == 3
    assert all(part[t].num_nodes == graph[t].num_nodes for t in graph.node_types)


# ----------------------------------------------------------- command line
def test_end_to_end_command_line_reports_a_test_auc(cli, tmp_path):
    args = ["--model=ELCoRec", "--dataset=ml-100k", "--user_inter_num_interval=[20,30]",
            "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
            "--llm_vocab_size=500", "--gat_epochs=2", "--gat_dim=8", "--gat_heads=2",
            "--train_batch_size=256", "--state=INFO", f"--llm_cache_dir={tmp_path / 'cache'}"]
    out = cli(*args, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    expert = re.search(r"GAT expert \(sample\): validation AUC ([\d.na]+)", log)
    assert expert, log[-3000:]
    auc, logloss = logged_test_metric(log, "auc"), logged_test_metric(log, "logloss")
    expert_auc = float(expert.group(1))
    assert math.isfinite(auc) and 0 <= auc <= 1 and math.isfinite(logloss) and logloss > 0
    assert 0 <= expert_auc <= 1
    # a CTR model scores given rows: the inference API says so instead of ranking
    with pytest.raises(InputError, match="scores given"):
        check_recommender(next((tmp_path / "saved").glob("ELCoRec-*.pth")),
                          llm_cache_dir=str(tmp_path / "cache"))


def test_prompts_that_cannot_fit_are_refused_before_training(tmp_path_factory):
    """rap_k_* items of item_text_max_tokens each over llm_max_prompt_tokens: an
    error naming the setting when the model is built (never a cut prompt)."""
    from recbole_llm.errors import InputError

    with pytest.raises(InputError, match="over llm_max_prompt_tokens=100"):
        build_model(tmp_path_factory, "ELCoRec", "ml-tiny", dict(TINY_CTR, llm_max_prompt_tokens=100))
