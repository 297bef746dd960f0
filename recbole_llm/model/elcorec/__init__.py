"""ELCoRec: model.py (the RecBole class: soft prompt, RAP, yes/no score),
graph.py (heterogeneous graph and GAT expert), settings.py."""
from recbole_llm.model.elcorec.model import ELCoRec

__all__ = ["ELCoRec"]
