"""EIMF: model.py (the RecBole class), ibim.py (multi-interest extractor: IBIM,
all that serving uses), esim.py (user texts, Affinity Propagation, the LLM on
exemplars), settings.py."""
from recbole_llm.model.eimf.model import EIMF

__all__ = ["EIMF"]
