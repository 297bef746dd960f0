"""k-means (faiss) and hierarchical (tree) k-means item indices."""
import numpy as np


def kmeans(x: np.ndarray, k: int, iters: int = 50, seed: int = 0, nredo: int = 1):
    """faiss k-means; returns (centroids [k, d], assignment [n])."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False, nredo=nredo,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign[:, 0].astype(np.int64)


def hierarchical_kmeans(x: np.ndarray, k: int, levels: int, iters: int = 50,
                        seed: int = 0, nredo: int = 1) -> np.ndarray:
    """Tree k-means: split all items into ``k`` clusters, then each cluster into
    ``k`` sub-clusters, ``levels`` deep.  Returns codes ``[n, levels]`` in
    ``[0, k)``; ``nredo`` restarts keep the best of several k-means runs.  A cluster of at most ``k`` items gives each item its own code
    at the next level (no k-means needed), as in EAGER-LLM's indexer.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    codes = np.zeros((len(x), levels), dtype=np.int64)

    def split(rows, level):
        if level == levels or len(rows) == 0:
            return
        if len(rows) <= k:  # distinct codes here; deeper levels stay 0
            codes[rows, level] = np.arange(len(rows))
            return
        _, assign = kmeans(x[rows], k, iters=iters, seed=seed + level, nredo=nredo)
        codes[rows, level] = assign
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(1, k))
        for part in np.split(rows[order], bounds):
            split(part, level + 1)

    split(np.arange(len(x)), 0)
    return codes
