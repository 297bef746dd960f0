"""Make every item's code sequence unique.

Quantisers map similar items to the same codes.  Two ways out, both keeping
an exact item <-> codes bijection:

* ``extra_code`` (TIGER): append one level holding the item's rank among the
  items that share its codes (0 for an item with unique codes).
* ``reassign`` (LC-Rec style): move colliding items to an unused code of the
  last level under the same parent prefix, best-preferred first; fails
  clearly when a parent has no free code left.
"""
import numpy as np


def collision_groups(codes: np.ndarray):
    """(group id per item, size of that group)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    return inverse, counts[inverse]


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of items whose code sequence is shared with another item."""
    _, size = collision_groups(codes)
    return float(np.mean(size > 1)) if len(codes) else 0.0


def add_extra_code(codes: np.ndarray) -> np.ndarray:
    group, _ = collision_groups(codes)
    order = np.argsort(group, kind="stable")
    rank = np.empty(len(codes), dtype=np.int64)
    sorted_group = group[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    starts = np.repeat(first, np.diff(np.r_[first, len(codes)]))
    rank[order] = np.arange(len(codes)) - starts
    return np.concatenate([codes, rank[:, None]], axis=1)


def reassign_last_level(codes: np.ndarray, k: int, preference: np.ndarray = None) -> np.ndarray:
    """Move all but the first item of each collision group to a free last-level code.

    ``preference[i]`` lists last-level codes for item ``i``, best first (e.g.
    sorted by distance to the level's centroids); ascending codes otherwise.
    """
    codes = codes.copy()
    used = {}
    for row in map(tuple, codes.tolist()):
        used.setdefault(row[:-1], set()).add(row[-1])
    group, size = collision_groups(codes)
    seen = set()
    for i in np.flatnonzero(size > 1):
        if group[i] not in seen:
            seen.add(group[i])  # the first item keeps its codes
            continue
        parent = tuple(int(c) for c in codes[i, :-1])
        taken = used[parent]
        options = preference[i] if preference is not None else range(k)
        free = next((int(c) for c in options if int(c) not in taken), None)
        if free is None:
            raise ValueError(
                f"cannot reassign item {i}: all {k} last-level codes under prefix {parent} are "
                "taken; use extra_code collision handling (index_collision / code_collision: "
                "extra_code), or a larger k")
        codes[i, -1] = free
        taken.add(free)
    return codes


def resolve_collisions(codes: np.ndarray, method: str = "extra_code", k: int = None,
                       preference: np.ndarray = None) -> np.ndarray:
    if method == "extra_code":
        return add_extra_code(codes)
    if method == "reassign":
        if k is None:
            raise ValueError("reassign needs k, the codebook size of the last level")
        return reassign_last_level(codes, k, preference)
    raise ValueError(f"unknown collision method '{method}' (expected extra_code or reassign)")
