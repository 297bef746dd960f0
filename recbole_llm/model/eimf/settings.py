"""EIMF's settings, read once (``properties/model/EIMF.yaml`` documents each)."""
import dataclasses
from typing import Optional

from recbole_llm.model.abstract import LLMSettings


@dataclasses.dataclass(frozen=True)
class EIMFSettings(LLMSettings):
    # IBIM
    hidden_size: int
    num_interests: int
    interest_extractor: str
    routing_iterations: int
    interest_positions: str
    attention_hidden: int
    dropout_prob: float
    encoder_layers: int
    encoder_heads: int
    encoder_dropout: float
    interest_scoring: str
    # ESIM
    prompt_item_field: Optional[str]
    esim_source: str
    esim_history_items: int
    esim_prompt: str
    esim_max_new_tokens: int
    esim_max_interests: int
    ap_preference: Optional[float]
    ap_damping: float
    ap_max_iter: int
    ap_max_users: int
    text_encoder_path: Optional[str]
    text_encoder_batch_size: int
    # integration
    align_weight: float
    align_temperature: float
    semantic_weight: float

    RUN_ONLY = LLMSettings.RUN_ONLY + ("text_encoder_batch_size",)
