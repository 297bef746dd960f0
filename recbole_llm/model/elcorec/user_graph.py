"""ELCoRec's GAT expert on one graph of all training interactions
(``gat_mode: user``, an ablation): users, items, categorical feature values
and numerical features (rating levels, time buckets) as nodes; the soft token
is the user's output, one static vector per user whatever the target.
``gat_mode: sample`` (``row_graph.py``) is the authors' target-aware graph.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import FeatureType


# ----------------------------------------------------------------- the graph
def _count_edges(src: np.ndarray, dst: np.ndarray):
    pairs, counts = np.unique(np.stack([src, dst], 1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], np.log1p(counts).astype(np.float32)


def build_hetero_graph(dataset, time_buckets: int, rows=None):
    """The heterogeneous graph of the dataset's (training) interactions, or of
    the ones at indices ``rows`` (pre-training leaves its held-out rows out).

    Returns ``(HeteroData, info)``; every relation is added in both
    directions so that every node type receives messages.
    """
    from torch_geometric.data import HeteroData

    inter = dataset.inter_feat
    all_users = np.asarray(inter[dataset.uid_field]).astype(np.int64)
    all_items = np.asarray(inter[dataset.iid_field]).astype(np.int64)
    # node sets (rating levels, time buckets) from every row: the same shapes with or
    # without ``rows``, so weights trained on a part load into the whole
    # each interaction's own rating (a pair rated again later must not show it)
    times = np.asarray(inter[dataset.time_field]) if dataset.time_field and \
        dataset.time_field in inter else [None] * len(all_users)
    all_ratings = np.array([dataset.rating_of(u, i, t)
                            for u, i, t in zip(all_users, all_items, times)])
    keep = slice(None) if rows is None else np.asarray(rows)
    users, items, ratings = all_users[keep], all_items[keep], all_ratings[keep]
    data = HeteroData()
    data["user"].num_nodes = dataset.user_num
    data["item"].num_nodes = dataset.item_num
    edges = {}

    def relate(src_type, name, dst_type, src, dst, weight=None):
        if weight is None:
            src, dst, weight = _count_edges(src, dst)
        index = torch.as_tensor(np.stack([src, dst]), dtype=torch.long)
        attr = torch.as_tensor(weight, dtype=torch.float32)[:, None]
        edges[(src_type, name, dst_type)] = (index, attr)
        edges[(dst_type, f"rev_{name}", src_type)] = (index.flip(0), attr)

    relate("user", "interacts", "item", users, items, np.ones(len(users), np.float32))
    levels = np.unique(all_ratings[~np.isnan(all_ratings)])
    known = ~np.isnan(ratings)
    if len(levels):
        level = np.searchsorted(levels, ratings[known])
        data["rating"].num_nodes = len(levels)
        relate("user", "gives", "rating", users[known], level)
        relate("item", "receives", "rating", items[known], level)
    time_field = dataset.time_field
    edges_time = None
    if time_field and time_field in inter:
        all_times = np.asarray(inter[time_field]).astype(np.float64)
        edges_time = np.unique(np.quantile(all_times, np.linspace(0, 1, time_buckets + 1)[1:-1]))
        times = all_times[keep]
        bucket = np.searchsorted(edges_time, times, side="right")
        data["time"].num_nodes = len(edges_time) + 1
        relate("user", "active_at", "time", users, bucket)
        relate("item", "consumed_at", "time", items, bucket)
    categorical = []
    for owner, feat, n in (("user", dataset.user_feat, dataset.user_num),
                           ("item", dataset.item_feat, dataset.item_num)):
        if feat is None:
            continue
        for field in feat.interaction if hasattr(feat, "interaction") else feat:
            ftype = dataset.field2type.get(field)
            if field in (dataset.uid_field, dataset.iid_field) or \
                    ftype not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                continue
            values = np.asarray(feat[field])
            rows = np.repeat(np.arange(n), values.shape[1]) if values.ndim == 2 else np.arange(n)
            values = values.reshape(-1)
            keep = values > 0  # 0 is padding / missing
            node = f"{owner}_{field}"
            data[node].num_nodes = dataset.num(field)
            relate(owner, f"has_{field}", node, rows[keep], values[keep])
            categorical.append(node)
    for key, (index, attr) in edges.items():
        data[key].edge_index = index
        data[key].edge_attr = attr
    return data, {"rating_levels": levels.tolist(), "time_edges": edges_time,
                  "categorical": categorical}


class UserGATExpert(nn.Module):
    """Heterogeneous GAT over :func:`build_hetero_graph` (``gat_mode: user``);
    scores a row by the scaled cosine of its user's and item's outputs."""

    def __init__(self, graph, dim: int = 32, layers: int = 2, heads: int = 8):
        from torch_geometric.nn import GATConv, HeteroConv

        super().__init__()
        self.graph = graph  # the graph pre-training propagates
        self.embeddings = nn.ModuleDict({t: nn.Embedding(graph[t].num_nodes, dim)
                                         for t in graph.node_types})
        for emb in self.embeddings.values():
            nn.init.normal_(emb.weight, std=0.1)
        self.convs = nn.ModuleList([
            HeteroConv({et: GATConv((dim, dim), dim, heads=heads, concat=False,
                                    add_self_loops=False, edge_dim=1)
                        for et in graph.edge_types}, aggr="sum")
            for _ in range(layers)])
        self.scale = nn.Parameter(torch.tensor(5.0))
        # each user's output on the whole training graph, set by ``freeze``
        self.register_buffer("user_tokens", torch.zeros(graph["user"].num_nodes, dim))

    def forward(self, graph) -> dict:
        h = {t: emb.weight for t, emb in self.embeddings.items()}
        for conv in self.convs:
            out = conv(h, graph.edge_index_dict, edge_attr_dict=graph.edge_attr_dict)
            h = {t: F.elu(out[t]) + h[t] if t in out else h[t] for t in h}
        return h

    def logits(self, users, items, times=None) -> torch.Tensor:
        h = self(self.graph)
        users, items = torch.as_tensor(users), torch.as_tensor(items)
        return self.scale * F.cosine_similarity(h["user"][users], h["item"][items], dim=-1)

    @torch.no_grad()
    def freeze(self, graph) -> None:
        """Keep each user's output on ``graph`` (all training interactions)."""
        self.user_tokens.copy_(self(graph)["user"])

    def tokens(self, users, items=None, times=None) -> torch.Tensor:
        return self.user_tokens[torch.as_tensor(users, device=self.user_tokens.device)]
