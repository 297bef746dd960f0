
import numpy as np
import pytest
import torch

from conftest import BEAUTY_TINY, build_model, check_recommender
from recbole_llm.model.eagerllm.index import build_dual_source_codes
from recbole_llm.model.layers import MLPProjector, info_nce
from recbole_llm.tokenization import hierarchical_kmeans

TINY_EAGER = dict(
    BEAUTY_TINY, preference_field="categories", behavior_epochs=1,
    behavior_model_args={"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1},
    index_k=8, index_kmeans_iters=10, index_collision="extra_code", llm_hidden_size=32,
    llm_num_layers=1, llm_num_heads=2, llm_vocab_size=400, MAX_ITEM_LIST_LENGTH=5,
    epochs=1, aat_epochs=1, train_batch_size=256, num_beams=20, beam_batch_size=64)


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    return build_model(tmp_path_factory, "EAGERLLM", "beauty-tiny", TINY_EAGER)


@pytest.mark.parametrize("composition, prefixes", [
    ("unit", ["s1", "s2", "b1", "b2"]), ("semantic", ["s1", "s2", "s3", "s4"]),
    ("behavior", ["b1", "b2", "b3", "b4"]), ("random", ["r1", "r2", "r3", "r4"])])
def test_index_compositions(composition, prefixes):
    rng = np.random.default_rng(0)
    sem, beh = rng.normal(size=(300, 8)), rng.normal(size=(300, 6))
    codes, names = build_dual_source_codes(sem, beh, composition, k=4, sem_levels=2,
                                           beh_levels=2, iters=10, seed=0)
    assert codes.shape == (300, 4) and names == prefixes
    assert codes.min() >= 0 and codes.max() < 4
    if composition == "unit":  # decoupled: each half comes from its own source only
        assert np.array_equal(codes[:, :2], hierarchical_kmeans(sem, 4, 2, 10, 0))
        other, _ = build_dual_source_codes(sem, rng.normal(size=(300, 6)), "unit", 4, 2, 2, 10, 0)
        assert np.array_equal(other[:, :2], codes[:, :2]) and not np.array_equal(other[:, 2:], codes[:, 2:])
    with pytest.raises(ValueError, match="index_composition"):
        build_dual_source_codes(sem, beh, "fused", 4, 2, 2, 10, 0)


def test_residual_codes_mean_the_same_under_every_parent():
    """Residual k-means: the second level clusters the residuals of all items, so a
    code is a direction shared across parents."""
    rng = np.random.default_rng(0)
    centres, offsets = rng.normal(size=(4, 2)) * 10, rng.normal(size=(4, 2))
    x = np.vstack([c + o + 0.01 * rng.normal(size=(20, 2)) for c in centres for o in offsets])
    offset_of = np.tile(np.repeat(np.arange(4), 20), 4)
    codes, _ = build_dual_source_codes(x, x, "semantic", k=4, sem_levels=1, beh_levels=1,
                                       iters=20, seed=0, quantizer="residual")
    # one second-level code per offset, whichever centre the item sits at
    assert len({(a, b) for a, b in zip(offset_of, codes[:, 1])}) == 4
    with pytest.raises(ValueError, match="index_quantizer"):
        build_dual_source_codes(x, x, "unit", 4, 1, 1, 10, 0, quantizer="vq")


def test_info_nce_falls_and_ignores_duplicate_items():
    torch.manual_seed(0)
    keys = torch.randn(32, 16)
    proj = MLPProjector(8, 16)
    inputs = keys[:, :8] + 0.1 * torch.randn(32, 8)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    first = info_nce(proj(inputs), keys).item()
    for _ in range(100):
        opt.zero_grad()
        loss = info_nce(proj(inputs), keys)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    ids = torch.tensor([1, 1, 2])
    q = torch.eye(3)
    k = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    # item 1 twice: its copy is not a negative, so the loss stays as for distinct rows
    assert info_nce(q[:2], k[:2], 1.0, ids[:2]).item() == pytest.approx(0.0, abs=1e-6)


def test_index_covers_every_item_with_its_own_tokens(eager):
    _, _, model, _ = eager
    index = model.index
    assert index.levels == 5 and index.prefixes == ["s1", "s2", "b1", "b2", "x"]
    ids = {tuple(index.token_ids(i)) for i in range(1, index.n_items)}
    assert len(ids) == index.n_items - 1
    vocab = model.tokenizer.get_vocab()
    assert all(t in vocab for t in index.tokens()) and "[CON]" in vocab
    assert model.llm.get_input_embeddings().num_embeddings == len(model.tokenizer)


def test_gct_gradient_reaches_projectors_and_backbone(eager):
    _, (train, _, _), model, _ = eager
    batch = next(iter(train))
    model.train()
    model.zero_grad()
    with_gct = model.calculate_loss(batch)
    with_gct.backward()
    assert next(model.sem_proj.parameters()).grad.abs().sum() > 0
    assert next(model.beh_proj.parameters()).grad.abs().sum() > 0
    assert model.llm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    lam = model.gct_lambda_sem, model.gct_lambda_beh
    model.gct_lambda_sem = model.gct_lambda_beh = 0.0
    model.zero_grad()
    without = model.calculate_loss(batch)
    without.backward()
    assert next(model.sem_proj.parameters()).grad is None or next(model.sem_proj.parameters()).grad.abs().sum() == 0
    model.gct_lambda_sem, model.gct_lambda_beh = lam


def test_generated_items_are_valid_and_distinct(eager):
    _, (_, _, test), model, _ = eager
    model.eval()
    batch = next(iter(test))[0]
    items, scores = model.recommend(batch["item_id_list"][:16], batch["item_length"][:16])
    assert items.shape == (16, 20)
    assert ((items >= 1) & (items < model.n_items)).all()
    for row, row_scores in zip(items, scores):
        assert len(set(row.tolist())) == 20 and torch.all(row_scores[:-1] >= row_scores[1:])
    four = _slice(batch, 4)
    full = model.full_sort_predict(four)
    items4, scores4 = model.recommend(four["item_id_list"], four["item_length"])
    assert full.shape == (4, model.n_items)
    # the generated items, with their beam scores, are the top-20 of the full-sort row
    assert set(full[0].topk(20).indices.tolist()) == set(items4[0].tolist())
    assert torch.allclose(full[0, items4[0]], scores4[0])
    assert full[:, 0].max() < scores4.min()  # padding item ranks below every generated item


def _slice(interaction, n):
    return interaction[torch.arange(n)]


def test_annealing_freezes_stage_one_and_trains_the_adapter(eager):
    import copy
    _, (train, _, _), model, _ = eager
    model = copy.deepcopy(model)
    model.start_annealing()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    # a checkpoint written after annealing loads into a fresh (stage-one) model
    state = model.state_dict()
    fresh = copy.deepcopy(eager[2])
    fresh.load_state_dict(state)
    assert fresh.annealing


def test_end_to_end_on_ml100k(cli, tmp_path):
    args = ["--model=EAGERLLM", "--dataset=ml-100k", "--user_inter_num_interval=[20,21]",
            "--MAX_ITEM_LIST_LENGTH=5", "--behavior_epochs=1",
            "--behavior_model_args={'hidden_size': 16, 'inner_size': 32, 'n_layers': 1, 'n_heads': 1}",
            "--index_k=8", "--index_kmeans_iters=10", "--index_collision=extra_code",
            "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
            "--llm_vocab_size=400", "--epochs=1", "--aat_epochs=1", "--train_batch_size=256",
            "--beam_batch_size=64", "--state=INFO", f"--llm_cache_dir={tmp_path / 'cache'}"]
    out = cli(*args, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "Annealing adapter tuning" in log and "test result" in log and "ndcg@10" in log
    assert "epoch 0 training parts: " in log and "item2index loss" in log and "seqrec loss" in log
    rec, _ = check_recommender(next((tmp_path / "saved").glob("EAGERLLM-*.pth")),
                               llm_cache_dir=str(tmp_path / "cache"))
    assert rec.topk_cache is None  # no cache built: items ranked by beam search


def _build_here(settings, tmp_path):
    """Build in the test's own folder (RecBole's trainer writes logs relative to it)."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build

    config = Config(model="EAGERLLM", dataset="beauty-tiny",
                    config_dict=dict(settings, llm_cache_dir=str(tmp_path / "cache")))
    return build(config)


def test_pretrained_llm_with_lora_trains_both_phases_and_reloads(tiny_llm_path, tmp_path):
    """The path users take: a local pretrained model, LoRA by default, stage one
    then annealing, the checkpoint reloaded into a freshly built model."""
    from peft import PeftModel

    from recbole_llm.trainer import load_checkpoint

    settings = dict(TINY_EAGER, llm_path=tiny_llm_path)
    _, (train, valid, test), model, trainer = _build_here(settings, tmp_path)
    assert isinstance(model.llm, PeftModel)                       # auto: LoRA on llm_path
    trainer.fit(train, valid, saved=True)
    result = trainer.evaluate(test, load_best_model=True)
    assert 0 <= result["ndcg@10"] <= 1
    state = load_checkpoint(trainer.saved_model_file)["state_dict"]
    _, _, fresh, fresh_trainer = _build_here(settings, tmp_path)
    fresh_trainer.load_model_weights(trainer.saved_model_file)
    assert fresh.annealing == bool(state["annealed"])
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor.cpu(), state[name].cpu()), name


@pytest.mark.parametrize("scores, kept", [((0.5, 0.1), "stage one"), ((0.1, 0.5), "annealed")])
def test_annealing_is_kept_only_if_it_validates_as_well(tmp_path, monkeypatch, scores, kept):
    from recbole_llm.trainer import load_checkpoint

    _, (train, valid, _), model, trainer = _build_here(TINY_EAGER, tmp_path)
    calls = iter(scores)

    def scripted_validation(valid_data, show_progress=False):
        score = next(calls)
        return score, {"ndcg@10": score}

    monkeypatch.setattr(trainer, "_valid_epoch", scripted_validation)
    best = trainer.fit(train, valid, saved=True)
    annealed = kept == "annealed"
    assert best[0] == max(scores) and model.annealing == annealed
    assert bool(load_checkpoint(trainer.saved_model_file)["state_dict"]["annealed"]) == annealed
    assert not list(tmp_path.rglob("*.stage-one"))


def test_each_task_weighs_its_own_mean_loss(eager):
    """A long text answer no longer outweighs a four-code recommendation answer:
    the recommendation term is the same with or without text rows beside it,
    and the total is the weighted sum of the task terms."""
    from recbole_llm.llm.prompts import training_batch

    _, (train, _, _), model, _ = eager
    rows = next(iter(train))
    seq, lens = rows[model.ITEM_SEQ][:4], rows[model.ITEM_SEQ_LEN][:4]
    items = rows[model.POS_ITEM_ID][:4].tolist()
    prompts = model.history_prompts(seq, lens)
    answers = [model.index.token_ids(i) for i in items]
    text = [model.item_text_ids[i] + [model.eos_id] for i in items[:2]]
    rec_only = training_batch(prompts, answers, model.pad_id, model.settings.llm_max_prompt_tokens)
    mixed = training_batch(prompts + prompts[:2], answers + text, model.pad_id, model.settings.llm_max_prompt_tokens)
    tasks = ["seqrec"] * 4 + ["index2item"] * 2
    weights = model.loss_weights
    model.eval()
    try:
        with torch.no_grad():
            model.loss_weights = {"seqrec": 1.0, "index2item": 0.0}
            rec_alone = model.task_loss(rec_only, tasks[:4])[0].item()
            rec_mixed = model.task_loss(mixed, tasks)[0].item()
            model.loss_weights = {"seqrec": 0.0, "index2item": 1.0}
            txt = model.task_loss(mixed, tasks)[0].item()
            model.loss_weights = {"seqrec": 1.0, "index2item": 0.2}
            both = model.task_loss(mixed, tasks)[0].item()
    finally:
        model.loss_weights = weights
    assert rec_mixed == pytest.approx(rec_alone, rel=1e-4)
    assert both == pytest.approx(rec_mixed + 0.2 * txt, rel=1e-5)
    # in training, each task's unweighted mean over the batches is kept for the epoch log
    model.epoch_losses()
    model.train()
    try:
        model.loss_weights = {"seqrec": 1.0, "index2item": 0.0}
        with torch.no_grad():
            model.task_loss(mixed, tasks)
            model.task_loss(rec_only, tasks[:4])
        parts = model.epoch_losses()
    finally:
        model.loss_weights = weights
        model.eval()
    rec_tokens, text_tokens = 4 * len(answers[0]), sum(map(len, text))
    assert parts["seqrec loss"] == pytest.approx(rec_alone, rel=1e-3)  # same rows twice
    assert parts["index2item loss"] == pytest.approx(txt, rel=1e-3)  # not weighted 0
    assert set(parts) == {"seqrec loss", "index2item loss"} and rec_tokens and text_tokens
    assert model.epoch_losses() == {}  # read once


def test_history_items_are_separated_and_templates_vary_in_training_only(eager):
    _, (train, _, _), model, _ = eager
    rows = next(iter(train))
    seq, lens = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    first = model.templates["seqrec"][0]
    inference = model.history_prompts(seq, lens)
    r = int(torch.argmax(lens))                      # the longest history
    codes = [model.index.token_ids(int(i)) for i in seq[r, :lens[r]].tolist()]
    expected = [t for n, c in enumerate(codes) for t in (model.separator_ids if n else []) + c]
    assert inference[r] == first.fill(expected) and model.separator_ids
    training = model.history_prompts(seq, lens, training=True)
    prefixes = {tuple(p[:len(t.prefix)]) for p in training for t in model.templates["seqrec"]
                if p[:len(t.prefix)] == t.prefix}
    assert len(prefixes) > 1                         # several templates drawn across rows
    assert all(p[:len(first.prefix)] == first.prefix for p in inference)


def test_sampled_negatives_sharpen_info_nce_and_never_hold_the_positive():
    torch.manual_seed(0)
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    ids = torch.arange(1, 5)
    base = info_nce(q, k, 0.1, ids)
    harder = info_nce(q, k, 0.1, ids, extra_keys=torch.randn(64, 8), extra_ids=torch.arange(10, 74))
    assert harder > base                                              # more negatives, larger loss
    # the batch's own items sampled again: a row's own item is never its negative
    masked = info_nce(q, k, 0.1, ids, extra_keys=k.clone(), extra_ids=ids)
    unmasked = info_nce(q, k, 0.1, ids, extra_keys=k.clone(), extra_ids=ids + 100)
    assert unmasked > masked


def test_preference_answers_leave_out_values_every_item_has(eager):
    _, _, model, _ = eager
    values = [v for item in model.preferences[1:] for v in item]
    assert values and "Beauty" not in values   # every beauty-tiny item is in "Beauty"


def test_trie_softmax_scores_codes_over_valid_children_only(eager):
    """``code_softmax: trie``: an answer that spells an item's codes has each token's
    softmax over its prefix's valid children (a one-child level: zero loss, zero
    gradient), a text answer keeps the whole vocabulary, and decoding scores items
    as ``predict`` does."""
    import dataclasses

    import torch.nn.functional as F
    from recbole.data.interaction import Interaction

    from recbole_llm.llm.prompts import answer_logits

    _, (train, _, _), model, _ = eager
    rows = next(iter(train))
    seq, lens = rows[model.ITEM_SEQ][:6], rows[model.ITEM_SEQ_LEN][:6]
    items = rows[model.POS_ITEM_ID][:6].tolist()
    prompts = model.history_prompts(seq, lens)
    answers = [model.index.token_ids(i) for i in items[:4]] + \
              [model.item_text_ids[i] + [model.eos_id] for i in items[4:]]
    saved = model.settings
    model.eval()
    try:
        assert model.packed_batch(prompts, answers)[1] is None                 # vocabulary
        with torch.no_grad():
            full_scores = model.recommend(seq, lens)[1]
        model.settings = dataclasses.replace(saved, code_softmax="trie")
        batch, codes = model.packed_batch(prompts, answers)
        logits, target, (r, c), _ = answer_logits(model.llm, batch)
        logits = logits.detach().requires_grad_(True)
        owner = batch.owner[r, c]
        losses = model.token_losses(logits, target, codes)
        plain = F.cross_entropy(logits, target, reduction="none")
        one_child = []
        for s_ in range(6):
            tokens = (owner == s_).nonzero().squeeze(1).tolist()
            if s_ >= 4:                          # text: the whole vocabulary
                assert torch.allclose(losses[tokens], plain[tokens])
                continue
            node = 0
            for level, m in enumerate(tokens):
                allowed = torch.as_tensor(model.trie.allowed(level, node))
                mine = int((allowed == target[m]).nonzero())
                expected = -torch.log_softmax(logits[m, allowed], 0)[mine]
                assert losses[m].item() == pytest.approx(expected.item(), abs=1e-5)
                if len(allowed) == 1:
                    one_child.append(m)
                node = model.trie.child(level, node, int(target[m]))
        assert one_child and len(codes.rows) == 4 * model.trie.depth
        losses[one_child].sum().backward()
        assert torch.count_nonzero(logits.grad) == 0 and losses[one_child].abs().max() < 1e-6
        with torch.no_grad():
            found, scores = model.recommend(seq, lens)
            k = found.shape[1]
            inter = Interaction({model.ITEM_SEQ: seq.repeat_interleave(k, 0),
                                 model.ITEM_SEQ_LEN: lens.repeat_interleave(k, 0),
                                 model.ITEM_ID: found.reshape(-1)})
            assert torch.allclose(model.predict(inter).view(-1, k), scores, atol=1e-4)
        # renormalised over fewer tokens, the best item's score rises
        assert (scores[:, 0] >= full_scores[:, 0] - 1e-5).all()
    finally:
        model.settings = saved
        model.eval()


def _top_components_gram(x, vectors, r):
    """Gram of ``vectors`` projected on the top ``r`` principal axes of ``x``
    (eigenvectors of its covariance: computed apart from PCAMap's SVD)."""
    mu = x.mean(0)
    w, v = np.linalg.eigh(np.cov(x - mu, rowvar=False))
    z = (vectors - mu) @ v[:, np.argsort(w)[::-1][:r]]
    return z @ z.T


@pytest.mark.parametrize("hidden", [4, 10])
def test_pca_map_keeps_the_top_components_and_is_linear(hidden):
    from recbole_llm.llm.token_init import PCAMap, code_centroids

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) * np.array([5, 4, 3, 2, 1, 0.5]) + 3.0
    z = PCAMap(x, hidden, seed=1)(x)
    assert z.shape == (60, hidden)
    assert np.allclose(z @ z.T, _top_components_gram(x, x, min(hidden, 6)))
    used, means = code_centroids(np.array([2, 0, 2, 2]), x[:4])
    assert used.tolist() == [0, 2] and np.allclose(means[1], x[[0, 2, 3]].mean(0))
    assert np.allclose(PCAMap(x, hidden, 1)(means), [z[1], z[[0, 2, 3]].mean(0)])


@pytest.mark.parametrize("init", ["mean", "random", "centroid"])
def test_code_tokens_start_from_the_items_they_name(tmp_path_factory, init):
    """transformers' mean init makes every code token one vector in a random-init
    backbone; centroid rows (input and the untied output layer) follow the
    geometry of the named items' own source: text for s-levels, behaviour for
    b-levels; the extra collision level and ``random`` get distinct random rows."""
    _, _, model, _ = build_model(tmp_path_factory, "EAGERLLM", "beauty-tiny",
                                 dict(TINY_EAGER, code_token_init=init))
    llm, index = model.llm, model.index
    tables = [llm.get_input_embeddings().weight, llm.get_output_embeddings().weight]
    assert tables[0].data_ptr() != tables[1].data_ptr()  # the default head is untied
    new = set(model._new_token_ids)
    sources = {"s": model.sem_emb[1:].double().numpy(), "b": model.beh_emb[1:].double().numpy()}
    assert index.prefixes == ["s1", "s2", "b1", "b2", "x"]
    for table in tables:
        table = table.detach().double()
        old = table[[i for i in range(len(table)) if i not in new]]
        for level, prefix in enumerate(index.prefixes):
            codes = index.codes[1:, level]
            used = np.unique(codes)
            rows = table[model.tokenizer.convert_tokens_to_ids([index.token(level, c) for c in used])]
            if init == "mean":
                assert rows.std(0).max() < 1e-3 * old.std()
                continue
            assert rows.std().item() == pytest.approx(old.std().item(), rel=0.2)
            if init == "random" or prefix == "x":
                assert torch.cdist(rows, rows).fill_diagonal_(1).min() > 0.5 * old.std()
                continue
            x = sources[prefix[0]]
            centroids = np.stack([x[codes == c].mean(0) for c in used])
            expected = _top_components_gram(x, centroids, min(table.shape[1], x.shape[1]))
            got = (rows - old.mean(0)).numpy()
            assert np.corrcoef((got @ got.T).ravel(), expected.ravel())[0, 1] > 0.999, prefix


def test_centroid_token_init_refuses_the_random_index():
    from recbole_llm.errors import InputError
    from recbole_llm.model.eagerllm import EAGERLLM

    final = {"num_beams": 20, "topk": [10], "seqrec_template": ["{history} next"],
             "task_loss_weights": {"seqrec": 1.0}, "index_composition": "random"}
    with pytest.raises(InputError, match="code_token_init: random"):
        EAGERLLM.check_settings(dict(final, code_token_init="centroid"))
    with pytest.raises(InputError, match="code_token_init must be"):
        EAGERLLM.check_settings(dict(final, code_token_init="zeros"))
    EAGERLLM.check_settings(dict(final, code_token_init="random"))
