"""Llama4Rec (arXiv 2401.13870): an LLM and a conventional model augmenting each other.

Llama4Rec wraps one of RecBole's own models (``base_model``: BPR, LightGCN,
SASRec, ... any general or sequential model) and takes its type, so RecBole
builds the same dataset, split and dataloaders as for the base model alone.
The four parts of the method, and where they live:

* instruction tuning of the LLM on the dataset's own tasks (next-item choice
  and listwise ranking of candidates, rating prediction), prompts written
  from item names: :meth:`Llama4Rec.instruction_tune`;
* data augmentation: the tuned LLM (local backbone or an OpenAI-compatible
  server, answers cached) picks the item a sampled user prefers among
  un-interacted candidates; the choices become extra (u, i+, i-) triples
  (general models) or an item inserted into the user's sequence (sequential
  models), and the base model trains on D' = D U augmented:
  :meth:`Llama4Rec.augment`, :meth:`Llama4Rec.calculate_loss`;
* prompt augmentation: prompts carry the history of the most similar user
  (cosine of the base model's user representations, faiss) and the base
  model's top items: :meth:`Llama4Rec.context`;
* adaptive aggregation: the LLM re-ranks the base model's top-N; utilities
  ``alpha_u * U_llm + (1 - alpha_u) * U_base`` with ``U = -rank`` and
  ``alpha_u`` from the user's long-tail coefficient: :func:`long_tail_alpha`,
  :func:`aggregate_order`, :meth:`Llama4Rec.full_sort_predict`.

The training phases run in :class:`~recbole_llm.model.llama4rec_trainer.Llama4RecTrainer`.
"""
import os

import numpy as np
import recbole
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import ModelType, init_seed
from tqdm import tqdm

from recbole_llm import registry
from recbole_llm.llm.backbone import add_tokens, answer_token_ids, apply_tuning, load_backbone
from recbole_llm.llm.cache import Cache
from recbole_llm.llm.prompts import answer_distribution, answer_lm_loss, training_batch
from recbole_llm.model.llama4rec_prompts import LABELS, RATING_WORDS, PromptWriter, parse_choice


# ------------------------------------------------------------ aggregation
def long_tail_alpha(counts, alpha1: float, alpha2: float, transform: str = "log") -> np.ndarray:
    """Per-user weight of the LLM.

    The long-tail coefficient is ``l_u = log(1 + n_u)`` (``transform: linear``:
    ``n_u``) of the user's number of training interactions; scaled to [0, 1]
    between the largest and the smallest coefficient (1 = furthest in the
    tail), weighted by ``alpha1`` and cut off at ``alpha2``:
    ``alpha_u = min(alpha1 * (l_max - l_u) / (l_max - l_min), alpha2)``.
    """
    if not 0 <= alpha2 < 1:
        raise ValueError(f"alpha2 (the cut-off) must lie in [0, 1), got {alpha2}")
    counts = np.asarray(counts, dtype=np.float64)
    if transform == "log":
        coef = np.log1p(counts)
    elif transform == "linear":
        coef = counts
    else:
        raise ValueError(f"long_tail_transform must be 'log' or 'linear', not '{transform}'")
    span = coef.max() - coef.min() if len(coef) else 0.0
    tail = (coef.max() - coef) / span if span > 0 else np.zeros_like(coef)
    return np.minimum(alpha1 * tail, alpha2)


def aggregate_order(llm_scores: torch.Tensor, alpha: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """New order of each row's candidates, given in the base model's order.

    Candidate ``s`` (0 = the base model's best) has base utility ``-s * c``;
    the LLM's order of ``llm_scores`` gives utility ``-r * c`` to its rank ``r``;
    the result sorts ``alpha * U_llm + (1 - alpha) * U_base``, ties kept in
    base order.  Rows with ``-inf`` LLM scores (padding) keep their place last.
    """
    n = llm_scores.shape[1]
    base_utility = -c * torch.arange(n, dtype=torch.float32).expand_as(llm_scores)
    order = torch.argsort(-llm_scores, dim=1, stable=True)
    llm_rank = torch.empty_like(order)
    llm_rank.scatter_(1, order, torch.arange(n).expand_as(order).contiguous())
    utility = alpha[:, None] * (-c * llm_rank.float()) + (1 - alpha[:, None]) * base_utility
    return torch.argsort(-utility, dim=1, stable=True)


class LabelChooser:
    """The local backbone answering with the most probable *offered* label.

    A small model tuned on a few thousand instructions may still put mass on
    labels not offered (or on a rating digit); restricting its one-token answer
    to the offered labels is constrained decoding.  Answers are cached in
    chunks under ``key`` (resumable)."""

    def __init__(self, model, cache, key: str, show_progress: bool = False):
        self.model, self.cache, self.key, self.show_progress = model, cache, key, show_progress

    def choose(self, prompts: list, counts: list) -> list:
        import hashlib

        model, config = self.model, self.model.config
        digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]

        def run(batch):
            texts = [p for p, _ in batch]
            logp = answer_distribution(model.llm, model.tokenizer, texts,
                                       model.label_ids[:max(n for _, n in batch)],
                                       config["llm_max_prompt_tokens"], len(batch),
                                       valid_counts=[n for _, n in batch])
            return [LABELS[int(k)] for k in logp.argmax(1)]

        return self.cache.map_batches(f"llama4rec-choices-{self.key}-{digest}",
                                      list(zip(prompts, counts)), run,
                                      config["llm_eval_batch_size"], desc="LLM choices",
                                      show_progress=self.show_progress)


# ------------------------------------------------------------ base model access
def _state_arrays(module) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _load_state_arrays(module, arrays: dict) -> None:
    module.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    forget_cached_outputs(module)


def forget_cached_outputs(module) -> None:
    """Drop what a RecBole model caches between evaluations (LightGCN's
    ``restore_user_e``, ...): stale after its weights are replaced."""
    for name in getattr(module, "other_parameter_name", None) or []:
        setattr(module, name, None)


class Llama4Rec(AbstractRecommender):
    """RecBole model wrapping ``base_model``; see the module docstring."""

    type = ModelType.GENERAL  # replaced by the base model's type (specialise)
    _specialised = {}

    @classmethod
    def specialise(cls, base_name):
        """``(class, [RecBole's yaml of the base])``: Llama4Rec with the base's
        type and input type, so RecBole builds the base model's data pipeline."""
        if not base_name:
            raise ValueError("Llama4Rec needs base_model: a RecBole general or sequential model, "
                             "e.g. --base_model=LightGCN")
        base = registry.get_model_class(base_name)
        regression = getattr(base, "regression", False)
        if not regression and (registry.is_plugin_model(base_name) or
                               base.type not in (ModelType.GENERAL, ModelType.SEQUENTIAL)):
            raise ValueError(f"base_model '{base_name}' must be one of RecBole's general or "
                             f"sequential models (BPR, LightGCN, SASRec, ...), or a rating "
                             f"regressor (DeepFMRating, FMRating, WideDeepRating)")
        key = (base.type, getattr(base, "input_type", None))
        if key not in cls._specialised:
            attrs = {"type": base.type, "__module__": cls.__module__, "__doc__": cls.__doc__}
            if key[1] is not None:
                attrs["input_type"] = key[1]
            cls._specialised[key] = type(cls.__name__, (cls,), attrs)
        if regression:
            return cls._specialised[key], list(base.property_files())
        path = os.path.join(os.path.dirname(recbole.__file__), "properties", "model",
                            f"{base_name}.yaml")
        return cls._specialised[key], [path] if os.path.isfile(path) else []

    def __init__(self, config, dataset):
        super().__init__()
        self.config, self.dataset = config, dataset
        self.USER_ID, self.ITEM_ID = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.n_users, self.n_items = dataset.user_num, dataset.item_num
        self.sequential = self.type == ModelType.SEQUENTIAL
        self.rating_task = self.type == ModelType.CONTEXT  # base_model is a rating regressor
        if self.sequential:
            self.ITEM_SEQ = self.ITEM_ID + config["LIST_SUFFIX"]
            self.ITEM_SEQ_LEN = config["ITEM_LIST_LENGTH_FIELD"]
            self.max_len = config["MAX_ITEM_LIST_LENGTH"]
        self.base_class = registry.get_model_class(config["base_model"])
        self.base = self.base_class(config, dataset)
        self.train_rows = len(dataset.inter_feat)  # |D|, for the share of augmented rows
        self.cache = Cache.from_config(config)
        self.rng = np.random.default_rng(config["seed"])
        self.topn = config["rerank_topn"]
        if config["aug_decoding"] not in ("constrained", "free"):
            raise ValueError(f"aug_decoding must be 'constrained' or 'free', "
                             f"not '{config['aug_decoding']}'")
        if not self.rating_task and not 2 <= self.topn <= len(LABELS):
            raise ValueError(f"rerank_topn must lie in [2, {len(LABELS)}], got {self.topn}")

        self._histories(dataset)
        alpha = (long_tail_alpha(self.counts, config["alpha1"], config["alpha2"],
                                 config["long_tail_transform"])
                 if config["adaptive_alpha"] else np.full(self.n_users, config["fixed_alpha"]))
        self.alpha = torch.as_tensor(alpha, dtype=torch.float32)

        self.writer = PromptWriter(self._item_names(dataset), config)
        llm, self.tokenizer = load_backbone(config, corpus=self._corpus(), cache=self.cache)
        self.label_ids = add_tokens(llm, self.tokenizer, LABELS)
        self.rating_ids, _ = answer_token_ids(llm, self.tokenizer, RATING_WORDS,
                                              new_tokens=[f"[{w}]" for w in RATING_WORDS])
        self.llm = apply_tuning(llm, config, new_token_ids=self.label_ids)
        self.rerank = True           # the trainer switches it off while the base model trains
        self.eval_history = None     # uid -> items RecBole masks in this evaluation (general)
        self.augmented = None        # Interaction of D' \ D rows, set by augment()
        self.aug_stats = {}
        self._context_cache = None

    # --- data ------------------------------------------------------------
    def _histories(self, dataset):
        """Training items (time order), their ratings and each user's count."""
        self.histories = dataset.user_histories()
        inter = dataset.inter_feat
        users = np.asarray(inter[dataset.uid_field])
        counts = np.bincount(users, minlength=self.n_users)
        if self.sequential:  # one row per target; the first item of a sequence is no target
            counts = counts + (counts > 0)
        self.counts = counts
        self.ratings = dataset if dataset.has_ratings() else None  # raw, not RecBole-normalised

    def _rated(self, user, items):
        if self.ratings is None:
            return None
        return np.array([self.ratings.rating_of(user, i) for i in items])

    def _item_names(self, dataset) -> list:
        field = self.config["prompt_item_field"]
        if field:
            return [" ".join(v) for v in dataset.item_field_values(field)]
        return list(dataset.item_texts())

    def _corpus(self) -> list:
        filled = {k: "" for k in ("history", "candidates", "similar", "base", "target", "items")}
        texts = [t.format(**filled) for t in self.writer.templates.values()]
        texts += [self.writer.similar_text.format(items=""), self.writer.base_text.format(items="")]
        return [n for n in self.writer.names if n] + texts + [f"({r} stars)" for r in range(11)]

    # --- the base model ---------------------------------------------------
    def reset_base(self):
        """A freshly initialised base model (training on D' from scratch)."""
        init_seed(self.config["seed"], self.config["reproducibility"])
        self.base = self.base_class(self.config, self.dataset).to(self.config["device"])

    def _recent(self, user, end=None) -> np.ndarray:
        history = self.histories[user] if end is None else self.histories[user][:end]
        return history[-self.max_len:] if self.sequential else history

    def _sequence_batch(self, seqs) -> Interaction:
        lengths = [len(s) for s in seqs]
        items = torch.zeros((len(seqs), self.max_len), dtype=torch.long)
        for row, seq in enumerate(seqs):
            items[row, :len(seq)] = torch.as_tensor(seq[-self.max_len:])
        return Interaction({self.ITEM_SEQ: items,
                            self.ITEM_SEQ_LEN: torch.as_tensor(lengths).clamp(1, self.max_len)})

    @torch.no_grad()
    def base_scores(self, users, seqs=None) -> torch.Tensor:
        """Base model's score rows; ``seqs`` (sequential models): the histories
        to score from (default: each user's training history)."""
        self.base.eval()
        if self.sequential:
            seqs = seqs if seqs is not None else [self._recent(u) for u in users]
            batch = self._sequence_batch([s if len(s) else [0] for s in seqs])
        else:
            batch = Interaction({self.USER_ID: torch.as_tensor(np.asarray(users))})
        batch = batch.to(self.config["device"])
        return self.base.full_sort_predict(batch).view(len(users), -1).float().cpu()

    @torch.no_grad()
    def user_representations(self) -> np.ndarray:
        """The base model's user vectors: its user table, a graph model's
        propagated users, or a sequential model's encoding of the history."""
        self.base.eval()
        if self.sequential:
            out = []
            for start in range(0, self.n_users, 512):
                users = range(start, min(start + 512, self.n_users))
                batch = self._sequence_batch([self._recent(u) if len(self.histories[u]) else [0]
                                              for u in users]).to(self.config["device"])
                out.append(self.base.forward(batch[self.ITEM_SEQ], batch[self.ITEM_SEQ_LEN]).cpu())
            return torch.cat(out).numpy()
        if self.rating_task:  # the user-id rows of a context model's token embedding table
            names = self.base.token_field_names
            if self.USER_ID not in names:
                raise ValueError("prompt augmentation needs the user id among the base model's "
                                 "features; set prompt_augmentation: False")
            at = names.index(self.USER_ID)
            offset = int(self.base.token_embedding_table.offsets[at])
            table = self.base.token_embedding_table.embedding.weight
            return table[offset:offset + self.n_users].detach().cpu().numpy()
        if hasattr(self.base, "norm_adj_matrix"):  # LightGCN, NGCF, ...: propagated embeddings
            return self.base.forward()[0].detach().cpu().numpy()
        if hasattr(self.base, "user_embedding"):
            return self.base.user_embedding.weight.detach().cpu().numpy()
        raise ValueError(f"base_model {self.config['base_model']} exposes no user embeddings for "
                         "prompt augmentation; set prompt_augmentation: False")

    def most_similar_users(self) -> np.ndarray:
        """Per user, the other user with the most similar (cosine) base representation."""
        import faiss

        # a copy: the representations may share memory with the base model's weights
        reps = np.array(self.user_representations(), dtype=np.float32, copy=True)
        reps /= np.maximum(np.linalg.norm(reps, axis=1, keepdims=True), 1e-12)
        has_history = np.array([len(h) > 0 for h in self.histories])
        index = faiss.IndexFlatIP(reps.shape[1])
        ids = np.flatnonzero(has_history)
        index.add(reps[ids])
        _, found = index.search(reps, min(2, len(ids)))
        found = ids[found]
        own = found[:, 0] == np.arange(self.n_users)
        return np.where(own, found[:, -1], found[:, 0])

    # --- prompt augmentation -----------------------------------------------
    def context(self):
        """(most similar user per user) for the current base model, cached
        until the base model trains again."""
        if self._context_cache is None:
            aug = self.config["prompt_augmentation"]
            self._context_cache = self.most_similar_users() if aug else None
        return self._context_cache

    def _augmentation(self, user, base_order):
        """(similar user's recent items, base model's top items) for a prompt."""
        similar = self.context()
        if similar is None:
            return (), ()
        k = self.config["prompt_similar_items"]
        return self.histories[similar[user]][-k:], list(base_order[:self.config["prompt_base_items"]])

    def _ranking_prompt(self, task, user, history, candidates_in_base_order, shuffle_seed):
        """Prompt with the candidates shuffled (the LLM must not read the base
        order off the list); returns (prompt, permutation)."""
        perm = np.random.default_rng(shuffle_seed).permutation(len(candidates_in_base_order))
        shown = [candidates_in_base_order[p] for p in perm]
        similar, base_top = self._augmentation(user, candidates_in_base_order)
        history = history[-self.config["prompt_history_items"]:]
        prompt = self.writer.ranking(task, history, self._rated(user, history), shown,
                                     similar, base_top)
        return prompt, perm

    # --- instruction tuning ---------------------------------------------------
    def _eligible_users(self):
        return np.flatnonzero(np.array([len(h) >= self.config["it_min_history"]
                                        for h in self.histories]))

    def instruction_samples(self, rng) -> list:
        """(prompt, answer token ids) for every task, built from the training split.

        A sample cuts a user's training history at a random point: the prefix
        is the history, the next item the target.  Candidates are the target
        plus the base model's best items outside the prefix (hard negatives, as
        at inference).  Tasks: ``next_item`` (answer: the target's label),
        ``listwise`` (labels of every candidate the user goes on to interact
        with, best rated first), ``rating`` (the target's rating; datasets with
        ratings only).
        """
        if self.rating_task:
            return self.rating_samples(rng)
        tasks = list(self.config["it_tasks"])
        if self.ratings is None and "rating" in tasks:
            tasks.remove("rating")
        users = self._eligible_users()
        if not len(users):
            raise ValueError(f"no user has it_min_history={self.config['it_min_history']} "
                             "training interactions: nothing to instruction-tune on")
        n = self.config["it_samples_per_task"]
        eos = [self.tokenizer.eos_token_id]
        samples = []
        for task in tasks:
            picked = rng.choice(users, size=n, replace=True)
            cuts = [int(rng.integers(self.config["it_min_history"] - 1, len(self.histories[u])))
                    for u in picked]
            for start in range(0, n, 256):
                rows = range(start, min(start + 256, n))
                prefixes = [self.histories[picked[r]][:cuts[r]] for r in rows]
                scores = self.base_scores(picked[list(rows)],
                                          [p[-self.max_len:] for p in prefixes] if self.sequential else None)
                for j, r in enumerate(rows):
                    u, cut, prefix = int(picked[r]), cuts[r], prefixes[j]
                    target = int(self.histories[u][cut])
                    row = scores[j].clone()
                    row[0] = float("-inf")
                    row[torch.as_tensor(prefix, dtype=torch.long)] = float("-inf")
                    cands = row.topk(self.topn).indices.tolist()
                    if target not in cands:
                        cands[-1] = target
                    if task == "rating":
                        similar, base_top = self._augmentation(u, cands)
                        hist = prefix[-self.config["prompt_history_items"]:]
                        prompt = self.writer.rating(hist, self._rated(u, hist), target,
                                                    similar, base_top)
                        value = int(np.clip(np.rint(self._rated(u, [target])[0]), 1, 5))
                        samples.append((prompt, [self.rating_ids[value - 1]] + eos))
                        continue
                    prompt, perm = self._ranking_prompt(task, u, prefix, cands, int(rng.integers(2**31)))
                    position = {cands[p]: k for k, p in enumerate(perm)}  # item -> shown label
                    if task == "next_item":
                        answer = [target]
                    else:
                        future = self.histories[u][cut:].tolist()
                        liked = [i for i in future if i in position]
                        rated = self._rated(u, liked)
                        if rated is not None:
                            liked = [i for _, i in sorted(zip(-np.nan_to_num(rated, nan=0.0), liked),
                                                          key=lambda x: x[0])]
                        answer = liked[:self.config["listwise_max_answer"]]
                    samples.append((prompt, [self.label_ids[position[i]] for i in answer] + eos))
        return samples

    # --- rating prediction (base_model: a rating regressor) -----------------------
    def _rating_prompts(self, interaction, base_pred) -> list:
        """Prompts for (user, item) rows: the user's other training ratings in
        time order, the most similar user's items, the base model's rating."""
        users = interaction[self.USER_ID].tolist()
        items = interaction[self.ITEM_ID].tolist()
        prompts = []
        k = self.config["prompt_history_items"]
        for u, i, pred in zip(users, items, base_pred.tolist()):
            history = self.histories[u]
            at = np.flatnonzero(history == i)
            history = history[:at[0]] if len(at) else history  # before the target, if trained on
            history = history[-k:]
            similar = ()
            if self.context() is not None:
                similar = self.histories[self.context()[u]][-self.config["prompt_similar_items"]:]
                base = self.config["llama4rec_base_rating_text"].format(rating=f"{pred:.1f}")
            else:
                base = ""
            prompts.append(self.writer.rating(history, self._rated(u, history), i, similar, (),
                                              base_text=base))
        return prompts

    def rating_samples(self, rng) -> list:
        """Rating instructions from training rows of users with enough history."""
        inter = self.dataset.inter_feat
        users = np.asarray(inter[self.USER_ID])
        eligible = np.flatnonzero(self.counts[users] >= self.config["it_min_history"])
        rows = rng.choice(eligible, size=min(self.config["it_samples_per_task"], len(eligible)),
                          replace=False)
        eos = [self.tokenizer.eos_token_id]
        samples = []
        for start in range(0, len(rows), 1024):
            batch = self.dataset.join(inter[torch.as_tensor(rows[start:start + 1024])])
            pred = self.base_rating(batch)
            for prompt, u, i in zip(self._rating_prompts(batch, pred), batch[self.USER_ID].tolist(),
                                    batch[self.ITEM_ID].tolist()):
                value = int(np.clip(np.rint(self.ratings.rating_of(u, i)), 1, 5))
                samples.append((prompt, [self.rating_ids[value - 1]] + eos))
        return samples

    @torch.no_grad()
    def base_rating(self, interaction) -> torch.Tensor:
        self.base.eval()
        return self.base.predict(interaction.to(self.config["device"])).float().cpu()

    @torch.no_grad()
    def llm_rating(self, interaction, base_pred) -> torch.Tensor:
        """Expected rating under the LLM's distribution over the rating tokens."""
        logp = answer_distribution(self.llm, self.tokenizer, self._rating_prompts(interaction, base_pred),
                                   self.rating_ids, self.config["llm_max_prompt_tokens"],
                                   self.config["llm_eval_batch_size"])
        return (logp.exp() * torch.arange(1, len(self.rating_ids) + 1, dtype=torch.float32)).sum(1)

    def instruction_tune(self, key: str, show_progress: bool = False) -> dict:
        """Tune the LLM on :meth:`instruction_samples` (cached under ``key``)."""
        trainable = [n for n, p in self.llm.named_parameters() if p.requires_grad]
        if self.cache.has_arrays(key):
            arrays = self.cache.load_arrays(key)
            state = {k: torch.as_tensor(v) for k, v in arrays.items() if k != "__loss"}
            self.llm.load_state_dict(state, strict=False)
            return {"loss": arrays["__loss"].tolist(), "cached": True}
        rng = np.random.default_rng(self.config["seed"])
        samples = self.instruction_samples(rng)
        ids = self.tokenizer([p for p, _ in samples])["input_ids"]
        optim = torch.optim.AdamW([p for p in self.llm.parameters() if p.requires_grad],
                                  lr=self.config["llm_learning_rate"],
                                  weight_decay=self.config["llm_weight_decay"])
        batch, losses = self.config["llm_batch_size"], []
        device = self.config["device"]
        self.llm.train()
        for epoch in range(self.config["llm_epochs"]):
            order = rng.permutation(len(samples))
            total, steps = 0.0, 0
            bar = tqdm(range(0, len(order), batch), desc=f"instruction tuning {epoch + 1}",
                       disable=not show_progress, unit="batch")
            for start in bar:
                rows = order[start:start + batch]
                packed = training_batch(
                    [ids[r] for r in rows], [samples[r][1] for r in rows],
                    self.tokenizer.pad_token_id, self.config["llm_max_prompt_tokens"],
                    dtype=self.llm.dtype).to(device)
                loss, _ = answer_lm_loss(self.llm, packed)
                optim.zero_grad()
                loss.backward()
                optim.step()
                total, steps = total + loss.item(), steps + 1
            losses.append(total / max(steps, 1))
        self.llm.eval()
        state = {n: p.detach().cpu().numpy() for n, p in self.llm.named_parameters() if n in trainable}
        self.cache.save_arrays(key, __loss=np.asarray(losses), **state)
        return {"loss": losses, "cached": False, "samples": len(samples)}

    # --- data augmentation ------------------------------------------------------
    def augmentation_prompts(self, rng):
        """(user, candidates, prompt) for ``aug_users`` sampled users: the LLM
        chooses among ``aug_candidates`` items the user never interacted with."""
        users = self._eligible_users()
        n_users = min(self.config["aug_users"], len(users))
        picked = rng.choice(users, size=n_users, replace=False)
        scores = self.base_scores(picked) if self.config["prompt_augmentation"] else None
        jobs = []
        for j, u in enumerate(picked):
            seen = set(self.histories[u].tolist())
            pool = [i for i in rng.choice(np.arange(1, self.n_items), size=4 * self.config["aug_candidates"] + 8,
                                          replace=False).tolist() if i not in seen]
            cands = pool[:self.config["aug_candidates"]]
            if len(cands) < 2:
                continue
            base_order = cands
            if scores is not None:
                row = scores[j].clone()
                row[0] = float("-inf")
                row[torch.as_tensor(self.histories[u], dtype=torch.long)] = float("-inf")
                base_order = row.topk(self.topn).indices.tolist()
            similar, base_top = self._augmentation(int(u), base_order)
            history = self.histories[u][-self.config["prompt_history_items"]:]
            listed = cands  # already a random draw: no base order to hide
            prompt = self.writer.ranking("next_item", history, self._rated(u, history), listed,
                                         similar, base_top)
            jobs.append((int(u), cands, prompt))
        return jobs

    def augment(self, client, rng) -> dict:
        """Ask ``client`` for each sampled user's choice and build D' \\ D.

        ``client`` is an :class:`~recbole_llm.llm.client.LLMClient` (free text,
        parsed; an answer that names no valid candidate is dropped and counted)
        or a :class:`LabelChooser` (the local backbone restricted to the
        offered labels).  Both cache their answers.
        """
        jobs = self.augmentation_prompts(rng)
        if isinstance(client, LabelChooser):
            answers = client.choose([p for _, _, p in jobs], [len(c) for _, c, _ in jobs])
        else:
            answers = client.complete([p for _, _, p in jobs],
                                      max_new_tokens=self.config["aug_max_new_tokens"])
        rows, dropped = [], 0
        for (user, cands, _), text in zip(jobs, answers):
            choice = parse_choice(text, len(cands), [self.writer.names[i] for i in cands])
            if choice is None:
                dropped += 1
                continue
            rows.append((user, cands[choice], [c for k, c in enumerate(cands) if k != choice]))
        self.augmented = self._augmented_rows(rows, rng)
        self.aug_stats = {"prompts": len(jobs), "valid": len(rows), "dropped": dropped,
                          "rows": 0 if self.augmented is None else len(self.augmented)}
        return self.aug_stats

    def augmented_fingerprint(self) -> str:
        """Hash of the augmented rows (keys the conventional model trained on D')."""
        import hashlib

        digest = hashlib.sha256()
        if self.augmented is not None:
            for field in sorted(self.augmented.columns):
                digest.update(field.encode())
                digest.update(self.augmented[field].numpy().tobytes())
        return digest.hexdigest()[:20]

    def _augmented_rows(self, choices, rng):
        """Training rows in the base model's batch format: ``(u, i+, i-)`` per
        rejected candidate (general), or the prefixes of the user's sequence
        with the chosen item inserted at a random position (sequential)."""
        if not choices:
            return None
        if not self.sequential:
            users, pos, neg = [], [], []
            for user, chosen, rejected in choices:
                users += [user] * len(rejected)
                pos += [chosen] * len(rejected)
                neg += list(rejected)
            return Interaction({self.USER_ID: torch.as_tensor(users),
                                self.ITEM_ID: torch.as_tensor(pos),
                                self.config["NEG_PREFIX"] + self.ITEM_ID: torch.as_tensor(neg)})
        seqs, targets = [], []
        for user, chosen, _ in choices:
            history = self.histories[user].tolist()
            at = int(rng.integers(0, len(history) + 1))
            new = history[:at] + [chosen] + history[at:]
            for t in range(max(at, 1), len(new)):  # only prefixes the insertion changes
                seqs.append(new[max(0, t - self.max_len):t])
                targets.append(new[t])
        batch = self._sequence_batch(seqs)
        batch.update(Interaction({self.ITEM_ID: torch.as_tensor(targets)}))
        return batch

    # --- RecBole contract -----------------------------------------------------------
    def calculate_loss(self, interaction):
        """The base model's loss on a batch of D' (the batch plus its share of
        augmented rows, drawn in proportion to their number)."""
        self._context_cache = None
        if self.augmented is not None and self.training:
            share = len(interaction) * len(self.augmented) / self.train_rows
            k = int(share) + int(self.rng.random() < share - int(share))
            if k:
                rows = torch.as_tensor(self.rng.integers(0, len(self.augmented), size=k))
                extra = self.augmented[rows].to(interaction[self.ITEM_ID].device)
                interaction = Interaction({f: torch.cat([interaction[f], extra[f]])
                                           for f in extra.columns})
        return self.base.calculate_loss(interaction)

    # RecBole checkpoints carry a model's cached outputs (other_parameter): the base's
    def other_parameter(self):
        return self.base.other_parameter()

    def load_other_parameter(self, para):
        self.base.load_other_parameter(para)

    def predict(self, interaction):
        if not self.rating_task:
            return self.base.predict(interaction)
        base_pred = self.base_rating(interaction)
        if not self.rerank:
            return base_pred.to(interaction[self.USER_ID].device)
        alpha = self.alpha[interaction[self.USER_ID].cpu()]
        out = alpha * self.llm_rating(interaction, base_pred) + (1 - alpha) * base_pred
        return out.to(interaction[self.USER_ID].device)

    @torch.no_grad()
    def llm_rerank(self, users, histories, scores) -> torch.Tensor:
        """Score rows whose top-N (base order) is re-ranked by aggregation."""
        masked = scores.clone()
        masked[:, 0] = float("-inf")
        if self.eval_history is not None:
            for row, u in enumerate(users):
                seen = self.eval_history[u]
                if seen is not None and len(seen):
                    masked[row, torch.as_tensor(list(seen), dtype=torch.long)] = float("-inf")
        top = masked.topk(self.topn, dim=1).indices
        prompts, perms = [], []
        for row, u in enumerate(users):
            prompt, perm = self._ranking_prompt("next_item", u, histories[row], top[row].tolist(),
                                                self.config["seed"] * 1_000_003 + u)
            prompts.append(prompt)
            perms.append(perm)
        shown_logp = answer_distribution(self.llm, self.tokenizer, prompts, self.label_ids[:self.topn],
                                         self.config["llm_max_prompt_tokens"],
                                         self.config["llm_eval_batch_size"])
        llm_scores = torch.empty_like(shown_logp)
        for row, perm in enumerate(perms):  # label k shows candidate perm[k] (base position)
            llm_scores[row, torch.as_tensor(perm)] = shown_logp[row]
        order = aggregate_order(llm_scores, self.alpha[torch.as_tensor(users)],
                                self.config["utility_c"])
        out = scores.clone()
        above = scores.max() + torch.arange(self.topn, 0, -1, dtype=out.dtype)  # over every item
        for row in range(len(users)):
            out[row, top[row][order[row]]] = above
        return out

    def full_sort_predict(self, interaction):
        scores = self.base.full_sort_predict(interaction).view(len(interaction), -1)
        if not self.rerank:
            return scores
        users = interaction[self.USER_ID].tolist()
        if self.sequential:
            seq, lengths = interaction[self.ITEM_SEQ].cpu(), interaction[self.ITEM_SEQ_LEN].cpu()
            histories = [seq[r, :lengths[r]].numpy() for r in range(len(users))]
        else:
            histories = [self.histories[u] for u in users]
        out = self.llm_rerank(users, histories, scores.float().cpu())
        return out.to(scores.device)
