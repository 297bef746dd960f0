"""Hyper-parameter search for every model, RecBole's way (``HyperTuning`` + hyperopt).

    python run_recbole_llm.py --hyper --model=Llama4Rec --dataset=ml-100k \\
        --params_file=llama4rec.hyper [--algo=exhaustive] [--max_evals=100] \\
        [--early_stop=10] [--output_file=hyper/Llama4Rec.result] [--key=value ...]

The params file has RecBole's format, one parameter per line::

    alpha1 choice [0.3, 0.5, 0.7]
    learning_rate loguniform -9.2,-4.6
    dropout_prob uniform 0.0,0.5
    hidden_size quniform 32,128,32

It is read as data (a ``choice`` list is a literal, never evaluated as
RecBole does), and every parameter and fixed ``--key=value`` is checked
against the model's options before the first trial (exit 2).  Each trial is
``recbole_llm.quick_start.objective_function``; its result is stored in
``<output_file>.trials.jsonl`` under a key of everything that shapes it
(settings and the dataset's content), so a killed search, run again, skips
the trials it finished.  ``--algo``: ``exhaustive`` (every combination of
``choice`` parameters), ``random`` or ``bayes`` (TPE) for ``--max_evals``
trials; ``--early_stop``: trials without a better validation score before
the search stops.  The result file lists every trial's parameters and
results (RecBole's ``export_result``) and the best ones are printed.
"""
import json
import math
import os
import sys

import yaml

from recbole_llm.errors import InputError
from recbole_llm.options import parse_argv, parse_value, pop_int, pop_switch

KINDS = {"choice": None, "uniform": 2, "loguniform": 2, "quniform": 3}
ALGOS = ("exhaustive", "random", "bayes")
USAGE = __doc__.split("\n\n")[1]


def read_params_file(path: str) -> dict:
    """``{kind: {name: values}}`` (RecBole's ``params_dict``) from a params file;
    a line that is not ``name kind values`` is an error naming the file and line."""
    if not os.path.isfile(path):
        raise InputError(f"params_file '{path}' is not a file")
    params = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split(None, 2)
            where = f"params_file {path}, line {number}"
            if len(parts) < 3 or parts[1] not in KINDS:
                raise InputError(f"{where}: '{line.strip()}' is not 'name kind values' with kind "
                                 f"one of {', '.join(KINDS)}")
            name, kind, text = parts[0], parts[1], "".join(parts[2].split())
            if kind == "choice":
                values = parse_value(text)
                if not isinstance(values, list) or not values:
                    raise InputError(f"{where}: choice takes a non-empty list such as [0.1, 0.2], "
                                     f"got {text}")
            else:
                try:
                    values = [float(v) for v in text.split(",")]
                except ValueError:
                    values = []
                if len(values) != KINDS[kind]:
                    raise InputError(f"{where}: {kind} takes {KINDS[kind]} comma-separated "
                                     f"numbers, got {text}")
            if any(name in group for group in params.values()):
                raise InputError(f"{where}: parameter '{name}' is given twice")
            params.setdefault(kind, {})[name] = values
    if not params:
        raise InputError(f"params_file '{path}' names no parameter")
    return params


def sample_values(params: dict) -> dict:
    """One value of every parameter (the first choice, the low end of a range),
    enough to check its name and kind against the model's options."""
    sample = {}
    for kind, group in params.items():
        for name, values in group.items():
            sample[name] = (values[0] if kind == "choice" else
                            math.exp(values[0]) if kind == "loguniform" else
                            int(values[0]) if kind == "quniform" and values[0].is_integer()
                            else values[0])
    return sample


def refuse_inert_parameters(config, params: dict, max_combinations: int = 4096) -> None:
    """A searched parameter that has no effect in every trial (the model's
    ``inert_settings`` hook says which settings a configuration leaves unused)
    would make identical trials: an error naming why.  The searched choices are
    combined, since a searched switch can make a parameter matter in some trials;
    past ``max_combinations`` nothing is refused."""
    hook = getattr(config.model_class, "inert_settings", None)
    if hook is None:
        return
    import itertools

    final = config.final_config_dict
    choices = params.get("choice", {})
    names = [name for group in params.values() for name in group]
    reasons = hook(final)
    suspects = {name for name in names if name in reasons}
    combos = itertools.product(*([(k, v) for v in values] for k, values in choices.items()))
    for combo in itertools.islice(combos, max_combinations):
        suspects &= set(hook({**final, **dict(combo)}))
        if not suspects:
            return
    if next(combos, None) is not None:  # not every combination seen
        return
    for name in names:
        if name in suspects:
            raise InputError(f"params_file searches {name}, which {reasons[name]}")


def prepare(argv) -> dict:
    """The search asked for on the command line, checked; ``{params, files, algo, ...}``."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import check_inputs

    raw = parse_argv(argv)
    if not pop_switch(raw, "hyper", True):
        raise InputError("--hyper=False: leave it out to run one model")
    if "params_file" not in raw:
        raise InputError("--hyper needs --params_file=FILE (RecBole's format: name kind values)")
    params = read_params_file(raw.pop("params_file"))
    algo = raw.pop("algo", "exhaustive")
    if algo not in ALGOS:
        raise InputError(f"--algo: one of {', '.join(ALGOS)}, got {algo}")
    if algo == "exhaustive" and set(params) != {"choice"}:
        raise InputError("--algo=exhaustive searches choice parameters only: use random or "
                         "bayes for uniform / loguniform / quniform ranges")
    max_evals, early_stop = pop_int(raw, "max_evals", 100), pop_int(raw, "early_stop", 10)
    model, dataset = raw.pop("model", None), raw.pop("dataset", None)
    if not model or not dataset:
        raise InputError("--hyper needs --model=NAME and --dataset=NAME")
    output = os.path.abspath(raw.pop("output_file", os.path.join("hyper", f"{model}-{dataset}.result")))
    user_files = [os.path.abspath(p) for p in raw.pop("config_files", "").split()]
    fixed = {"model": model, "dataset": dataset,
             **{key: parse_value(value) for key, value in raw.items()}}
    os.makedirs(os.path.dirname(output), exist_ok=True)
    fixed_file = output + ".fixed.yaml"
    with open(fixed_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(fixed, f, sort_keys=False)
    files = [*user_files, fixed_file]
    try:  # every parameter and fixed setting known and of the right kind, files readable
        config = Config(config_dict=sample_values(params), config_file_list=files, argv=[])
    except InputError as err:
        raise InputError(f"{err} (params_file parameters are checked with their first value)") \
            from None
    check_inputs(config)
    refuse_inert_parameters(config, params)
    return {"params": params, "files": files, "algo": algo, "max_evals": max_evals,
            "early_stop": early_stop, "output": output}


class StoredTrials:
    """Finished trials on disk, keyed by their settings and data, so a killed search
    resumes with the trials not yet run."""

    def __init__(self, path: str, params: dict):
        self.path, self.done = path, {}
        # hyperopt draws quniform values as floats (96.0): whole steps become ints
        self.stepped = set(params.get("quniform", {}))
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        entry = json.loads(line)
                        self.done[entry["key"]] = entry["result"]

    def objective(self, config_dict, config_file_list, saved=True):
        from recbole_llm.compare.command import run_key
        from recbole_llm.config import Config
        from recbole_llm.quick_start import objective_function

        config_dict = {k: int(v) if k in self.stepped and float(v).is_integer() else v
                       for k, v in config_dict.items()}
        key = run_key(Config(config_dict=config_dict, config_file_list=config_file_list, argv=[]))
        if key in self.done:
            print(f"trial {config_dict}: done before (same settings and data), skipped")
            return self.done[key]
        result = objective_function(config_dict, config_file_list, saved)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "params": config_dict, "result": result},
                               default=lambda v: v.item() if hasattr(v, "item") else str(v)) + "\n")
        self.done[key] = result
        return result


def search(plan: dict):
    """Run the search; RecBole's ``HyperTuning`` after its trials."""
    from recbole.trainer import HyperTuning

    trials = StoredTrials(plan["output"] + ".trials.jsonl", plan["params"])
    tuner = HyperTuning(trials.objective, params_dict=plan["params"],
                        fixed_config_file_list=plan["files"], algo=plan["algo"],
                        max_evals=plan["max_evals"], early_stop=plan["early_stop"])
    tuner.run()
    tuner.export_result(output_file=plan["output"])
    return tuner


def main(argv=None) -> int:
    """``--hyper`` on the command line; exit status 2 on bad input."""
    argv = [f"{a}=True" if a == "--hyper" else a for a in (sys.argv[1:] if argv is None else argv)]
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        plan = prepare(argv)
        tuner = search(plan)
    except InputError as err:  # a trial's value the first-value check could not see
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    best = tuner.params2result[tuner.params2str(tuner.best_params)]
    print(f"best params: {tuner.best_params}")
    print(f"best valid: {best['best_valid_result']}")
    print(f"test result: {best['test_result']}")
    print(f"all trials: {plan['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
