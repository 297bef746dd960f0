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

Before extraction the history can pass through ``encoder_layers`` Transformer
layers (RecBole's, as in SASRec; attention over the history's own items, both
directions), so that each item's vector carries its context before the
interests pool them; with 0 the extractor reads the item embeddings, as in
ComiRec.

Padding positions never take part.  All that serving needs is here: the
interests of a history and the item table.
"""
import torch
import torch.nn as nn
from recbole.model.layers import TransformerEncoder

EXTRACTORS = ("routing", "self_attentive")
POSITIONS = ("first", "latest")
SCORINGS = ("target", "candidate")


def history_positions(mask: torch.Tensor, from_latest: bool) -> torch.Tensor:
    """Position of each history slot: counted from the first item, or back from
    the latest (0 = the latest; padding, which is masked, clamped to 0)."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None]    # [1, L]
    if from_latest:
        positions = (mask.sum(1, keepdim=True) - 1 - positions).clamp(min=0)
    return positions


class HistoryEncoder(nn.Module):
    """Transformer layers over the history (SASRec's blocks, without its causal
    mask: the interests are read from the whole history, the target is not in it)."""

    def __init__(self, hidden: int, layers: int, heads: int, dropout: float, max_len: int,
                 from_latest: bool):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"encoder_heads ({heads}) must divide hidden_size ({hidden})")
        self.from_latest = from_latest
        self.position = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.layers = TransformerEncoder(n_layers=layers, n_heads=heads, hidden_size=hidden,
                                         inner_size=4 * hidden, hidden_dropout_prob=dropout,
                                         attn_dropout_prob=dropout, hidden_act="gelu",
                                         layer_norm_eps=1e-12)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        """SASRec's initialisation: at PyTorch's defaults the N(0, 1) positions would
        drown the items' N(0, 0.02) embeddings in ``norm(h + position)``."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.norm(h + self.position(history_positions(mask, self.from_latest))))
        # additive mask [B, 1, L, L]: no slot attends to padding
        blocked = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        blocked = blocked.masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None, :]
        return self.layers(x, blocked, output_all_encoded_layers=False)[-1]


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
                 positions: str = "latest"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"interest_positions must be one of {POSITIONS}, not {positions!r}")
        self.from_latest = positions == "latest"
        self.position = nn.Embedding(max_len, hidden)
        self.w1 = nn.Linear(hidden, attention_hidden, bias=False)
        self.w2 = nn.Linear(attention_hidden, k, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = h + self.position(history_positions(mask, self.from_latest))
        a = self.w2(torch.tanh(self.w1(x))).transpose(1, 2)       # [B, K, L]
        a = a.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
        return a @ h                                              # [B, K, H]


class IBIM(nn.Module):
    """Item table + interest extractor; ``interests(seq, len)`` -> ``[B, K, H]``."""

    def __init__(self, n_items: int, hidden: int, k: int, extractor: str, iterations: int,
                 attention_hidden: int, max_len: int, dropout: float, positions: str = "latest",
                 encoder_layers: int = 0, encoder_heads: int = 2, encoder_dropout: float = 0.5):
        super().__init__()
        if extractor not in EXTRACTORS:
            raise ValueError(f"interest_extractor must be one of {EXTRACTORS}, not {extractor!r}")
        self.item_embedding = nn.Embedding(n_items, hidden, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.encoder = HistoryEncoder(hidden, encoder_layers, encoder_heads, encoder_dropout,
                                      max_len, positions == "latest") if encoder_layers else None
        self.extractor = DynamicRouting(hidden, k, iterations) if extractor == "routing" \
            else SelfAttentive(hidden, k, attention_hidden, max_len, positions)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def interests(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(item_seq.shape[1], device=item_seq.device)[None] < item_len[:, None]
        h = self.dropout(self.item_embedding(item_seq))
        if self.encoder is not None:
            h = self.encoder(h, mask)
        return self.extractor(h, mask)

    @staticmethod
    def target_attention(interests: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training's user vector: the interests weighted by their softmax affinity
        to the target item (label-aware attention, MIND)."""
        weights = (interests @ target[..., None]).squeeze(-1).softmax(dim=-1)   # [B, K]
        return (weights[..., None] * interests).sum(1)

    @staticmethod
    def over_interests(s: torch.Tensor, scoring: str) -> torch.Tensor:
        """Items' affinities to the K interests (``[B, K, ...]``) to one score each:
        ``target``, the best interest (max over K, ComiRec); ``candidate``, the
        item's own attention over the interests (softmax of its affinities)."""
        if scoring == "candidate":
            return (s.softmax(dim=1) * s).sum(1)
        if scoring == "target":
            return s.max(dim=1).values
        raise ValueError(f"interest_scoring must be one of {SCORINGS}, not {scoring!r}")

    @staticmethod
    def candidate_scores(interests: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Every candidate attends over the interests with its own affinity, the
        target-aware attention with the candidate as the target: ``[B, K, H]`` x
        ``[N, H]`` -> ``[B, N]``.  The target's score is ``target_attention``'s; a
        negative is scored through the interests that favour it, as at serving."""
        return IBIM.over_interests(interests @ items.T, "candidate")

    # serving's [B, K, items] blocks: about 256 MiB of float32 each
    SERVING_BLOCK = 2 ** 26

    def full_scores(self, interests: torch.Tensor, scoring: str) -> torch.Tensor:
        """Serving: every item's score by ``over_interests``, the items in blocks, so
        memory stays bounded for a large catalogue."""
        table = self.item_embedding.weight
        step = max(1, self.SERVING_BLOCK // max(1, interests.shape[0] * interests.shape[1]))
        return torch.cat([self.over_interests(interests @ table[i:i + step].T, scoring)
                          for i in range(0, len(table), step)], dim=1)
