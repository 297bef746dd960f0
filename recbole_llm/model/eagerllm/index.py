"""EAGER-LLM's dual-source item index: semantic and behavioural codes kept as
separate levels (``<s1_*><s2_*><b1_*><b2_*>``), and the index ablations."""
import numpy as np

from recbole_llm.fingerprint import array_fingerprint
from recbole_llm.tokenization import hierarchical_kmeans

COMPOSITIONS = ("unit", "semantic", "behavior", "random")


def build_dual_source_codes(sem: np.ndarray, beh: np.ndarray, composition: str, k: int,
                            sem_levels: int, beh_levels: int, iters: int, seed: int):
    """Raw codes ``[n, L]`` and their token prefixes for one index composition."""
    levels = sem_levels + beh_levels
    if composition == "unit":
        codes = np.hstack([hierarchical_kmeans(sem, k, sem_levels, iters, seed),
                           hierarchical_kmeans(beh, k, beh_levels, iters, seed)])
        prefixes = [f"s{i + 1}" for i in range(sem_levels)] + [f"b{i + 1}" for i in range(beh_levels)]
    elif composition == "semantic":
        codes = hierarchical_kmeans(sem, k, levels, iters, seed)
        prefixes = [f"s{i + 1}" for i in range(levels)]
    elif composition == "behavior":
        codes = hierarchical_kmeans(beh, k, levels, iters, seed)
        prefixes = [f"b{i + 1}" for i in range(levels)]
    elif composition == "random":
        codes = np.random.default_rng(seed).integers(0, k, size=(len(sem), levels))
        prefixes = [f"r{i + 1}" for i in range(levels)]
    else:
        raise ValueError(f"index_composition must be one of {COMPOSITIONS}, not '{composition}'")
    return codes, prefixes


def index_key(cache, sem: np.ndarray, beh: np.ndarray, settings: dict) -> str:
    """The index is a function of the two embedding tables and its settings."""
    return cache.key("eager-index", sem=array_fingerprint(sem), beh=array_fingerprint(beh),
                     **settings)
