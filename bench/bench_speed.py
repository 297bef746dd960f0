"""Training and evaluation speed and memory of every plugin model beside its baseline.

    python bench/bench_speed.py [--datasets ml-100k amazon_beauty_5core] [--models EIMF SASRec ...]
                                [--batches 20] [--eval_users 2000] [--threads 1] [--full_prepare]
                                [--out speed]

Each (dataset, model) runs in its own process with the model's default
settings and its paper's protocol: it builds the model (``prepare``: data,
and the model's pre-trained parts: behaviour model, tokenizer, GAT expert,
base model; read from the plugin cache when an earlier run left them, so
``prepare`` is a warm-cache time unless the cache was empty; its long
pre-training stages are shortened unless ``--full_prepare``), trains
``--batches`` batches after two warm-up batches (samples/s: training rows
per second through the data loader, the model's ``calculate_loss``,
backward and the optimizer step), then, after one untimed warm-up batch,
scores test users (users/s: data loading and full-sort prediction, or
labelled rows/s for CTR models) and reports its peak RSS.  On CUDA the
clock is read after ``torch.cuda.synchronize()``.  Ratios compare a
plugin model with its baseline in the same run; the estimated epoch is the
training split's rows at the measured rate (stages outside the main loop,
such as EAGER's annealing or Llama4Rec's instruction tuning, are not in
it).  Prints a table and writes it to bench/results/<out>.md (JSON beside it;
``--out`` lets a run of some models leave the full table alone); rows a killed run
finished (same arguments) are read back from <out>.progress.json, not re-measured; the
file is removed once the table is written.
"""
import argparse
import json
import os
import re
import sys
import time

import bench_eagerllm
from runner import Progress, run_for_result

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = bench_eagerllm.DATA
# plugin model -> its baseline (RecBole's model the paper compares with, same protocol)
PAIRS = {"EAGERLLM": "SASRec", "SCRec": "SASRec", "EIMF": "SASRec",
         "Llama4Rec": "LightGCN", "ELCoRec": "DeepFM"}
# the baseline run under the plugin model's protocol (its yaml's split and metrics)
PROTOCOL_OF = {"ELCoRec": "ctr"}  # the others: leave_one_out
DATASETS = {"ml-100k": {}, "amazon_beauty_5core": {"data_path": DATA}}
# the CTR protocol labels rows by rating; these datasets have none
NO_RATING = {"amazon_beauty_5core"}
# pre-training stages shortened (they do not change the measured loops; at the
# defaults EAGER's behaviour SASRec alone takes ~50 min on ml-100k, one thread);
# --full_prepare keeps the defaults
SHORT_PREPARE = {"EAGERLLM": {"behavior_epochs": 1},
                 "SCRec": {"behavior_epochs": 1, "codebook_epochs": 20},
                 "ELCoRec": {"gat_epochs": 5}}

ONE_RUN = r"""
import json, resource, sys, time
import torch
spec = json.loads(sys.stdin.read())
sys.argv = sys.argv[:1]
from recbole_llm.config import Config
from recbole_llm.quick_start import build
from recbole_llm.utils import configure_cpu
from recbole.utils import init_logger, init_seed
config = Config(model=spec["model"], dataset=spec["dataset"], config_file_list=spec["files"],
                config_dict=spec["settings"], argv=[])
configure_cpu(config["cpu_threads"])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
start = time.perf_counter()
_, (train, valid, test), model, trainer = build(config)
if hasattr(model, "prepare_semantics"):  # EIMF: ESIM runs before training (EIMFTrainer.fit)
    model.prepare_semantics(config, train.dataset)
prepare = time.perf_counter() - start
cuda = torch.device(config["device"]).type == "cuda"
sync = torch.cuda.synchronize if cuda else (lambda: None)  # kernels finish inside the timed span
model.train()
rows = seconds = 0.0
batches = iter(train)
for step in range(spec["batches"] + 2):
    tic = time.perf_counter()  # the data loader's work is part of a training step
    batch = next(batches, None)
    if batch is None:
        break
    batch = batch.to(config["device"])
    trainer.optimizer.zero_grad()
    loss = model.calculate_loss(batch)
    loss = sum(loss) if isinstance(loss, tuple) else loss
    loss.backward()
    trainer.optimizer.step()
    sync()
    if step >= 2:  # two warm-up batches
        seconds += time.perf_counter() - tic
        rows += len(batch)
model.eval()
full = config["eval_args"]["mode"]["test"] == "full"  # else labelled rows (CTR)
score = model.full_sort_predict if full else model.predict


def first(data):
    return data[0] if isinstance(data, tuple) else data


users = eval_s = 0.0
with torch.no_grad():
    score(first(next(iter(test))).to(config["device"]))  # warm-up, not timed
    sync()
    batches, tic = iter(test), time.perf_counter()
    for data in batches:  # loading and scoring; the clock runs across both
        batch = first(data).to(config["device"])
        score(batch)
        users += len(batch)
        if users >= spec["eval_users"]:
            break
    sync()
    eval_s = time.perf_counter() - tic
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print("RESULT " + json.dumps({
    "prepare_s": prepare, "train_rows": len(train.dataset), "train_samples_per_s": rows / seconds,
    "eval_units_per_s": users / eval_s, "eval_unit": "users" if full else "rows",
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "trainable_params": trainable, "batches": spec["batches"]}))
"""


def run(model, dataset, protocol, args) -> dict:
    from recbole_llm.paths import plugin_file

    files = [plugin_file("protocol", f"{protocol}.yaml")] if protocol else []
    settings = dict(DATASETS[dataset], cpu_threads=args.threads, show_progress=False,
                    state="WARNING")
    if not args.full_prepare:
        settings.update(SHORT_PREPARE.get(model, {}))
    spec = {"model": model, "dataset": dataset, "files": files, "settings": settings,
            "batches": args.batches, "eval_users": args.eval_users}
    tic = time.time()
    result, stderr = run_for_result([sys.executable, "-c", ONE_RUN], json.dumps(spec),
                                    os.path.join(HERE, ".."))
    if result is None:
        return {"error": (stderr.strip().splitlines() or ["?"])[-1][:200]}
    print(f"{dataset} {model}: {result['train_samples_per_s']:.0f} samples/s, "
          f"{result['eval_units_per_s']:.0f} {result['eval_unit']}/s, "
          f"{result['peak_rss_mib']:.0f} MiB ({time.time() - tic:.0f} s)", flush=True)
    return result


def table(results) -> str:
    lines = ["| dataset | model | train samples/s | x baseline | est. epoch | eval /s | "
             "x baseline | peak RSS (MiB) | x baseline | prepare (s) | trainable params |",
             "|---" * 11 + "|"]
    for (dataset, model), r in results.items():
        base = results.get((dataset, PAIRS.get(model)), {}) if model in PAIRS else {}
        if "error" in r:
            lines.append(f"| {dataset} | {model} | failed: {r['error']} |" + " |" * 8)
            continue

        def ratio(key):
            return f"{r[key] / base[key]:.2g}x" if base and "error" not in base else "-"
        epoch_s = r['train_rows'] / r['train_samples_per_s']
        epoch = f"{epoch_s / 60:.1f} min" if epoch_s >= 60 else f"{epoch_s:.1f} s"
        lines.append(
            f"| {dataset} | {model} | {r['train_samples_per_s']:.0f} | "
            f"{ratio('train_samples_per_s')} | {epoch} | "
            f"{r['eval_units_per_s']:.0f} {r['eval_unit']} | {ratio('eval_units_per_s')} | "
            f"{r['peak_rss_mib']:.0f} | {ratio('peak_rss_mib')} | {r['prepare_s']:.0f} | "
            f"{r['trainable_params'] / 1e6:.2f}M |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--eval_users", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full_prepare", action="store_true",
                        help="default pre-training stages (else shortened: SHORT_PREPARE)")
    parser.add_argument("--out", default="speed",
                        help="table name: bench/results/<out>.md and <out>.json")
    args = parser.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.out) or args.out.startswith("."):
        parser.error(f"--out={args.out!r}: a file name under bench/results, no folders")
    # rows finished by a killed run with the same arguments are kept (resume)
    progress = Progress(os.path.join(HERE, "results", f"{args.out}.progress.json"), vars(args))
    results = {}
    for dataset in args.datasets:
        for model in args.models:
            protocol = PROTOCOL_OF.get(model, "leave_one_out")
            if protocol == "ctr" and dataset in NO_RATING:
                continue
            for name in (PAIRS[model], model):  # the baseline first, under the same protocol
                if (dataset, name) in results:
                    continue
                row = f"{dataset}/{name}"
                if not progress.done(row):
                    progress.save(row, run(name, dataset, protocol, args))
                results[(dataset, name)] = progress.rows[row]
    command = "python bench/bench_speed.py " + " ".join(sys.argv[1:])
    prepare = "default pre-training stages" if args.full_prepare else (
        "pre-training stages shortened, so prepare is not a default run's: " + "; ".join(
            f"{m} {', '.join(f'{k} {v}' for k, v in o.items())}" for m, o in SHORT_PREPARE.items()))
    text = (f"Default settings per model ({prepare}), {args.threads} thread(s), "
            f"{os.cpu_count()} cores, {args.batches} training batches after 2 warm-up, up to "
            f"{args.eval_users} test users after one warm-up batch (data loading timed in both); CTR models (ELCoRec, DeepFM) only where the data has "
            f"ratings ({', '.join(sorted(NO_RATING))}: none); {time.strftime('%Y-%m-%d')}.\n\n"
            f"    {command}\n\n"
            f"{table(results)}\n")
    print(text)
    with open(os.path.join(HERE, "results", f"{args.out}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(HERE, "results", f"{args.out}.json"), "w") as f:
        json.dump({f"{d}/{m}": r for (d, m), r in results.items()}, f, indent=1)
    progress.finish()  # the table is written: a new run measures again


if __name__ == "__main__":
    sys.exit(main())
