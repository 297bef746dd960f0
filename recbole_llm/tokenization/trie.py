"""Prefix trie over fixed-length code sequences, stored as sorted arrays.

A dict-of-dicts trie for a million items costs gigabytes and seconds of
Python; here level ``t`` is the sorted array of distinct length-``t``
prefixes, so a node is an index into that array and its children are one
contiguous slice of the next level.  Decoding asks ``allowed(level, node)``
for the tokens that may follow, and ``child`` to move down.
"""
import numpy as np


class PrefixTrie:
    """Trie of ``sequences`` (``[n, L]`` token ids); leaf ``i`` maps to ``values[i]``."""

    def __init__(self, sequences, values=None):
        seqs = np.asarray(sequences, dtype=np.int64)
        if seqs.ndim != 2 or len(seqs) == 0:
            raise ValueError("PrefixTrie needs a non-empty [n, L] array of token ids")
        n, self.depth = seqs.shape
        values = np.arange(n) if values is None else np.asarray(values)
        order = np.lexsort(seqs.T[::-1])
        seqs, values = seqs[order], values[order]
        if len(np.unique(seqs, axis=0)) != n:
            raise ValueError("PrefixTrie: duplicate code sequences (resolve collisions first)")
        # level t (0..L): nodes are distinct prefixes of length t; level 0 is the root
        self._starts, self._tokens = [], []
        parent_of_prev = np.zeros(n, dtype=np.int64)  # node id of each row at level t
        for t in range(self.depth):
            prefix_change = np.ones(n, dtype=bool)
            prefix_change[1:] = np.any(seqs[1:, :t + 1] != seqs[:-1, :t + 1], axis=1)
            child_rows = np.flatnonzero(prefix_change)        # first row of each child
            child_parent = parent_of_prev[child_rows]
            n_parents = 1 if t == 0 else int(parent_of_prev.max()) + 1
            starts = np.searchsorted(child_parent, np.arange(n_parents + 1))
            self._starts.append(starts)
            self._tokens.append(seqs[child_rows, t])
            parent_of_prev = np.cumsum(prefix_change) - 1
        self._leaf_values = values                       # level-L node id == row
        self.size = n

    def allowed(self, level: int, node: int) -> np.ndarray:
        """Token ids that may follow the prefix ``node`` at depth ``level``."""
        starts = self._starts[level]
        return self._tokens[level][starts[node]:starts[node + 1]]

    def child(self, level: int, node: int, token: int) -> int:
        """Node id at depth ``level + 1`` for ``token`` after ``node``, or -1."""
        starts = self._starts[level]
        lo, hi = starts[node], starts[node + 1]
        pos = lo + np.searchsorted(self._tokens[level][lo:hi], token)
        if pos < hi and self._tokens[level][pos] == token:
            return int(pos)
        return -1

    def children_block(self, level: int, nodes: np.ndarray):
        """Children of many nodes at once, for vectorised decoding.

        Returns ``(tokens [n, M], child_ids [n, M], valid [n, M])`` where ``M``
        is the largest child count; a child's node id at ``level + 1`` is its
        position in this level's token array.
        """
        starts = self._starts[level]
        nodes = np.asarray(nodes)
        lo, hi = starts[nodes], starts[nodes + 1]
        width = max(int((hi - lo).max()), 1) if len(nodes) else 1
        child_ids = lo[:, None] + np.arange(width)[None, :]
        valid = child_ids < hi[:, None]
        child_ids = np.where(valid, child_ids, 0)
        tokens = self._tokens[level][np.minimum(child_ids, len(self._tokens[level]) - 1)]
        return tokens, child_ids, valid

    def values(self, leaves: np.ndarray) -> np.ndarray:
        return self._leaf_values[np.asarray(leaves)]

    def value(self, leaf: int):
        return self._leaf_values[leaf]

    def path(self, sequence):
        """The node before each token of a full sequence, and its leaf; None if the
        sequence is not in the trie."""
        if len(sequence) != self.depth:
            return None
        node, nodes = 0, []
        for level, token in enumerate(sequence):
            nodes.append(node)
            node = self.child(level, node, int(token))
            if node < 0:
                return None
        return nodes, node

    def lookup(self, sequence):
        """The value of a full sequence, or None if it is not in the trie."""
        found = self.path(sequence)
        return None if found is None else self.value(found[1])
