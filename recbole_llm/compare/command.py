"""Compare models on one dataset, one split and protocol, several seeds.

    python run_recbole_llm.py --compare --models=SASRec,EIMF,EAGERLLM --dataset=ml-100k \\
        --seeds=2020,2021,2022 [--protocol=leave_one_out] [--results_dir=results/x] \\
        [--config_files="a.yaml"] [--key=value ...] [--EIMF.key=value ...]

The protocol (``properties/protocol/<name>.yaml`` or a yaml file of your
own) is layered above every model's property files, so all models get the
same rows, split, metrics and validation metric; the command refuses a
setting that would give one model another split.  ``--key=value`` applies
to every model; ``--Model.key=value`` to that model only (a model's own
hyper-parameter).  Each (model, seed) runs in its own process
(``recbole_llm.compare.worker``); one that fails is reported in the table
with its error and the others go on.  A finished run is stored under
``<results_dir>/runs/`` with a key of everything that shapes it (its
settings, protocol included, and the content of the dataset's files, of
``llm_path`` and other model folders): running the command again skips it,
and a killed run resumes after its last finished epoch.  The results
folder holds ``runs.csv``, ``summary.csv``, ``results.md``, ``metrics.png``
and ``curves.png``; the table is printed.
"""
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from recbole_llm.errors import InputError
from recbole_llm.options import parse_argv, parse_value, pop_switch
from recbole_llm.paths import plugin_file

# Settings that decide which rows exist, how they split and how they are scored:
# the same for every model of a comparison.
SPLIT_KEYS = ("eval_args", "metrics", "topk", "valid_metric", "valid_metric_bigger",
              "min_history", "threshold", "user_inter_num_interval", "item_inter_num_interval",
              "val_interval", "rm_dup_inter", "filter_inter_by_user_or_item", "seed",
              "data_path", "load_col", "unused_col", "benchmark_filename")
# Run-only settings that say where files go (the data's content is keyed instead).
LOCATION_KEYS = frozenset({"checkpoint_dir", "llm_cache_dir", "resume_checkpoint", "data_path",
                           "config_files", "dataset_save_path", "dataloaders_save_path"})
FLAGS = ("--compare", "--force")  # may be written without =True
DEFAULT_PROTOCOL = "leave_one_out"
USAGE = __doc__.split("\n\n")[1]


@dataclass
class Plan:
    models: list
    dataset: str
    seeds: list
    protocol: str                 # the protocol yaml file
    results_dir: str
    config_files: list = field(default_factory=list)
    common: dict = field(default_factory=dict)   # --key=value for every model (raw strings)
    scoped: dict = field(default_factory=dict)   # {model: {key: raw}}
    force: bool = False

    def argv(self, model: str, seed: int) -> list:
        options = dict(self.common, **self.scoped.get(model, {}))
        options.setdefault("checkpoint_dir", os.path.join(self.results_dir, "saved"))
        options["seed"] = str(seed)
        return [f"--{k}={v}" for k, v in options.items()]

    def config_file_list(self) -> list:
        return [self.protocol, *self.config_files]


def _protocol_file(value: str) -> str:
    if value.endswith((".yaml", ".yml")):
        if not os.path.isfile(value):
            raise InputError(f"--protocol: '{value}' is not a file")
        return os.path.abspath(value)
    path = plugin_file("protocol", f"{value}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(os.path.dirname(path)) if f.endswith(".yaml"))
        raise InputError(f"--protocol: unknown protocol '{value}'; one of {', '.join(known)} "
                         "or a yaml file of your own")
    return path


def _list(raw: dict, key: str, default=None) -> list:
    text = raw.pop(key, None)
    if text is None:
        if default is None:
            raise InputError(f"--compare needs --{key}=A,B,...")
        return default
    value = parse_value(text)
    items = value if isinstance(value, (list, tuple)) else str(text).split(",")
    items = [str(i).strip() for i in items if str(i).strip()]
    if not items or len(set(items)) != len(items):
        raise InputError(f"--{key}: a comma-separated list without repeats, got '{text}'")
    return items


def parse(argv) -> Plan:
    """The comparison asked for on the command line; bad input is an :class:`InputError`."""
    raw = parse_argv(argv)
    if not pop_switch(raw, "compare", True):
        raise InputError("--compare=False: leave it out to run one model")
    models = _list(raw, "models")
    seeds_text = _list(raw, "seeds", ["2020"])
    try:
        seeds = [int(s) for s in seeds_text]
    except ValueError:
        raise InputError(f"--seeds: integers, got {','.join(seeds_text)}") from None
    if "seed" in raw:
        raise InputError("--seed: a comparison takes --seeds=2020,2021,...")
    dataset = raw.pop("dataset", None)
    if not dataset:
        raise InputError("--compare needs --dataset=NAME")
    if "model" in raw:
        raise InputError("--model: a comparison takes --models=A,B,...")
    protocol_name = raw.pop("protocol", DEFAULT_PROTOCOL)
    protocol = _protocol_file(protocol_name)
    config_files = [os.path.abspath(p) for p in raw.pop("config_files", "").split()]
    force = pop_switch(raw, "force")
    results_dir = raw.pop("results_dir", None)
    for key in ("nproc", "world_size"):
        if key in raw:
            raise InputError(f"--{key}: a comparison runs each model in one process; train "
                             "a model on several processes with run_recbole_llm.py --model=...")
    common, scoped = {}, {}
    for key, value in raw.items():
        head, dot, rest = key.partition(".")
        if dot and head in models:
            scoped.setdefault(head, {})[rest] = value
        elif dot:
            raise InputError(f"--{key}: '{head}' is not one of the compared models "
                             f"({', '.join(models)}); write --Model.key=value")
        else:
            common[key] = value
    if results_dir is None:  # the same settings find the same folder again (and skip);
        # models and seeds are left out, so adding one reuses the runs already done
        digest = hashlib.sha256(json.dumps([protocol_name, sorted(common.items()),
                                            sorted((m, sorted(s.items())) for m, s in
                                                   scoped.items()), config_files]).encode())
        stem = os.path.splitext(os.path.basename(protocol))[0]
        results_dir = os.path.join("results", f"{dataset}-{stem}-{digest.hexdigest()[:8]}")
    return Plan(models, dataset, seeds, protocol, os.path.abspath(results_dir), config_files,
                common, scoped, force)


def build_config(plan: Plan, model: str, seed: int):
    from recbole_llm.config import Config

    return Config(model=model, dataset=plan.dataset, config_file_list=plan.config_file_list(),
                  argv=plan.argv(model, seed))


def check(plan: Plan) -> dict:
    """Every model's config, checked as a single run checks it (options, files,
    paths) before anything trains, and the split settings equal across models;
    ``{model: config of the first seed}``."""
    from recbole_llm.quick_start import check_inputs

    configs = {}
    for model in plan.models:
        try:
            config = build_config(plan, model, plan.seeds[0])
        except InputError as err:
            hint = ""
            if "unknown option" in str(err) and not plan.scoped.get(model):
                hint = (" (a setting of one model only is written --Model.key=value, "
                        "e.g. --EIMF.num_interests=8)")
            raise InputError(f"{model}: {err}{hint}") from None
        check_inputs(config)
        configs[model] = config
    first = plan.models[0]
    for model in plan.models[1:]:
        for key in SPLIT_KEYS:
            mine = configs[model].final_config_dict.get(key)
            theirs = configs[first].final_config_dict.get(key)
            if mine != theirs:
                raise InputError(
                    f"{key} differs between {first} ({theirs}) and {model} ({mine}): a "
                    "comparison gives every model the same rows, split and metrics; set it "
                    "for all models (--key=value or the protocol file), not per model")
    return configs


def run_key(config) -> str:
    """What shapes a run's result: its settings (paths as content), the dataset
    files' content, the plugin's code and library versions, and every setting that
    leaves the metrics alone but not the stored times and memory (device, threads,
    inference batch sizes, ...: the run-only keys other than where files go)."""
    from recbole_llm.fingerprint import (RUN_ONLY_KEYS, code_fingerprint, path_fingerprint,
                                         settings_fingerprint)

    memo = config["llm_cache_dir"] or os.path.join(".cache", "recbole_llm")
    run_only = sorted(RUN_ONLY_KEYS - LOCATION_KEYS)
    parts = {"model": config["model"], "settings": settings_fingerprint(config),
             "data": path_fingerprint(config["data_path"], memo), "code": code_fingerprint(),
             "run": {k: str(config.final_config_dict.get(k)) for k in run_only}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _last_error(log_path: str, returncode: int) -> str:
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = [l.strip() for l in f if l.strip()]
    for line in reversed(lines):
        if line.startswith("recbole-llm: error:"):
            return line[len("recbole-llm: error:"):].strip()
        if ("Error" in line or "Exception" in line) and ":" in line and not line.startswith(
                ("File ", "Traceback")):
            return line
    return f"exit status {returncode}" + (" (killed: out of memory?)" if returncode < 0 else "")


def run_one(plan: Plan, model: str, seed: int, key: str, log=print) -> dict:
    """A finished record of (model, seed): the stored one when its key matches,
    else a fresh run in a worker process; a failure is a record with ``error``."""
    runs = os.path.join(plan.results_dir, "runs")
    os.makedirs(runs, exist_ok=True)
    stem = os.path.join(runs, f"{model}.seed{seed}")
    out = stem + ".json"
    resume = f"{stem}.{key}"  # a killed run resumes only under the same settings and data
    if os.path.isfile(out) and not plan.force:
        with open(out) as f:
            record = json.load(f)
        if record.get("key") == key:
            log(f"{model} seed {seed}: done before (same settings, data and code), skipped")
            return record
    for name in os.listdir(runs):  # other settings' resume files are stale
        stale = name.startswith(f"{model}.seed{seed}.") and name.endswith(
            (".progress.json", ".last.pth", ".last-adapter")) and not name.startswith(f"{model}.seed{seed}.{key}.")
        if stale or (plan.force and name.startswith(f"{model}.seed{seed}.{key}.")):
            path = os.path.join(runs, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    job = {"model": model, "dataset": plan.dataset, "seed": seed, "key": key,
           "config_files": plan.config_file_list(), "argv": plan.argv(model, seed),
           "out": out, "resume_prefix": resume}
    start = time.time()
    with open(stem + ".log", "w") as log_file:
        proc = subprocess.run([sys.executable, "-m", "recbole_llm.compare.worker"],
                              input=json.dumps(job), text=True, stdout=log_file,
                              stderr=subprocess.STDOUT)
    if proc.returncode == 0 and os.path.isfile(out):
        with open(out) as f:
            record = json.load(f)
        if record.get("key") == key:
            return record
    error = _last_error(stem + ".log", proc.returncode)
    log(f"{model} seed {seed}: FAILED after {time.time() - start:.0f} s: {error} "
        f"(log: {stem}.log)")
    return {"model": model, "seed": seed, "key": key, "error": error}


def compare(plan: Plan, log=print) -> dict:
    """Run the plan (skipping what is done) and write the report; the summary rows."""
    from tqdm import tqdm

    from recbole_llm.compare import report

    configs = check(plan)
    main_metric = configs[plan.models[0]]["valid_metric"].lower()
    keys = {(m, s): run_key(build_config(plan, m, s)) for m in plan.models for s in plan.seeds}
    os.makedirs(plan.results_dir, exist_ok=True)
    runs = []
    bar = tqdm(total=len(keys), desc="compare", unit="run", file=sys.stderr)
    for model in plan.models:
        for seed in plan.seeds:
            bar.set_postfix_str(f"{model} seed {seed}")
            record = run_one(plan, model, seed, keys[(model, seed)], log=bar.write)
            runs.append(record)
            if not record.get("error"):
                bar.write(f"{model} seed {seed}: {main_metric} "
                          f"{record['test'].get(main_metric, float('nan')):.4f}, "
                          f"train {record['fit_s']:.0f} s")
            bar.update()
    bar.close()
    summary = report.summarize(plan.models, runs)
    command = "python run_recbole_llm.py " + " ".join(shlex.quote(a) for a in plan_argv(plan))
    header = (f"{plan.dataset}, protocol {os.path.basename(plan.protocol)} "
              f"({configs[plan.models[0]]['eval_args']}), seeds {','.join(map(str, plan.seeds))}; "
              f"mean ± sample std over seeds; ratio: {main_metric} over {plan.models[0]}'s.\n\n"
              f"    {command}")
    table = report.markdown(summary, header, main_metric)
    with open(os.path.join(plan.results_dir, "results.md"), "w") as f:
        f.write(table)
    files = report.write_csv(plan.results_dir, runs, summary)
    files += report.plot(plan.results_dir, summary, main_metric)
    log(table)
    log("written: " + ", ".join([os.path.join(plan.results_dir, "results.md"), *files]))
    return {"summary": summary, "runs": runs, "results_dir": plan.results_dir}


def plan_argv(plan: Plan) -> list:
    """The command line that reproduces ``plan``."""
    argv = ["--compare", f"--models={','.join(plan.models)}", f"--dataset={plan.dataset}",
            f"--seeds={','.join(map(str, plan.seeds))}", f"--protocol={plan.protocol}",
            f"--results_dir={plan.results_dir}"]
    if plan.config_files:
        argv.append(f"--config_files={' '.join(plan.config_files)}")
    argv += [f"--{k}={v}" for k, v in plan.common.items()]
    argv += [f"--{m}.{k}={v}" for m, s in plan.scoped.items() for k, v in s.items()]
    return argv


def main(argv=None) -> int:
    """``--compare`` on the command line; exit status 2 on bad input."""
    argv = [f"{a}=True" if a in FLAGS else a for a in (sys.argv[1:] if argv is None else argv)]
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        compare(parse(argv))
    except InputError as err:
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
