"""EAGER-LLM's settings, read once (``properties/model/EAGERLLM.yaml`` documents each)."""
import dataclasses
from typing import Optional

from recbole_llm.model.abstract import LLMSettings


@dataclasses.dataclass(frozen=True)
class EAGERSettings(LLMSettings):
    # semantic embeddings
    text_encoder_path: Optional[str]
    text_encoder_batch_size: int
    # dual-source index
    index_composition: str
    index_k: int
    index_semantic_levels: int
    index_behavior_levels: int
    index_kmeans_iters: int
    index_collision: str
    behavior_model: str
    behavior_epochs: int
    behavior_model_args: dict
    behavior_checkpoint: Optional[str]
    # multi-task training
    seqrec_template: str
    item2index_template: str
    index2item_template: str
    preference_template: str
    preference_field: Optional[str]
    aux_task_ratio: dict
    item_text_max_tokens: int
    # global contrast decompression
    gct_lambda_sem: float
    gct_lambda_beh: float
    gct_temperature: float
    # annealing adapter tuning
    aat_epochs: int
    aat_min_history: int
    aat_lora_r: int
    aat_lora_alpha: int
    aat_target_modules: list
    aat_learning_rate: float
    aat_keep_adapter: bool
    # decoding
    num_beams: int
    beam_batch_size: int

    RUN_ONLY = LLMSettings.RUN_ONLY + ("beam_batch_size", "text_encoder_batch_size")
