
import numpy as np
import pytest
import torch

from conftest import ML_TINY, build_model
from recbole_llm.config import Config
from recbole_llm.data import CTRTextDataset
from recbole_llm.model.elcorec.graph import build_hetero_graph

TINY_CTR = dict(
    ML_TINY, threshold={"rating": 4},
    load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
              "user": ["user_id", "age", "gender", "occupation"],
              "item": ["item_id", "release_year", "genre"]},
    prompt_item_field="title", llm_hidden_size=32, llm_num_layers=1, llm_num_heads=2,
    llm_vocab_size=500, gat_epochs=2, epochs=1, train_batch_size=128)


def _write(folder, name, suffix, text):
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / f"{name}.{suffix}").write_text(text)


def test_graph_has_every_node_and_edge_type(tmp_path):
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
    assert dataset.rating_of(dataset.token2id("user_id", "u2"), dataset.token2id("item_id", "i3")) == 4.0


@pytest.fixture(scope="module")
def elcorec(tmp_path_factory):
    return build_model(tmp_path_factory, "ELCoRec", "ml-tiny", TINY_CTR)


def test_gat_is_frozen_and_probabilities_in_range(elcorec):
    _, (train, valid, _), model, _ = elcorec
    names = [n for n, _ in model.named_parameters()]
    assert not any("gat" in n or "embeddings." in n for n in names if not n.startswith("llm."))
    before = model.user_pref.clone()
    batch = next(iter(train))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model.calculate_loss(batch)
    loss.backward()
    assert model.soft_proj.weight.grad.abs().sum() > 0
    opt.step()
    assert torch.equal(model.user_pref, before)
    model.eval()
    p = model.predict(next(iter(valid))[0])
    assert ((p > 0) & (p < 1)).all()


def test_soft_token_changes_output_and_can_be_switched_off(elcorec):
    _, (_, valid, _), model, _ = elcorec
    batch = next(iter(valid))[0][torch.arange(8)]
    model.eval()
    with torch.no_grad():
        base = model.yes_no_logits(batch)
    saved = model.user_pref.clone()
    model.user_pref.mul_(-3.0)
    try:
        with torch.no_grad():
            changed = model.yes_no_logits(batch)
        assert not torch.equal(changed, base)  # deterministic forward: any change is the token's
    finally:
        model.user_pref.copy_(saved)
    assert all(model.pref_id in p for p in model.prompts(batch))
    model.use_soft_prompt = False
    try:
        assert all(model.pref_id not in p for p in model.prompts(batch))
        model.predict(batch)
    finally:
        model.use_soft_prompt = True


def test_rap_picks_similar_and_recent_items_on_a_handmade_history(elcorec):
    _, _, model, _ = elcorec
    u = 1
    saved = (model.hist_items[u], model.hist_times[u], model.text_emb.copy(), model.text_index)
    import faiss
    emb = np.zeros((model.n_items, 4), np.float32)
    emb[:, 3] = 1.0
    for item, vec in {10: [1, 0, 0, 0], 11: [0.9, 0.1, 0, 0], 12: [0, 1, 0, 0], 13: [0, 0, 1, 0],
                      14: [0.8, 0, 0.2, 0], 15: [1, 0, 0, 0], 20: [1, 0, 0, 0]}.items():
        emb[item] = np.array(vec) / np.linalg.norm(vec)
    index = faiss.IndexFlatIP(4)
    index.add(emb)
    model.hist_items[u] = np.array([10, 11, 12, 13, 14, 15])
    model.hist_times[u] = np.array([1.0, 2, 3, 4, 5, 6])
    model.text_emb, model.text_index = emb, index
    k = model.k_similar, model.k_recent
    try:
        model.k_similar, model.k_recent = 2, 2
        similar, recent = model.rap_items(u, target=20, time=5.5)   # history before t: 10..14
        assert recent == [13, 14]
        assert similar == [10, 11]                                  # closest to the target, not recent
        model.use_rap = False
        assert model.rap_items(u, target=20, time=5.5) == ([], [11, 12, 13, 14])
    finally:
        model.use_rap = True
        model.k_similar, model.k_recent = k
        model.hist_items[u], model.hist_times[u], model.text_emb, model.text_index = saved


def test_end_to_end_command_line(cli, tmp_path):
    args = ["--model=ELCoRec", "--dataset=ml-100k", "--user_inter_num_interval=[20,30]",
            "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
            "--llm_vocab_size=500", "--gat_epochs=2", "--train_batch_size=256", "--state=INFO",
            f"--llm_cache_dir={tmp_path / 'cache'}"]
    out = cli(*args, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "test result" in log and "auc" in log and "logloss" in log
