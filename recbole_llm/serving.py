"""Recommendations from a trained checkpoint, and a pre-computed top-K per user.

:func:`load` (``recbole_llm.load``) turns any checkpoint the plugin's or
RecBole's trainer wrote (with the plugin imported) into a
:class:`Recommender` whose ``recommend(user=... | history=[...], k)``
answers raw item ids (the atomic files' tokens) with scores, ranked by the
model's own full-sort prediction, the user's items left out.  Generative
models rank the items their beam search found (codes mapped back to items);
when a top-K cache was built for the same model and data (below), a user's
request is answered from it.

Beam search over a large LLM is too slow to run per request; SCRec's paper
runs it once per user ahead of time and answers requests from that cache.
:class:`TopKCache` does this for any model with ``recommend(item_seq,
item_len, top_k)`` (SCRec, EAGERLLM): ``build()`` decodes every user's
latest history (all interactions the dataset holds, the last
``MAX_ITEM_LIST_LENGTH``) through the plugin cache, resumable chunk by chunk,
and ``topk(user)`` answers raw item ids with scores.  The cache key holds
the model's weights and settings and the dataset's content, so a retrained
model or changed data never reads a stale top-K.

    python -m recbole_llm.serving build --checkpoint=saved/SCRec-....pth
    python -m recbole_llm.serving topk --checkpoint=saved/SCRec-....pth --user=A2V5... --k=10
"""
import os
import sys
import time

import numpy as np
import torch

from recbole_llm.data.text import user_histories
from recbole_llm.errors import InputError
from recbole_llm.fingerprint import dataset_fingerprint, module_fingerprint
from recbole_llm.llm.cache import Cache

# Keys RecBole's Config derives itself: not passed back when a checkpoint's
# settings rebuild its model.
_DERIVED = {"MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
            "valid_neg_sample_args", "test_neg_sample_args", "config_files", "model", "dataset"}


def load_model(checkpoint: str, **overrides):
    """``(config, dataset, model)`` of a plugin checkpoint: its saved settings
    (``overrides`` on top, e.g. ``use_gpu=False``) rebuild the dataset and
    the model, then its weights load."""
    config, dataset, _, model = load_model_and_data(checkpoint, **overrides)
    return config, dataset, model


def load_data_and_model(model_file: str):
    """RecBole's ``load_data_and_model`` for any model, plugin or RecBole:
    ``(config, model, dataset, train_data, valid_data, test_data)``, the
    splits rebuilt from the checkpoint's settings (RecBole's own reads a
    pickled ``Config`` and knows RecBole's models only)."""
    config, dataset, (train, valid, test), model = load_model_and_data(model_file)
    return config, model, dataset, train, valid, test


def load_model_and_data(checkpoint: str, **overrides):
    """``(config, dataset, (train, valid, test), model)``: see :func:`load_model`."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build
    from recbole_llm.trainer import load_checkpoint, saved_settings

    saved = load_checkpoint(checkpoint)
    meta = saved.get("config") or {}
    if "final_config_dict" not in meta:
        raise InputError(f"{checkpoint} holds no settings: train it with run_recbole_llm.py")
    settings = {k: v for k, v in meta["final_config_dict"].items() if k not in _DERIVED}
    path = settings.get("data_path")
    if path and os.path.basename(os.path.normpath(path)) == meta["dataset"]:
        settings["data_path"] = os.path.dirname(os.path.normpath(path))  # RecBole appends it
    sampling = settings.get("train_neg_sample_args")
    if isinstance(sampling, dict) and sampling.get("distribution") == "none":
        settings["train_neg_sample_args"] = None  # RecBole's spelling of "no sampling"
    # settings whose default changed: a checkpoint without one was trained with the old value
    settings = saved_settings(meta["model"], settings)
    settings.update(overrides)
    config = Config(model=meta["model"], dataset=meta["dataset"], config_dict=settings, argv=[])
    dataset, splits, model, _ = build(config)
    model.load_state_dict(saved["state_dict"])
    model.load_other_parameter(saved.get("other_parameter"))  # e.g. Pop's counts
    model.eval()
    return config, dataset, splits, model


class TopKCache:
    """Each user's top ``num_beams`` items (all that beam search finds, at the cost
    of any fewer), computed once and stored in the plugin cache under the
    model's and the data's fingerprints."""

    def __init__(self, model, dataset, cache: Cache = None):
        s = model.settings
        self.model, self.dataset = model, dataset
        self.k = s.num_beams
        self.cache = cache or model.cache
        self.key = self.cache.key("serving-topk", model=module_fingerprint(model),
                                  settings=s.key_parts(memo_dir=self.cache.root),
                                  data=dataset_fingerprint(dataset), k=self.k,
                                  history=model.max_seq_length)
        self._table = None

    def histories(self) -> list:
        """Each user's last ``MAX_ITEM_LIST_LENGTH`` items (internal ids, time order)."""
        n = self.model.max_seq_length
        return [h[-n:] for h in user_histories(self.dataset)]

    def is_built(self) -> bool:
        return self.cache.has_arrays(self.key)

    def build(self, batch_size: int = None, show_progress: bool = True) -> dict:
        """Decode every user with a history; returns the build statistics (the time
        of this call: a build resumed after a kill counts only what it decoded)."""
        if self.is_built():
            return self._load()["stats"]
        histories = self.histories()
        users = [u for u in range(1, len(histories)) if len(histories[u])]
        batch_size = batch_size or self.model.settings.beam_batch_size
        n = self.model.max_seq_length

        def decode(chunk):
            seq = torch.zeros((len(chunk), n), dtype=torch.long)
            lens = torch.zeros(len(chunk), dtype=torch.long)
            for row, u in enumerate(chunk):
                h = histories[u]
                seq[row, :len(h)] = torch.as_tensor(h)
                lens[row] = len(h)
            device = self.model.item_codes.device
            items, scores = self.model.recommend(seq.to(device), lens.to(device), self.k)
            return [[i, s] for i, s in zip(items.tolist(), scores.float().tolist())]

        start = time.perf_counter()
        rows = self.cache.map_batches(f"{self.key}-rows", users, decode, batch_size,
                                      desc="top-K per user", show_progress=show_progress)
        seconds = time.perf_counter() - start
        items = np.zeros((len(histories), self.k), dtype=np.int64)
        scores = np.full((len(histories), self.k), -np.inf, dtype=np.float32)
        for u, (i, s) in zip(users, rows):
            items[u], scores[u] = i, s
        stats = {"users": len(users), "k": self.k, "seconds": round(seconds, 3),
                 "seconds_per_1k_users": round(1000 * seconds / max(len(users), 1), 3)}
        self.cache.save_arrays(self.key, items=items, scores=scores)
        self.cache.save_json(self.key, stats)
        return stats

    def _load(self) -> dict:
        if self._table is None:
            if not self.is_built():
                raise InputError("no top-K cache for this model and data: build it first "
                                 "(python -m recbole_llm.serving build --checkpoint=...)")
            arrays = self.cache.load_arrays(self.key)
            self._table = {"items": arrays["items"], "scores": arrays["scores"],
                           "stats": self.cache.load_json(self.key)}
        return self._table

    def topk(self, user, k: int = None) -> list:
        """``[(raw item id, score), ...]``: a raw user id's top ``k`` (at most
        ``num_beams``), best first."""
        table = self._load()
        k = k or self.k
        if k > self.k:
            raise InputError(f"k={k} is more than num_beams={self.k}: beam search finds only "
                             "num_beams items")
        try:
            uid = int(self.dataset.token2id(self.dataset.uid_field, str(user)))
        except ValueError:
            raise InputError(f"unknown user {user!r}") from None
        tokens = self.dataset.id2token(self.dataset.iid_field, table["items"][uid, :k])
        return [(str(t), float(s)) for t, s, i in
                zip(tokens, table["scores"][uid, :k], table["items"][uid, :k]) if i > 0]


class Recommender:
    """A trained model answering requests in raw ids (see the module's docstring)."""

    def __init__(self, config, dataset, model):
        from recbole.utils import ModelType

        self.config, self.dataset, self.model = config, dataset, model
        self.model_type = config["MODEL_TYPE"]
        if self.model_type in (ModelType.CONTEXT, ModelType.DECISIONTREE):
            raise InputError(f"{config['model']} is a {self.model_type.name.lower()} model: it "
                             "scores given (user, item) rows and ranks no catalogue; recommend() "
                             "serves models that rank every item (general, sequential, "
                             "knowledge-aware, traditional)")
        self.sequential = self.model_type == ModelType.SEQUENTIAL
        self.histories = user_histories(dataset)  # every interaction the dataset holds
        self.topk_cache = None
        if hasattr(model, "recommend") and hasattr(model, "settings"):  # generative
            cache = TopKCache(model, dataset)
            self.topk_cache = cache if cache.is_built() else None

    def _user_id(self, user) -> int:
        try:
            return int(self.dataset.token2id(self.dataset.uid_field, str(user)))
        except ValueError:
            raise InputError(f"unknown user {user!r}") from None

    def _item_ids(self, history) -> list:
        try:
            return [int(i) for i in np.atleast_1d(
                self.dataset.token2id(self.dataset.iid_field, [str(t) for t in history]))]
        except ValueError as err:
            raise InputError(f"unknown item in history: {err}") from None

    def _interaction(self, uid: int, items: list):
        from recbole.data.interaction import Interaction

        fields = {self.dataset.uid_field: torch.tensor([uid])}
        if self.sequential:
            n = self.model.max_seq_length
            items = items[-n:]
            seq = torch.zeros((1, n), dtype=torch.long)
            seq[0, :len(items)] = torch.as_tensor(items, dtype=torch.long)
            fields[self.model.ITEM_SEQ] = seq
            fields[self.model.ITEM_SEQ_LEN] = torch.tensor([len(items)])
        return Interaction(fields).to(self.config["device"])

    def recommend(self, user=None, history=None, k: int = 10, exclude_seen: bool = True) -> list:
        """``[(raw item id, score), ...]``, best first: the next items for a raw
        ``user`` id (after all its interactions in the data), or for ``history``,
        raw item ids oldest first (sequential models; a user given too names
        whose history it is).  ``exclude_seen``: leave out the items of that
        history, as RecBole's evaluation does."""
        if user is None and history is None:
            raise InputError("recommend() takes user=RAW_ID or history=[RAW_ITEM_ID, ...]")
        if isinstance(history, (str, bytes)):
            raise InputError("history is a list of raw item ids, oldest first, not one string")
        if history is not None and not self.sequential:
            raise InputError(f"{self.config['model']} is a general model: it recommends for a "
                             "known user, not for an item history")
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        uid = self._user_id(user) if user is not None else 0
        items = (self._item_ids(history) if history is not None
                 else self.histories[uid].tolist())
        if history is None and self.topk_cache is not None and k <= self.topk_cache.k:
            answer = self.topk_cache.topk(user, self.topk_cache.k)
            if exclude_seen:  # beam search may return items of the history
                seen = {str(t) for t in np.atleast_1d(
                    self.dataset.id2token(self.dataset.iid_field, items))} if items else set()
                answer = [a for a in answer if a[0] not in seen]
            return answer[:k]
        if self.sequential and not items:
            raise InputError(f"user {user!r} has no interaction to continue")
        self.model.eval()
        with torch.no_grad():
            scores = self.model.full_sort_predict(self._interaction(uid, items))
        scores = scores.reshape(-1)[: self.dataset.item_num].float().cpu().clone()
        scores[0] = -torch.inf  # padding
        if exclude_seen and items:
            scores[torch.as_tensor(items)] = -torch.inf
        top = torch.topk(scores, min(k, len(scores)))
        keep = torch.isfinite(top.values)  # beam search scores only the items it found
        ids, values = top.indices[keep].numpy(), top.values[keep].tolist()
        tokens = self.dataset.id2token(self.dataset.iid_field, ids)
        return [(str(t), float(v)) for t, v in zip(np.atleast_1d(tokens), values)]


def load(checkpoint: str, **overrides) -> Recommender:
    """A :class:`Recommender` from a checkpoint (``overrides``: settings such as
    ``use_gpu=False``)."""
    return Recommender(*load_model(checkpoint, **overrides))


def main(argv=None) -> int:
    """``build`` or ``topk`` from the command line; exit 2 on bad input."""
    from recbole_llm.options import parse_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("build", "topk"):
        print("usage: python -m recbole_llm.serving build --checkpoint=PATH | "
              "topk --checkpoint=PATH --user=RAW_ID [--k=K]", file=sys.stderr)
        return 2
    try:
        options = parse_argv(argv[1:])
        checkpoint = options.pop("checkpoint", None)
        if not checkpoint:
            raise InputError("--checkpoint=PATH is required")
        k = options.pop("k", None)
        user = options.pop("user", None)
        if argv[0] == "topk" and user is None:
            raise InputError("topk needs --user=RAW_ID")
        _, dataset, model = load_model(checkpoint, **options)
        store = TopKCache(model, dataset)
        if argv[0] == "build":
            stats = store.build(show_progress=True)
            print(f"top-{stats['k']} of {stats['users']} users in {stats['seconds']:.1f} s "
                  f"({stats['seconds_per_1k_users']:.2f} s per 1,000 users)")
        else:
            store.topk(user, 1)  # the table loads once; a lookup is what is timed
            start = time.perf_counter()
            answer = store.topk(user, int(k) if k else None)
            ms = 1000 * (time.perf_counter() - start)
            for item, score in answer:
                print(f"{item}\t{score:.4f}")
            print(f"({ms:.2f} ms)", file=sys.stderr)
    except (InputError, FileNotFoundError) as err:
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
