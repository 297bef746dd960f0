"""recbole-llm: LLM-enhanced recommenders as ordinary RecBole models."""
from recbole_llm import compat as _compat  # noqa: F401  (patches before RecBole is used)

__version__ = "0.1.0"
