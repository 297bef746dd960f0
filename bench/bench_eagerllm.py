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
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "eagerllm_beauty")
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))

COMMON = {"data_path": DATA, "seed": 2020, "MAX_ITEM_LIST_LENGTH": 20, "show_progress": False,
          "metrics": ["Recall", "NDCG", "Hit"], "topk": [3, 5, 10, 20], "valid_metric": "NDCG@10"}
SASREC = {"model": "SASRec", "train_neg_sample_args": None, "stopping_step": 5}
# sized to train on 2 CPU cores in about an hour; behaviour embeddings come from the
# SASRec row's checkpoint (trained on the same training split)
EAGER = {"model": "EAGERLLM", "epochs": 2, "eval_step": 2, "aat_epochs": 1,
         "llm_hidden_size": 128, "llm_num_layers": 2, "llm_num_heads": 4,
         "train_batch_size": 64, "beam_batch_size": 64}
ROWS = {
    "sasrec": SASREC,
    "unit": EAGER,
    "semantic": dict(EAGER, index_composition="semantic"),
    "behavior": dict(EAGER, index_composition="behavior"),
    "random": dict(EAGER, index_composition="random"),
    "no_gct": dict(EAGER, gct_lambda_sem=0.0, gct_lambda_beh=0.0),
}

ONE_RUN = r"""
import json, sys, time
sys.argv = sys.argv[:1]
from recbole_llm.config import Config
from recbole_llm.quick_start import build
from recbole_llm.utils import set_cpu_threads
from recbole.utils import init_logger, init_seed
settings = json.loads(sys.stdin.read())
model = settings.pop("model")
config = Config(model=model, dataset="amazon_beauty_5core", config_dict=settings)
set_cpu_threads(config["cpu_threads"])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
start = time.time()
_, (train, valid, test), _, trainer = build(config)
prep = time.time() - start
start = time.time()
best_valid, best_result = trainer.fit(train, valid, saved=True, show_progress=False)
fit = time.time() - start
trainer.load_model_weights(trainer.saved_model_file)
start = time.time()
test_result = trainer.evaluate(test, load_best_model=False)
evaluate = time.time() - start
users = test.dataset.inter_num if hasattr(test, "dataset") else None
print("RESULT " + json.dumps({"test": {k: float(v) for k, v in test_result.items()},
                              "checkpoint": trainer.saved_model_file,
                              "prepare_s": prep, "fit_s": fit, "eval_s": evaluate,
                              "test_users": int(users)}))
"""


def run_row(name, force):
    path = os.path.join(OUT, f"{name}.json")
    if os.path.isfile(path) and not force:
        return json.load(open(path))
    settings = dict(COMMON, **ROWS[name])
    if settings["model"] == "EAGERLLM":
        # behaviour embeddings: the item table of the SASRec baseline trained on the same split
        settings["behavior_checkpoint"] = run_row("sasrec", False)["checkpoint"]
    workdir = os.path.join(HERE, "results", "work")
    os.makedirs(workdir, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] running {name}: {settings}", flush=True)
    proc = subprocess.run([sys.executable, "-c", ONE_RUN], input=json.dumps(settings), text=True,
                          capture_output=True, cwd=os.path.join(HERE, ".."))
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"row {name} failed:\n{proc.stderr[-4000:]}")
    result = dict(json.loads(line[-1][7:]), settings=settings)
    os.makedirs(OUT, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def table(results):
    base = results.get("sasrec")
    cols = ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "hit@3", "ndcg@3"]
    lines = ["| row | " + " | ".join(cols) + " | NDCG@10 / SASRec | eval s per 1k users | fit (min) |",
             "|---" * (len(cols) + 4) + "|"]
    for name, r in results.items():
        t = r["test"]
        ratio = t["ndcg@10"] / base["test"]["ndcg@10"] if base else float("nan")
        per_k = 1000 * r["eval_s"] / r["test_users"]
        lines.append(f"| {name} | " + " | ".join(f"{t[c]:.4f}" for c in cols) +
                     f" | {ratio:.2f}x | {per_k:.1f} | {r['fit_s'] / 60:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    for name in args.rows:
        run_row(name, args.force)
    done = {n: json.load(open(os.path.join(OUT, f"{n}.json"))) for n in ROWS
            if os.path.isfile(os.path.join(OUT, f"{n}.json"))}
    text = (f"Amazon Beauty 5-core, leave-one-out by time, full ranking over all items, seed 2020, "
            f"history 20, {os.cpu_count()} CPU cores, 1 thread; RecBole's evaluator.\n\n"
            + table(done) + "\n")
    print(text)
    with open(os.path.join(HERE, "results", "eagerllm_beauty.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
