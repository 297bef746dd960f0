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
    index_quantizer: str
    index_tokens: str
    index_semantic_levels: int
    index_behavior_levels: int
    index_kmeans_iters: int
    index_collision: str
    code_token_init: str
    behavior_model: str
    behavior_epochs: int
    behavior_model_args: dict
    behavior_checkpoint: Optional[str]
    # multi-task training (a template: one text, or a list sampled per training row)
    seqrec_template: object
    item2index_template: object
    index2item_template: object
    preference_template: object
    history_separator: str
    preference_field: Optional[str]
    preference_exclude_share: float
    aux_task_ratio: dict
    task_loss_weights: dict
    item_text_max_tokens: int
    # global contrast decompression
    gct_lambda_sem: float
    gct_lambda_beh: float
    gct_temperature: float
    gct_negatives: int
    gct_projector: str
    # annealing adapter tuning
    aat_epochs: int
    aat_min_history: int
    aat_lora_r: int
    aat_lora_alpha: int
    aat_target_modules: Optional[list]
    aat_learning_rate: float
    aat_keep_adapter: bool
    # decoding
    code_softmax: str
    num_beams: int
    beam_batch_size: int

    RUN_ONLY = LLMSettings.RUN_ONLY + ("beam_batch_size", "text_encoder_batch_size")
