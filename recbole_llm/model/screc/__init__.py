"""SCRec (Semantic Convergence): model.py (the RecBole class: codes as tokens,
the four stage-two tasks), tokenizer.py (alignment tokenization: residual
codebooks with the LLM alignment loss), settings.py; serving from a
pre-computed top-K per user is recbole_llm/serving.py."""
from recbole_llm.model.screc.model import SCRec

__all__ = ["SCRec"]
