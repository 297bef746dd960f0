"""Llama4Rec's adaptive aggregation: each user's weight of the LLM from the
long-tail coefficient, and the order of the base model's top-N under the
combined utilities ``alpha_u * U_llm + (1 - alpha_u) * U_base``."""
import numpy as np
import torch


def long_tail_alpha(counts, alpha1: float, alpha2: float, transform: str = "log") -> np.ndarray:
    """Per-user weight of the LLM.

    The long-tail coefficient is ``l_u = log(1 + n_u)`` (``transform: linear``:
    ``n_u``) of the user's number of training interactions; scaled to [0, 1]
    between the largest and the smallest coefficient (1 = furthest in the
    tail), weighted by ``alpha1`` and cut off at ``alpha2``:
    ``alpha_u = min(alpha1 * (l_max - l_u) / (l_max - l_min), alpha2)``, the
    extremes taken over users with interactions (RecBole's padding user 0 would
    otherwise set ``l_min = 0`` and no real user would reach the tail's weight);
    users with none count as furthest in the tail.
    """
    if not 0 <= alpha2 < 1:
        raise ValueError(f"alpha2 (the cut-off) must lie in [0, 1), got {alpha2}")
    counts = np.asarray(counts, dtype=np.float64)
    if transform == "log":
        coef = np.log1p(counts)
    elif transform == "linear":
        coef = counts
    else:
        raise ValueError(f"long_tail_transform must be 'log' or 'linear', not '{transform}'")
    active = counts > 0
    if not active.any():
        return np.zeros_like(coef)
    high, low = coef[active].max(), coef[active].min()
    span = high - low
    tail = np.clip((high - coef) / span, 0, 1) if span > 0 else np.zeros_like(coef)
    tail[~active] = 1.0
    return np.minimum(alpha1 * tail, alpha2)


def aggregate_order(llm_scores: torch.Tensor, alpha: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """New order of each row's candidates, given in the base model's order.

    Candidate ``s`` (0 = the base model's best) has base utility ``-s * c``;
    the LLM's order of ``llm_scores`` gives utility ``-r * c`` to its rank ``r``;
    the result sorts ``alpha * U_llm + (1 - alpha) * U_base``, ties kept in
    base order.  Rows with ``-inf`` LLM scores (padding) keep their place last.
    """
    n = llm_scores.shape[1]
    base_utility = -c * torch.arange(n, dtype=torch.float32).expand_as(llm_scores)
    order = torch.argsort(-llm_scores, dim=1, stable=True)
    llm_rank = torch.empty_like(order)
    llm_rank.scatter_(1, order, torch.arange(n).expand_as(order).contiguous())
    utility = alpha[:, None] * (-c * llm_rank.float()) + (1 - alpha[:, None]) * base_utility
    return torch.argsort(-utility, dim=1, stable=True)
