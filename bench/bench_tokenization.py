"""Index-building time and constrained beam-search throughput.

    python bench/bench_tokenization.py [--sizes 10000 100000 1000000] [--quick]

Index building: hierarchical k-means and RQ-KMeans (faiss, k=256, 3 levels,
20 iterations) plus collision handling, on random items x 384 dims.
Decoding: users/s of ``constrained_beam_search`` (beam 20, 4 code tokens,
top-20) with the default small backbone (hidden 256, 4 layers) and EAGERLLM's
(hidden 128, 2 layers) over tries of 10k and 1M random items, prompts of 100
tokens, 32 users per batch.
Real data: collision rate and code usage of the same quantisers on Amazon
Beauty item-text embeddings (all-MiniLM-L6-v2).
Prints the tables and writes bench/results/tokenization.md (indices, Beauty)
and bench/results/decoding.md; ``--parts`` picks what to run.
"""
import argparse
import os
import resource
import time

import numpy as np
import torch

import recbole_llm  # noqa: F401
from recbole_llm.llm.backbone import small_llama
from recbole_llm.llm.generation import constrained_beam_search
from recbole_llm.tokenization import ItemIndex, PrefixTrie, hierarchical_kmeans, rq_kmeans
from recbole_llm.utils import configure_cpu

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_indices(sizes, dim=384, k=256, levels=3, iters=20):
    rows = []
    for n in sizes:
        x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
        for name, fn in (("hkmeans", lambda: hierarchical_kmeans(x, k, levels, iters=iters)),
                         ("rq_kmeans", lambda: rq_kmeans(x, k, levels, iters=iters)[0])):
            codes, build_s = timed(fn)
            index, resolve_s = timed(lambda: ItemIndex.build(codes, "extra_code"))
            trie_s = timed(lambda: PrefixTrie(index.codes[1:]))[1]
            rows.append((name, n, build_s, resolve_s + trie_s, index.raw_collision_rate,
                         index.codes[1:, -1].max() + 1))
            print(rows[-1], flush=True)
        x = None  # free the matrix before the next size
    return rows


def bench_decoding(trie_sizes, hidden=256, layers=4, n_users=128, batch=32, beams=20,
                   prompt_len=100, base_vocab=2000):
    rows = []
    model = small_llama(base_vocab + 4 * 256, hidden=hidden, layers=layers, heads=4).eval()
    rng = np.random.default_rng(0)
    for n in trie_sizes:
        codes = np.unique(rng.integers(0, 256, size=(int(n * 1.1), 4)), axis=0)[:n]
        token_ids = base_vocab + codes + 256 * np.arange(4)
        trie, trie_s = timed(lambda: PrefixTrie(token_ids))
        prompts = torch.as_tensor(rng.integers(10, base_vocab, size=(n_users, prompt_len)))
        mask = torch.ones_like(prompts)
        constrained_beam_search(model, prompts[:2], mask[:2], trie, beams)  # warm-up
        start = time.perf_counter()
        for s in range(0, n_users, batch):
            items, _ = constrained_beam_search(model, prompts[s:s + batch], mask[s:s + batch],
                                               trie, beams)
            assert (items > 0).all()
        elapsed = time.perf_counter() - start
        rows.append((len(codes), trie_s, n_users / elapsed))
        print(rows[-1], flush=True)
    return rows


def bench_beauty(data_path, k=256):
    """Collision rate and code usage on real item text: Amazon Beauty, MiniLM embeddings."""
    import sys
    from recbole_llm.config import Config
    from recbole_llm.data import TextDataset
    from recbole_llm.llm.encoder import item_text_embeddings

    argv, sys.argv = sys.argv, sys.argv[:1]
    config = Config(model="BPR", dataset="amazon_beauty_5core",
                    config_dict={"data_path": data_path, "state": "WARNING"})
    sys.argv = argv
    emb, enc_s = timed(lambda: item_text_embeddings(TextDataset(config), config)[1:])
    rows = []
    for name, levels, fn in (
            ("hkmeans", 2, lambda: hierarchical_kmeans(emb, k, 2, iters=100)),
            ("hkmeans", 3, lambda: hierarchical_kmeans(emb, k, 3, iters=100)),
            ("rq_kmeans", 3, lambda: rq_kmeans(emb, k, 3, iters=100)[0]),
            ("rq_kmeans", 4, lambda: rq_kmeans(emb, k, 4, iters=100)[0])):
        codes, build_s = timed(fn)
        index = ItemIndex.build(codes, "extra_code")
        ppl = ", ".join(f"{p:.1f}" for p in index.stats()["perplexity"][:levels])
        rows.append((name, levels, build_s, index.raw_collision_rate,
                     int(index.codes[1:, -1].max()) + 1, ppl))
        print(rows[-1], flush=True)
    return len(emb), enc_s, rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=["indices", "decode", "beauty"],
                        choices=["indices", "decode", "beauty"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--tries", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beauty_data_path", default=os.path.join(HERE, "..", "..", "shared", "data"),
                        help="folder holding amazon_beauty_5core/")
    args = parser.parse_args()
    configure_cpu(args.threads)
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    stamp = f"{args.threads} thread(s), {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    if "indices" in args.parts or "beauty" in args.parts:
        lines = []
        if "indices" in args.parts:
            rows = bench_indices(args.sizes)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
            lines += [f"Random items x 384 dims, k=256, 3 levels, 20 k-means iterations, {stamp}; "
                      f"peak RSS {peak:.1f} GiB.", "",
                      "| quantiser | items | build (s) | collisions + trie (s) | raw collision rate | "
                      "extra-code range |", "|---|---|---|---|---|---|"]
            lines += [f"| {m} | {n:,} | {b:.1f} | {r:.1f} | {c:.3f} | {e} |" for m, n, b, r, c, e in rows]
        if "beauty" in args.parts:
            n, enc_s, rows = bench_beauty(args.beauty_data_path)
            lines += ["", f"Amazon Beauty item text ({n:,} items, title + brand + categories), "
                      f"all-MiniLM-L6-v2 embeddings ({enc_s:.0f} s, cached), k=256, 100 iterations; "
                      "code usage as perplexity per level (256 = all codes used evenly):", "",
                      "| quantiser | levels | build (s) | raw collision rate | extra-code range | "
                      "perplexity per level |", "|---|---|---|---|---|---|"]
            lines += [f"| {m} | {l} | {b:.1f} | {c:.3f} | {e} | {p} |" for m, l, b, c, e, p in rows]
        write(os.path.join(results, "tokenization.md"), lines)
    if "decode" in args.parts:
        lines = [f"Constrained beam search (tree attention), beam 20, 4 codes, top-20, 100-token "
                 f"prompts, 32 users per batch, {stamp}:", "",
                 "| backbone | trie items | trie build (s) | users/s |", "|---|---|---|---|"]
        for hidden, layers in ((256, 4), (128, 2)):
            for n, t, u in bench_decoding(args.tries, hidden=hidden, layers=layers):
                lines.append(f"| hidden {hidden}, {layers} layers | {n:,} | {t:.2f} | {u:.1f} |")
        write(os.path.join(results, "decoding.md"), lines)


def write(path, lines):
    table = "\n".join(lines)
    print(table)
    with open(path, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
