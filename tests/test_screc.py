import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import BEAUTY_TINY, ML_TINY_ARGS, build_model, check_recommender, logged_test_metric
from recbole_llm.model.screc.tokenizer import AlignedRQVAE, train_alignment_tokenizer
from recbole_llm.serving import TopKCache, load_model

TINY_SCREC = dict(
    BEAUTY_TINY, preference_field="categories", prompt_item_field="title", behavior_epochs=1,
    behavior_model_args={"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1},
    codebook_size=8, codebook_epochs=20, codebook_batch_size=256, code_collision="extra_code",
    llm_hidden_size=32, llm_num_layers=1, llm_num_heads=2, llm_vocab_size=400,
    MAX_ITEM_LIST_LENGTH=5, epochs=1, train_batch_size=256, num_beams=20, beam_batch_size=64)


@pytest.fixture(scope="module")
def screc(tmp_path_factory):
    return build_model(tmp_path_factory, "SCRec", "beauty-tiny", TINY_SCREC)


@dataclasses.dataclass(frozen=True)
class _Codebooks:
    seed: int = 0
    codebook_levels: int = 3
    codebook_size: int = 8
    codebook_dim: int = 8
    codebook_hidden: int = 32
    codebook_epochs: int = 40
    codebook_batch_size: int = 64
    codebook_learning_rate: float = 0.003
    codebook_beta: float = 0.25
    codebook_reset_every: int = 10
    align_weight: float = 0.1
    align_temperature: float = 0.1


def _clustered(n=400, d=12, clusters=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 3
    return (centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_codebooks_lower_reconstruction_and_use_several_codes_per_level():
    x = _clustered()
    text = np.random.default_rng(1).normal(size=(len(x), 16)).astype(np.float32)
    out = train_alignment_tokenizer(x, text, _Codebooks(), torch.device("cpu"))
    report = out["report"]
    losses = [e["reconstruction"] for e in report["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    assert report["reconstruction_error"] < 0.5  # of the data's variance
    assert out["codes"].shape == (len(x), 3) and all(n > 1 for n in report["codes_used"])
    assert out["token_init"].shape == (3, 8, 16)
    assert 0 <= report["collision_rate"] < 1


def test_alignment_loss_reaches_the_codebooks_and_aligns():
    settings = _Codebooks()
    torch.manual_seed(0)
    x = torch.as_tensor(_clustered(64))
    text = torch.randn(64, 16)
    model = AlignedRQVAE(12, 16, settings)
    _, _, align = model.losses(x, text, torch.arange(64), 0.1)
    align.backward()
    assert model.rq.quantizer.codebooks.grad.abs().sum() > 0
    assert model.align.weight.grad.abs().sum() > 0
    # with the alignment weighted, items' quantised vectors come to find their own text
    texts = np.random.default_rng(2).normal(size=(400, 16)).astype(np.float32)
    aligned = train_alignment_tokenizer(_clustered(), texts, settings, torch.device("cpu"))["report"]["epochs"]
    plain = train_alignment_tokenizer(_clustered(), texts, dataclasses.replace(
        settings, align_weight=0.0), torch.device("cpu"))["report"]["epochs"]
    assert aligned[-1]["alignment"] < aligned[0]["alignment"]
    assert aligned[-1]["alignment"] < plain[-1]["alignment"]


def test_codes_are_unique_tokens_seeded_from_the_aligned_projection(screc):
    _, _, model, _ = screc
    index = model.index
    assert index.prefixes == ["c1", "c2", "c3", "c4", "x"]
    assert len({tuple(index.token_ids(i)) for i in range(1, index.n_items)}) == index.n_items - 1
    report = model.tokenizer_report
    assert report["codes_used"] and all(n > 1 for n in report["codes_used"])
    # before training, each code token's embedding is its code vector projected into the
    # token space; the collision level keeps the default initialisation
    table = model.llm.get_input_embeddings().weight
    for level in range(4):
        for code in np.unique(index.codes[1:, level])[:3]:
            tid = model.tokenizer.convert_tokens_to_ids(index.token(level, code))
            assert torch.allclose(table[tid], torch.as_tensor(model.token_init[level, code]))
    projected = sum(torch.as_tensor(model.token_init[level, index.codes[1:, level]])
                    for level in range(4))
    assert projected.shape == (index.n_items - 1, table.shape[1])


def test_each_task_builds_its_samples(screc):
    _, (train, _, _), model, _ = screc
    batch = next(iter(train))
    seq, lens, targets = batch["item_id_list"][:8], batch["item_length"][:8], batch["item_id"][:8]
    negatives = batch["neg_item_id"][:8].clone()
    for r in range(8):  # a sample outside the history (RecBole's may hit it; such rows are skipped)
        while int(negatives[r]) in seq[r].tolist() or negatives[r] == targets[r]:
            negatives[r] = negatives[r] % (model.n_items - 1) + 1
    ratios = model.task_ratio
    model.task_ratio = {"item2text": 1.0, "text2item": 1.0, "query": 1.0, "negative": 1.0}
    try:
        prompts, answers, tasks = model.stage_two_samples(seq, lens, targets, negatives)
    finally:
        model.task_ratio = ratios
    n = 8
    assert tasks[:n] == ["seqrec"] * n
    for r in range(n):  # next item: the history's codes in, the target's codes out
        assert answers[r] == model.index.token_ids(int(targets[r]))
        history = model.history_ids(seq[r].tolist(), int(lens[r]))
        assert prompts[r] in [t.fill(history) for t in model.templates["seqrec"]]
    codes_of = {tuple(model.index.token_ids(i)): i for i in range(1, model.n_items)}
    by_task = {}
    for p, a, t in zip(prompts, answers, tasks):
        by_task.setdefault(t, []).append((p, a))
    assert set(by_task) == {"seqrec", "item2text", "text2item", "query", "negative"}
    def holds(prompt, ids):
        return any(prompt[i:i + len(ids)] == ids for i in range(len(prompt) - len(ids) + 1))

    for p, a in by_task["item2text"]:  # an item's codes in, the same item's text out
        item = next(int(i) for i in targets if holds(p, model.index.token_ids(int(i))))
        assert a == model.item_text_ids[item] + [model.eos_id]
    for p, a in by_task["text2item"]:  # an item's text in, the same item's codes out
        assert holds(p, model.item_text_ids[codes_of[tuple(a)]])
    for p, a in by_task["query"]:  # a query -> a batch item's codes
        assert tuple(a) in codes_of and int(codes_of[tuple(a)]) in targets.tolist()
    for p, a in by_task["query"]:  # the query holds the item's category values
        item = codes_of[tuple(a)]
        head = model.query_head[item]
        assert head == [] or any(p[i:i + len(head)] == head for i in range(len(p)))
    answers_neg = [a for _, a in by_task["negative"]]
    assert answers_neg == [[model.yes_id], [model.no_id]] * n  # the target yes, the sample no
    def holds_item(prompt, item):
        return holds(prompt, model.index.token_ids(int(item)))

    pairs = by_task["negative"]
    for (yes_prompt, _), (no_prompt, _) in zip(pairs[::2], pairs[1::2]):
        # one row's history with its target (yes), the same history with its sampled item (no)
        rows = [r for r in range(n) if holds_item(yes_prompt, targets[r])
                and holds_item(no_prompt, negatives[r])]
        assert rows and all(negatives[r] != targets[r] for r in rows)


def test_negative_rows_never_answer_no_for_an_item_of_the_history(screc):
    _, (train, _, _), model, _ = screc
    batch = next(iter(train))
    seq, lens, targets = batch["item_id_list"], batch["item_length"], batch["item_id"]
    # RecBole's sequential (repeatable) sampler avoids only the target: put a history item there
    negatives = batch["neg_item_id"].clone()
    has_history = torch.nonzero(lens > 0).flatten()
    negatives[has_history[:4]] = seq[has_history[:4], 0]
    ratios = model.task_ratio
    model.task_ratio = {"negative": 1.0}
    try:
        prompts, answers, tasks = model.stage_two_samples(seq, lens, targets, negatives)
    finally:
        model.task_ratio = ratios
    kept = tasks.count("negative") // 2
    clean = sum(1 for r in range(len(targets)) if int(negatives[r]) not in
                seq[r, :int(lens[r])].tolist() and int(negatives[r]) != int(targets[r]))
    assert kept == clean and kept <= len(targets) - 4


def test_loss_has_every_task_and_falls(screc):
    _, (train, _, _), model, _ = screc
    model = copy.deepcopy(model)
    model.train()
    batch = next(iter(train))
    _, _, tasks = model.stage_two_samples(batch["item_id_list"], batch["item_length"],
                                          batch["item_id"], batch["neg_item_id"])
    assert set(tasks) == {"seqrec", "item2text", "text2item", "query", "negative"}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert torch.isfinite(loss) and loss.item() < 0.8 * first


def test_generated_items_are_valid(screc):
    _, (_, _, test), model, _ = screc
    model.eval()
    batch = next(iter(test))[0]
    items, scores = model.recommend(batch["item_id_list"][:8], batch["item_length"][:8])
    assert items.shape == (8, 20) and ((items >= 1) & (items < model.n_items)).all()
    assert all(len(set(row.tolist())) == 20 for row in items)


def test_negative_task_without_a_sampler_is_refused(tmp_path_factory):
    from recbole_llm.errors import InputError

    with pytest.raises(InputError, match="train_neg_sample_args"):
        build_model(tmp_path_factory, "SCRec", "beauty-tiny",
                    dict(TINY_SCREC, train_neg_sample_args=None))


def test_end_to_end_then_serving_from_the_topk_cache(cli, tmp_path):
    args = ["--model=SCRec", "--dataset=ml-tiny", "--MAX_ITEM_LIST_LENGTH=5",
            "--behavior_epochs=1", "--codebook_size=8", "--codebook_epochs=10",
            "--code_collision=extra_code", "--llm_hidden_size=32", "--llm_num_layers=1",
            "--llm_num_heads=2", "--llm_vocab_size=400", "--epochs=1", "--train_batch_size=256",
            "--beam_batch_size=64", "--state=INFO",
            f"--llm_cache_dir={tmp_path / 'cache'}", "--preference_field=genre",
            "--prompt_item_field=title", *ML_TINY_ARGS]
    out = cli(*args, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "SCRec codebooks: reconstruction error" in log and "collision rate" in log
    ndcg = logged_test_metric(log, "ndcg@10")
    assert 0.0 <= ndcg <= 1.0
    checkpoint = next((tmp_path / "saved").glob("SCRec-*.pth"))

    # serving: build once, answer from the cache, a changed model is not served stale
    _, dataset, model = load_model(str(checkpoint), show_progress=False, state="WARNING")
    store = TopKCache(model, dataset)
    stats = store.build(show_progress=False)
    assert stats["users"] > 0 and stats["seconds_per_1k_users"] > 0
    user = dataset.id2token(dataset.uid_field, 1)
    answer = store.topk(user, 10)
    assert len(answer) == 10 and all(a[1] >= b[1] for a, b in zip(answer, answer[1:]))
    history = store.histories()[1]  # the user's latest items, decoded now
    seq = torch.zeros((1, model.max_seq_length), dtype=torch.long)
    seq[0, :len(history)] = torch.as_tensor(history)
    items, _ = model.recommend(seq, torch.tensor([len(history)]))
    assert [a[0] for a in answer] == list(dataset.id2token(dataset.iid_field, items[0, :10]))
    again = TopKCache(model, dataset)
    assert again.is_built() and again.topk(user, 10) == answer
    with torch.no_grad():
        model.llm.get_input_embeddings().weight[5] += 1.0
    stale = TopKCache(model, dataset)
    assert stale.key != store.key and not stale.is_built()
    # the inference API answers a user from the built cache, a history by beam search
    rec, served = check_recommender(checkpoint, k=10, llm_cache_dir=str(tmp_path / "cache"))
    uid = next(u for u in range(1, len(rec.histories)) if len(rec.histories[u]))
    user = rec.dataset.id2token(rec.dataset.uid_field, uid)
    cached = rec.topk_cache.topk(user, rec.topk_cache.k)
    assert rec.topk_cache is not None and served == [a for a in cached if a in served]


def test_a_checkpoint_with_other_item_codes_is_refused(screc):
    _, _, model, _ = screc
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(state)  # the same codes: loads
    state["item_codes"][1] = state["item_codes"][2]
    with pytest.raises(ValueError, match="item codes differ"):
        fresh.load_state_dict(state)


def test_reassigned_collisions_take_the_nearest_free_code():
    from recbole_llm.tokenization import ItemIndex

    codes = np.array([[0, 1], [0, 1], [1, 0]])
    preference = np.array([[1, 3, 2, 0], [1, 3, 2, 0], [0, 1, 2, 3]])
    index = ItemIndex.build(codes, collision="reassign", k=4, preference=preference)
    assert index.codes[1:].tolist() == [[0, 1], [0, 3], [1, 0]]
