"""SCRec (Semantic Convergence): model.py (the RecBole class), tokenizer.py
(alignment tokenization: residual codebooks with the LLM alignment loss),
tasks.py (stage-two samples), serving.py (pre-computed top-K per user),
settings.py."""
from recbole_llm.model.screc.model import SCRec

__all__ = ["SCRec"]
