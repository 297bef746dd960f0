"""Llama4Rec (arXiv 2401.13870): an LLM and a conventional model augmenting each other.

Paper: "Integrating Large Language Models into Recommendation via Mutual
Augmentation and Adaptive Aggregation", https://arxiv.org/abs/2401.13870.

Llama4Rec wraps one of RecBole's own models (``base_model``: BPR, LightGCN,
SASRec, ... any general or sequential model) and takes its type, so RecBole
builds the same dataset, split and dataloaders as for the base model alone.
The four parts of the method, and where they live:

* instruction tuning of the LLM on the dataset's own tasks (next-item choice
  and listwise ranking of candidates, rating prediction), prompts written
  from item names: ``samples.py``, tuned by ``trainer.py``;
* data augmentation: the tuned LLM (local backbone or an OpenAI-compatible
  server, answers cached) picks the item a sampled user prefers among
  un-interacted candidates; the choices become extra (u, i+, i-) triples
  (general models) or an item inserted into the user's sequence (sequential
  models), and the base model trains on D' = D U augmented:
  :meth:`Llama4Rec.augment`, :meth:`Llama4Rec.calculate_loss`, ``samples.py``;
* prompt augmentation: prompts carry the history of the most similar user
  (cosine of the base model's user representations, faiss) and the base
  model's top items: :meth:`Llama4Rec.context`, ``wrapped.py``;
* adaptive aggregation: the LLM re-ranks the base model's top-N; utilities
  ``alpha_u * U_llm + (1 - alpha_u) * U_base`` with ``U = -rank`` and
  ``alpha_u`` from the user's long-tail coefficient: ``aggregation.py``,
  :meth:`Llama4Rec.full_sort_predict`.

The training phases run in ``trainer.py`` (:class:`Llama4RecTrainer`).
"""
import hashlib

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import ModelType, init_seed

from recbole_llm import registry
from recbole_llm.errors import InputError
from recbole_llm.llm.backbone import answer_token_ids
from recbole_llm.llm.prompts import answer_distribution
from recbole_llm.model.abstract import LLMRecommender
from recbole_llm.model.llama4rec import samples
from recbole_llm.model.llama4rec.aggregation import aggregate_order, long_tail_alpha
from recbole_llm.model.llama4rec.prompts import LABELS, RATING_WORDS, PromptWriter, parse_choice
from recbole_llm.model.llama4rec.settings import Llama4RecSettings
from recbole_llm.model.llama4rec.wrapped import (WrappedModel, forget_cached_outputs,
                                                 load_state_arrays, most_similar_users,
                                                 state_arrays)
from recbole_llm.model.rating import RatingRegressionMixin
from recbole_llm.paths import recbole_model_yaml


class Llama4Rec(LLMRecommender, AbstractRecommender):
    """RecBole model wrapping ``base_model``; see the module docstring."""

    type = ModelType.GENERAL  # replaced by the base model's type (specialise)
    wraps_base_model = True
    settings_class = Llama4RecSettings
    _specialised = {}

    @classmethod
    def specialise(cls, base_name):
        """``(class, [RecBole's yaml of the base])``: Llama4Rec with the base's
        type and input type, so RecBole builds the base model's data pipeline."""
        if not base_name:
            raise ValueError("Llama4Rec needs base_model: a RecBole general or sequential model, "
                             "e.g. --base_model=LightGCN")
        base = registry.get_model_class(base_name)
        regression = issubclass(base, RatingRegressionMixin)
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
        return cls._specialised[key], recbole_model_yaml(base_name)

    @classmethod
    def inert_settings(cls, final: dict) -> dict:
        """Settings the final configuration leaves without effect, each with why
        (a search over one of them would run identical trials)."""
        if not final.get("adaptive_alpha", True):
            why = "is not used with adaptive_alpha False (fixed_alpha is)"
            return {k: why for k in ("alpha1", "alpha2", "alpha_search", "alpha_grid",
                                     "long_tail_transform")}
        inert = {"fixed_alpha": "is used only with adaptive_alpha False"}
        if final.get("alpha_search", False):
            why = "is replaced by the alpha search over alpha_grid: set alpha_search False"
            inert.update(alpha1=why, alpha2=why)
        else:
            inert["alpha_grid"] = "is searched only with alpha_search True"
        return inert

    @classmethod
    def check_settings(cls, final: dict) -> None:
        """The LLM re-ranks full rankings (or predicts ratings): sampled ranking
        evaluation would score the base model alone, so it is refused."""
        mode = (final.get("eval_args") or {}).get("mode", "full")
        modes = set(mode.values()) if isinstance(mode, dict) else {mode}
        if final.get("MODEL_TYPE") != ModelType.CONTEXT and modes - {"full"}:
            raise InputError(f"Llama4Rec re-ranks the base model's full ranking; eval_args mode "
                             f"{mode} (sampled candidates) would score the base model alone: "
                             "use mode: full")
        from recbole.utils import InputType
        if not 2 <= final.get("aug_candidates", 2) <= len(LABELS):
            raise InputError(f"aug_candidates must lie in [2, {len(LABELS)}] (one label each), "
                             f"got {final['aug_candidates']}")
        base = final.get("base_model")
        if final.get("data_augmentation") and base and final.get("MODEL_TYPE") != ModelType.CONTEXT:
            base_class = registry.get_model_class(base)
            pointwise = getattr(base_class, "input_type", None) == InputType.POINTWISE
            if pointwise or (final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
                             and final.get("loss_type") == "BPR"):
                raise InputError(f"data augmentation adds (u, i+, i-) triples for pairwise "
                                 f"general bases and inserted items for sequential bases with "
                                 f"cross-entropy loss; base_model {base}"
                                 + (" is pointwise" if pointwise else " with loss_type BPR")
                                 + ": set data_augmentation: False")

    def __init__(self, config, dataset):
        super().__init__()
        s = self.read_settings(config)
        self.config, self.dataset = config, dataset  # the base model is built from RecBole's config
        self.USER_ID, self.ITEM_ID = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.NEG_ITEM_ID = config["NEG_PREFIX"] + self.ITEM_ID
        self.n_users, self.n_items = dataset.user_num, dataset.item_num
        self.sequential = self.type == ModelType.SEQUENTIAL
        self.rating_task = self.type == ModelType.CONTEXT  # base_model is a rating regressor
        kind = "sequential" if self.sequential else "rating" if self.rating_task else "general"
        if self.sequential:
            self.ITEM_SEQ = self.ITEM_ID + config["LIST_SUFFIX"]
            self.ITEM_SEQ_LEN = config["ITEM_LIST_LENGTH_FIELD"]
        self.wrapped = WrappedModel(self, kind, self.USER_ID, getattr(self, "ITEM_SEQ", None),
                                    getattr(self, "ITEM_SEQ_LEN", None), s.MAX_ITEM_LIST_LENGTH)
        self.base_class = registry.get_model_class(s.base_model)
        self.base = self.base_class(config, dataset)
        self.train_rows = len(dataset.inter_feat)  # |D|, for the share of augmented rows
        self.rng = np.random.default_rng(s.seed)
        self.topn = s.rerank_topn
        if not self.rating_task and not 2 <= self.topn <= len(LABELS):
            raise ValueError(f"rerank_topn must lie in [2, {len(LABELS)}], got {self.topn}")

        self._histories(dataset)
        # (alpha1, alpha2) in use: the yaml's, or those the trainer picks on validation;
        # buffers, so a checkpoint serves with the pair it was chosen with
        self.register_buffer("alpha_pair", torch.tensor([s.alpha1, s.alpha2]))
        self.register_buffer("alpha", torch.zeros(self.n_users))
        self.set_alpha(s.alpha1, s.alpha2)
        self._llm_memo = None  # LLM outputs kept across evaluations (alpha search)

        self.writer = PromptWriter(self.item_names(dataset, s.prompt_item_field), s)
        llm, self.label_ids, _ = self.load_llm(self._corpus(), LABELS)
        self.rating_ids, _ = answer_token_ids(llm, self.tokenizer, RATING_WORDS,
                                              new_tokens=[f"[{w}]" for w in RATING_WORDS])
        self.tune_llm(llm, self.label_ids)
        self.writer.bind(self.tokenizer)  # names to their token cap; every prompt fits
        self.rerank = True           # the trainer switches it off while the base model trains
        self.eval_history = None     # uid -> items RecBole masks in this evaluation (general)
        self.augmented = None        # Interaction of D' \ D rows, set by augment()
        self.aug_stats = {}
        self._similar = None
        self.known_histories = None  # set while instruction samples are built
        self._served = {}            # uid -> history shown at evaluation (general bases)

    # --- data ------------------------------------------------------------
    def _histories(self, dataset):
        """Training items (time order), their ratings and each user's count."""
        self.histories = dataset.user_histories()
        users = np.asarray(dataset.inter_feat[dataset.uid_field])
        counts = np.bincount(users, minlength=self.n_users)
        if self.sequential:  # one row per target; the first item of a sequence is no target
            counts = counts + (counts > 0)
        self.counts = counts
        # raw ratings (not RecBole-normalised) of the training split's interactions only
        self.ratings = dataset.split_ratings() if dataset.has_ratings() else None

    def set_alpha(self, alpha1: float, alpha2: float) -> None:
        """Each user's weight of the LLM (``long_tail_alpha``; ``fixed_alpha`` for
        everyone when ``adaptive_alpha`` is off)."""
        s = self.settings
        alpha = (long_tail_alpha(self.counts, alpha1, alpha2, s.long_tail_transform)
                 if s.adaptive_alpha else np.full(self.n_users, s.fixed_alpha))
        self.alpha.copy_(torch.as_tensor(alpha, dtype=torch.float32))
        self.alpha_pair.copy_(torch.tensor([alpha1, alpha2]))

    def keep_llm_outputs(self, keep: bool) -> None:
        """While on, the LLM's output for a (user, candidates) or (user, item)
        question is computed once: alpha does not change it, so a search over
        alpha re-runs only the aggregation."""
        self._llm_memo = {} if keep else None

    def rated(self, user, items):
        """The user's raw training ratings of ``items`` (None without ratings)."""
        if self.ratings is None:
            return None
        return np.array([self.ratings.get((int(user), int(i)), np.nan) for i in items])

    def _corpus(self) -> list:
        filled = {k: "" for k in ("history", "candidates", "similar", "base", "target", "items")}
        texts = [t.format(**filled) for t in self.writer.templates.values()]
        texts += [self.writer.similar_text.format(items=""), self.writer.base_text.format(items="")]
        return [n for n in self.writer.names if n] + texts + [f"({r} stars)" for r in range(11)]

    # --- the base model ---------------------------------------------------
    def reset_base(self, dataset=None):
        """A freshly initialised base model (training on D' from scratch, or on
        ``dataset``: graph models take their graph from it)."""
        init_seed(self.settings.seed, self.config["reproducibility"])
        self.base = self.base_class(self.config, self.dataset if dataset is None else dataset
                                    ).to(self.device)
        self.forget_context()

    def base_arrays(self) -> dict:
        """The base model's weights as arrays (cached by the trainer)."""
        return state_arrays(self.base)

    def load_base_arrays(self, arrays: dict) -> None:
        load_state_arrays(self.base, arrays)
        self.forget_context()

    def load_base_state(self, state: dict) -> None:
        """Weights for the base model (a finished run's checkpoint)."""
        self.base.load_state_dict(state)
        forget_cached_outputs(self.base)
        self.forget_context()

    def base_rating(self, interaction) -> torch.Tensor:
        """The rating regressor's predictions (rating prediction)."""
        return self.wrapped.ratings(interaction)

    def base_scores(self, users, seqs=None) -> torch.Tensor:
        """Base model's score rows; ``seqs`` (sequential models): the histories
        to score from (default: each user's training history)."""
        if self.sequential:
            seqs = [self.wrapped.recent(h) for h in
                    (seqs if seqs is not None else [self.histories[u] for u in users])]
        return self.wrapped.scores(users, seqs)

    def context_histories(self) -> list:
        """The histories the base model knows: training histories, or while
        instruction samples are built, those less the held-out interactions
        (a sequential base encodes a user from them; the similar user's items
        shown come from them)."""
        return self.histories if self.known_histories is None else self.known_histories

    def most_similar_users(self) -> np.ndarray:
        """Per user, the other user with the most similar (cosine) base representation."""
        histories = self.context_histories()
        vectors = self.wrapped.user_vectors(histories, self.n_users)
        return most_similar_users(vectors, np.array([len(h) > 0 for h in histories]))

    # --- prompt augmentation -----------------------------------------------
    def context(self):
        """(most similar user per user) for the current base model, kept until
        the base model changes (:meth:`forget_context`)."""
        if self._similar is None and self.settings.prompt_augmentation:
            self._similar = self.most_similar_users()
        return self._similar

    def forget_context(self) -> None:
        """The base model's weights changed: similar users are recomputed when needed."""
        self._similar = None

    def augmentation(self, user, base_order):
        """(similar user's recent items, base model's top items) for a prompt."""
        similar = self.context()
        if similar is None:
            return (), ()
        s = self.settings
        return self.context_histories()[similar[user]][-s.prompt_similar_items:], \
            list(base_order[:s.prompt_base_items])

    def ranking_prompt(self, task, user, history, candidates_in_base_order, shuffle_seed):
        """Prompt with the candidates shuffled (the LLM must not read the base
        order off the list); returns (prompt, permutation)."""
        perm = np.random.default_rng(shuffle_seed).permutation(len(candidates_in_base_order))
        shown = [candidates_in_base_order[p] for p in perm]
        similar, base_top = self.augmentation(user, candidates_in_base_order)
        history = history[-self.settings.prompt_history_items:]
        prompt = self.writer.ranking(task, history, self.rated(user, history), shown,
                                     similar, base_top)
        return prompt, perm

    def rating_prompts(self, interaction, base_pred) -> list:
        """Prompts for (user, item) rows: the user's other training ratings in
        time order, the most similar user's items, the base model's rating."""
        s = self.settings
        users = interaction[self.USER_ID].tolist()
        items = interaction[self.ITEM_ID].tolist()
        prompts = []
        for u, i, pred in zip(users, items, base_pred.tolist()):
            history = self.histories[u]
            at = np.flatnonzero(history == i)
            history = history[:at[0]] if len(at) else history  # before the target, if trained on
            history = history[-s.prompt_history_items:]
            similar, base = (), None
            if self.context() is not None:
                similar = self.context_histories()[self.context()[u]][-s.prompt_similar_items:]
                base = pred
            prompts.append(self.writer.rating(history, self.rated(u, history), i, similar, (),
                                              base_rating=base))
        return prompts

    # --- the LLM ------------------------------------------------------------------
    def instruction_samples(self, rng) -> list:
        """(prompt, answer ids) to tune the LLM on (``samples.py``)."""
        return samples.instruction_samples(self, rng)

    def llm_state(self) -> dict:
        """The LLM's trainable weights (what instruction tuning changes)."""
        return {n: p.detach().cpu().numpy() for n, p in self.llm.named_parameters()
                if p.requires_grad}

    def load_llm_state(self, arrays: dict) -> None:
        self.llm.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()}, strict=False)

    @torch.no_grad()
    def llm_rating(self, interaction, base_pred) -> torch.Tensor:
        """Expected rating under the LLM's distribution over the rating tokens."""
        s = self.settings
        logp = answer_distribution(self.llm, self.tokenizer, self.rating_prompts(interaction, base_pred),
                                   self.rating_ids, s.llm_max_prompt_tokens, s.llm_eval_batch_size)
        return (logp.exp() * torch.arange(1, len(self.rating_ids) + 1, dtype=torch.float32)).sum(1)

    # --- data augmentation ------------------------------------------------------
    def augment(self, client, rng) -> dict:
        """Ask ``client`` (any :class:`~recbole_llm.llm.client.LLMClient`: a
        server or the local backbone generating text, or the local backbone
        choosing among the offered labels) for each sampled user's choice and
        build D' \\ D; an answer that names no valid candidate is dropped and counted."""
        jobs = samples.augmentation_prompts(self, rng)
        answers = client.complete([p for _, _, p in jobs],
                                  max_new_tokens=self.settings.aug_max_new_tokens)
        rows, dropped = [], 0
        for (user, cands, _), text in zip(jobs, answers):
            choice = parse_choice(text, len(cands), [self.writer.names[i] for i in cands])
            if choice is None:
                dropped += 1
                continue
            rows.append((user, cands[choice], [c for k, c in enumerate(cands) if k != choice]))
        self.augmented = samples.augmented_rows(self, rows, rng)
        self.aug_stats = {"prompts": len(jobs), "valid": len(rows), "dropped": dropped,
                          "rows": 0 if self.augmented is None else len(self.augmented)}
        return self.aug_stats

    def augmented_fingerprint(self) -> str:
        """Hash of the augmented rows (keys the conventional model trained on D')."""
        digest = hashlib.sha256()
        if self.augmented is not None:
            for field in sorted(self.augmented.columns):
                digest.update(field.encode())
                digest.update(self.augmented[field].numpy().tobytes())
        return digest.hexdigest()[:20]

    # --- RecBole contract -----------------------------------------------------------
    def calculate_loss(self, interaction):
        """The base model's loss on a batch of D' (the batch plus its share of
        augmented rows, drawn in proportion to their number)."""
        self.forget_context()
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
        base_pred = self.wrapped.ratings(interaction)
        if not self.rerank:
            return base_pred.to(interaction[self.USER_ID].device)
        alpha = self.alpha[interaction[self.USER_ID]].cpu()
        memo = self._llm_memo
        keys = [] if memo is None else list(zip(interaction[self.USER_ID].tolist(),
                                                interaction[self.ITEM_ID].tolist(),
                                                base_pred.tolist()))
        if memo is not None and all(k in memo for k in keys):
            llm = torch.stack([memo[k] for k in keys])
        else:
            llm = self.llm_rating(interaction, base_pred)
            if memo is not None:
                memo.update(zip(keys, llm))
        out = alpha * llm + (1 - alpha) * base_pred
        return out.to(interaction[self.USER_ID].device)

    def set_eval_history(self, history) -> None:
        """The items RecBole masks in the coming evaluation (uid -> items; None:
        sequential bases, or no evaluation); the served histories follow it."""
        self.eval_history, self._served = history, {}

    def served_history(self, user: int) -> np.ndarray:
        """A general base's user history at evaluation: the training items, then
        the items RecBole masks besides them (for the test split the validation
        item, which comes just before the test item under leave-one-out)."""
        history = self.histories[user]
        seen = None if self.eval_history is None else self.eval_history[user]
        if seen is None or not len(seen):
            return history
        if user not in self._served:
            known = set(history.tolist())
            later = [int(i) for i in seen if int(i) not in known]
            self._served[user] = np.concatenate([history, np.asarray(later, dtype=history.dtype)])
        return self._served[user]

    @torch.no_grad()
    def llm_rerank(self, users, histories, scores) -> torch.Tensor:
        """Score rows whose top-N (base order) is re-ranked by aggregation."""
        s = self.settings
        masked = scores.clone()
        masked[:, 0] = float("-inf")
        if self.eval_history is not None:
            for row, u in enumerate(users):
                seen = self.eval_history[u]
                if seen is not None and len(seen):
                    masked[row, torch.as_tensor(list(seen), dtype=torch.long)] = float("-inf")
        top = masked.topk(self.topn, dim=1).indices
        memo = self._llm_memo
        keys = [] if memo is None else [
            (u, tuple(np.asarray(histories[row][-s.prompt_history_items:]).tolist()),
             tuple(top[row].tolist())) for row, u in enumerate(users)]
        if memo is not None and all(k in memo for k in keys):
            llm_scores = torch.stack([memo[k] for k in keys])
        else:
            prompts, perms = [], []
            for row, u in enumerate(users):
                prompt, perm = self.ranking_prompt("next_item", u, histories[row],
                                                   top[row].tolist(), s.seed * 1_000_003 + u)
                prompts.append(prompt)
                perms.append(perm)
            shown_logp = answer_distribution(self.llm, self.tokenizer, prompts,
                                             self.label_ids[:self.topn], s.llm_max_prompt_tokens,
                                             s.llm_eval_batch_size)
            llm_scores = torch.empty_like(shown_logp)
            for row, perm in enumerate(perms):  # label k shows candidate perm[k] (base position)
                llm_scores[row, torch.as_tensor(perm)] = shown_logp[row]
            if memo is not None:
                memo.update(zip(keys, llm_scores))
        order = aggregate_order(llm_scores, self.alpha.cpu()[torch.as_tensor(users)], s.utility_c)
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
            histories = [self.served_history(u) for u in users]
        out = self.llm_rerank(users, histories, scores.float().cpu())
        return out.to(scores.device)
