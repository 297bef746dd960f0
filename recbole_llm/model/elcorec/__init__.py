"""ELCoRec: model.py (the RecBole class: soft prompt, RAP, yes/no score),
expert.py (the GAT expert's pre-training, early stopping, cache entry),
row_graph.py (the per-row graph: target-aware soft token), user_graph.py
(one graph of all training interactions: static per-user token, ablation),
settings.py."""
from recbole_llm.model.elcorec.model import ELCoRec

__all__ = ["ELCoRec"]
