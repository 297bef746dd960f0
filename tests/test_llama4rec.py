import dataclasses

import numpy as np
import pytest
import torch

from conftest import ML_TINY, build_model, check_recommender
from recbole_llm.llm.client import CachedClient, LLMClient
from recbole_llm.model.llama4rec.aggregation import aggregate_order, long_tail_alpha
from recbole_llm.model.llama4rec.prompts import LABELS, parse_choice

TINY = dict(ML_TINY, prompt_item_field="title", llm_hidden_size=32, llm_num_layers=1,
            llm_num_heads=2, llm_vocab_size=500, epochs=1, it_samples_per_task=48,
            aug_users=12, rerank_topn=5, llm_batch_size=16)


class ScriptedClient(LLMClient):
    """Answers from a function of the prompt; counts what it is asked."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    @property
    def identity(self):
        return "scripted"

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        self.calls += len(prompts)
        return [self.answer(p) for p in prompts]


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    return build_model(tmp_path_factory, "Llama4Rec", "ml-tiny", dict(TINY, base_model="BPR"))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return build_model(tmp_path_factory, "Llama4Rec", "ml-tiny",
                       dict(TINY, base_model="SASRec", MAX_ITEM_LIST_LENGTH=8, n_layers=1,
                            n_heads=1, hidden_size=16, inner_size=32))


# --- adaptive aggregation --------------------------------------------------
def test_long_tail_alpha_on_known_counts():
    counts = np.array([1, 10, 100])
    coef = np.log1p(counts)
    tail = (coef.max() - coef) / (coef.max() - coef.min())
    np.testing.assert_allclose(long_tail_alpha(counts, 0.5, 0.9), 0.5 * tail)
    assert tail[0] == 1 and tail[2] == 0
    # the cut-off bounds the weight of the furthest-tail users
    np.testing.assert_allclose(long_tail_alpha(counts, 0.9, 0.3), np.minimum(0.9 * tail, 0.3))
    lin = long_tail_alpha(counts, 1.0, 0.99, "linear")
    np.testing.assert_allclose(lin, np.minimum([1.0, 90 / 99, 0.0], 0.99))
    alpha = long_tail_alpha(np.array([3, 5, 8, 40, 200]), 0.7, 0.6)
    assert np.all(np.diff(alpha) <= 0)  # fewer interactions, more weight on the LLM
    with pytest.raises(ValueError, match="alpha2"):
        long_tail_alpha(counts, 0.5, 1.0)


def test_aggregation_interpolates_between_base_and_llm_orders():
    llm = torch.tensor([[0.1, 0.0, 0.9]])  # the LLM prefers base position 2, then 0, then 1
    assert aggregate_order(llm, torch.tensor([0.0])).tolist() == [[0, 1, 2]]
    assert aggregate_order(llm, torch.tensor([0.99])).tolist() == [[2, 0, 1]]
    # alpha 0.5: utilities -0.5 * rank_llm - 0.5 * rank_base = [-0.5, -1.5, -1.0]
    assert aggregate_order(llm, torch.tensor([0.5])).tolist() == [[0, 2, 1]]
    # C scales both utilities: the order does not change
    assert aggregate_order(llm, torch.tensor([0.5]), c=3.0).tolist() == [[0, 2, 1]]


def test_parse_choice_accepts_labels_letters_and_names():
    assert parse_choice(" [B]", 2) == 1
    assert parse_choice("I pick B.", 3) == 1
    assert parse_choice("Answer: [Z] then [A]", 2) == 0   # first *valid* label
    assert parse_choice("[C]", 2) is None                  # a label outside the list
    assert parse_choice("surely Heat (1995)", 2, ["Toy Story", "Heat (1995)"]) == 1
    assert parse_choice("no idea", 2, ["Toy Story", "Heat"]) is None
    assert parse_choice("", 5) is None
    assert parse_choice("B", 3) == 1 and parse_choice(" (C).", 3) == 2


def test_parse_choice_reads_no_article_or_pronoun_as_a_label():
    assert parse_choice("A good pick would be B", 3) == 1
    assert parse_choice("I'd say B", 10) == 1
    assert parse_choice("I think the answer is C.", 10) == 2
    assert parse_choice("A user like this would enjoy it", 5) is None
    assert parse_choice("I am not sure", 10) is None


# --- the model ---------------------------------------------------------------
def test_type_follows_the_base_model(general, sequential):
    from recbole.utils import ModelType
    assert general[2].type == ModelType.GENERAL and type(general[2].base).__name__ == "BPR"
    assert sequential[2].type == ModelType.SEQUENTIAL and type(sequential[2].base).__name__ == "SASRec"
    assert sequential[0]["n_layers"] == 1  # the base's hyper-parameters are ordinary options


def test_instruction_samples_answer_with_valid_labels(general):
    config, _, model, _ = general
    samples = model.instruction_samples(np.random.default_rng(0))
    label_set = set(model.label_ids[:model.topn])
    eos = model.tokenizer.eos_token_id
    kinds = {"next": 0, "list": 0, "rating": 0}
    for prompt, answer in samples:
        assert answer[-1] == eos and len(answer) >= 2
        if "How will the user rate" in prompt:
            kinds["rating"] += 1
            assert answer[0] in model.rating_ids
        else:
            assert set(answer[:-1]) <= label_set and len(set(answer[:-1])) == len(answer) - 1
            kinds["list" if "Rank the candidates" in prompt else "next"] += 1
            if "Rank the candidates" not in prompt:
                assert len(answer) == 2
        assert "A similar user interacted with" in prompt and "A recommender suggests" in prompt
    assert all(v == config["it_samples_per_task"] for v in kinds.values())


def test_holdout_rows_are_each_users_last_by_time():
    from types import SimpleNamespace

    users = np.array([1, 2, 1, 1, 2, 1, 3])
    times = np.array([5., 1., 1., 9., 2., 7., 4.])
    data = SimpleNamespace(inter_feat={"u": users, "t": times}, uid_field="u", time_field="t")
    from recbole_llm.model.llama4rec.samples import holdout_rows
    assert holdout_rows(data, 2).tolist() == [False, True, False, True, True, True, True]
    assert holdout_rows(data, 1).tolist() == [False, False, False, True, True, False, True]


@pytest.mark.parametrize("kind", ["general", "sequential"])
def test_instruction_samples_ask_what_their_base_model_never_saw(kind, request):
    """Every sample's target and later items are missing from the data of the
    model that supplied its candidates and suggestions; its history is the
    user's training history up to the cut."""
    _, (train, _, _), model, trainer = request.getfixturevalue(kind)
    loader, _ = trainer._tuning_data(train, trainer.config)
    kept = loader.dataset.inter_feat
    seen = set(zip(kept[model.USER_ID].tolist(), kept[model.ITEM_ID].tolist()))
    if kind == "sequential":  # the prefixes are training data too
        lists, lengths = kept[model.ITEM_SEQ], kept[model.ITEM_SEQ_LEN]
        for u, seq, n in zip(kept[model.USER_ID].tolist(), lists.tolist(), lengths.tolist()):
            seen.update((u, i) for i in seq[:n])
    asked, scores = [], model.base_scores

    def record(users, seqs=None):
        asked.extend(zip(list(users), [list(p) for p in seqs]))
        return scores(users, seqs)

    model.base_scores = record
    try:
        model.instruction_samples(np.random.default_rng(3))
    finally:
        del model.base_scores
    assert len(asked) == len(model.settings.it_tasks) * model.settings.it_samples_per_task
    n_held = model.settings.it_holdout_items
    for u, prefix in asked:
        history = model.histories[u].tolist()
        cut = len(prefix)
        assert history[:cut] == prefix and len(history) - n_held <= cut < len(history)
        assert not [i for i in history[cut:] if (u, i) in seen and i not in history[:cut]]


def test_instruction_tuning_loss_falls(general, tmp_path):
    _, _, model, trainer = general
    before = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
    settings = model.settings
    model.settings = dataclasses.replace(settings, llm_epochs=4)
    try:
        info = trainer.instruction_tune(model.cache.key("test-it", path=str(tmp_path)),
                                        lambda: model.base)
    finally:
        model.settings = settings
    assert np.all(np.diff(info["loss"]) < 0) and info["loss"][-1] < 0.8 * info["loss"][0], info["loss"]
    cached = trainer.instruction_tune(model.cache.key("test-it", path=str(tmp_path)), None)
    assert cached["cached"] and cached["loss"] == pytest.approx(info["loss"])
    model.llm.load_state_dict(before)


def test_augmentation_adds_valid_pairs_and_nothing_for_bad_answers(general, tmp_path):
    _, _, model, _ = general
    stats = model.augment(ScriptedClient(lambda p: " [B] because"), np.random.default_rng(1))
    rows = model.augmented
    assert stats["valid"] == stats["prompts"] > 0 and stats["dropped"] == 0
    users, pos = rows[model.USER_ID].tolist(), rows[model.ITEM_ID].tolist()
    neg = rows[model.config["NEG_PREFIX"] + model.ITEM_ID].tolist()
    assert len(users) == stats["prompts"] * (model.config["aug_candidates"] - 1)
    for u, i, j in zip(users, pos, neg):
        seen = set(model.histories[u].tolist())
        assert i not in seen and j not in seen and i != j and i > 0 and j > 0
    stats = model.augment(ScriptedClient(lambda p: "the weather is nice"), np.random.default_rng(1))
    assert stats["valid"] == 0 and stats["dropped"] == stats["prompts"] and model.augmented is None


def test_sequential_augmentation_inserts_the_chosen_item(sequential):
    _, _, model, _ = sequential
    settings = model.settings
    model.settings = dataclasses.replace(settings, aug_candidates=4)
    try:
        model.augment(ScriptedClient(lambda p: "[C]"), np.random.default_rng(2))
    finally:
        model.settings = settings
    rows = model.augmented
    seqs, lengths = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    assert (lengths >= 1).all() and (lengths <= settings.MAX_ITEM_LIST_LENGTH).all()
    assert (seqs[torch.arange(len(seqs)), lengths - 1] > 0).all()      # no empty prefix
    loss = model.calculate_loss(rows)  # the base model's loss accepts these rows as a batch
    assert torch.isfinite(loss)


def test_cache_prevents_repeated_llm_calls(general, tmp_path):
    _, _, model, _ = general
    inner = ScriptedClient(lambda p: "[A]")
    first = model.augment(CachedClient(inner, str(tmp_path), show_progress=False),
                          np.random.default_rng(3))
    calls = inner.calls
    assert calls == first["prompts"]
    again = ScriptedClient(lambda p: "[A]")
    second = model.augment(CachedClient(again, str(tmp_path), show_progress=False),
                           np.random.default_rng(3))
    assert again.calls == 0 and second == first


def test_augmented_rows_join_training_batches(general):
    _, (train, _, _), model, _ = general
    model.augment(ScriptedClient(lambda p: "[A]"), np.random.default_rng(4))
    batch = next(iter(train))
    model.train()
    model.rng = np.random.default_rng(0)
    seen = []
    original = model.base.calculate_loss
    model.base.calculate_loss = lambda inter: seen.append(len(inter)) or original(inter)
    try:
        for _ in range(20):
            model.calculate_loss(batch)
    finally:
        model.base.calculate_loss = original
        model.augmented = None
    expected = len(batch) * (1 + 12 / model.train_rows)
    assert min(seen) >= len(batch) and abs(np.mean(seen) - expected) < 2


def test_rerank_only_reorders_the_base_top_n(general):
    _, _, model, _ = general
    model.eval()
    users = [1, 2, 3, 4]
    scores = model.base_scores(users)
    history = {u: set(model.histories[u].tolist()) for u in users}
    model.eval_history = np.array([None] + [history.get(u, set()) for u in range(1, model.n_users)],
                                  dtype=object)
    try:
        out = model.llm_rerank(users, [model.histories[u] for u in users], scores)
        for row, u in enumerate(users):
            masked = scores[row].clone()
            masked[0] = float("-inf")
            masked[list(history[u])] = float("-inf")
            top = set(masked.topk(model.topn).indices.tolist())
            new_top = set(out[row].topk(model.topn).indices.tolist())
            assert new_top == top and not (new_top & history[u])
            rest = torch.ones(model.n_items, dtype=torch.bool)
            rest[list(top)] = False
            assert torch.equal(out[row][rest], scores[row][rest])
        # alpha 0: the base order is kept exactly
        saved = model.alpha.clone()
        model.alpha.zero_()
        out0 = model.llm_rerank(users, [model.histories[u] for u in users], scores)
        for row in range(len(users)):
            masked = scores[row].clone()
            masked[0] = float("-inf")
            masked[list(history[users[row]])] = float("-inf")
            assert out0[row].topk(model.topn).indices.tolist() == masked.topk(model.topn).indices.tolist()
        model.alpha.copy_(saved)
    finally:
        model.eval_history = None


def test_labels_are_single_new_tokens(general):
    _, _, model, _ = general
    for label, token in zip(LABELS, model.label_ids):
        assert model.tokenizer(label, add_special_tokens=False)["input_ids"] == [token]


@pytest.mark.parametrize("base,extra", [
    ("BPR", []),
    ("LightGCN", ["--n_layers=1"]),
    ("SASRec", ["--MAX_ITEM_LIST_LENGTH=5", "--n_layers=1", "--n_heads=1", "--hidden_size=16",
                "--inner_size=32"]),
])
def test_end_to_end_per_base_model(cli, tmp_path, base, extra):
    args = ["--model=Llama4Rec", "--dataset=ml-100k", f"--base_model={base}",
            "--user_inter_num_interval=[20,24]", "--epochs=1", "--it_samples_per_task=32",
            "--aug_users=16", "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
            "--llm_vocab_size=400", "--state=INFO", f"--llm_cache_dir={tmp_path / 'cache'}", *extra]
    out = cli(*args, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    for phrase in ("instruction tuning: loss", "data augmentation: 16 prompts",
                   "valid with LLM re-ranking", "test result", "ndcg@5"):
        assert phrase in log, phrase
    if base == "BPR":  # the inference API on the LLM-reranked recommender
        check_recommender(next((tmp_path / "saved").glob("Llama4Rec-*.pth")),
                          llm_cache_dir=str(tmp_path / "cache"))


def test_bad_base_model_is_a_clear_error(cli):
    out = cli("--model=Llama4Rec", "--dataset=ml-100k", "--base_model=DeepFM", timeout=120)
    assert out.returncode == 2 and "base_model 'DeepFM'" in out.stderr


def test_local_label_choice_names_only_offered_candidates(general, tmp_path):
    from recbole_llm.llm.cache import Cache
    from recbole_llm.llm.choice import LabelChoiceClient

    _, _, model, _ = general

    def chooser():
        return LabelChoiceClient(model.llm, model.tokenizer, LABELS, model.label_ids,
                                 model.settings.llm_max_prompt_tokens, 8,
                                 Cache(str(tmp_path)), "t")

    settings = model.settings
    model.settings = dataclasses.replace(settings, aug_candidates=3)
    try:
        first = chooser()
        stats = model.augment(first, np.random.default_rng(5))
        again = model.augment(chooser(), np.random.default_rng(5))
    finally:
        model.settings = settings
    assert stats["valid"] == stats["prompts"] > 0 and stats["dropped"] == 0
    assert again == stats
    answers = first.complete(["Candidates: [A] x; [B] y. Answer:", "[A] x; [B] y; [C] z. Answer:"])
    assert answers[0] in LABELS[:2] and answers[1] in LABELS[:3]


RATING_DATA = dict(ML_TINY, load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
                                      "user": ["user_id", "age", "gender"],
                                      "item": ["item_id", "release_year"]})
RATING = dict(TINY, **RATING_DATA, base_model="DeepFMRating", it_samples_per_task=64)


@pytest.fixture(scope="module")
def rating(tmp_path_factory):
    return build_model(tmp_path_factory, "Llama4Rec", "ml-tiny", RATING)


def test_rating_regressor_predicts_stars_and_learns(tmp_path_factory):
    from recbole.trainer import Trainer
    config, (train, valid, _), model, _ = build_model(tmp_path_factory, "DeepFMRating", "ml-tiny",
                                                      dict(RATING_DATA, epochs=8))
    assert config["metrics"] == ["RMSE", "MAE"] and config["threshold"] is None
    labels = train.dataset.inter_feat["rating"]
    assert labels.max() == 5 and labels.min() == 1           # raw stars, not normalised
    batch = next(iter(train))
    first = model.calculate_loss(batch).item()
    Trainer(config, model).fit(train, None, saved=False)
    assert model.calculate_loss(batch).item() < first
    pred = model.predict(batch)
    assert 1.5 < pred.mean().item() < 5.0


def test_rating_regressor_refuses_a_threshold(tmp_path_factory):
    with pytest.raises(ValueError, match="threshold"):
        build_model(tmp_path_factory, "DeepFMRating", "ml-tiny",
                    dict(RATING_DATA, threshold={"rating": 4}))


def test_rating_aggregation_is_alpha_weighted(rating):
    _, (train, _, test), model, _ = rating
    batch = next(iter(test))[0]  # labelled evaluation batches: (interaction, ...)
    model.eval()
    model.rerank = False
    base = model.predict(batch)
    model.rerank = True
    llm = model.llm_rating(batch, model.base_rating(batch))
    out = model.predict(batch)
    alpha = model.alpha[batch[model.USER_ID]]
    assert torch.allclose(out, alpha * llm + (1 - alpha) * base, atol=1e-5)
    assert ((llm >= 1) & (llm <= 5)).all()
    samples = model.instruction_samples(np.random.default_rng(0))
    assert samples and all(a[0] in model.rating_ids for _, a in samples)
    assert all("A recommender predicts" in p for p, _ in samples)


def test_end_to_end_rating_prediction(cli, tmp_path):
    args = ["--model=Llama4Rec", "--dataset=ml-100k", "--base_model=DeepFMRating",
            "--user_inter_num_interval=[20,24]", "--epochs=1", "--it_samples_per_task=32",
            "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
            "--llm_vocab_size=400", "--state=INFO", f"--llm_cache_dir={tmp_path / 'cache'}"]
    out = cli(*args, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "test result" in log and "rmse" in log and "mae" in log


def test_similar_users_leave_the_base_model_untouched(general):
    _, _, model, _ = general
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    similar = model.most_similar_users()
    assert all(torch.equal(before[k], v) for k, v in model.base.state_dict().items())
    assert (similar != np.arange(model.n_users))[1:].all()  # never the user itself


@pytest.mark.parametrize("flag,message", [
    ("--base_checkpoint=/no/such/file.pth", "base_checkpoint '/no/such/file.pth' is not a file"),
    ("--aug_decoding=sampled", "option 'aug_decoding' must be one of constrained, free"),
])
def test_bad_llama4rec_options_fail_before_training(cli, tmp_path, flag, message):
    out = cli("--model=Llama4Rec", "--dataset=ml-100k", "--user_inter_num_interval=[20,24]",
              "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_vocab_size=400",
              f"--llm_cache_dir={tmp_path / 'cache'}", flag, timeout=120)
    assert message in out.stderr + out.stdout
    assert "Training the conventional model" not in out.stdout + out.stderr


def test_graph_base_caches_travel_with_checkpoints(tmp_path_factory):
    _, (train, _, _), model, _ = build_model(tmp_path_factory, "Llama4Rec", "ml-tiny",
                                             dict(TINY, base_model="LightGCN", n_layers=1))
    model.eval()
    model.rerank = False
    users = torch.arange(1, 5)
    from recbole.data.interaction import Interaction
    first = model.full_sort_predict(Interaction({model.USER_ID: users}))
    assert set(model.other_parameter()) == {"restore_user_e", "restore_item_e"}
    state = model.base_arrays()
    with torch.no_grad():
        model.base.user_embedding.weight.add_(1.0)  # new weights; the cached propagation is stale
    model.load_base_arrays(state)
    assert model.base.restore_user_e is None   # recomputed from the loaded weights
    assert torch.allclose(model.full_sort_predict(Interaction({model.USER_ID: users})), first)


def test_offered_labels_count_the_candidate_list_only():
    from recbole_llm.model.llama4rec.prompts import offered_labels

    assert offered_labels("The user interacted with: [B] Side; Up. Candidates: [A] x; [B] y; [C] z. "
                          "Answer:") == 3
    assert offered_labels("Candidates: [A] x; [B] y [D] w. Answer:") == 2
    assert offered_labels("no list") == 0


# --- prompts to a token budget per section --------------------------------------
BEAUTY = dict(TINY, **{k: v for k, v in __import__("conftest").BEAUTY_TINY.items()
                       if k in ("load_col", "item_text_fields")},
              prompt_item_field="title", base_model="BPR", prompt_history_items=20,
              prompt_history_tokens=60, it_tasks=["next_item", "listwise"])


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    return build_model(tmp_path_factory, "Llama4Rec", "beauty-tiny", BEAUTY)


def test_every_beauty_prompt_shows_the_last_history_item(beauty):
    """Real Beauty titles (beauty-tiny) with a history budget far below 20 titles:
    each prompt keeps the user's most recent items, the last one always, and
    fits llm_max_prompt_tokens whole; shortened sections are counted."""
    _, (train, _, test), model, trainer = beauty
    writer, seen = model.writer, []
    ranking = writer.ranking

    def record(task, history, ratings, candidates, similar=(), base_top=()):
        prompt = ranking(task, history, ratings, candidates, similar, base_top)
        seen.append((list(history), prompt))
        return prompt

    writer.ranking = record
    try:
        model.instruction_samples(np.random.default_rng(0))
        model.rerank = True
        trainer.evaluate(test, load_best_model=False)
    finally:
        del writer.ranking
    assert len(seen) > 200 and writer.shortened["history"] > 0
    names = writer.names
    for history, prompt in seen:
        assert len(model.tokenizer(prompt)["input_ids"]) <= model.settings.llm_max_prompt_tokens
        shown = prompt.split("interacted with: ", 1)[1].split(". Candidates:")[0]
        if model.settings.prompt_augmentation:
            shown = shown.split(". A similar user")[0].split(". A recommender")[0]
        assert history and shown.endswith(names[history[-1]])
        # what is shown is the most recent part of the history, in order
        kept = shown.split("; ")
        assert kept == [names[i] for i in history[len(history) - len(kept):]]
        assert writer.count(shown) <= model.settings.prompt_history_tokens


def test_budgets_that_cannot_fit_are_errors_naming_the_setting(tmp_path_factory):
    from recbole_llm.errors import InputError

    with pytest.raises(InputError, match="llm_max_prompt_tokens=200"):
        build_model(tmp_path_factory, "Llama4Rec", "beauty-tiny", dict(BEAUTY, llm_max_prompt_tokens=200))
    with pytest.raises(InputError, match="prompt_candidate_tokens=40"):
        build_model(tmp_path_factory, "Llama4Rec", "beauty-tiny", dict(BEAUTY, prompt_candidate_tokens=40))
    with pytest.raises(InputError, match="prompt_history_tokens=5 cannot hold"):
        build_model(tmp_path_factory, "Llama4Rec", "beauty-tiny", dict(BEAUTY, prompt_history_tokens=5))


def test_batches_refuse_prompts_over_the_limit():
    from recbole_llm.llm.prompts import PromptTooLong, inference_batch, training_batch

    with pytest.raises(PromptTooLong, match="llm_max_prompt_tokens=8"):
        inference_batch([[5] * 9], 0, 8)
    with pytest.raises(PromptTooLong, match="training sequence of 9 tokens"):
        training_batch([[5] * 6], [[6, 7, 8]], 0, 8)
    assert inference_batch([[5] * 8], 0, 8)[0].shape == (1, 8)


def test_attribute_filling_completes_exactly_the_missing_values(rating):
    """Rating prediction's augmentation: blanked item years come back as values
    the field takes elsewhere; nothing else changes (the shared fixture's
    features are restored afterwards)."""
    from recbole_llm.model.llama4rec.attributes import fill_attributes, missing_attributes

    _, (train, _, _), model, _ = rating
    dataset = train.dataset
    item_feat = dataset.item_feat
    saved = {f: item_feat[f].clone() for f in item_feat.interaction}
    before = {(r, f) for f, rows in missing_attributes(dataset).items() for r in rows.tolist()}
    field, blank = "release_year", [3, 7]
    kept = saved[field]
    try:
        item_feat[field][blank] = 0
        fills = fill_attributes(model, dataset)
        assert {(t, row, f) for t, row, f, _ in fills} == \
            {("item", r, field) for r in blank} | {("item", r, f) for r, f in before}
        observed = set(kept[kept > 0].tolist())
        assert all(int(item_feat[field][r]) in observed for r in blank)
        untouched = torch.ones(len(kept), dtype=torch.bool)
        untouched[blank] = False
        untouched[[r for r, f in before if f == field]] = False
        assert torch.equal(item_feat[field][untouched], kept[untouched])
    finally:
        for f, values in saved.items():
            item_feat[f][:] = values


def test_alpha_is_anchored_on_users_with_interactions():
    """RecBole's padding user (0 interactions) must not set l_min: the least
    active real user gets the full tail weight, capped at alpha2."""
    alpha = long_tail_alpha(np.array([0, 18, 100, 735]), 0.9, 0.89)
    assert alpha[1] == pytest.approx(0.89) and alpha[3] == 0.0 and alpha[0] == pytest.approx(0.89)


def test_parse_choice_reads_capitalised_cues_and_no_title_article():
    names = ["Heat", "Toy Story", "A Bug's Life"]
    for text, want in [("Answer: C", 2), ("Option B", 1), ("**Answer:** B", 1), ("Choice: A", 0),
                       ("I think it is A Bug's Life", 2), ("I pick B because", 1)]:
        assert parse_choice(text, 3, names) == want, text


def test_alpha_search_picks_the_best_validation_pair_and_saves_it(general, tmp_path):
    """Every grid pair is evaluated once (the LLM's answers computed once), the
    best kept, and the pair travels with the checkpoint."""
    _, (_, valid, _), model, trainer = general
    settings = model.settings
    model.settings = dataclasses.replace(settings, alpha_grid=[0.1, 0.5, 0.9])
    calls = []
    rerank = model.llm_rerank.__func__

    def counting(self, users, histories, scores):
        calls.append(self._llm_memo is not None and len(self._llm_memo))
        return rerank(self, users, histories, scores)

    model.llm_rerank = counting.__get__(model)
    validate, curve = trainer._valid_epoch, []

    def recording(*args, **kwargs):  # as the comparison's curve records validations
        score, result = validate(*args, **kwargs)
        curve.append(result)
        return score, result

    trainer._valid_epoch = recording
    try:
        model.rerank = True
        best = trainer.search_alpha(valid)
    finally:
        del model.llm_rerank, trainer._valid_epoch
        model.settings = settings
    metric = trainer.config["valid_metric"].lower()
    scores = []
    for a1 in (0.1, 0.5, 0.9):
        for a2 in (0.1, 0.5, 0.9):
            model.set_alpha(a1, a2)
            scores.append(trainer.evaluate(valid, load_best_model=False)[metric])
    assert best[metric] == pytest.approx(max(scores))
    pair = model.alpha_pair.tolist()
    model.set_alpha(*pair)
    assert trainer.evaluate(valid, load_best_model=False)[metric] == pytest.approx(max(scores))
    # 9 pairs and the kept one again, for the curve; the first pass fills the memo
    assert len(calls) % 10 == 0 and calls[0] == 0 and all(calls[len(calls) // 10:])
    assert len(curve) == 1 and curve[0][metric] == pytest.approx(best[metric])
    path = str(tmp_path / "ckpt.pth")
    trainer._save_checkpoint(0, verbose=False, saved_model_file=path)
    from recbole_llm.trainer import load_checkpoint
    assert load_checkpoint(path)["state_dict"]["alpha_pair"].tolist() == pair


def test_samples_are_built_from_what_the_tuning_model_knows(sequential, tmp_path, monkeypatch):
    """While samples are built: the tuning model serves, and every history the
    base reads (a sequential user's encoding, the similar user's items) stops
    before the user's held-out interactions."""
    _, _, model, trainer = sequential
    seen = {}
    tuning = object.__new__(type(model.base))

    class Seen(Exception):
        pass

    def capture(rng):
        seen["base"] = model.base
        seen["known"] = [len(h) for h in model.context_histories()]
        raise Seen  # stop before tuning: what the samples would see is checked

    monkeypatch.setattr(model, "instruction_samples", capture)
    with pytest.raises(Seen):
        trainer.instruction_tune(model.cache.key("t", p=str(tmp_path)), lambda: tuning)
    held = model.settings.it_holdout_items
    assert seen["base"] is tuning and model.base is not tuning and model.known_histories is None
    assert seen["known"] == [max(len(h) - held, 0) for h in model.histories]


def test_general_prompts_at_test_time_end_with_the_validation_item(general):
    """Leave-one-out: the test item follows the validation item, which RecBole
    masks at test time; the prompt's history ends with it."""
    _, (_, _, test), model, trainer = general
    model.set_eval_history(test.uid2history_item)
    try:
        for u in range(1, model.n_users):
            history = model.histories[u]
            if not len(history):
                continue
            served = model.served_history(u)
            extra = set(test.uid2history_item[u].tolist()) - set(history.tolist())
            assert served[:len(history)].tolist() == history.tolist()
            assert set(served[len(history):].tolist()) == extra and len(extra) >= 1
    finally:
        model.set_eval_history(None)
