"""Options: read as data, never run as code, and checked before any data loads.

RecBole's ``Config`` calls ``eval`` on every command-line value and every
string in ``config_dict``, reads yaml with PyYAML's ``FullLoader``, drops an
argument without ``=`` with a warning and splits ``--a=b=c`` wrongly.  Here:

* arguments are ``--key=value`` only, split on the first ``=``;
* values are Python literals (``ast.literal_eval``), ``true``/``false``/``none``
  in any case, or else the string itself;
* yaml files are read with a safe loader (RecBole's float rule kept, so
  ``1e-3`` is a float);
* every option the user set has the kind of value its default has (an int
  where the default is an int, ...) and lies in its range (table below), and
  ``valid_metric`` is one of the metrics the run computes.
"""
import ast
import math
import os
import re

import yaml

from recbole_llm.errors import InputError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def parse_value(text):
    """A command-line or ``config_dict`` string as a literal, else the string."""
    if not isinstance(text, str):
        return text
    word = text.strip().lower()
    if word in ("true", "false"):
        return word == "true"
    if word in ("none", "null", "~"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_argv(argv) -> dict:
    """``{key: raw string}`` from ``--key=value`` arguments; anything else is an error."""
    raw = {}
    for arg in argv:
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not eq or not _KEY.match(key):
            raise InputError(f"argument '{arg}' is not --key=value: options are written "
                             "--key=value with no space (e.g. --epochs=5)")
        if key in raw and raw[key] != value:
            raise InputError(f"option --{key} is given twice with different values "
                             f"('{raw[key]}' and '{value}')")
        raw[key] = value
    return raw


class SafeConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with RecBole's float rule (``1e-3`` is a float)."""


SafeConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(path: str) -> dict:
    """A yaml config file as a dict; a missing, unreadable or unsafe file is an InputError."""
    if not os.path.isfile(path):
        raise InputError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=SafeConfigLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"config file {path} is not valid YAML (tags that build Python "
                         f"objects are refused): {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold 'key: value' lines, not a "
                         f"{type(data).__name__}")
    return data


# ---------------------------------------------------------------- values
def _kind(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


# what each default's kind accepts from the user
_ACCEPTS = {"bool": {"bool"}, "int": {"int"}, "float": {"int", "float"},
            "str": {"str", "int", "float", "none"}, "list": {"list", "none"},
            "dict": {"dict", "none"}}
# RecBole turns a single value of these into a one-element list itself
_SCALAR_OK = {"topk": "int", "metrics": "str", "additional_feat_suffix": "str"}


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _at_least_one(v):
    return v >= 1


def _probability(v):
    return 0 <= v <= 1


def _dropout(v):
    return 0 <= v < 1


# (key pattern, test, what it must be); the first matching pattern applies
_RANGES = [
    (r"epochs", _at_least_one, "at least 1"),
    (r".*_epochs", _non_negative, ">= 0"),
    (r"seed", lambda v: 0 <= v < 2 ** 32, "between 0 and 2**32 - 1"),
    (r"(.*_)?batch_size", _at_least_one, "at least 1"),
    (r"(stopping_step|eval_step|num_beams|lora_r|MAX_ITEM_LIST_LENGTH)", _at_least_one,
     "at least 1"),
    (r"(.*_)?learning_rate", _positive, "> 0"),
    (r"(.*_)?weight_decay", _non_negative, ">= 0"),
    (r".*dropout.*", _dropout, "in [0, 1)"),
    (r"llm_(vocab_size|hidden_size|num_layers|num_heads|max_positions)", _at_least_one,
     "at least 1"),
    (r".*_timeout", _positive, "> 0"),
    (r".*_(max_retries|patience)", _non_negative, ">= 0"),
    (r".*temperature", _positive, "> 0"),
    (r"(worker|metric_decimal_place|loss_decimal_place)", _non_negative, ">= 0"),
    (r"(.*_prob|fixed_alpha|alpha1|alpha2)", _probability, "in [0, 1]"),
]


def _range_rule(key: str):
    for pattern, test, what in _RANGES:
        if re.fullmatch(pattern, key):
            return test, what
    return None


def _check_one(key, value, default, where):
    kind, want = _kind(value), _kind(default)
    accepted = _ACCEPTS.get(want)
    if accepted is not None and kind not in accepted and _SCALAR_OK.get(key) != kind:
        raise InputError(f"option '{key}' ({where}) must be {want_text(want)}, got {value!r}")
    if kind in ("int", "float"):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"option '{key}' ({where}) must be a finite number, got {value!r}")
        rule = _range_rule(key)
        if rule and want in ("int", "float") and not rule[0](value):
            raise InputError(f"option '{key}' ({where}) must be {rule[1]}, got {value!r}")


def want_text(kind: str) -> str:
    return {"bool": "True or False", "int": "an integer", "float": "a number",
            "str": "a string", "list": "a list, e.g. [a, b]",
            "dict": "a mapping, e.g. {key: value}"}.get(kind, kind)


def check_values(given: dict, defaults: dict, sources: dict) -> None:
    """Every user-set option has its default's kind of value and lies in range.

    ``given``: the user's settings; ``defaults``: the values the property files
    give (RecBole's and the plugin's); ``sources``: key -> where it was set.
    """
    for key, value in given.items():
        if key not in defaults:
            continue  # an undeclared key (strict_options: False) has no known kind
        default = defaults[key]
        where = sources.get(key, "option")
        _check_one(key, value, default, where)
        if key == "topk":
            for k in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise InputError(f"option 'topk' ({where}) must hold positive integers, "
                                     f"got {value!r}")


def computed_metric_names(metrics, topk) -> list:
    """The result keys RecBole's evaluator will produce (``recall@10``, ``auc``, ...)."""
    from recbole.evaluator import metric_types
    from recbole.utils import EvaluatorType

    names = []
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        name = metric.lower()
        if metric_types.get(name) == EvaluatorType.RANKING and name != "gauc":
            names.extend(f"{name}@{k}" for k in ([topk] if isinstance(topk, int) else topk))
        else:
            names.append(name)
    return names


def check_metrics(config) -> None:
    """Known metric names, and ``valid_metric`` among those the run computes
    (RecBole would fail with a KeyError after the first epoch)."""
    from recbole.evaluator import metric_types

    metrics = config["metrics"]
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        if str(metric).lower() not in metric_types:
            raise InputError(f"option 'metrics' names '{metric}', which RecBole does not know "
                             f"(known: {', '.join(sorted(metric_types))})")
    computed = computed_metric_names(metrics, config["topk"])
    valid = str(config["valid_metric"]).lower()
    if valid not in computed:
        raise InputError(f"valid_metric '{config['valid_metric']}' is not computed by this run: "
                         f"metrics x topk give {', '.join(computed)}; change valid_metric, "
                         "metrics or topk")


def check_dataset_name(name) -> None:
    """A dataset is a folder name under ``data_path``, never a path."""
    if not isinstance(name, str) or not name or name in (".", "..") or \
            "/" in name or "\\" in name or os.sep in name:
        raise InputError(f"dataset name '{name}' must be a plain folder name under data_path "
                         "(no path separators); put the parent folder in --data_path")
