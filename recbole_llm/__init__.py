"""recbole-llm: LLM-enhanced recommenders as ordinary RecBole models."""
from recbole_llm import compat as _compat  # noqa: F401  (patches before RecBole is used)

__version__ = "0.1.0"


def load(checkpoint: str, **overrides):
    """A trained model as a recommender: ``recbole_llm.load(path).recommend(user="196",
    k=10)`` -> ``[(raw item id, score), ...]`` (``recbole_llm.serving``)."""
    from recbole_llm.serving import load as _load
    return _load(checkpoint, **overrides)
