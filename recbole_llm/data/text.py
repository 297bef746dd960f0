"""Item text and ordered user histories on top of RecBole's datasets.

Every LLM method needs a text per item (prompts, the text encoder) and each
user's history in time order.  Text is read from the raw ``.item`` atomic file
rather than from RecBole's feature tables: RecBole tokenises ``token_seq``
fields into ids, may truncate them (``seq_len``) and would turn text fields
into model features of context-aware models.  Reading the file keeps the text
exact and leaves the features a baseline sees unchanged.
"""
import os

import numpy as np
import pandas as pd
from recbole.data.dataset import Dataset, SequentialDataset

from recbole_llm.data.atomic import AtomicFileError, atomic_path, read_header
from recbole_llm.data.history import Timeline


class ItemTextMixin:
    """Adds ``item_texts()`` and ``user_histories()`` to a RecBole dataset.

    Settings: ``item_text_fields`` (list of ``.item`` fields, in order),
    ``item_text_keyed`` (write ``field: value`` pairs or bare values).
    """

    def __init__(self, config):
        self._check_text_fields(config)
        self._text_cache = {}  # shared by the split copies RecBole makes (shallow copies)
        super().__init__(config)

    @staticmethod
    def _check_text_fields(config):
        fields = config["item_text_fields"]
        if not fields:
            raise ValueError(
                f"dataset '{config['dataset']}': item_text_fields is empty; name the .item "
                "fields that describe an item (e.g. item_text_fields: [title, categories]) "
                "in properties/dataset/<name>.yaml or on the command line")
        path = atomic_path(config, "item")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"dataset '{config['dataset']}': item text needs {path}, which is missing")
        header = read_header(path, config["field_separator"], config["encoding"] or "utf-8")
        missing = [f for f in fields if f not in header]
        if missing:
            raise AtomicFileError(
                f"{path}: item_text_fields names {missing}, which the file does not have "
                f"(its fields: {list(header)})")
        if config["ITEM_ID_FIELD"] not in header:
            raise AtomicFileError(f"{path}: no '{config['ITEM_ID_FIELD']}' column")

    def _item_frame(self):
        """The raw ``.item`` file as strings, one row per item of this dataset."""
        if "frame" not in self._text_cache:
            config = self.config
            frame = pd.read_csv(atomic_path(config, "item"), sep=config["field_separator"],
                                dtype=str, header=0, keep_default_na=False,
                                encoding=config["encoding"] or "utf-8")
            frame.columns = [c.split(":", 1)[0] for c in frame.columns]
            ids = frame[self.iid_field].map(self.field2token_id[self.iid_field])
            frame = frame[ids.notna()].assign(_iid=ids[ids.notna()].astype(np.int64))
            self._text_cache["frame"] = frame
        return self._text_cache["frame"]

    def item_field_values(self, field: str) -> list:
        """Each item's raw tokens of one ``.item`` field (``_`` read as space)."""
        frame = self._item_frame()
        if field not in frame:
            raise AtomicFileError(f"{atomic_path(self.config, 'item')}: no field '{field}' "
                                  f"(its fields: {[c for c in frame.columns if c != '_iid']})")
        values = [[] for _ in range(self.item_num)]
        for item, value in zip(frame["_iid"], frame[field]):
            values[item] = [v.replace("_", " ") for v in value.split(self.config["seq_separator"] or " ") if v]
        return values

    def distinctive_field_values(self, field: str, max_share: float) -> list:
        """Each item's values of ``field`` less those more than ``max_share`` of all
        items hold (on Beauty every item is in "Beauty": a value that names
        every item tells nothing about one)."""
        values = self.item_field_values(field)
        counts = {}
        for item_values in values[1:]:
            for v in set(item_values):
                counts[v] = counts.get(v, 0) + 1
        common = {v for v, n in counts.items() if n > max_share * (len(values) - 1)}
        return [[v for v in item_values if v not in common] for item_values in values]

    def _load_item_texts(self):
        config = self.config
        fields = list(config["item_text_fields"])
        keyed = config["item_text_keyed"] if config["item_text_keyed"] is not None else True
        frame = self._item_frame()
        texts = [""] * self.item_num
        for row in frame[["_iid"] + fields].itertuples(index=False):
            parts = []
            for name, value in zip(fields, row[1:]):
                value = " ".join(value.replace("_", " ").split())
                if value:
                    parts.append(f"{name}: {value}" if keyed else value)
            texts[row[0]] = "; ".join(parts)
        path = atomic_path(config, "item")
        missing = sum(1 for t in texts[1:] if not t)
        if missing:
            self.logger.warning(f"{missing} of {self.item_num - 1} items have no text in {path}")
        return texts

    def _set_label_by_threshold(self):
        # Runs before RecBole normalises float fields (ratings become 0..1) or
        # turns them into labels and drops them: keep the raw values here.
        field = self.config["RATING_FIELD"]
        if field and field in self.inter_feat:
            frame = self.inter_feat[[self.uid_field, self.iid_field, field]]
            table = frame.groupby([self.uid_field, self.iid_field])[field].mean()
            self._text_cache["ratings"] = {(int(u), int(i)): float(r) for (u, i), r in table.items()}
            # per row: keyed by time below, and the CTR timeline's
            self._row_ratings = frame[field].to_numpy(dtype=np.float64)
        super()._set_label_by_threshold()

    def _discretization(self):
        """After RecBole's last change to the time field (normalised, maybe
        bucketed): each interaction's raw rating keyed by (user, item, time) as
        the time reaches the splits, so one split's ratings can be told apart."""
        super()._discretization()
        raw = getattr(self, "_row_ratings", None)
        if raw is None or not self.time_field or self.time_field not in self.inter_feat:
            return
        frame = pd.DataFrame({"u": self.inter_feat[self.uid_field].to_numpy(),
                              "i": self.inter_feat[self.iid_field].to_numpy(),
                              "t": [_time_key(t) for t in self.inter_feat[self.time_field]],
                              "r": raw})
        rows = frame.groupby(["u", "i", "t"])["r"].mean()
        self._text_cache["rating_rows"] = {(int(u), int(i), t): float(r)
                                           for (u, i, t), r in rows.items()}

    def content_fingerprint_parts(self):
        """What ``recbole_llm.fingerprint.dataset_fingerprint`` adds for text
        datasets: the item text and the raw ratings, which RecBole's feature
        tables do not hold."""
        import json

        yield json.dumps(self.item_texts()).encode()
        ratings = self._text_cache.get("ratings")
        if ratings:
            yield json.dumps(sorted(ratings.items())).encode()

    def has_ratings(self) -> bool:
        return self._text_cache.get("ratings") is not None

    def rating_of(self, user: int, item: int, time=None) -> float:
        """The raw rating of a (user, item) interaction, NaN if unknown; with
        ``time`` that interaction's own, else the mean over every interaction of
        the pair in any split (shared by the split copies of the dataset: use
        :meth:`split_ratings` for one split's)."""
        ratings = self._text_cache.get("ratings")
        if ratings is None:
            raise ValueError(f"dataset '{self.config['dataset']}' kept no ratings: it needs a "
                             f"'{self.config['RATING_FIELD']}' field in load_col")
        rows = self._text_cache.get("rating_rows")
        if time is not None and rows is not None:
            return rows.get((int(user), int(item), _time_key(time)), float("nan"))
        return ratings.get((int(user), int(item)), float("nan"))

    def split_ratings(self) -> dict:
        """``{(user, item): raw rating}`` of this split's interactions only (mean
        over a pair's repeats within the split; a sequential split's rows add
        their prefixes' items, for the training split training interactions too),
        so a prompt built from the training split never shows a rating given later."""
        if not self.has_ratings():
            return {}
        items, times, _ = self.timed_histories()
        list_field = getattr(self, "item_id_list_field", None)
        time_list = f"{self.time_field}{self.config['LIST_SUFFIX']}" if self.time_field else None
        inter = self.inter_feat
        if list_field and list_field in inter and time_list in inter:  # sequential rows
            lengths = np.asarray(inter[self.item_list_length_field])
            users = np.asarray(inter[self.uid_field])
            seqs, seq_times = np.asarray(inter[list_field]), np.asarray(inter[time_list])
            extra_items = [[] for _ in range(self.user_num)]
            extra_times = [[] for _ in range(self.user_num)]
            for row in np.flatnonzero(lengths > 0):  # a prefix's items are this split's too
                n = lengths[row]
                extra_items[users[row]].extend(seqs[row, :n].tolist())
                extra_times[users[row]].extend(seq_times[row, :n].tolist())
            items = [np.concatenate([i, np.asarray(e, dtype=np.int64)])
                     for i, e in zip(items, extra_items)]
            times = [np.concatenate([t, np.asarray(e, dtype=t.dtype)])
                     for t, e in zip(times, extra_times)]
        pairs = {}
        for u, (its, ts) in enumerate(zip(items, times)):
            for i, t in set(zip(its.tolist(), ts.tolist())):
                r = self.rating_of(u, i, t if self.time_field else None)
                if not np.isnan(r):
                    pairs.setdefault((u, i), []).append(r)
        return {k: float(np.mean(v)) for k, v in pairs.items()}

    def item_texts(self) -> list:
        """Text of every item, indexed by RecBole's internal item id (0 = padding)."""
        if "items" not in self._text_cache:
            self._text_cache["items"] = self._load_item_texts()
        return self._text_cache["items"]

    def user_histories(self) -> list:
        """Each user's items in time order, indexed by internal user id (see
        :func:`user_histories`)."""
        return user_histories(self)

    def timed_histories(self) -> tuple:
        """``(items, times, ratings)``: per user (internal id), the interactions of
        this dataset (or split) in time order, their times and raw ratings (NaN
        where unknown).  Without a time field, rows keep their file order."""
        items, times, per_user, timed = _time_ordered(self)
        return ([items[s] for s in per_user], [times[s] for s in per_user],
                [np.array([self.rating_of(u, i, t if timed else None)
                           for i, t in zip(items[s].tolist(), times[s].tolist())])
                 if self.has_ratings() else np.full(s.stop - s.start, np.nan)
                 for u, s in enumerate(per_user)])


def _time_ordered(dataset) -> tuple:
    """``(items, times, per-user slices, timed)`` of any RecBole dataset's rows,
    sorted by user then time (file order without a time field)."""
    inter = dataset.inter_feat
    users = np.asarray(inter[dataset.uid_field])
    items = np.asarray(inter[dataset.iid_field]).astype(np.int64)
    timed = bool(dataset.time_field and dataset.time_field in inter)
    times = np.asarray(inter[dataset.time_field]) if timed else np.arange(len(users))
    order = np.lexsort((times, users))
    users, items, times = users[order], items[order], times[order]
    bounds = np.searchsorted(users, np.arange(dataset.user_num + 1))
    return items, times, [slice(bounds[u], bounds[u + 1]) for u in range(dataset.user_num)], timed


def user_histories(dataset) -> list:
    """Each user's items in time order, indexed by internal user id, for any
    RecBole dataset (the plugin's or RecBole's own).

    On a split dataset (``train_data.dataset``) this holds only that split's
    interactions.  For sequential datasets, whose rows are (prefix, target)
    pairs, a user's history is its longest prefix plus that target, so it is
    capped at ``MAX_ITEM_LIST_LENGTH + 1`` items.
    """
    inter = dataset.inter_feat
    list_field = getattr(dataset, "item_id_list_field", None)
    if list_field and list_field in inter:
        users = np.asarray(inter[dataset.uid_field])
        items = np.asarray(inter[dataset.iid_field])
        lengths = np.asarray(inter[dataset.item_list_length_field])
        seqs = np.asarray(inter[list_field])
        histories = [np.zeros(0, dtype=np.int64) for _ in range(dataset.user_num)]
        best = {}
        for row, (u, n) in enumerate(zip(users, lengths)):
            if n >= best.get(u, (-1, -1))[0]:
                best[u] = (n, row)
        for u, (n, row) in best.items():
            histories[u] = np.append(seqs[row, :n], items[row]).astype(np.int64)
        return histories
    items, _, per_user, _ = _time_ordered(dataset)
    return [items[s] for s in per_user]


def _time_key(t) -> float:
    """A time as RecBole's tensors hold it (float32), so a split's value finds
    the value the full table held."""
    return float(np.float32(t))


class TextDataset(ItemTextMixin, Dataset):
    """General / context-aware dataset with item text."""


class SequentialTextDataset(ItemTextMixin, SequentialDataset):
    """Sequential dataset with item text."""


class CTRTextDataset(TextDataset):
    """CTR dataset with item text; ``rating_of`` keeps the ratings RecBole
    turns into 0/1 labels (``threshold``) and then deletes, and ``timeline()``
    the whole interaction table, taken before any row is dropped
    (``min_history``) or split off, for histories read as features."""

    def __init__(self, config):
        self._row_ratings = None
        super().__init__(config)
        frame = self.inter_feat
        times = frame[self.time_field] if self.time_field and self.time_field in frame \
            else np.arange(len(frame))
        ratings = self._row_ratings if self._row_ratings is not None and \
            len(self._row_ratings) == len(frame) else np.full(len(frame), np.nan)
        self._text_cache["timeline"] = Timeline(frame[self.uid_field], frame[self.iid_field],
                                                times, ratings, self.user_num)

    def timeline(self) -> Timeline:
        """Every interaction of the dataset before filtering and splitting (shared by
        the split copies), with per-interaction raw ratings."""
        return self._text_cache["timeline"]

    def content_fingerprint_parts(self):
        yield from super().content_fingerprint_parts()
        yield self.timeline().fingerprint_bytes()


def text_dataset(config):
    """The text dataset matching the run's model type (for wrapper models
    such as Llama4Rec, whose type is that of the model they wrap)."""
    from recbole.utils import ModelType

    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        return SequentialTextDataset(config)
    return TextDataset(config)
