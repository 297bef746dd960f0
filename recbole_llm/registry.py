"""Explicit model registry: model name -> (model, dataset, trainer) classes.

Plugin models are listed here by name, nothing is guessed from strings; names
not listed fall back to RecBole's own ``get_model`` / ``get_trainer`` and the
dataset class RecBole's ``create_dataset`` would pick.  Entries are imported
lazily so that ``import recbole_llm`` stays cheap (no transformers import for a
BPR run).  Users add their own models with :func:`register`.
"""
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional, Union

from recbole.utils import get_model as _recbole_get_model  # exlib models only
from recbole.utils import get_trainer as _recbole_get_trainer

from recbole_llm.trainer import with_weights_only_checkpoints

ClassRef = Union[str, type]


@dataclass(frozen=True)
class RegistryEntry:
    """One registry entry; class references are classes or ``"module:Class"``."""

    name: str
    model: ClassRef
    dataset: Optional[ClassRef] = None  # None: RecBole's choice for the model type
    trainer: Optional[ClassRef] = None  # None: RecBole's choice for the model type
    properties: tuple = ()  # the model's own yaml files (its hyper-parameters and defaults)


def _resolve(ref: ClassRef) -> type:
    if isinstance(ref, type):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_PLUGIN_MODELS: dict = {}


def register(name: str, model: ClassRef, dataset: Optional[ClassRef] = None,
             trainer: Optional[ClassRef] = None, replace: bool = False,
             properties=()) -> RegistryEntry:
    """Add a model to the registry (the plugin's own and users' models alike).

    ``properties``: yaml file(s) declaring the model's hyper-parameters with
    their defaults, layered like RecBole's ``properties/model/<Model>.yaml``
    (so its keys are known options)."""
    if name in _PLUGIN_MODELS and not replace:
        raise ValueError(f"model '{name}' is already registered")
    files = (properties,) if isinstance(properties, str) else tuple(properties)
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"property file of model '{name}' not found: {path}")
    entry = RegistryEntry(name, model, dataset, trainer, tuple(os.path.abspath(p) for p in files))
    _PLUGIN_MODELS[name] = entry
    return entry


def unregister(name: str) -> None:
    _PLUGIN_MODELS.pop(name, None)


def model_property_files(name: str) -> tuple:
    """The yaml files registered with a model (none for RecBole's own)."""
    entry = _PLUGIN_MODELS.get(name)
    return entry.properties if entry else ()


def plugin_model_names() -> list:
    return sorted(_PLUGIN_MODELS)


def is_plugin_model(name: str) -> bool:
    return name in _PLUGIN_MODELS


_RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender",
                           "sequential_recommender", "knowledge_aware_recommender")
_RECBOLE_EXLIB_MODELS = {"xgboost", "lightgbm"}  # need optional packages


def _recbole_model(name: str) -> Optional[type]:
    """RecBole's class for ``name``, or None; never imports the exlib package
    (it needs xgboost and lightgbm) unless one of those models is asked for."""
    if name.lower() in _RECBOLE_EXLIB_MODELS:
        return _recbole_get_model(name)
    for package in _RECBOLE_MODEL_PACKAGES:
        module = f"recbole.model.{package}.{name.lower()}"
        if importlib.util.find_spec(module) is not None:
            return getattr(importlib.import_module(module), name, None)
    return None


def get_model_class(name: str) -> type:
    if name in _PLUGIN_MODELS:
        return _resolve(_PLUGIN_MODELS[name].model)
    model = _recbole_model(name)
    if model is None:
        raise ValueError(
            f"unknown model '{name}': it is neither a recbole-llm model "
            f"({', '.join(plugin_model_names()) or 'none registered'}) nor a RecBole model. "
            "Model names are case-sensitive, e.g. --model=SASRec."
        )
    return model


def get_dataset_class(name: str) -> Optional[type]:
    """The plugin's dataset class for ``name``, or None to let RecBole choose."""
    entry = _PLUGIN_MODELS.get(name)
    return _resolve(entry.dataset) if entry and entry.dataset else None


def get_trainer_class(name: str, model_type) -> type:
    """Trainer for the model, always with weights-only-loadable checkpoints."""
    entry = _PLUGIN_MODELS.get(name)
    if entry and entry.trainer:
        trainer = _resolve(entry.trainer)
    else:
        trainer = _recbole_get_trainer(model_type, name)
    return with_weights_only_checkpoints(trainer)


# --- the plugin's own models (one line each, added as they land) -----------
register("EAGERLLM", "recbole_llm.model.eagerllm.model:EAGERLLM",
         dataset="recbole_llm.data.text:SequentialTextDataset",
         trainer="recbole_llm.model.eagerllm.trainer:EAGERTrainer")
register("ELCoRec", "recbole_llm.model.elcorec.model:ELCoRec",
         dataset="recbole_llm.data.text:CTRTextDataset")
register("SCRec", "recbole_llm.model.screc.model:SCRec",
         dataset="recbole_llm.data.text:SequentialTextDataset")
register("EIMF", "recbole_llm.model.eimf.model:EIMF",
         dataset="recbole_llm.data.text:SequentialTextDataset",
         trainer="recbole_llm.model.eimf.trainer:EIMFTrainer")
register("Llama4Rec", "recbole_llm.model.llama4rec.model:Llama4Rec",
         dataset="recbole_llm.data.text:text_dataset",
         trainer="recbole_llm.model.llama4rec.trainer:Llama4RecTrainer")
for _name in ("DeepFMRating", "FMRating", "WideDeepRating"):
    register(_name, f"recbole_llm.model.rating:{_name}")
