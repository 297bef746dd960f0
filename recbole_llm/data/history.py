"""Histories as features: what each row's user did strictly before the row's time.

A CTR row's history is a feature, not a label: it is read from the whole
interaction table (every split), but only at times strictly before the
row's own, and never holds the row's own item.  :class:`Timeline` answers
that for any batch of rows.

The paper's minimum-history rule (drop samples with fewer than 5 earlier
interactions) is :func:`drop_rows_with_short_history`, a dataset-level
filter controlled by ``min_history``.  ``recbole_llm.quick_start.create_dataset``
applies it to every model's dataset, RecBole's own included, after RecBole's
filters and before the split, so a baseline given the same ``min_history``
is trained and tested on exactly the same rows.

Times are compared at float32, the precision RecBole gives a float field
once its table becomes an ``Interaction``: a row's time in a batch and the
same interaction's time here are then the same number.
"""
import numpy as np
import pandas as pd

from recbole_llm.errors import InputError


def row_times(values) -> np.ndarray:
    """Times as rows carry them after RecBole's ``build()`` (float32)."""
    values = values.numpy() if hasattr(values, "numpy") else np.asarray(values)
    return values.astype(np.float32)


def earlier_interaction_counts(users, items, times) -> np.ndarray:
    """Per row of a table: how many of its user's rows are strictly earlier and
    on another item (the length of the row's history in that table)."""
    frame = pd.DataFrame({"u": np.asarray(users), "i": np.asarray(items), "t": row_times(times)})
    # rank "min" - 1 = the number of rows of the group with a strictly smaller time
    earlier = frame.groupby("u")["t"].rank(method="min") - 1
    same_item = frame.groupby(["u", "i"])["t"].rank(method="min") - 1
    return (earlier - same_item).to_numpy(np.int64)


class Timeline:
    """Every interaction of a table, by user then time, with times and raw
    ratings (NaN where unknown); ``user_num`` users (internal ids)."""

    def __init__(self, users, items, times, ratings, user_num: int):
        users = np.asarray(users, dtype=np.int64)
        times = row_times(times)
        order = np.lexsort((times, users))
        self.users, self.times = users[order], times[order]
        self.items = np.asarray(items, dtype=np.int64)[order]
        self.ratings = np.asarray(ratings, dtype=np.float64)[order]
        self.user_num = user_num
        self.starts = np.searchsorted(self.users, np.arange(user_num + 1))
        # (user, time rank) keys: one searchsorted finds every row's cut
        self._instants = np.unique(self.times)
        self._width = len(self._instants) + 1
        self._keys = self.users * self._width + np.searchsorted(self._instants, self.times)
        # (user, item, time rank) keys: how often a row's item came earlier
        self._item_width = int(self.items.max(initial=0)) + 1
        self._pairs, pair_id, repeats = np.unique(self.users * self._item_width + self.items,
                                                  return_inverse=True, return_counts=True)
        self.max_repeats = int(repeats.max(initial=1))
        self._pair_keys = np.sort(pair_id * self._width
                                  + np.searchsorted(self._instants, self.times))
        span = float(self.times.max() - self.times.min()) if len(self.times) else 0.0
        self.span = span if span > 0 else 1.0

    def __len__(self):
        return len(self.items)

    def fingerprint_bytes(self) -> bytes:
        return b"".join(np.ascontiguousarray(a).tobytes() for a in
                        (self.users, self.items, self.times, self.ratings))

    def cut(self, users, times) -> np.ndarray:
        """Index (into the sorted arrays) just past each row's strictly earlier interactions."""
        users = np.asarray(users, dtype=np.int64)
        rank = np.searchsorted(self._instants, row_times(times), side="left")
        return np.searchsorted(self._keys, users * self._width + rank, side="left")

    def history(self, user: int, item: int, time: float):
        """``(items, times, ratings)`` of one row's history, oldest first."""
        start, stop = self.starts[int(user)], int(self.cut([user], [time])[0])
        keep = self.items[start:stop] != int(item)
        return (self.items[start:stop][keep], self.times[start:stop][keep],
                self.ratings[start:stop][keep])

    def history_lengths(self, users, items, times) -> np.ndarray:
        """How many interactions each row's history holds."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        earlier = self.cut(users, times) - self.starts[users]
        code = users * self._item_width + items
        pair = np.minimum(np.searchsorted(self._pairs, code), max(len(self._pairs) - 1, 0))
        known = (self._pairs[pair] == code) & (items < self._item_width) if len(self._pairs) \
            else np.zeros(len(code), bool)
        rank = np.searchsorted(self._instants, row_times(times), side="left")
        same = (np.searchsorted(self._pair_keys, pair * self._width + rank)
                - np.searchsorted(self._pair_keys, pair * self._width))
        return earlier - np.where(known, same, 0)

    def recent(self, users, items, times, k: int):
        """The ``k`` most recent history entries of each row, newest first:
        ``(items, times, ratings, mask)``, each ``[rows, k]`` (mask: a real entry)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        n = len(users)
        out_items = np.zeros((n, k), np.int64)
        out_times = np.zeros((n, k), np.float32)
        out_ratings = np.full((n, k), np.nan)
        mask = np.zeros((n, k), bool)
        if not len(self) or not k or not n:
            return out_items, out_times, out_ratings, mask
        cut = self.cut(users, times)
        # k entries plus room for the row's own item's earlier repeats, newest first
        window = cut[:, None] - 1 - np.arange(k + self.max_repeats)[None, :]
        inside = window >= self.starts[users][:, None]
        window = np.where(inside, window, 0)
        usable = inside & (self.items[window] != items[:, None])
        slot = np.cumsum(usable, axis=1) - 1
        rows, cols = np.nonzero(usable & (slot < k))
        at = window[rows, cols]
        out_items[rows, slot[rows, cols]] = self.items[at]
        out_times[rows, slot[rows, cols]] = self.times[at]
        out_ratings[rows, slot[rows, cols]] = self.ratings[at]
        mask[rows, slot[rows, cols]] = True
        return out_items, out_times, out_ratings, mask


def check_min_history(config) -> int:
    """``min_history`` of the run (0: off); an :class:`InputError` where it
    cannot apply (negative, or no time field loaded)."""
    final = config.final_config_dict
    value = final.get("min_history") or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"min_history must be an integer >= 0, got {value!r}")
    if value:
        field = final.get("TIME_FIELD")
        inter = (final.get("load_col") or {}).get("inter")
        if not field or (isinstance(inter, list) and field not in inter):
            raise InputError(f"min_history={value} counts earlier interactions by time, but "
                             f"TIME_FIELD is {field!r}" + (f" and load_col.inter {inter} leaves "
                                                           "it out" if field else "")
                             + "; load a time field or set min_history=0")
    return value


def drop_rows_with_short_history(dataset, min_history: int) -> int:
    """Drop the rows of a built-but-unsplit RecBole dataset whose user has fewer
    than ``min_history`` strictly earlier interactions (on other items); the
    number of rows dropped.  The dropped rows stay in a :class:`Timeline`
    taken before (histories of later rows)."""
    frame = dataset.inter_feat
    if not isinstance(frame, pd.DataFrame):
        raise ValueError("min_history filters a dataset before its split (build())")
    if not min_history or not len(frame):
        return 0
    counts = earlier_interaction_counts(frame[dataset.uid_field], frame[dataset.iid_field],
                                        frame[dataset.time_field])
    keep = counts >= min_history
    dataset.inter_feat = frame[keep].reset_index(drop=True)
    return int((~keep).sum())
