"""Options: read as data, never run as code, and checked before any data loads.

RecBole's ``Config`` calls ``eval`` on every command-line value and every
string in ``config_dict``, reads yaml with PyYAML's ``FullLoader``, drops an
argument without ``=`` with a warning and splits ``--a=b=c`` wrongly.  Here:

* arguments are ``--key=value`` only, split on the first ``=``;
* values are Python literals (``ast.literal_eval``), ``true``/``false`` in
  any case, ``null``/``~``, or else the string itself;
* yaml files are read with a safe loader (RecBole's float rule kept, so
  ``1e-3`` is a float);
* every option the user set has the kind of value its yaml comment declares
  (``# (int) ...``; else its default's kind) and lies in its range (table
  below), options with a fixed set of values hold one of them, and
  ``valid_metric`` is one of the metrics the run computes.
"""
import ast
import codecs
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
    if word in ("null", "~"):  # "None" parses as a literal; "none" stays a string
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


def pop_switch(raw: dict, key: str, default: bool = False) -> bool:
    """A True/False command option (``--force=True``) taken out of parsed ``raw`` options."""
    value = parse_value(raw.pop(key, str(default)))
    if not isinstance(value, bool):
        raise InputError(f"--{key}: True or False, got {value!r}")
    return value


def pop_int(raw: dict, key: str, default: int, low: int = 1) -> int:
    """An integer command option of at least ``low`` taken out of parsed ``raw`` options."""
    text = raw.pop(key, None)
    value = default if text is None else parse_value(text)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"--{key}: an integer >= {low}, got {text}")
    return value


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


# what each declared (or default) kind accepts from the user
_ACCEPTS = {"bool": {"bool"}, "int": {"int"}, "float": {"int", "float"},
            "str": {"str", "none"}, "list": {"list", "none"}, "dict": {"dict", "none"}}
# RecBole normalises these forms itself (one value -> a list, a tuple of GPUs)
_EXTRA_KINDS = {"additional_feat_suffix": {"str"}, "gpu_id": {"list", "int"}}
_TYPE_WORDS = {"int": "int", "integer": "int", "float": "float", "bool": "bool", "str": "str",
               "string": "str", "list": "list", "tuple": "list", "dict": "dict", "none": "none"}
_DOC = re.compile(r"^([A-Za-z_][\w.-]*)\s*:[^#]*#\s*\(([^)]*)\)")


def declared_kinds(paths) -> dict:
    """``{key: kinds}`` from the ``# (type) description`` comments of yaml files
    (RecBole's and the plugin's), e.g. ``# (list or int or None)``."""
    kinds = {}
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                match = _DOC.match(line)
                words = re.findall(r"[a-z]+", match.group(2).lower()) if match else []
                found = {_TYPE_WORDS[w] for w in words if w in _TYPE_WORDS}
                if found:
                    kinds[match.group(1)] = found
    return kinds


def _at_least(low):
    return (lambda v: v >= low), f"at least {low}" if low else ">= 0"


def _interval(low, high, closed_high=True):
    if closed_high:
        return (lambda v: low <= v <= high), f"in [{low}, {high}]"
    return (lambda v: low <= v < high), f"in [{low}, {high})"


_POSITIVE = ((lambda v: v > 0), "> 0")
# (key pattern, rule); the first matching pattern applies
_RANGES = [
    (r"epochs", _at_least(1)),
    (r"cpu_threads", ((lambda v: True), "any integer")),
    (r"seed", ((lambda v: 0 <= v < 2 ** 32), "between 0 and 2**32 - 1")),
    (r"(.*_)?batch_size", _at_least(1)),
    (r"(num_beams|lora_r|lora_alpha|MAX_ITEM_LIST_LENGTH|index_k|gat_dim|gat_heads|gat_layers"
     r"|it_samples_per_task|llm_epochs|it_holdout_items|item_name_max_tokens"
     r"|prompt_(history|similar|base|candidate)_tokens|llm_max_prompt_tokens)", _at_least(1)),
    (r"(codebook_(levels|size|dim|hidden|epochs)|num_interests|esim_history_items"
     r"|esim_max_interests|esim_max_new_tokens|ap_max_iter|hidden_size|attention_hidden"
     r"|routing_iterations|encoder_heads)", _at_least(1)),
    (r"ap_max_users", _at_least(2)),
    (r"ap_preference", ((lambda v: True), "any number")),  # AP's similarities are negative
    (r"ap_damping", _interval(0.5, 1, closed_high=False)),
    (r"rerank_topn", _at_least(2)),
    (r"(.*_)?learning_rate", _POSITIVE),
    (r".*dropout.*", _interval(0, 1, closed_high=False)),
    (r"llm_(vocab_size|hidden_size|num_layers|num_heads|max_positions)", _at_least(1)),
    (r".*_timeout", _POSITIVE),
    (r".*temperature", _POSITIVE),
    (r"(.*_prob|.*_share|fixed_alpha|alpha1|alpha2)", _interval(0, 1)),
]
# the plugin's own numeric options: no count, size, step, weight or rate is negative
# (RecBole's are left to RecBole: some of its models take negative values)
_PLUGIN_DEFAULT_RULE = _at_least(0)

# Options with a fixed set of values (RecBole would fall back silently for
# ``learner``; the plugin's models would fail only after their preparation).
CHOICES = {
    "learner": ("adam", "sgd", "adagrad", "rmsprop", "sparse_adam"),
    "llm_tuning": ("auto", "lora", "full"),
    "llm_dtype": ("float32", "bfloat16", "float16"),
    "llm_api_mode": ("completions", "chat"),
    "index_composition": ("unit", "semantic", "behavior", "random"),
    "index_collision": ("reassign", "extra_code"),
    "code_collision": ("reassign", "extra_code"),
    "align_target": ("input_embeddings", "hidden_mean"),
    "interest_extractor": ("self_attentive", "routing"),
    "interest_positions": ("first", "latest"),
    "interest_scoring": ("target", "candidate"),
    "esim_source": ("llm", "history"),
    "aug_decoding": ("constrained", "free"),
    "long_tail_transform": ("log", "linear"),
    "gct_projector": ("linear", "mlp"),
    "code_softmax": ("vocabulary", "trie"),
    "index_quantizer": ("hierarchical", "residual"),
    "index_tokens": ("level", "node"),
    "gat_mode": ("sample", "user"),
}


def _range_rule(key: str, plugin: bool):
    for pattern, rule in _RANGES:
        if re.fullmatch(pattern, key):
            return rule
    return _PLUGIN_DEFAULT_RULE if plugin else None


def want_text(kinds) -> str:
    names = {"bool": "True or False", "int": "an integer", "float": "a number",
             "str": "a string", "list": "a list, e.g. [a, b]",
             "dict": "a mapping, e.g. {key: value}", "none": "None"}
    order = ["bool", "int", "float", "str", "list", "dict", "none"]
    kinds = set(kinds) - ({"int"} if "float" in kinds else set())  # a number covers integers
    return " or ".join(names[k] for k in order if k in kinds)


def _accepted(key, default, declared) -> set:
    if declared:
        kinds = set(declared)
        for kind in declared:
            kinds |= _ACCEPTS.get(kind, set())
    elif default is None:
        return set()  # neither declared nor inferable: not checked
    else:
        kinds = set(_ACCEPTS.get(_kind(default), ()))
    if default is None:
        kinds.add("none")
    return kinds | _EXTRA_KINDS.get(key, set())


def _check_one(key, value, default, declared, where, plugin, raw=None):
    """The value, or the text as typed for a string option (``raw``): a folder
    named 2024, an interval written [5,10]."""
    kind, accepted = _kind(value), _accepted(key, default, declared)
    if not accepted:
        return value
    if kind not in accepted and "str" in accepted and raw is not None:
        return raw
    if kind not in accepted:
        hint = (" (write strings inside lists and mappings in quotes: ['a', 'b'])"
                if isinstance(value, str) and value.strip()[:1] in ("[", "{") else "")
        raise InputError(f"option '{key}' ({where}) must be {want_text(accepted)}, "
                         f"got {value!r}{hint}")
    if kind in ("int", "float"):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"option '{key}' ({where}) must be a finite number, got {value!r}")
        rule = _range_rule(key, plugin)
        if rule and not rule[0](value):
            raise InputError(f"option '{key}' ({where}) must be {rule[1]}, got {value!r}")
    return value


def check_values(given: dict, defaults: dict, declared: dict, sources: dict,
                 plugin_keys=frozenset(), raw=None) -> dict:
    """Every user-set option has a value of its declared kind (its yaml
    comment, else its default's kind) in its range; returns the values,
    coerced where harmless.

    ``given``: the user's settings; ``defaults``: the values the property
    files give; ``declared``: key -> kinds from the yaml comments;
    ``sources``: key -> where it was set; ``plugin_keys``: the plugin's own
    options (non-negative unless a rule says otherwise); ``raw``: key -> the
    value as typed, where it was typed as text."""
    checked = {}
    for key, value in given.items():
        if key not in defaults and key not in declared:
            continue  # an undeclared key (strict_options: False) has no known kind
        where = sources.get(key, "option")
        checked[key] = _check_one(key, value, defaults.get(key), declared.get(key), where,
                                  key in plugin_keys, (raw or {}).get(key))
        if key == "topk":
            for k in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise InputError(f"option 'topk' ({where}) must hold positive integers, "
                                     f"got {value!r}")
    return checked


def check_settings(final: dict) -> None:
    """Checks on the run's final settings that no kind or range says."""
    for key, allowed in CHOICES.items():
        value = final.get(key)
        # RecBole lower-cases ``learner`` itself; the plugin's values are compared
        # exactly, so 'LLM' is an error rather than a silent fall to another branch
        seen = str(value).lower() if key == "learner" else str(value)
        if value is not None and seen not in allowed:
            raise InputError(f"option '{key}' must be one of {', '.join(allowed)}, got {value!r}")
    encoding = final.get("encoding")
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise InputError(f"option 'encoding': unknown text encoding {encoding!r} "
                             "(e.g. utf-8, latin-1)") from None
    teacher = final.get("teacher")  # RecBole's KD_DAGFM evaluates it as a class name
    if teacher is not None and not (isinstance(teacher, str) and teacher.isidentifier()):
        raise InputError(f"option 'teacher' must be a model class name, got {teacher!r}")
    for key, value in (final.get("task_loss_weights") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(f"option 'task_loss_weights': '{key}' must be a number >= 0, "
                             f"got {value!r}")
    for key, value in (final.get("aux_task_ratio") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"option 'aux_task_ratio': '{key}' must be a number in [0, 1], "
                             f"got {value!r}")
    sampling = final.get("train_neg_sample_args")
    if isinstance(sampling, dict) and sampling.get("distribution", "none") != "none":
        if sampling["distribution"] not in ("uniform", "popularity"):
            raise InputError("option 'train_neg_sample_args': distribution must be uniform, "
                             f"popularity or none, got {sampling['distribution']!r}")
        num = sampling.get("sample_num", 1)
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise InputError("option 'train_neg_sample_args': sample_num must be an integer "
                             f">= 1, got {num!r}")
    if final.get("llm_api_base"):
        if not str(final["llm_api_base"]).startswith(("http://", "https://")):
            raise InputError(f"option 'llm_api_base' must be an http(s) URL, got "
                             f"{final['llm_api_base']!r}")
        if not final.get("llm_api_model"):
            raise InputError("llm_api_base is set but llm_api_model is empty: name the model "
                             "the server serves")


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
