"""Layers and losses more than one plugin model uses."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07,
             key_ids: torch.Tensor = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row ``i`` of ``queries`` should match row
    ``i`` of ``keys``.  Rows with the same ``key_ids`` (the same item twice in
    a batch) are not used as each other's negatives."""
    q = F.normalize(queries, dim=-1)
    k = F.normalize(keys, dim=-1)
    logits = q @ k.T / temperature
    if key_ids is not None:
        same = key_ids[:, None] == key_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


class MLPProjector(nn.Sequential):
    """Linear -> GELU -> Linear: a hidden state mapped into another embedding space."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = None):
        hidden = hidden or max(in_dim, out_dim)
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
