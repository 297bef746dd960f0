"""EAGER-LLM's dual-source item index: semantic and behavioural codes kept as
separate levels (``<s1_*><s2_*><b1_*><b2_*>``), and the index ablations."""
import numpy as np

from recbole_llm.fingerprint import array_fingerprint
from recbole_llm.tokenization import hierarchical_kmeans, rq_kmeans

COMPOSITIONS = ("unit", "semantic", "behavior", "random")


def quantize(x: np.ndarray, k: int, levels: int, iters: int, seed: int,
             quantizer: str = "hierarchical") -> np.ndarray:
    """Codes ``[n, levels]``: tree k-means (the paper; a deeper code is a rank among
    its parent's children, whose meaning differs from parent to parent) or
    residual k-means (each level clusters what the levels before left, so a code
    means the same under every parent)."""
    if quantizer == "hierarchical":
        return hierarchical_kmeans(x, k, levels, iters, seed)
    if quantizer == "residual":
        return rq_kmeans(x, k, levels, iters, seed)[0]
    raise ValueError(f"index_quantizer must be hierarchical or residual, not '{quantizer}'")


def build_dual_source_codes(sem: np.ndarray, beh: np.ndarray, composition: str, k: int,
                            sem_levels: int, beh_levels: int, iters: int, seed: int,
                            quantizer: str = "hierarchical"):
    """Raw codes ``[n, L]`` and their token prefixes for one index composition."""
    levels = sem_levels + beh_levels
    if composition == "unit":
        codes = np.hstack([quantize(sem, k, sem_levels, iters, seed, quantizer),
                           quantize(beh, k, beh_levels, iters, seed, quantizer)])
        prefixes = [f"s{i + 1}" for i in range(sem_levels)] + [f"b{i + 1}" for i in range(beh_levels)]
    elif composition == "semantic":
        codes = quantize(sem, k, levels, iters, seed, quantizer)
        prefixes = [f"s{i + 1}" for i in range(levels)]
    elif composition == "behavior":
        codes = quantize(beh, k, levels, iters, seed, quantizer)
        prefixes = [f"b{i + 1}" for i in range(levels)]
    elif composition == "random":
        codes = np.random.default_rng(seed).integers(0, k, size=(len(sem), levels))
        prefixes = [f"r{i + 1}" for i in range(levels)]
    else:
        raise ValueError(f"index_composition must be one of {COMPOSITIONS}, not '{composition}'")
    return codes, prefixes


def index_key(cache, sem: np.ndarray, beh: np.ndarray, settings: dict) -> str:
    """The index is a function of the two embedding tables and the settings."""
    return cache.key("eager-index", sem=array_fingerprint(sem), beh=array_fingerprint(beh),
                     settings=settings)
