"""ELCoRec's GAT expert: the heterogeneous graph of users, items, categorical
and numerical features, the heterogeneous GAT over it, its pre-training, and
the cache key of its output."""
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import FeatureType
from tqdm import tqdm

from recbole_llm.fingerprint import dataset_fingerprint


# ----------------------------------------------------------------- the graph
def _count_edges(src: np.ndarray, dst: np.ndarray):
    pairs, counts = np.unique(np.stack([src, dst], 1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], np.log1p(counts).astype(np.float32)


def build_hetero_graph(dataset, time_buckets: int):
    """The heterogeneous graph of the dataset's (training) interactions.

    Returns ``(HeteroData, info)``; every relation is added in both
    directions so that every node type receives messages.
    """
    from torch_geometric.data import HeteroData

    inter = dataset.inter_feat
    users = np.asarray(inter[dataset.uid_field]).astype(np.int64)
    items = np.asarray(inter[dataset.iid_field]).astype(np.int64)
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
    ratings = np.array([dataset.rating_of(u, i) for u, i in zip(users, items)])
    known = ~np.isnan(ratings)
    levels = np.unique(ratings[known])
    if len(levels):
        level = np.searchsorted(levels, ratings[known])
        data["rating"].num_nodes = len(levels)
        relate("user", "gives", "rating", users[known], level)
        relate("item", "receives", "rating", items[known], level)
    time_field = dataset.time_field
    edges_time = None
    if time_field and time_field in inter:
        times = np.asarray(inter[time_field]).astype(np.float64)
        edges_time = np.unique(np.quantile(times, np.linspace(0, 1, time_buckets + 1)[1:-1]))
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


class GATExpert(nn.Module):
    """Heterogeneous GAT over :func:`build_hetero_graph`; scores users x items."""

    def __init__(self, graph, dim: int = 32, layers: int = 2, heads: int = 8):
        from torch_geometric.nn import GATConv, HeteroConv

        super().__init__()
        self.embeddings = nn.ModuleDict({t: nn.Embedding(graph[t].num_nodes, dim)
                                         for t in graph.node_types})
        for emb in self.embeddings.values():
            nn.init.normal_(emb.weight, std=0.1)
        self.convs = nn.ModuleList([
            HeteroConv({et: GATConv((-1, -1), dim, heads=heads, concat=False,
                                    add_self_loops=False, edge_dim=1)
                        for et in graph.edge_types}, aggr="sum")
            for _ in range(layers)])
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, graph) -> dict:
        h = {t: emb.weight for t, emb in self.embeddings.items()}
        for conv in self.convs:
            out = conv(h, graph.edge_index_dict, edge_attr_dict=graph.edge_attr_dict)
            h = {t: F.elu(out[t]) + h[t] if t in out else h[t] for t in h}
        return h

    def logits(self, h, users, items):
        return self.scale * F.cosine_similarity(h["user"][users], h["item"][items], dim=-1)


def pretrain_gat(expert, graph, users, items, labels, epochs, lr, weight_decay, batch_size,
                 patience, seed, show_progress=False):
    """BCE on the training pairs; early stopping on a held-out tenth of them."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    n_val = max(1, len(order) // 10)
    val, train = order[:n_val], order[n_val:]
    labels = torch.as_tensor(labels, dtype=torch.float32)
    users, items = torch.as_tensor(users), torch.as_tensor(items)
    optim = torch.optim.Adam(expert.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad = float("inf"), None, 0
    for _ in tqdm(range(epochs), desc="GAT expert", disable=not show_progress):
        expert.train()
        shuffled = rng.permutation(train)
        for start in range(0, len(train), batch_size):
            rows = torch.as_tensor(shuffled[start:start + batch_size])
            h = expert(graph)
            loss = F.binary_cross_entropy_with_logits(
                expert.logits(h, users[rows], items[rows]), labels[rows])
            optim.zero_grad()
            loss.backward()
            optim.step()
        expert.eval()
        with torch.no_grad():
            h = expert(graph)
            rows = torch.as_tensor(val)
            val_loss = F.binary_cross_entropy_with_logits(
                expert.logits(h, users[rows], items[rows]), labels[rows]).item()
        if val_loss < best:
            best, bad = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in expert.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    expert.load_state_dict(best_state)
    return best


def gat_settings(settings) -> dict:
    """The expert's settings: the ``gat_*`` fields of the model's settings."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.name.startswith("gat_")}


def gat_key(cache, settings, dataset) -> str:
    """The expert reads only its settings, the seed and the dataset (labels after
    thresholding, ratings, times, item features)."""
    return cache.key("elcorec-gat", data=dataset_fingerprint(dataset), seed=settings.seed,
                     settings=gat_settings(settings))
