"""How index building and beam-20 generative inference scale with the catalog.

    python bench/bench_catalog.py [--sizes 10000 100000 1000000] [--users 64] [--threads 1]
                                  [--codebook_epochs 2] [--kmeans_iters 20]

Synthetic items (no dataset has a million items here): semantic vectors
(384-d, the text encoder's size) and behavioural vectors (64-d) drawn around
shared cluster centres, so k-means and the codebooks see structure.  For
each catalog size, in its own process (its peak RSS is that size's):

* EAGERLLM's index: hierarchical k-means over both sources (the model's
  ``index_k`` and levels, ``--kmeans_iters`` iterations: the yaml's 100 cost
  5x more), collision handling, the code tokens bound to a tokenizer and the
  prefix trie built;
* SCRec's index: the aligned RQ-VAE trained ``--codebook_epochs`` epochs
  (the stage's seconds: k-means initialisation, the epochs, the final
  encoding), codes, collisions, trie (with training the BPE tokenizer the
  codes are bound to);
* beam-20 constrained decoding over each trie with the small default
  backbone (the model's yaml size, random weights: the cost does not depend
  on them), prompts of a 20-item history: users/s.

Prints a table and writes it to bench/results/catalog.md (JSON beside it); sizes a
killed run finished (same arguments) are read back from catalog.progress.json (removed
once the table is written).
"""
import argparse
import json
import os
import resource
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
sys.path.insert(0, ROOT)
from runner import Progress, run_for_result  # noqa: E402


def model_defaults(model: str) -> dict:
    """overall.yaml below the model's yaml: the settings a default run reads."""
    import yaml

    from recbole_llm.paths import plugin_file

    settings = {}
    for path in (plugin_file("overall.yaml"), plugin_file("model", f"{model}.yaml")):
        with open(path) as f:
            settings.update(yaml.safe_load(f) or {})
    return settings


def synthetic_items(n: int, seed: int = 0):
    """Semantic [n, 384] and behavioural [n, 64] vectors around 1,000 shared topics."""
    import numpy as np

    rng = np.random.default_rng(seed)
    topics = rng.integers(0, 1000, n)
    sem = rng.normal(size=(1000, 384)).astype("float32")[topics] + \
        0.5 * rng.normal(size=(n, 384)).astype("float32")
    beh = rng.normal(size=(1000, 64)).astype("float32")[topics] + \
        0.7 * rng.normal(size=(n, 64)).astype("float32")
    return sem, beh


def tokenizer_with(index, vocab_size: int):
    from recbole_llm.llm.backbone import train_tokenizer

    words = [f"item {i} title words and a category {i % 97}" for i in range(500)]
    tokenizer = train_tokenizer(words, vocab_size=vocab_size)
    tokenizer.add_tokens(index.tokens())
    return tokenizer


def beam_users_per_s(index, tokenizer, s: dict, users: int, history: int = 20) -> float:
    """Users/s of constrained beam search (``num_beams``) over ``index``'s trie."""
    import numpy as np
    import torch

    from recbole_llm.llm.backbone import small_llama
    from recbole_llm.llm.generation import constrained_beam_search

    trie = index.bind(tokenizer)
    llm = small_llama(len(tokenizer), s["llm_hidden_size"], s["llm_num_layers"], s["llm_num_heads"],
                      max_positions=s["llm_max_positions"]).eval()
    rng = np.random.default_rng(0)
    items = rng.integers(1, index.n_items, size=(users, history))
    prompt = tokenizer("Recent items:", add_special_tokens=False)["input_ids"]
    rows = [prompt + [t for item in row for t in index.token_ids(int(item))] for row in items]
    ids = torch.tensor(rows)
    mask = torch.ones_like(ids)
    batch = s["beam_batch_size"]
    constrained_beam_search(llm, ids[:2], mask[:2], trie, num_beams=s["num_beams"])  # warm-up
    tic = time.perf_counter()
    for start in range(0, users, batch):
        found, _ = constrained_beam_search(llm, ids[start:start + batch], mask[start:start + batch],
                                           trie, num_beams=s["num_beams"])
        assert bool((found > 0).all()), "every beam must end at a real item"
    return users / (time.perf_counter() - tic)


def build_index(out: dict, name: str, codes, collision: str, k: int, prefixes=None, **kw):
    """``ItemIndex.build`` with the yaml's collision method; where a code node holds more
    items than ``k`` that method cannot place them all, so the size is measured with
    TIGER's extra code instead and the failure is recorded."""
    from recbole_llm.tokenization import ItemIndex

    if prefixes is not None:
        kw["prefixes"] = prefixes + (["x"] if collision == "extra_code" else [])
    try:
        index = ItemIndex.build(codes, collision=collision, k=k, **kw)
    except ValueError as err:
        out[f"{name}_default_collision_error"] = str(err).split(";")[0]
        collision = "extra_code"
        if prefixes is not None:
            kw["prefixes"] = prefixes + ["x"]
        index = ItemIndex.build(codes, collision=collision, k=k, **kw)
    out[f"{name}_collision"] = collision
    return index


def one_size(n: int, args) -> dict:
    """Index building and decoding for ``n`` synthetic items (run in a fresh process)."""
    import numpy as np

    from recbole_llm.model.eagerllm.index import build_dual_source_codes
    from recbole_llm.model.screc.tokenizer import train_alignment_tokenizer
    from recbole_llm.utils import configure_cpu

    configure_cpu(args.threads)
    out = {"items": n}
    sem, beh = synthetic_items(n)

    e = model_defaults("EAGERLLM")
    tic = time.perf_counter()
    codes, prefixes = build_dual_source_codes(sem, beh, e["index_composition"], e["index_k"],
                                              e["index_semantic_levels"], e["index_behavior_levels"],
                                              args.kmeans_iters, seed=0)
    out["eager_kmeans_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    eager = build_index(out, "eager", codes, e["index_collision"], e["index_k"], prefixes=prefixes)
    tokenizer = tokenizer_with(eager, e["llm_vocab_size"])
    eager.bind(tokenizer)
    out["eager_index_s"] = time.perf_counter() - tic
    out["eager_raw_collisions"] = eager.raw_collision_rate
    out["eager_users_per_s"] = beam_users_per_s(eager, tokenizer, e, args.users)

    c = model_defaults("SCRec")
    fields = {k: v for k, v in c.items() if k.startswith(("codebook_", "align_"))}
    fields.update(codebook_epochs=args.codebook_epochs, codebook_reset_every=0, seed=0)
    text = np.random.default_rng(1).normal(size=(n, c["llm_hidden_size"])).astype("float32")
    tic = time.perf_counter()
    stage = train_alignment_tokenizer(beh, text, types.SimpleNamespace(**fields), "cpu")
    # the whole stage: k-means initialisation, the epochs, the final encoding
    out["screc_codebook_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    screc = build_index(out, "screc", stage["codes"], c["code_collision"], c["codebook_size"],
                        preference=stage["preference"])
    tokenizer = tokenizer_with(screc, c["llm_vocab_size"])
    screc.bind(tokenizer)
    out["screc_index_s"] = time.perf_counter() - tic
    out["screc_raw_collisions"] = screc.raw_collision_rate
    out["screc_users_per_s"] = beam_users_per_s(screc, tokenizer, c, args.users)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def table(rows) -> str:
    lines = ["| items | EAGER k-means (s) | EAGER codes + trie (s) | EAGER raw collisions | "
             "EAGER beam-20 users/s | SCRec codebook stage (s) | SCRec codes + trie (s) | "
             "SCRec raw collisions | SCRec beam-20 users/s | peak RSS (MiB) |", "|---" * 10 + "|"]
    notes = []
    for r in rows:
        for name, label in (("eager", "EAGER"), ("screc", "SCRec")):
            if r.get(f"{name}_default_collision_error"):
                notes.append(f"{r['items']:,} items: {label}'s yaml collision handling (reassign) "
                             f"failed ({r[f'{name}_default_collision_error']}), so that row "
                             f"uses {r[f'{name}_collision']} (its codes + trie time includes the failed attempt).")
        if "error" in r:
            lines.append(f"| {r['items']:,} | failed: {r['error']} |" + " |" * 8)
            continue
        lines.append(
            f"| {r['items']:,} | {r['eager_kmeans_s']:.1f} | {r['eager_index_s']:.1f} | "
            f"{r['eager_raw_collisions']:.4f}"
            f"{' (' + r['eager_collision'] + ')' if r.get('eager_default_collision_error') else ''}"
            f" | {r['eager_users_per_s']:.1f} | "
            f"{r['screc_codebook_s']:.1f} | {r['screc_index_s']:.1f} | "
            f"{r['screc_raw_collisions']:.4f}"
            f"{' (' + r['screc_collision'] + ')' if r.get('screc_default_collision_error') else ''}"
            f" | {r['screc_users_per_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} |")
    return "\n".join(lines + ([""] + notes if notes else []))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--codebook_epochs", type=int, default=2)
    parser.add_argument("--kmeans_iters", type=int, default=20)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker: one size
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_size(args.one, args)), flush=True)
        return 0
    # sizes finished by a killed run with the same arguments are kept (resume)
    progress = Progress(os.path.join(HERE, "results", "catalog.progress.json"),
                        {k: v for k, v in vars(args).items() if k != "sizes"})
    rows = []
    for n in args.sizes:
        if progress.done(str(n)):
            rows.append(progress.rows[str(n)])
            continue
        tic = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--users", str(args.users),
               "--threads", str(args.threads), "--codebook_epochs", str(args.codebook_epochs),
               "--kmeans_iters", str(args.kmeans_iters)]
        result, stderr = run_for_result(cmd, cwd=ROOT)
        rows.append(result or {"items": n, "error": (stderr.strip().splitlines() or ["?"])[-1][:200]})
        progress.save(str(n), rows[-1])
        print(f"{n:,} items: {time.time() - tic:.0f} s", flush=True)
    command = "python bench/bench_catalog.py " + " ".join(sys.argv[1:])
    text = (f"Synthetic catalogs, {args.threads} thread(s), {os.cpu_count()} cores, CPU; "
            f"{args.kmeans_iters} k-means iterations, {args.codebook_epochs} codebook epochs, "
            f"{args.users} users decoded per size; {time.strftime('%Y-%m-%d')}.\n\n"
            f"    {command}\n\n{table(rows)}\n")
    print(text)
    with open(os.path.join(HERE, "results", "catalog.md"), "w") as f:
        f.write(text)
    with open(os.path.join(HERE, "results", "catalog.json"), "w") as f:
        json.dump(rows, f, indent=1)
    progress.finish()  # the table is written: a new run measures again
    return 0


if __name__ == "__main__":
    sys.exit(main())
