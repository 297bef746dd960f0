"""Shared by the quality benchmarks: one row = one fresh process, one JSON file.

Each row runs ``recbole_llm.experiment.run_experiment`` (train, validate
every epoch, reload the best checkpoint, time the test) in its own process
and stores the result atomically, so an interrupted benchmark resumes with
the rows not yet done; a row killed mid-way resumes after its last finished
epoch (``<row>.last.pth`` and ``<row>.progress.json`` beside its result).
A model's own report of a pre-trained part (ELCoRec's ``expert_report``: the
GAT expert's validation AUC; SCRec's ``tokenizer_report``: its codebooks) is
stored with the row as ``expert`` / ``tokenizer``.
"""
import json
import os
import re
import subprocess
import sys
import time

ONE_RUN = r"""
import json, sys
sys.argv = sys.argv[:1]
from recbole_llm.config import Config
from recbole_llm.experiment import run_experiment
settings = json.loads(sys.stdin.read())
head_share = settings.pop("_head_share", None)  # report head / tail users separately
resume_prefix = settings.pop("_progress")
model, dataset = settings.pop("model"), settings.pop("dataset")
config = Config(model=model, dataset=dataset, config_dict=settings, argv=[])
def groups(struct, test, train, config):
    sys.path.insert(0, "bench")
    from groups import group_metrics
    return group_metrics(struct, test, train.dataset, config, head_share)
result = run_experiment(config, resume_prefix, groups if head_share else None)
print("RESULT " + json.dumps(result))
"""


def run_for_result(cmd: list, stdin: str = None, cwd: str = None):
    """Run a bench worker process; ``(its RESULT line's JSON or None, stderr)``."""
    proc = subprocess.run(cmd, input=stdin, text=True, capture_output=True, cwd=cwd)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        return None, proc.stderr
    return json.loads(line[-1][7:]), proc.stderr


def run_row(name: str, settings: dict, out_dir: str, force: bool = False) -> dict:
    """Result of one row (cached in ``out_dir/<name>.json`` unless ``force``)."""
    path = os.path.join(out_dir, f"{name}.json")
    if os.path.isfile(path) and not force:
        with open(path) as f:
            return json.load(f)
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    print(f"[{time.strftime('%H:%M:%S')}] running {name}: {settings}", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.abspath(os.path.join(out_dir, name))  # resume files: <prefix>.last.pth, ...
    found, stderr = run_for_result([sys.executable, "-c", ONE_RUN],
                                   json.dumps(dict(settings, _progress=prefix)), repo)
    if found is None:
        sys.exit(f"row {name} failed:\n{stderr[-4000:]}")
    result = dict(found, settings=settings)
    os.makedirs(out_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


FIRST_SEED = 2020  # the seed of every bench's COMMON settings: its rows keep their plain names


def seeded(name: str, seed: int) -> str:
    """File name of a row run with ``seed`` (``unit``, ``unit.seed2021``, ...)."""
    return name if seed == FIRST_SEED else f"{name}.seed{seed}"


def finished_rows(names, out_dir) -> dict:
    """Each finished row, its seeds merged: metrics, fit and eval times are the
    mean over the seeds found; ``test_std`` holds the sample standard deviation
    (n - 1) and ``seeds`` the seeds, so tables show mean and spread; the
    expert report stays the first seed's."""
    import glob
    import statistics

    done = {}
    for name in names:
        runs = []
        plain = os.path.join(out_dir, f"{name}.json")
        # <name>.seed<N>.json only: not the .progress.json of a seed still running
        seeded_runs = [p for p in sorted(glob.glob(os.path.join(out_dir, f"{name}.seed*.json")))
                       if re.fullmatch(rf"{re.escape(name)}\.seed\d+\.json", os.path.basename(p))]
        for path in ([plain] if os.path.isfile(plain) else []) + seeded_runs:
            with open(path) as f:
                runs.append(json.load(f))
        if not runs:
            continue
        merged = dict(runs[0])
        merged["seeds"] = [r["settings"].get("seed", FIRST_SEED) for r in runs]
        if len(runs) > 1:
            keys = [k for k in runs[0]["test"] if all(k in r["test"] for r in runs)]  # shared metrics
            merged["test"] = {k: statistics.fmean(r["test"][k] for r in runs) for k in keys}
            merged["test_std"] = {k: statistics.stdev(r["test"][k] for r in runs) for k in keys}
            if all(r.get("groups") for r in runs):  # head / tail users: mean over seeds
                merged["groups"] = {g: {m: statistics.fmean(r["groups"][g][m] for r in runs) for m in ms}
                                    for g, ms in runs[0]["groups"].items()}
            for key in ("fit_s", "eval_s"):
                merged[key] = statistics.fmean(r[key] for r in runs)
            merged["runs"] = runs
        done[name] = merged
    return done


def base_ratio(result: dict, base: dict, metric: str) -> float:
    """``result``'s mean over ``base``'s mean on the same seeds (a one-seed
    ablation against its own seed's base row, not the base's three-seed mean)."""
    def by_seed(r):
        return {run["settings"].get("seed", FIRST_SEED): run["test"][metric] for run in r.get("runs", [r])}
    mine, theirs = by_seed(result), by_seed(base)
    seeds = [s for s in mine if s in theirs]
    if not seeds:
        return float("nan")
    return sum(mine[s] for s in seeds) / sum(theirs[s] for s in seeds)


def cell(result: dict, metric: str) -> str:
    """``mean ± std (n)`` over seeds, or the single value."""
    value = f"{result['test'][metric]:.4f}"
    if "test_std" in result:
        value += f" ± {result['test_std'][metric]:.4f} ({len(result['seeds'])})"
    return value


def run_rows(rows: dict, run) -> None:
    """``--rows`` / ``--seeds`` / ``--force`` command line: run rows, each once per seed."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", default=list(rows), choices=list(rows))
    parser.add_argument("--seeds", nargs="+", type=int, default=[FIRST_SEED])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    for name in args.rows:
        for seed in args.seeds:
            run(name, args.force, seed)


def main(rows: dict, run, out_dir: str, table, header: str, md_path: str):
    """:func:`run_rows`, then print and write the table."""
    run_rows(rows, run)
    text = header + "\n\n" + table(finished_rows(rows, out_dir)) + "\n"
    print(text)
    with open(md_path, "w") as f:
        f.write(text)


class Progress:
    """Rows a killed benchmark already finished, read back when it runs again
    with the same arguments (resume); the file goes once the table is written."""

    def __init__(self, path: str, args: dict):
        self.path, self.key, self.rows = path, json.dumps(args, sort_keys=True), {}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("args") == self.key:
                self.rows = saved["rows"]

    def done(self, row: str) -> bool:
        return row in self.rows and "error" not in self.rows[row]

    def save(self, row: str, result: dict) -> None:
        self.rows[row] = result
        with open(self.path, "w") as f:
            json.dump({"args": self.key, "rows": self.rows}, f, indent=1)

    def finish(self) -> None:
        os.remove(self.path)

