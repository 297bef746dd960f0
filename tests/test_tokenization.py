import numpy as np
import pytest
import torch

from recbole_llm.llm.cache import Cache
from recbole_llm.tokenization import (ItemIndex, PrefixTrie, ResidualQuantizer, code_perplexity,
                                      collision_rate, hierarchical_kmeans, node_codes,
                                      prefix_blocks, quantize,
                                      resolve_collisions, rq_kmeans, train_rqvae)


def clustered(n=600, clusters=6, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(clusters, dim))
    labels = rng.integers(0, clusters, n)
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_hierarchical_kmeans_follows_cluster_structure():
    x, labels = clustered()
    codes = hierarchical_kmeans(x, k=6, levels=3, nredo=5)
    assert codes.shape == (600, 3) and codes.min() >= 0 and codes.max() < 6
    # a first-level code holds items of one true cluster
    for c in np.unique(codes[:, 0]):
        members = labels[codes[:, 0] == c]
        assert np.mean(members == np.bincount(members).argmax()) > 0.95


def test_small_clusters_get_distinct_codes_without_kmeans():
    x, _ = clustered(n=5)
    codes = hierarchical_kmeans(x, k=8, levels=2)
    assert collision_rate(codes) == 0 and sorted(codes[:, 0]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["hkmeans", "rq_kmeans", "rqvae"])
def test_every_quantizer_gives_a_bijection_after_collision_handling(method):
    x, _ = clustered(n=400)
    kwargs = {"epochs": 5} if method == "rqvae" else {}
    raw = quantize(x, method, k=8, levels=2, **kwargs)
    assert raw.shape == (400, 2)
    index = ItemIndex.build(raw, collision="extra_code")
    assert collision_rate(index.codes[1:]) == 0 and index.levels == 3
    for item in range(1, index.n_items):
        assert index.item_of_codes(index.codes[item]) == item
    assert index.item_of_codes([99, 99, 99]) == 0
    assert index.stats()["raw_collision_rate"] == pytest.approx(collision_rate(raw))


def test_reassign_keeps_length_and_moves_only_colliders():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    fixed = resolve_collisions(codes, "reassign", k=4)
    assert fixed.shape == codes.shape and collision_rate(fixed) == 0
    assert fixed[0].tolist() == [0, 1] and fixed[3].tolist() == [1, 0]
    assert set(fixed[:3, 0]) == {0}                       # parents unchanged
    pref = np.array([[3, 2, 1, 0]] * 4)
    assert resolve_collisions(codes, "reassign", k=4, preference=pref)[1].tolist() == [0, 3]
    with pytest.raises(ValueError, match="all 2 last-level codes under prefix \\(0,\\)"):
        resolve_collisions(np.array([[0, 0]] * 3), "reassign", k=2)


def test_extra_code_ranks_within_group():
    codes = np.array([[1, 1], [0, 0], [1, 1], [1, 1]])
    assert resolve_collisions(codes)[:, 2].tolist() == [0, 0, 1, 2]


def test_node_codes_give_each_tree_node_its_own_code():
    """Tree k-means numbers a cluster's children 0..n under every parent; node codes
    name the whole prefix within a source's levels, and rows stay unique."""
    x, _ = clustered(n=400, clusters=4)
    sem = hierarchical_kmeans(x, k=4, levels=2, iters=10)
    beh = hierarchical_kmeans(x[::-1].copy(), k=4, levels=2, iters=10)
    codes = resolve_collisions(np.hstack([sem, beh]), "extra_code")
    blocks = prefix_blocks(["s1", "s2", "b1", "b2", "x"])
    assert blocks == [(0, 2), (2, 4), (4, 5)]
    nodes = node_codes(codes, blocks)
    assert collision_rate(nodes) == 0
    for start, end in blocks:
        for level in range(start, end):
            prefix = [tuple(r) for r in codes[:, start:level + 1].tolist()]
            # one code per distinct prefix of its block, and the same code for the same prefix
            assert len(set(nodes[:, level])) == len(set(prefix))
            assert len(set(zip(prefix, nodes[:, level].tolist()))) == len(set(prefix))
    # codes shared by two parents at the second level are two codes here
    assert len(set(nodes[:, 1])) > len(set(codes[:, 1]))
    # a block does not look at the levels before it
    assert np.array_equal(node_codes(codes[:, 2:4], [(0, 2)]), nodes[:, 2:4])


def test_item_index_tokens_and_cache_round_trip(tmp_path):
    index = ItemIndex.build(np.array([[0, 1], [1, 0], [1, 1]]), collision="reassign", k=2)
    assert index.item_string(1) == "<a_0><b_1>"
    assert index.tokens() == ["<a_0>", "<a_1>", "<b_0>", "<b_1>"]
    with pytest.raises(IndexError):
        index.item_tokens(0)
    cache = Cache(str(tmp_path))
    index.save(cache, "idx")
    again = ItemIndex.load(cache, "idx")
    assert np.array_equal(again.codes, index.codes) and again.prefixes == ["a", "b"]
    with pytest.raises(ValueError, match="collide"):
        ItemIndex(np.array([[-1, -1], [0, 1], [0, 1]]))


def test_prefix_trie_walks_and_refuses_duplicates():
    seqs = np.array([[5, 7, 9], [5, 7, 8], [5, 6, 1], [4, 0, 0]])
    trie = PrefixTrie(seqs, values=[10, 11, 12, 13])
    assert trie.allowed(0, 0).tolist() == [4, 5]
    node = trie.child(0, 0, 5)
    assert trie.allowed(1, node).tolist() == [6, 7]
    assert trie.child(1, node, 9) == -1
    assert [trie.lookup(s) for s in seqs] == [10, 11, 12, 13]
    assert trie.lookup([5, 7, 7]) is None
    with pytest.raises(ValueError, match="duplicate"):
        PrefixTrie(np.array([[1, 2], [1, 2]]))


def test_rq_kmeans_error_falls_with_depth():
    x, _ = clustered(n=500, dim=8)
    errors = []
    for levels in (1, 2, 3):
        codes, books = rq_kmeans(x, k=8, levels=levels)
        recon = sum(books[l][codes[:, l]] for l in range(levels))
        errors.append(float(np.mean((x - recon) ** 2)))
    assert errors[0] > errors[1] > errors[2]


def test_rqvae_loss_falls_and_codes_are_used():
    x, _ = clustered(n=500, dim=16)
    _, codes, history = train_rqvae(x, k=8, levels=2, latent_dim=8, hidden=64, epochs=30,
                                    batch_size=128, lr=3e-3, reset_every=0)
    assert history[-1] < 0.5 * history[0]
    assert code_perplexity(codes)[0] > 3


def test_dead_codes_are_reset_to_live_residuals():
    torch.manual_seed(0)
    rq = ResidualQuantizer(dim=4, k=6, levels=1)
    z = torch.randn(50, 4)
    with torch.no_grad():
        rq.codebooks[0, 3:] = 100.0                  # codes 3..5 can never win
    rq.train()
    rq(z)
    assert (rq.usage[0, 3:] == 0).all()
    assert rq.reset_dead_codes(z) == 3
    assert rq.codebooks[0, 3:].abs().max() < 100
