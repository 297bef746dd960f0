"""ELCoRec's settings, read once (``properties/model/ELCoRec.yaml`` documents each).

:class:`GATSettings` are the GAT expert's own: the expert's code receives
only them (and the seed), so its cache key, built from all of them, covers
everything it reads.
"""
import dataclasses
from typing import Optional

from recbole_llm.model.abstract import LLMSettings


@dataclasses.dataclass(frozen=True)
class GATSettings:
    gat_mode: str
    gat_history_len: int
    gat_dim: int
    gat_layers: int
    gat_heads: int
    gat_epochs: int
    gat_learning_rate: float
    gat_weight_decay: float
    gat_batch_size: int
    gat_patience: int
    gat_valid_share: float
    gat_time_buckets: int

    @classmethod
    def of(cls, settings) -> "GATSettings":
        """The expert's part of a model's settings."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ELCoRecSettings(LLMSettings, GATSettings):
    # rows: the minimum history the dataset was filtered with (checked)
    min_history: int
    # item-text embeddings (RAP's retrieval)
    text_encoder_path: Optional[str]
    text_encoder_batch_size: int
    # prompt: RAP and the soft token
    rap: bool
    rap_k_similar: int
    rap_k_recent: int
    soft_prompt: bool
    prompt_item_field: Optional[str]
    item_text_max_tokens: int
    elcorec_template: str

    RUN_ONLY = LLMSettings.RUN_ONLY + ("text_encoder_batch_size",)
