"""``ItemIndex``: each item as a short sequence of discrete code tokens.

Row ``i`` of ``codes`` is item ``i`` (RecBole's internal id; row 0 is the
padding item and has no codes).  Level ``l``'s code ``c`` is written as the
token ``<{prefix_l}_{c}>`` (``<a_12><b_7><c_0><d_3>``), the tokens are added to
the LLM's vocabulary, and the prefix trie over their token ids restricts
decoding to real items.
"""
import string

import numpy as np

from recbole_llm.tokenization.collision import collision_rate, resolve_collisions
from recbole_llm.tokenization.trie import PrefixTrie


def code_perplexity(codes: np.ndarray) -> list:
    """exp(entropy) of each level's code distribution: how many codes are really used."""
    out = []
    for level in range(codes.shape[1]):
        _, counts = np.unique(codes[:, level], return_counts=True)
        p = counts / counts.sum()
        out.append(float(np.exp(-(p * np.log(p)).sum())))
    return out


def node_codes(codes: np.ndarray, blocks) -> np.ndarray:
    """Codes renumbered so that each level's code names its whole prefix within
    its block (``blocks``: ``(start, end)`` level ranges, e.g. one per k-means
    tree): one code, hence one token, per tree node.  Under tree k-means a
    deeper code is a rank among its parent's children, so the same number
    under two parents is two unrelated nodes; here they are two tokens.  The
    map is one-to-one on prefixes: unique code rows stay unique."""
    codes = np.asarray(codes, dtype=np.int64)
    out = codes.copy()
    for start, end in blocks:
        for level in range(start, end):
            out[:, level] = np.unique(codes[:, start:level + 1], axis=0, return_inverse=True)[1].reshape(-1)
    return out


def prefix_blocks(prefixes) -> list:
    """Level ranges whose token prefixes share a first letter (``s1 s2 | b1 b2``):
    the levels of one source's tree."""
    blocks, start = [], 0
    for level in range(1, len(prefixes) + 1):
        if level == len(prefixes) or prefixes[level][0] != prefixes[start][0]:
            blocks.append((start, level))
            start = level
    return blocks


class ItemIndex:
    def __init__(self, codes: np.ndarray, prefixes=None):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) < 2:
            raise ValueError("ItemIndex needs codes [n_items, levels] with row 0 for padding")
        self.codes = codes.copy()
        self.codes[0] = -1
        self.levels = codes.shape[1]
        self.prefixes = list(prefixes or string.ascii_lowercase[:self.levels])
        if len(self.prefixes) != self.levels:
            raise ValueError(f"{self.levels} levels but {len(self.prefixes)} token prefixes")
        real = self.codes[1:]
        if collision_rate(real) > 0:
            raise ValueError("ItemIndex codes collide; resolve_collisions() first")
        self._lookup = {tuple(row): i + 1 for i, row in enumerate(real.tolist())}
        self._token_ids = None
        self.trie = None

    @classmethod
    def build(cls, codes_without_padding: np.ndarray, collision: str = "extra_code",
              k: int = None, prefixes=None, preference=None) -> "ItemIndex":
        """From raw quantiser codes of items 1..n (no padding row), collisions resolved."""
        resolved = codes_without_padding
        if collision_rate(codes_without_padding) > 0 or collision == "extra_code":
            resolved = resolve_collisions(codes_without_padding, collision, k, preference)
        padded = np.vstack([np.full((1, resolved.shape[1]), -1), resolved])
        index = cls(padded, prefixes)
        index.raw_collision_rate = collision_rate(codes_without_padding)
        return index

    @property
    def n_items(self) -> int:
        return len(self.codes)

    def token(self, level: int, code: int) -> str:
        return f"<{self.prefixes[level]}_{int(code)}>"

    def tokens(self) -> list:
        """Every code token in use, level by level: the tokens to add to the LLM."""
        return [self.token(level, c) for level in range(self.levels)
                for c in np.unique(self.codes[1:, level])]

    def item_tokens(self, item: int) -> list:
        if item <= 0 or item >= self.n_items:
            raise IndexError(f"item {item} is not in the index (1..{self.n_items - 1})")
        return [self.token(level, c) for level, c in enumerate(self.codes[item])]

    def item_string(self, item: int) -> str:
        return "".join(self.item_tokens(item))

    def item_of_codes(self, codes) -> int:
        """Internal item id of a code sequence, or 0 if no item has it."""
        return self._lookup.get(tuple(int(c) for c in codes), 0)

    def bind(self, tokenizer) -> PrefixTrie:
        """Map code tokens to the tokenizer's ids and build the decoding trie."""
        vocab = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in self.tokens()}
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [t for t, i in vocab.items() if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"{len(missing)} code tokens are not in the tokenizer "
                             f"(e.g. {missing[:3]}); add_tokens() before bind()")
        ids = np.array([[vocab[self.token(l, c)] for l, c in enumerate(row)]
                        for row in self.codes[1:]], dtype=np.int64)
        self._token_ids = np.vstack([np.full((1, self.levels), -1), ids])
        self.trie = PrefixTrie(ids, values=np.arange(1, self.n_items))
        return self.trie

    def token_ids(self, item: int) -> list:
        if self._token_ids is None:
            raise RuntimeError("bind(tokenizer) first")
        return self._token_ids[item].tolist()

    def stats(self) -> dict:
        return {"items": self.n_items - 1, "levels": self.levels,
                "raw_collision_rate": getattr(self, "raw_collision_rate", 0.0),
                "perplexity": code_perplexity(self.codes[1:]),
                "tokens": len(self.tokens())}

    def to_arrays(self) -> dict:
        return {"codes": self.codes, "prefixes": np.array(self.prefixes),
                "raw_collision_rate": np.array(getattr(self, "raw_collision_rate", 0.0))}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "ItemIndex":
        index = cls(arrays["codes"], [str(p) for p in arrays["prefixes"]])
        index.raw_collision_rate = float(arrays["raw_collision_rate"])
        return index

    def save(self, cache, key: str) -> None:
        cache.save_arrays(key, **self.to_arrays())

    @classmethod
    def load(cls, cache, key: str) -> "ItemIndex":
        return cls.from_arrays(cache.load_arrays(key))
