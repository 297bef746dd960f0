"""Layers and losses more than one plugin model uses."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07,
             key_ids: torch.Tensor = None, extra_keys: torch.Tensor = None,
             extra_ids: torch.Tensor = None, first: int = 0) -> torch.Tensor:
    """InfoNCE: query ``i`` should match key ``first + i``, against the other keys
    (in-batch negatives; ``first``: where this process's rows start among keys
    gathered from several) and ``extra_keys`` (sampled negatives).  A negative
    with the row's own id (the same item twice) is left out."""
    q = F.normalize(queries, dim=-1)
    own = torch.arange(first, first + len(q), device=q.device)
    logits = q @ F.normalize(keys, dim=-1).T / temperature
    query_ids = key_ids[own] if key_ids is not None else None
    if query_ids is not None:
        same = query_ids[:, None] == key_ids[None, :]
        same[torch.arange(len(q), device=q.device), own] = False
        logits = logits.masked_fill(same, float("-inf"))
    if extra_keys is not None and len(extra_keys):
        extra = q @ F.normalize(extra_keys, dim=-1).T / temperature
        if query_ids is not None and extra_ids is not None:
            extra = extra.masked_fill(query_ids[:, None] == extra_ids[None, :], float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, own)


def projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """``linear`` (the EAGER-LLM authors' code) or ``mlp`` (:class:`MLPProjector`)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return MLPProjector(in_dim, out_dim)
    raise ValueError(f"projector must be 'linear' or 'mlp', not '{kind}'")


class MLPProjector(nn.Sequential):
    """Linear -> GELU -> Linear: a hidden state mapped into another embedding space."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = None):
        hidden = hidden or max(in_dim, out_dim)
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
