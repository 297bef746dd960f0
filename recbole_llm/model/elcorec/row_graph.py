"""ELCoRec's GAT expert on one small graph per row, as in the authors' code.

A row (user u, target item i, time t) becomes a graph of

* a user node (its id and categorical fields: age, gender, occupation, ...),
* item nodes: the target and the ``gat_history_len`` most recent items of
  u's history before t (:class:`~recbole_llm.data.history.Timeline`: every
  split, strictly earlier, never i itself); each item node carries its id,
  its rating (the target: "unknown") and a sinusoidal encoding of
  ``t - (the item's time)`` (the target: 0),
* categorical feature nodes: the distinct values of the items' categorical
  fields (genre, release year, ...) in this row's graph,

joined user <-> items and item <-> feature values.  A heterogeneous GAT
propagates it; the target node's output is the row's soft token, so two
targets of the same user get two different tokens.  Pre-training scores a
row by the (scaled) cosine of the user and target outputs.
"""
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import FeatureType

RELATIONS = (("user", "interacted", "item"), ("item", "clickby", "user"),
             ("item", "belongto", "feature"), ("feature", "hasinstance", "item"))


def _categorical_fields(dataset, feat, skip):
    if feat is None:
        return []
    return [f for f in feat.interaction if f != skip and
            dataset.field2type.get(f) in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)]


def _values(feat, field) -> np.ndarray:
    values = np.asarray(feat[field]).astype(np.int64)
    return values if values.ndim == 2 else values[:, None]


def time_encoding(delta: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of time differences given as fractions of the data's
    time span: sin/cos at octave frequencies (periods 2 spans down to
    span / 2**(dim/2 - 2)), so minutes and months both stay apart."""
    freqs = torch.pi * 2.0 ** torch.arange(dim // 2, dtype=torch.float32, device=delta.device)
    angle = delta.float()[:, None] * freqs[None, :]
    out = torch.zeros(len(delta), dim, device=delta.device)
    out[:, 0:2 * (dim // 2):2] = torch.sin(angle)
    out[:, 1:2 * (dim // 2):2] = torch.cos(angle)
    return out


@dataclasses.dataclass
class RowBatch:
    """A batch of per-row graphs as one disjoint graph (node indices are global)."""
    users: torch.Tensor          # [B] user ids (one user node per row)
    item_ids: torch.Tensor       # [N] item node ids
    item_rows: torch.Tensor      # [N] the row each item node belongs to
    item_ratings: torch.Tensor   # [N] rating levels (0: unknown, the target)
    item_deltas: torch.Tensor    # [N] row time - item time, as a fraction of the time span
    targets: torch.Tensor        # [B] the item node of each row's target
    feature_ids: torch.Tensor    # [M] feature-value ids of the feature nodes
    edges: dict                  # relation -> [2, E] (source, destination)

    def to(self, device):
        moved = {k: v.to(device) for k, v in self.__dict__.items() if torch.is_tensor(v)}
        return dataclasses.replace(self, edges={k: v.to(device) for k, v in self.edges.items()},
                                   **moved)


class RowGraphs:
    """Builds :class:`RowBatch` es from rows: the timeline for histories, the
    user and item categorical fields, the rating levels."""

    def __init__(self, dataset, timeline, history_len: int):
        self.timeline, self.k = timeline, history_len
        self.user_num, self.item_num = dataset.user_num, dataset.item_num
        # one id space for every categorical value: 0 = padding, then field by field
        self.feature_num = 1
        self.user_fields = []
        for field in _categorical_fields(dataset, dataset.user_feat, dataset.uid_field):
            values = _values(dataset.user_feat, field)
            self.user_fields.append(np.where(values > 0, values + self.feature_num, 0))
            self.feature_num += dataset.num(field)
        item_values = [np.zeros((dataset.item_num, 0), np.int64)]
        for field in _categorical_fields(dataset, dataset.item_feat, dataset.iid_field):
            values = _values(dataset.item_feat, field)
            item_values.append(np.where(values > 0, values + self.feature_num, 0))
            self.feature_num += dataset.num(field)
        self.item_features = np.concatenate(item_values, axis=1)
        known = timeline.ratings[~np.isnan(timeline.ratings)]
        self.rating_levels = np.unique(known)
        self.time_span = timeline.span  # time differences as fractions of the data's span

    def rating_level(self, ratings: np.ndarray) -> np.ndarray:
        """1.. for the known rating values, 0 for unknown."""
        level = np.searchsorted(self.rating_levels, np.nan_to_num(ratings, nan=-np.inf)) + 1
        return np.where(np.isnan(ratings), 0, level)

    def user_features(self, users) -> list:
        """Per user field, its values ``[B, L]`` (0: padding)."""
        users = np.asarray(users)
        return [torch.as_tensor(values[users]) for values in self.user_fields]

    def build(self, users, items, times) -> RowBatch:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.float32)
        n = len(users)
        h_items, h_times, h_ratings, h_mask = self.timeline.recent(users, items, times, self.k)
        slot_items = np.concatenate([items[:, None], h_items], axis=1)
        slot_mask = np.concatenate([np.ones((n, 1), bool), h_mask], axis=1)
        slot_delta = np.concatenate([np.zeros((n, 1), np.float32),
                                     (times[:, None] - h_times) / self.time_span], axis=1)
        slot_rating = np.concatenate([np.zeros((n, 1), np.int64),
                                      self.rating_level(h_ratings)], axis=1)
        rows, slots = np.nonzero(slot_mask)               # row-major: each row's target first
        node_items = slot_items[rows, slots]
        item_nodes = np.arange(len(rows))
        targets = item_nodes[slots == 0]
        # feature nodes: the distinct (row, value) pairs of the row's items
        values = self.item_features[node_items]           # [N, fields]
        node_of, col = np.nonzero(values > 0)
        pair = rows[node_of] * self.feature_num + values[node_of, col]
        unique_pairs, feature_of = np.unique(pair, return_inverse=True)
        edge = lambda src, dst: torch.as_tensor(np.stack([src, dst]).astype(np.int64))
        edges = {("user", "interacted", "item"): edge(rows, item_nodes),
                 ("item", "clickby", "user"): edge(item_nodes, rows),
                 ("item", "belongto", "feature"): edge(node_of, feature_of),
                 ("feature", "hasinstance", "item"): edge(feature_of, node_of)}
        return RowBatch(users=torch.as_tensor(users), item_ids=torch.as_tensor(node_items),
                        item_rows=torch.as_tensor(rows),
                        item_ratings=torch.as_tensor(slot_rating[rows, slots]),
                        item_deltas=torch.as_tensor(slot_delta[rows, slots]),
                        targets=torch.as_tensor(targets),
                        feature_ids=torch.as_tensor(unique_pairs % self.feature_num),
                        edges=edges)


class RowGATExpert(nn.Module):
    """Heterogeneous GAT over :class:`RowGraphs` batches (``gat_mode: sample``):
    the first layers concatenate ``heads`` heads, the last has one (authors'
    code); each layer adds a linear skip of its input."""

    def __init__(self, graphs: RowGraphs, dim: int = 32, layers: int = 2, heads: int = 8):
        from torch_geometric.nn import GATConv, HeteroConv

        super().__init__()
        self.graphs, self.dim = graphs, dim
        self.user_emb = nn.Embedding(graphs.user_num, dim)
        self.item_emb = nn.Embedding(graphs.item_num, dim)
        self.rating_emb = nn.Embedding(len(graphs.rating_levels) + 1, dim)
        self.feature_emb = nn.Embedding(graphs.feature_num, dim, padding_idx=0)
        self.user_in = nn.Linear(dim * (1 + len(graphs.user_fields)), dim)
        self.item_in = nn.Linear(3 * dim, dim)  # id, rating, time encoding
        for emb in (self.user_emb, self.item_emb, self.rating_emb, self.feature_emb):
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.feature_emb.weight[0].zero_()  # padding: no feature value
        self.convs, self.skips = nn.ModuleList(), nn.ModuleList()
        size = dim
        for layer in range(layers):
            last = layer == layers - 1
            n_heads = 1 if last else heads
            self.convs.append(HeteroConv({rel: GATConv((size, size), dim, heads=n_heads,
                                                       concat=True, add_self_loops=False)
                                          for rel in RELATIONS}, aggr="sum"))
            self.skips.append(nn.ModuleDict({t: nn.Linear(size, dim * n_heads)
                                             for t in ("user", "item", "feature")}))
            size = dim * n_heads
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    @property
    def device(self):
        return self.scale.device

    def _inputs(self, batch: RowBatch) -> dict:
        parts = [self.user_emb(batch.users)]
        for values in self.graphs.user_features(batch.users.cpu().numpy()):
            values = values.to(batch.users.device)
            emb = self.feature_emb(values)  # padding rows are zero
            parts.append(emb.sum(1) / (values > 0).sum(1, keepdim=True).clamp(min=1))
        items = torch.cat([self.item_emb(batch.item_ids), self.rating_emb(batch.item_ratings),
                           time_encoding(batch.item_deltas, self.dim)], dim=-1)
        return {"user": self.user_in(torch.cat(parts, dim=-1)), "item": self.item_in(items),
                "feature": self.feature_emb(batch.feature_ids)}

    def forward(self, batch: RowBatch):
        """``(user outputs [B, dim], target outputs [B, dim])``."""
        h = self._inputs(batch)
        for n, (conv, skip) in enumerate(zip(self.convs, self.skips)):
            out = conv(h, batch.edges)
            h = {t: out.get(t, 0) + skip[t](h[t]) for t in h}
            if n < len(self.convs) - 1:
                h = {t: F.elu(v) for t, v in h.items()}
        return h["user"], h["item"][batch.targets]

    def logits(self, users, items, times) -> torch.Tensor:
        user, target = self(self.graphs.build(users, items, times).to(self.device))
        return self.scale * F.cosine_similarity(user, target, dim=-1) + self.bias

    def tokens(self, users, items, times) -> torch.Tensor:
        """The soft token's input of each row: its target node's output."""
        return self(self.graphs.build(users, items, times).to(self.device))[1]
