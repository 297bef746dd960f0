"""EIMF's Implicit Behavioural Interest Module: K interest vectors per user.

Two extractors, as in ComiRec:

* ``routing`` (ComiRec-DR): behaviour-to-interest dynamic routing; each of
  the K capsules maps the items by its own matrix, the items are routed to
  the capsules for ``routing_iterations`` rounds and the capsules squashed.
* ``self_attentive`` (ComiRec-SA): K attention heads over the position-aware
  item embeddings, ``A = softmax(W2 tanh(W1 H^T))``, interests ``A H``.
  Positions count from the first item of the (right-padded) history, as in
  ComiRec (``first``), or back from the latest item (``latest``), so that
  "most recent" is one learned embedding for every history length.

Padding positions never take part.  All that serving needs is here: the
interests of a history and the item table.
"""
import torch
import torch.nn as nn

EXTRACTORS = ("routing", "self_attentive")
POSITIONS = ("first", "latest")


def squash(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    norm2 = (x ** 2).sum(dim, keepdim=True)
    return norm2 / (1 + norm2) * x / torch.sqrt(norm2 + 1e-9)


class DynamicRouting(nn.Module):
    """ComiRec-DR: each capsule k maps the items by its own matrix (``u_k|i =
    W_k e_i``), so capsules differ without random starts; routing logits start
    at zero and are refined with the capsules' agreement, gradient through the
    last round only."""

    def __init__(self, hidden: int, k: int, iterations: int):
        super().__init__()
        self.k, self.iterations = k, iterations
        self.maps = nn.Linear(hidden, hidden * k, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, hidden = h.shape
        u = self.maps(h).view(b, length, self.k, hidden).transpose(1, 2)   # [B, K, L, H]
        logits = torch.zeros(b, self.k, length, device=h.device, dtype=h.dtype)
        u_detached = u.detach()
        for it in range(self.iterations):
            w = logits.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=1)
            w = w.masked_fill(~mask[:, None, :], 0.0)                      # [B, K, L]
            last = it == self.iterations - 1
            caps = squash((w[..., None] * (u if last else u_detached)).sum(2))   # [B, K, H]
            if not last:
                logits = logits + (u_detached @ caps[..., None]).squeeze(-1)
        return caps


class SelfAttentive(nn.Module):
    def __init__(self, hidden: int, k: int, attention_hidden: int, max_len: int,
                 positions: str = "first"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"interest_positions must be one of {POSITIONS}, not {positions!r}")
        self.from_latest = positions == "latest"
        self.position = nn.Embedding(max_len, hidden)
        self.w1 = nn.Linear(hidden, attention_hidden, bias=False)
        self.w2 = nn.Linear(attention_hidden, k, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(h.shape[1], device=h.device)[None]         # [1, L]
        if self.from_latest:  # 0 = the latest item; padding (masked below) clamped to 0
            positions = (mask.sum(1, keepdim=True) - 1 - positions).clamp(min=0)
        x = h + self.position(positions)
        a = self.w2(torch.tanh(self.w1(x))).transpose(1, 2)       # [B, K, L]
        a = a.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
        return a @ h                                              # [B, K, H]


class IBIM(nn.Module):
    """Item table + interest extractor; ``interests(seq, len)`` -> ``[B, K, H]``."""

    def __init__(self, n_items: int, hidden: int, k: int, extractor: str, iterations: int,
                 attention_hidden: int, max_len: int, dropout: float, positions: str = "first"):
        super().__init__()
        if extractor not in EXTRACTORS:
            raise ValueError(f"interest_extractor must be one of {EXTRACTORS}, not {extractor!r}")
        self.item_embedding = nn.Embedding(n_items, hidden, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.extractor = DynamicRouting(hidden, k, iterations) if extractor == "routing" \
            else SelfAttentive(hidden, k, attention_hidden, max_len, positions)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def interests(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(item_seq.shape[1], device=item_seq.device)[None] < item_len[:, None]
        h = self.dropout(self.item_embedding(item_seq))
        return self.extractor(h, mask)

    @staticmethod
    def target_attention(interests: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training's user vector: the interests weighted by their softmax affinity
        to the target item (label-aware attention, MIND)."""
        weights = (interests @ target[..., None]).squeeze(-1).softmax(dim=-1)   # [B, K]
        return (weights[..., None] * interests).sum(1)

    def full_scores(self, interests: torch.Tensor) -> torch.Tensor:
        """Serving: each item's best score over the user's interests (ComiRec)."""
        return (interests @ self.item_embedding.weight.T).max(dim=1).values

