"""Llama4Rec: model.py (the RecBole class wrapping a conventional model),
wrapped.py (access to that model), aggregation.py (adaptive aggregation),
prompts.py (text prompts and answer parsing), samples.py (instruction and
augmentation data), settings.py, trainer.py (the training phases)."""
from recbole_llm.model.llama4rec.model import Llama4Rec
from recbole_llm.model.llama4rec.trainer import Llama4RecTrainer

__all__ = ["Llama4Rec", "Llama4RecTrainer"]
