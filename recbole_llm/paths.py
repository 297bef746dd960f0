"""Where property files live.

The plugin's yaml files sit in the repository's top-level ``properties/``
(beside ``recbole_llm/``) and are installed as ``recbole_llm/properties/`` by
the wheel (see pyproject.toml); RecBole's are inside its own package.
"""
import os

import recbole

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_PROPERTIES = next(
    (p for p in (os.path.join(_PACKAGE, "properties"),                  # installed wheel
                 os.path.join(os.path.dirname(_PACKAGE), "properties"))  # source checkout
     if os.path.isfile(os.path.join(p, "overall.yaml"))),
    os.path.join(_PACKAGE, "properties"))
RECBOLE_PROPERTIES = os.path.join(os.path.dirname(os.path.abspath(recbole.__file__)), "properties")


def plugin_file(*parts) -> str:
    """A file under the plugin's properties (it may not exist)."""
    return os.path.join(PLUGIN_PROPERTIES, *parts)


def recbole_file(*parts) -> str:
    """A file under RecBole's properties (it may not exist)."""
    return os.path.join(RECBOLE_PROPERTIES, *parts)


def recbole_model_yaml(model_name: str) -> list:
    """``[RecBole's yaml of model_name]``, or ``[]`` for a model without one."""
    path = recbole_file("model", f"{model_name}.yaml")
    return [path] if os.path.isfile(path) else []
