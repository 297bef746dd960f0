"""Starting vectors for tokens added to an LLM's vocabulary.

transformers starts every added row at the table's mean (so a pretrained model
keeps its output distribution): in a randomly initialised backbone every code
token is then the same vector (spread 1e-6 against 0.02) until gradients tell
them apart.  Seeding a code token from the exogenous vectors of the items it
names gives it that meaning from the first step; ``random`` breaks only the
symmetry, as the rest of a random-init table.
"""
import numpy as np
import torch

TOKEN_INITS = ("mean", "random", "centroid")


def item_space(features: np.ndarray, hidden: int, seed: int) -> np.ndarray:
    """Items' vectors ``[n, hidden]`` keeping their main directions: centred,
    reduced by PCA to ``min(d, hidden)`` dimensions, then sent into ``hidden``
    by a fixed random orthonormal map (inner products kept, each source in its
    own random subspace)."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    r = min(hidden, x.shape[1], len(x))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((hidden, r)))
    return (x @ vt[:r].T) @ q.T


def code_centroids(codes: np.ndarray, vectors: np.ndarray):
    """``(codes in use, mean vector of the items holding each)`` for one level."""
    used, inverse = np.unique(np.asarray(codes), return_inverse=True)
    sums = np.zeros((len(used), vectors.shape[1]))
    np.add.at(sums, inverse.reshape(-1), vectors)
    return used, sums / np.bincount(inverse.reshape(-1))[:, None]


def _tables(model) -> list:
    tables = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != tables[0].data_ptr():
        tables.append(head.weight)  # an untied output layer
    return tables


@torch.no_grad()
def seed_token_rows(model, groups, new_ids) -> None:
    """Set the rows of each group ``(token ids, vectors [n, hidden])`` in the
    input embeddings and an untied output layer: that table's mean row plus the
    vectors scaled, group by group, to the per-entry spread of the table's rows
    outside ``new_ids`` (the tokens just added, still at the mean)."""
    for table in _tables(model):
        keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
        keep[torch.as_tensor(list(new_ids), dtype=torch.long, device=table.device)] = False
        old = table[keep].float()
        mean, spread = old.mean(0), old.std()
        for ids, vectors in groups:
            v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32, device=table.device)
            if v.shape != (len(ids), table.shape[1]):
                raise ValueError(f"token vectors {tuple(v.shape)} for {len(ids)} tokens of "
                                 f"width {table.shape[1]}")
            scale = spread / v.std().clamp_min(1e-12)
            table[torch.as_tensor(list(ids), dtype=torch.long, device=table.device)] = \
                (mean + v * scale).to(table.dtype)
