"""RecBole's ``Config`` with the plugin's property files layered underneath.

Order, lowest to highest priority (as in RecBole and RecBole-GNN):
RecBole's internal defaults < ``properties/overall.yaml`` <
``properties/model/<Model>.yaml`` < ``properties/dataset/<dataset>.yaml`` <
the user's ``config_file_list`` < ``config_dict`` < ``--key=value`` flags.

Unlike RecBole, a ``--key`` that no property file of this run knows is an
error (with the closest known names), because RecBole would silently ignore a
typo such as ``--learning_rat=0.1``.  Set ``strict_options: False`` in a
config file to allow free-form keys.
"""
import difflib
import glob
import os
import sys

import recbole
import yaml
from recbole.config import Config as _RecBoleConfig
from recbole.utils import ModelType

from recbole_llm import registry

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")
_RECBOLE_PROPERTIES = os.path.join(os.path.dirname(recbole.__file__), "properties")

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
             *wrapped,
             os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")]
    return [f for f in files if os.path.isfile(f)]


def _cmd_value(key):
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


def _read_yaml(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None


def _peek(key, explicit, config_file_list, config_dict):
    """Find model/dataset the way RecBole will, before RecBole's Config runs."""
    if explicit is not None:
        return explicit
    value = _cmd_value(key) or (config_dict or {}).get(key)
    for path in reversed(config_file_list or []):
        if value is None:
            value = _read_yaml(path).get(key)
    if value is None:
        raise ValueError(f"no {key} given: pass --{key}=... (or set it in a config file)")
    return value


def _peek_setting(key, user_files, config_dict, default_files):
    """Like :func:`_peek`, falling back to the plugin's own property files."""
    value = _cmd_value(key) or (config_dict or {}).get(key)
    for path in reversed(list(user_files or []) + list(default_files)):
        if value is None:
            value = _read_yaml(path).get(key)
    return value


def _known_keys(model: str, dataset: str, extra_files=()) -> set:
    keys = set(_UNDECLARED_RECBOLE_KEYS)
    recbole_files = [os.path.join(_RECBOLE_PROPERTIES, "overall.yaml"),
                     os.path.join(_RECBOLE_PROPERTIES, "model", f"{model}.yaml"),
                     *glob.glob(os.path.join(_RECBOLE_PROPERTIES, "dataset", "*.yaml")),
                     *glob.glob(os.path.join(_RECBOLE_PROPERTIES, "quick_start_config", "*.yaml"))]
    for path in recbole_files + [os.path.join(PROPERTIES_DIR, "overall.yaml"),
                                 os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
                                 *glob.glob(os.path.join(PROPERTIES_DIR, "dataset", "*.yaml")),
                                 *extra_files]:
        if os.path.isfile(path):
            keys.update(_read_yaml(path))
    return keys


class Config(_RecBoleConfig):
    """Drop-in for ``recbole.config.Config`` that knows the plugin's models."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        user_files = list(config_file_list or [])
        for path in user_files:
            _read_yaml(path)  # clear error for a missing or broken user file
        model = _peek("model", model, user_files, config_dict)
        dataset = _peek("dataset", dataset, user_files, config_dict)
        model_name = model if isinstance(model, str) else model.__name__
        model_ref = registry.get_model_class(model_name) if isinstance(model, str) else model
        base_files = list(model_ref.property_files()) if hasattr(model_ref, "property_files") else []
        if hasattr(model_ref, "specialise"):
            # a wrapper model (Llama4Rec) takes the type, input type and RecBole
            # hyper-parameters of the conventional model it wraps (``base_model``)
            base = _peek_setting("base_model", user_files, config_dict,
                                 plugin_property_files(model_name, dataset))
            model_ref, base_files = model_ref.specialise(base)
        plugin_files = plugin_property_files(model_name, dataset, base_files)
        super().__init__(model=model_ref, dataset=dataset,
                         config_file_list=plugin_files + user_files, config_dict=config_dict)
        self._check_options(model_name, dataset, user_files, base_files)

    def _set_default_parameters(self):
        # RecBole's overall.yaml samples one negative per positive, yet its
        # sequential models with the (default) CE loss refuse to start unless
        # negative sampling is off.  Turn it off unless the user asked for it.
        final = self.final_config_dict
        if (final.get("MODEL_TYPE") == ModelType.SEQUENTIAL and final.get("loss_type") == "CE"
                and "train_neg_sample_args" not in self.external_config_dict):
            final["train_neg_sample_args"] = None
        super()._set_default_parameters()

    def _check_options(self, model, dataset, user_files, extra_files=()):
        if not self.final_config_dict.get("strict_options", True):
            return
        known = _known_keys(model, dataset, extra_files) | set(self.internal_config_dict)
        for path in user_files:
            known.update(_read_yaml(path))
        for group in self.parameters.values():
            known.update(group)
        for source, given in (("command line", self.cmd_config_dict),
                              ("config_dict", self.variable_config_dict)):
            for key in given:
                if key not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=3)
                    hint = f" Did you mean: {', '.join(close)}?" if close else ""
                    raise ValueError(
                        f"unknown option '{key}' ({source}) for model {model} on {dataset}.{hint} "
                        "If this key is meant for your own code, declare it in a config "
                        "file or set strict_options: False."
                    )
