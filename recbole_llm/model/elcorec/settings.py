"""ELCoRec's settings, read once (``properties/model/ELCoRec.yaml`` documents each)."""
import dataclasses
from typing import Optional

from recbole_llm.model.abstract import LLMSettings


@dataclasses.dataclass(frozen=True)
class ELCoRecSettings(LLMSettings):
    # item-text embeddings (RAP's retrieval)
    text_encoder_path: Optional[str]
    text_encoder_batch_size: int
    # GAT expert
    gat_dim: int
    gat_layers: int
    gat_heads: int
    gat_epochs: int
    gat_learning_rate: float
    gat_weight_decay: float
    gat_batch_size: int
    gat_patience: int
    gat_time_buckets: int
    # prompt: RAP and the soft token
    rap: bool
    rap_k_similar: int
    rap_k_recent: int
    soft_prompt: bool
    prompt_item_field: Optional[str]
    item_text_max_tokens: int
    elcorec_template: str

    RUN_ONLY = LLMSettings.RUN_ONLY + ("text_encoder_batch_size",)
