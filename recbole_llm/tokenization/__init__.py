"""Item indices: k-means trees, residual quantisation, collisions, prefix trie."""
from recbole_llm.tokenization.collision import collision_rate, resolve_collisions
from recbole_llm.tokenization.index import ItemIndex, code_perplexity, node_codes, prefix_blocks
from recbole_llm.tokenization.kmeans import hierarchical_kmeans, kmeans
from recbole_llm.tokenization.residual import ResidualQuantizer, RQVAE, rq_kmeans, train_rqvae
from recbole_llm.tokenization.trie import PrefixTrie


def quantize(embeddings, method: str, k: int, levels: int, seed: int = 0, **kwargs):
    """Raw codes ``[n, levels]`` of ``embeddings`` by ``hkmeans``, ``rq_kmeans`` or ``rqvae``."""
    if method == "hkmeans":
        return hierarchical_kmeans(embeddings, k, levels, seed=seed, **kwargs)
    if method == "rq_kmeans":
        return rq_kmeans(embeddings, k, levels, seed=seed, **kwargs)[0]
    if method == "rqvae":
        return train_rqvae(embeddings, k, levels, seed=seed, **kwargs)[1]
    raise ValueError(f"unknown quantizer '{method}' (expected hkmeans, rq_kmeans or rqvae)")


__all__ = ["ItemIndex", "PrefixTrie", "ResidualQuantizer", "RQVAE", "code_perplexity",
           "collision_rate", "hierarchical_kmeans", "kmeans", "node_codes", "prefix_blocks", "quantize", "resolve_collisions",
           "rq_kmeans", "train_rqvae"]
