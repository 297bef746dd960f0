"""SCRec vs RecBole's SASRec on Amazon Beauty 5-core (leave-one-out, full ranking).

    python bench/bench_screc.py --rows sasrec screc --seeds 2020 2021 2022   # main comparison
    python bench/bench_screc.py --rows no_align seq_only                     # ablations
    python bench/bench_screc.py --serving                                    # top-K cache cost

Each row trains and tests in a fresh process through recbole-llm's pipeline
(same split and seed as the EAGERLLM benchmark, RecBole's evaluator) and
stores its result, validation curve per epoch and codebook report in
bench/results/screc_beauty/<row>.json; a killed row resumes after its last
epoch.  The SASRec row is the EAGERLLM benchmark's (same settings, split and
seed), whose item table is also SCRec's collaborative embedding source.
``--serving`` loads the screc row's checkpoint, builds the top-K cache of
every user and times lookups (bench/results/screc_beauty/serving.json).
The table goes to bench/results/screc_beauty.md.
"""
import json
import os
import sys
import time

import bench_eagerllm
from runner import FIRST_SEED, base_ratio, cell, main, run_row, seeded

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "screc_beauty")
MD = os.path.join(HERE, "results", "screc_beauty.md")

# the backbone and batch of the EAGERLLM rows (one stage-two epoch ~ one EAGER epoch on 2 cores)
SCREC = {"model": "SCRec", "epochs": 10, "stopping_step": 2, "eval_step": 1,
         "llm_hidden_size": 128, "llm_num_layers": 2, "llm_num_heads": 4,
         "train_batch_size": 64, "beam_batch_size": 64, "cpu_threads": 2}
ROWS = {
    "sasrec": None,  # bench_eagerllm's row
    "screc": SCREC,
    # ablations of the issue: codebooks without the alignment loss; the sequential task alone
    "no_align": dict(SCREC, align_weight=0.0),
    "seq_only": dict(SCREC, aux_task_ratio={"item2text": 0, "text2item": 0, "query": 0,
                                            "negative": 0}),
}


def row(name, force=False, seed=FIRST_SEED):
    sasrec = bench_eagerllm.row("sasrec", seed=seed)
    if name == "sasrec":
        os.makedirs(OUT, exist_ok=True)
        path = os.path.join(OUT, f"{seeded('sasrec', seed)}.json")
        with open(path, "w") as f:
            json.dump(sasrec, f, indent=1)
        return sasrec
    settings = dict(bench_eagerllm.COMMON, **ROWS[name], seed=seed,
                    behavior_checkpoint=sasrec["checkpoint"])
    return run_row(seeded(name, seed), settings, OUT, force)


def serving(seed=FIRST_SEED) -> dict:
    """Top-K cache of the screc row: build time per 1,000 users, lookup latency."""
    from recbole_llm.serving import TopKCache, load_model
    from recbole_llm.utils import configure_cpu

    result = row("screc", seed=seed)
    configure_cpu(2)
    start = time.perf_counter()
    _, dataset, model = load_model(os.path.join(HERE, "..", result["checkpoint"]),
                                   show_progress=False, state="WARNING")
    load_s = time.perf_counter() - start
    store = TopKCache(model, dataset)
    stats = store.build(show_progress=True)
    users = [dataset.id2token(dataset.uid_field, u) for u in range(1, min(dataset.user_num, 1001))]
    store.topk(users[0], 10)  # the table loads once
    start = time.perf_counter()
    for u in users:
        store.topk(u, 10)
    lookup_ms = 1000 * (time.perf_counter() - start) / len(users)
    out = dict(stats, load_model_s=round(load_s, 1), lookup_ms=round(lookup_ms, 4))
    with open(os.path.join(OUT, "serving.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(out)
    return out


def table(results):
    base = results.get("sasrec")
    cols = ["hit@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"]
    lines = ["| row | " + " | ".join(cols) + " | NDCG@5 / SASRec | NDCG@10 / SASRec | epochs "
             "| fit (min) | codebooks: rec. error, codes used, collisions |",
             "|---" * (len(cols) + 6) + "|"]
    for name, r in results.items():
        ratios = [f"{base_ratio(r, base, m):.2f}x" if base else "-" for m in ("ndcg@5", "ndcg@10")]
        tok = r.get("tokenizer")
        codebooks = (f"{tok['reconstruction_error']:.3f}, {tok['codes_used']}, "
                     f"{tok['collision_rate']:.4f}") if tok else "-"
        lines.append(f"| {name} | " + " | ".join(cell(r, c) for c in cols) +
                     f" | {ratios[0]} | {ratios[1]} | {len(r.get('valid_curve') or [])} | "
                     f"{r['fit_s'] / 60:.1f} | {codebooks} |")
    return "\n".join(lines)


HEADER = ("Amazon Beauty 5-core, leave-one-out by time, full ranking over all items, "
          f"history 20, {os.cpu_count()} CPU cores; RecBole's evaluator (hit@5 is HR@5).  "
          "SCRec: small default backbone (hidden 128 x 2 layers), 4 codebooks of 256 on the "
          "SASRec row's item table, beam 20.")

if __name__ == "__main__":
    if "--serving" in sys.argv:
        serving()
        sys.exit(0)
    main(ROWS, row, OUT, table, HEADER, MD)
