"""EAGERLLM vs RecBole's SASRec on Amazon Beauty 5-core (leave-one-out, full ranking).

    python bench/bench_eagerllm.py --rows sasrec unit            # main comparison
    python bench/bench_eagerllm.py --rows semantic behavior random no_gct   # ablation

Each row trains and tests in a fresh process through recbole-llm's pipeline
(same split, seed 2020, RecBole's evaluator) and stores its result in
bench/results/eagerllm_beauty/<row>.json, so an interrupted benchmark resumes
with the rows not yet done (``--force`` reruns).  The table, with ratios over
SASRec and evaluation time per 1,000 users, goes to
bench/results/eagerllm_beauty.md.
"""
import os

from runner import FIRST_SEED, base_ratio, cell, main, run_row, seeded

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "eagerllm_beauty")
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))

COMMON = {"dataset": "amazon_beauty_5core", "data_path": DATA, "seed": 2020, "MAX_ITEM_LIST_LENGTH": 20, "show_progress": False,
          "metrics": ["Recall", "NDCG", "Hit"], "topk": [3, 5, 10, 20], "valid_metric": "NDCG@10"}
SASREC = {"model": "SASRec", "train_neg_sample_args": None, "stopping_step": 5}
# Measured (one stage-one step of 64 samples + their auxiliary rows): 1.8 s before
# packing and answer-only vocabulary projection, 0.63 s after with 1 thread, 0.44 s
# with 2; 2,054 steps per epoch on Beauty.  With issue 13's signal: 0.27 s per step
# with 2 threads alone, steady over the epoch (9.2 min); 1.6-5 s per step when the
# test suite ran beside it (two OpenMP threads on a shared core spin).  The EAGER rows run alone on the
# machine with both cores (cpu_threads 2): one stage-one epoch plus one annealing
# epoch, ~30 min per row.  The SASRec row used 1 thread (shared CPU).
# Behaviour embeddings come from the SASRec row's checkpoint (same training split).
EAGER = {"model": "EAGERLLM", "epochs": 1, "eval_step": 1, "aat_epochs": 1,
         "llm_hidden_size": 128, "llm_num_layers": 2, "llm_num_heads": 4,
         "train_batch_size": 64, "beam_batch_size": 64, "cpu_threads": 2}
ROWS = {
    "sasrec": SASREC,
    "unit": EAGER,
    "semantic": dict(EAGER, index_composition="semantic"),
    "behavior": dict(EAGER, index_composition="behavior"),
    "random": dict(EAGER, index_composition="random"),
    "no_gct": dict(EAGER, gct_lambda_sem=0.0, gct_lambda_beh=0.0),
    # the training signal of issue 13 (per-task means, separators, templates, sampled
    # GCT negatives, linear projectors): at the unit row's budget, and over several
    # stage-one epochs with early stopping
    "unit_signal": EAGER,
    # one at a time on both cores: two side by side on one thread each ran at 1.9 s per
    # step (half of it system time), against 0.65 s for one alone on one thread
    # (measured before runs flushed denormals: session 20, after the flush, two rows side by
    # side on one thread each ran at 0.6 and 1.05 s per step, unit_centroid and unit_node_centroid)
    "unit_multi": dict(EAGER, epochs=10, stopping_step=2, llm_dropout=0.0),
    # dropout (0.1, the default since) against unit_multi: the same budget without it
    "unit_dropout": dict(EAGER, epochs=10, stopping_step=2),
    # code tokens scored over their prefix's valid children, in training and decoding
    # (bench/diagnose_codes.py: under the vocabulary softmax the one-child levels cost
    # the target about 6.6 nats after two epochs, and beam 20 misses half the targets
    # the model scores above its last beam)
    "unit_trie": dict(EAGER, epochs=10, stopping_step=2, code_softmax="trie", cpu_threads=1),
    # residual k-means codes (a second-level code means the same under every parent)
    # against unit_dropout's hierarchical ones
    "unit_residual": dict(EAGER, epochs=10, stopping_step=2, index_quantizer="residual",
                          cpu_threads=1),
    # one token per k-means tree node (index_tokens: node): the second-level token
    # names the item, not a rank shared by 256 parents (bench/results/eagerllm_diagnosis.md)
    "unit_node": dict(EAGER, epochs=10, stopping_step=2, index_tokens="node"),
    # and the output layer tied to the token embeddings (SASRec scores with its input
    # item table): an item's own tokens learn from its uses in histories and as answers
    "unit_node_tied": dict(EAGER, epochs=10, stopping_step=2, index_tokens="node",
                           llm_tie_embeddings=True),
    "unit_tied": dict(EAGER, epochs=10, stopping_step=2, llm_tie_embeddings=True),
    # 32 clusters per level: the semantic tree's 1,024 leaves hold about 12 items each,
    # so the behaviour levels (clusters of the SASRec table, the same meaning under
    # every semantic prefix) decide the item, instead of a rank at the second level
    "unit_k32": dict(EAGER, epochs=10, stopping_step=2, index_k=32, index_collision="extra_code",
                     llm_max_prompt_tokens=180),
    # code tokens seeded from the exogenous vectors of the items they name
    # (code_token_init: centroid) instead of transformers' mean row, which makes every
    # code token one vector in this random-init backbone: level tokens against
    # unit_dropout, node tokens (each second-level token names one item) against unit_node
    "unit_centroid": dict(EAGER, epochs=10, stopping_step=2, code_token_init="centroid",
                          cpu_threads=1),
    "unit_node_centroid": dict(EAGER, epochs=10, stopping_step=2, index_tokens="node",
                               code_token_init="centroid", cpu_threads=1),
}

def row(name, force=False, seed=FIRST_SEED):
    settings = dict(COMMON, **ROWS[name], seed=seed)
    if settings["model"] == "EAGERLLM":
        # behaviour embeddings: the item table of the SASRec baseline trained on the same split
        # (and seed)
        settings["behavior_checkpoint"] = row("sasrec", seed=seed)["checkpoint"]
    return run_row(seeded(name, seed), settings, OUT, force)


def table(results):
    base = results.get("sasrec")
    cols = ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "hit@3", "ndcg@3"]
    lines = ["| row | " + " | ".join(cols) + " | NDCG@10 / SASRec | eval s per 1k users | fit (min) | threads |",
             "|---" * (len(cols) + 5) + "|"]
    for name, r in results.items():
        t = r["test"]
        ratio = base_ratio(r, base, "ndcg@10") if base else float("nan")
        per_k = 1000 * r["eval_s"] / r.get("test_rows", r.get("test_users"))  # one row per user
        lines.append(f"| {name} | " + " | ".join(cell(r, c) for c in cols) +
                     f" | {ratio:.2f}x | {per_k:.1f} | {r['fit_s'] / 60:.1f} | "
                     f"{r['settings'].get('cpu_threads', 1)} |")
    return "\n".join(lines)


HEADER = ("Amazon Beauty 5-core, leave-one-out by time, full ranking over all items, seed 2020, "
          f"history 20, {os.cpu_count()} CPU cores; RecBole's evaluator.  Fit = stage one + annealing "
          "for EAGERLLM (both with validation); eval = the test split, beam 20.")


if __name__ == "__main__":
    main(ROWS, row, OUT, table, HEADER, os.path.join(HERE, "results", "eagerllm_beauty.md"))
