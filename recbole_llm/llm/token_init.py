"""Starting vectors for tokens added to an LLM's vocabulary.

transformers starts every added row near the table's mean (so a pretrained
model keeps its output distribution; the added rows differ by about 1e-5 of
the table's spread): in a randomly initialised backbone every code token is
then one vector until gradients tell them apart.  Seeding a code token from
the exogenous vectors of the items it names gives it that meaning from the
first step; random rows break only the symmetry, as in the rest of a
random-init table.
"""
import numpy as np
import torch

TOKEN_INITS = ("mean", "random", "centroid")


class PCAMap:
    """Vectors of one source ``[n, d]`` -> ``[n, hidden]``: centred, reduced by
    PCA to ``min(d, hidden)`` dimensions, then sent into ``hidden`` by a fixed
    random orthonormal map (inner products within the kept components are
    kept; each source lands in its own random subspace).  Linear, so the map
    of a mean is the mean of the maps."""

    def __init__(self, features: np.ndarray, hidden: int, seed: int):
        x = np.asarray(features, dtype=np.float64)
        self.mean = x.mean(0)
        r = min(hidden, x.shape[1], len(x))
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((hidden, r)))
        self.weight = vt[:r].T @ q.T  # [d, hidden]

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.weight


def code_centroids(codes: np.ndarray, vectors: np.ndarray):
    """``(codes in use, mean vector of the items holding each)`` for one level."""
    used, inverse = np.unique(np.asarray(codes), return_inverse=True)
    sums = np.zeros((len(used), vectors.shape[1]))
    np.add.at(sums, inverse.reshape(-1), np.asarray(vectors, dtype=np.float64))
    return used, sums / np.bincount(inverse.reshape(-1))[:, None]


def _tables(model) -> list:
    tables = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != tables[0].data_ptr():
        tables.append(head.weight)  # an untied output layer
    return tables


def _row_stats(table, skip) -> tuple:
    """Mean row and per-entry standard deviation of ``table`` without the rows
    ``skip``, in float64 chunks (no full copy of a large vocabulary)."""
    total = torch.zeros(table.shape[1], dtype=torch.float64, device=table.device)
    squares = torch.zeros((), dtype=torch.float64, device=table.device)
    for chunk in table.detach().split(8192):
        chunk = chunk.double()
        total += chunk.sum(0)
        squares += chunk.pow(2).sum()
    sub = table.detach()[skip].double()
    n = table.shape[0] - len(skip)
    total, squares = total - sub.sum(0), squares - sub.pow(2).sum()
    mean = total / n
    var = squares / (n * table.shape[1]) - mean.pow(2).mean()
    return mean, var.clamp_min(0).sqrt()


@torch.no_grad()
def seed_token_rows(model, groups, new_ids) -> None:
    """Set the rows of each group ``(token ids, vectors [n, hidden])`` in the
    input embeddings and an untied output layer: that table's mean row plus the
    vectors scaled, group by group, to the per-entry spread of the table's rows
    outside ``new_ids`` (the tokens just added, still at the mean)."""
    for table in _tables(model):
        skip = torch.as_tensor(sorted(set(new_ids)), dtype=torch.long, device=table.device)
        mean, spread = _row_stats(table, skip)
        for ids, vectors in groups:
            v = torch.as_tensor(np.asarray(vectors), dtype=torch.float64, device=table.device)
            if v.shape != (len(ids), table.shape[1]):
                raise ValueError(f"token vectors {tuple(v.shape)} for {len(ids)} tokens of "
                                 f"width {table.shape[1]}")
            scale = spread / v.std().clamp_min(1e-12)
            rows = torch.as_tensor(list(ids), dtype=torch.long, device=table.device)
            table[rows] = (mean + v * scale).to(table.dtype)
