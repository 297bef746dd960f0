"""RecBole's ``Config`` with the plugin's property files layered underneath.

Order, lowest to highest priority (as in RecBole and RecBole-GNN):
RecBole's internal defaults < ``properties/overall.yaml`` <
``properties/model/<Model>.yaml`` < ``properties/dataset/<dataset>.yaml`` <
the user's ``config_file_list`` < ``config_dict`` < ``--key=value`` flags.

Unlike RecBole, a key that no property file of this run knows, on the command
line, in ``config_dict`` or in a user's yaml file, is an error (with the
closest known names), because RecBole would silently ignore a typo such as
``--learning_rat=0.1``; set ``strict_options: False`` to allow keys of your
own.  Values are read as data (``recbole_llm.options``), never evaluated, and
checked for kind and range before any data loads.
"""
import difflib
import glob
import os
import sys
from logging import getLogger

from recbole.config import Config as _RecBoleConfig
from recbole.utils import ModelType

from recbole_llm import registry
from recbole_llm.errors import InputError
from recbole_llm.model.abstract import PluginModel
from recbole_llm.paths import PLUGIN_PROPERTIES, RECBOLE_PROPERTIES
from recbole_llm.options import (SafeConfigLoader, check_dataset_name, check_metrics,
                                 check_settings, check_values, declared_kinds, parse_argv,
                                 parse_value, read_yaml)

PROPERTIES_DIR = PLUGIN_PROPERTIES
_RECBOLE_PROPERTIES = RECBOLE_PROPERTIES

# Keys RecBole reads without declaring them in any property file.
_UNDECLARED_RECBOLE_KEYS = {
    "model", "dataset", "config_files", "nproc", "ip", "port", "world_size",
    "group_offset", "offset", "local_rank", "single_spec", "valid_neg_sample_args",
    "test_neg_sample_args", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device",
}


def plugin_property_files(model: str, dataset: str, wrapped=()) -> list:
    """The plugin's yaml files that apply to this model and dataset, in order;
    ``wrapped``: the files of a model this one wraps, above the model's own
    yaml (a rating base brings its protocol) and below the dataset's."""
    files = [os.path.join(PROPERTIES_DIR, "overall.yaml"),
             os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
             *registry.model_property_files(model),
             *wrapped,
             os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")]
    return [f for f in files if os.path.isfile(f)]


def _python_api_argv() -> list:
    """The ``--key=value`` options of the host process, for ``Config`` built from
    Python without ``argv`` (RecBole's convention).  The host's own arguments
    (a notebook kernel's, a script's flags) are not ours to refuse: they are
    skipped with a warning; the command line (``quick_start.main``) is strict."""
    if "ipykernel" in os.path.basename(sys.argv[0] if sys.argv else ""):
        return []
    options = [a for a in sys.argv[1:] if a.startswith("--") and "=" in a]
    others = [a for a in sys.argv[1:] if a not in options]
    if others:
        getLogger().warning(f"arguments {others} are not --key=value options; ignored")
    return options


def _peek(key, explicit, cmd, config_file_list, config_dict):
    """Find model/dataset the way RecBole will, before RecBole's Config runs."""
    if explicit is not None:
        return explicit
    value = cmd.get(key) or (config_dict or {}).get(key)
    for path in reversed(config_file_list or []):
        if value is None:
            value = read_yaml(path).get(key)
    if value is None:
        raise InputError(f"no {key} given: pass --{key}=... (or set it in a config file)")
    return value


def _peek_setting(key, cmd, user_files, config_dict, default_files):
    """Like :func:`_peek`, falling back to the plugin's own property files."""
    value = cmd.get(key) or (config_dict or {}).get(key)
    for path in reversed(list(user_files or []) + list(default_files)):
        if value is None:
            value = read_yaml(path).get(key)
    return value


def _known_keys(model: str, dataset: str, extra_files=()) -> set:
    keys = set(_UNDECLARED_RECBOLE_KEYS)
    recbole_files = [os.path.join(_RECBOLE_PROPERTIES, "overall.yaml"),
                     os.path.join(_RECBOLE_PROPERTIES, "model", f"{model}.yaml"),
                     *glob.glob(os.path.join(_RECBOLE_PROPERTIES, "dataset", "*.yaml")),
                     *glob.glob(os.path.join(_RECBOLE_PROPERTIES, "quick_start_config", "*.yaml"))]
    for path in recbole_files + [os.path.join(PROPERTIES_DIR, "overall.yaml"),
                                 os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
                                 *registry.model_property_files(model),
                                 *glob.glob(os.path.join(PROPERTIES_DIR, "dataset", "*.yaml")),
                                 *extra_files]:
        if os.path.isfile(path):
            keys.update(read_yaml(path))
    return keys


class Config(_RecBoleConfig):
    """Drop-in for ``recbole.config.Config`` that knows the plugin's models.

    ``argv``: the command-line options (default ``sys.argv[1:]``, as RecBole).
    Every problem with the options or config files is an :class:`InputError`.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 argv=None):
        self._cmd_raw = parse_argv(_python_api_argv() if argv is None else argv)
        user_files = list(config_file_list or [])
        for path in user_files:
            read_yaml(path)  # clear error for a missing or broken user file
        model = _peek("model", model, self._cmd_raw, user_files, config_dict)
        dataset = _peek("dataset", dataset, self._cmd_raw, user_files, config_dict)
        check_dataset_name(dataset)
        model_name = model if isinstance(model, str) else model.__name__
        try:
            model_ref = registry.get_model_class(model_name) if isinstance(model, str) else model
        except ValueError as err:
            raise InputError(str(err)) from None
        hooks = isinstance(model_ref, type) and issubclass(model_ref, PluginModel)
        base_files = list(model_ref.property_files()) if hooks else []
        if hooks and model_ref.wraps_base_model:
            # a wrapper model (Llama4Rec) takes the type, input type and RecBole
            # hyper-parameters of the conventional model it wraps (``base_model``)
            base = parse_value(_peek_setting("base_model", self._cmd_raw, user_files, config_dict,
                                             plugin_property_files(model_name, dataset)))
            try:
                model_ref, base_files = model_ref.specialise(base)
            except ValueError as err:
                raise InputError(str(err)) from None
        plugin_files = plugin_property_files(model_name, dataset, base_files)
        self._plugin_files = plugin_files
        self._config_dict = config_dict
        try:
            super().__init__(model=model_ref, dataset=dataset,
                             config_file_list=plugin_files + user_files,
                             config_dict=dict(config_dict) if config_dict else None)
        except InputError:
            raise
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError,
                AttributeError) as err:
            raise InputError(f"invalid settings for {model_name} on {dataset}: "
                             f"{type(err).__name__}: {err}{self._quoting_hint(config_dict)}") from None
        self._check_options(model_name, dataset, user_files, base_files)
        self._check_values(user_files)

    # --- RecBole's readers, made safe ------------------------------------
    def _build_yaml_loader(self):
        return SafeConfigLoader

    def _convert_config_dict(self, config_dict):
        return {key: parse_value(value) for key, value in config_dict.items()}

    def _load_cmd_line(self):
        return self._convert_config_dict(self._cmd_raw)

    def _load_config_files(self, file_list):
        merged = {}
        for path in file_list or []:
            merged.update(read_yaml(path))
        return merged

    def _set_default_parameters(self):
        # RecBole's overall.yaml samples one negative per positive, yet its
        # sequential models with the (default) CE loss refuse to start unless
        # negative sampling is off.  Turn it off unless the user asked for it.
        final = self.final_config_dict
        if (final.get("MODEL_TYPE") == ModelType.SEQUENTIAL and final.get("loss_type") == "CE"
                and "train_neg_sample_args" not in self.external_config_dict):
            final["train_neg_sample_args"] = None
        super()._set_default_parameters()
        if final.get("llm_path"):  # ``minilm``: the installed pretrained encoder's folder
            from recbole_llm.llm.backbone import resolve_llm_path
            final["llm_path"] = resolve_llm_path(final["llm_path"])

    def _init_device(self):
        """RecBole's multi-process mode is NCCL on GPUs only; without a GPU (or with
        ``use_gpu: False``) each process joins a gloo group on the CPU instead, so
        ``--nproc=2`` runs anywhere (``recbole_llm.distributed``)."""
        import torch

        final = self.final_config_dict
        if not final.get("use_gpu", True):  # honoured in one process too (RecBole ignores it)
            final["gpu_id"] = ""
        gpu_id = final.get("gpu_id")
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(
            gpu_id if gpu_id is not None else "")
        if "local_rank" not in final:
            return super()._init_device()
        # set before torch first queries CUDA, or the device choice would be ignored
        os.environ["CUDA_VISIBLE_DEVICES"] = final["gpu_id"] = gpu_id
        if gpu_id and torch.cuda.is_available():
            return super()._init_device()
        rank = final["local_rank"] + final.get("offset", 0)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                backend="gloo", rank=rank, world_size=final["world_size"],
                init_method=f"tcp://{final['ip']}:{final['port']}")
        final["device"] = torch.device("cpu")
        final["single_spec"] = False
        if final["local_rank"] != 0:  # one process logs and shows progress
            final["state"] = "error"
            final["show_progress"] = False
            final["verbose"] = False

    # --- checks -----------------------------------------------------------
    def _raw_strings(self, config_dict) -> dict:
        """The user's option values as typed (command line, ``config_dict`` strings)."""
        raw = {k: v for k, v in (config_dict or {}).items() if isinstance(v, str)}
        raw.update(self._cmd_raw)
        return raw

    def _quoting_hint(self, config_dict) -> str:
        """A list or mapping typed without quotes stays a string ('[Recall,NDCG]')."""
        for key, text in self._raw_strings(config_dict).items():
            text = text.strip()
            if text[:1] + text[-1:] in ("[]", "{}") and parse_value(text) == text:
                return (f" (option '{key}' is the string {text!r}: write the strings inside a "
                        "list or mapping in quotes, e.g. ['Recall','NDCG'])")
        return ""

    def _user_sources(self, user_files) -> tuple:
        """The user's settings and where each came from (highest priority wins)."""
        given, sources = {}, {}
        for path in user_files:
            for key, value in read_yaml(path).items():
                given[key], sources[key] = value, f"config file {path}"
        for source, values in (("config_dict", self.variable_config_dict),
                               ("command line", self.cmd_config_dict)):
            for key, value in values.items():
                given[key], sources[key] = value, source
        return given, sources

    def _check_values(self, user_files):
        given, sources = self._user_sources(user_files)
        # the value a key would have without the user's settings, and its declared kind
        defaults = dict(self.internal_config_dict)
        plugin_keys = set()
        for path in self._plugin_files:
            values = read_yaml(path)
            defaults.update(values)
            plugin_keys.update(values)
        recbole_files = [os.path.join(_RECBOLE_PROPERTIES, "overall.yaml"),
                         os.path.join(_RECBOLE_PROPERTIES, "dataset", "sample.yaml"),
                         os.path.join(_RECBOLE_PROPERTIES, "model", f"{self.model_class.__name__}.yaml")]
        declared = declared_kinds(recbole_files + list(self._plugin_files))
        checked = check_values(given, defaults, declared, sources, plugin_keys,
                               self._raw_strings(self._config_dict))
        self.final_config_dict.update({k: v for k, v in checked.items() if v is not given[k]})
        check_settings(self.final_config_dict)
        if isinstance(self.model_class, type) and issubclass(self.model_class, PluginModel):
            self.model_class.check_settings(self.final_config_dict)
        if self.final_config_dict.get("behavior_model") and not self.final_config_dict.get(
                "behavior_checkpoint"):
            name = self.final_config_dict["behavior_model"]
            try:
                behavior = registry.get_model_class(name)
            except ValueError as err:
                raise InputError(f"option 'behavior_model': {err}") from None
            # its item table is trained with the CE loss over all items on the
            # sequential training rows (model/conventional.py)
            if getattr(behavior, "type", None) != ModelType.SEQUENTIAL:
                raise InputError(f"option 'behavior_model': {name} is not a sequential model; "
                                 "its item table is trained with the CE loss on the sequential "
                                 "training rows (e.g. SASRec, GRU4Rec, BERT4Rec), or give "
                                 "behavior_checkpoint")
        check_metrics(self)

    def _check_options(self, model, dataset, user_files, extra_files=()):
        if not self.final_config_dict.get("strict_options", True):
            return
        known = _known_keys(model, dataset, extra_files) | set(self.internal_config_dict)
        for group in self.parameters.values():
            known.update(group)
        given = [(f"config file {path}", read_yaml(path)) for path in user_files]
        given += [("config_dict", self.variable_config_dict), ("command line", self.cmd_config_dict)]
        for source, values in given:
            for key in values:
                if key not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=3)
                    hint = f" Did you mean: {', '.join(close)}?" if close else ""
                    raise InputError(
                        f"unknown option '{key}' ({source}) for model {model} on {dataset}.{hint} "
                        "Keys of your own need strict_options: False."
                    )
