"""One training epoch of RecBole baselines on ml-100k, per CPU-thread setting.

    python bench/bench_threads.py [--threads 0 1 2] [--models BPR LightGCN SASRec]

``0`` is torch's default (one thread per core).  Each (model, threads) pair
runs in a fresh process, because torch fixes its inter-op pool once.  Prints a
table and writes it to bench/results/threads.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ONE_RUN = r"""
import json, sys, time
from recbole_llm.quick_start import build
from recbole_llm.config import Config
from recbole_llm.utils import configure_cpu
from recbole.utils import init_logger
model, threads = sys.argv[1], int(sys.argv[2])
extra = {"MAX_ITEM_LIST_LENGTH": 20, "train_neg_sample_args": None} if model == "SASRec" else {}
sys.argv = sys.argv[:1]
config = Config(model=model, dataset="ml-100k", config_dict=dict(
    extra, epochs=1, show_progress=False, cpu_threads=threads, state="WARNING"))
configure_cpu(threads)
init_logger(config)
_, (train, valid, test), _, trainer = build(config)
start = time.perf_counter()
trainer._train_epoch(train, 0, show_progress=False)
print(json.dumps({"epoch_s": time.perf_counter() - start}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["BPR", "LightGCN", "SASRec"])
    args = parser.parse_args()
    workdir = os.path.join(HERE, "results", "work")
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for model in args.models:
        times = {}
        for threads in args.threads:
            out = subprocess.run([sys.executable, "-c", ONE_RUN, model, str(threads)],
                                 cwd=workdir, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            times[threads] = json.loads(out.stdout.strip().splitlines()[-1])["epoch_s"]
            print(f"{model} threads={threads}: {times[threads]:.2f} s", flush=True)
        rows.append((model, times))
    head = "| model | " + " | ".join(f"{t or 'default'} thr (s)" for t in args.threads) + \
           " | default / 1 thread |"
    lines = [head, "|" + "---|" * (len(args.threads) + 2)]
    for model, times in rows:
        ratio = times[0] / times[1] if 0 in times and 1 in times else float("nan")
        lines.append(f"| {model} | " + " | ".join(f"{times[t]:.2f}" for t in args.threads)
                     + f" | {ratio:.1f}x |")
    table = "\n".join(lines)
    note = (f"One training epoch on ml-100k (RecBole defaults; SASRec with "
            f"MAX_ITEM_LIST_LENGTH 20, CE loss), {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d')}.\n\n")
    print(table)
    with open(os.path.join(HERE, "results", "threads.md"), "w") as f:
        f.write(note + table + "\n")


if __name__ == "__main__":
    main()
