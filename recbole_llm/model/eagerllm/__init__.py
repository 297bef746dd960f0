"""EAGER-LLM: model.py (the RecBole class), index.py (dual-source item index),
settings.py, trainer.py (stage one, then annealing adapter tuning)."""
from recbole_llm.model.eagerllm.model import EAGERLLM
from recbole_llm.model.eagerllm.trainer import EAGERTrainer

__all__ = ["EAGERLLM", "EAGERTrainer"]
