"""SCRec's settings, read once (``properties/model/SCRec.yaml`` documents each)."""
import dataclasses
from typing import Optional

from recbole_llm.model.abstract import LLMSettings


@dataclasses.dataclass(frozen=True)
class SCRecSettings(LLMSettings):
    # collaborative item embeddings (the codebooks' input)
    behavior_model: str
    behavior_epochs: int
    behavior_model_args: dict
    behavior_checkpoint: Optional[str]
    # alignment tokenization
    codebook_levels: int
    codebook_size: int
    codebook_dim: int
    codebook_hidden: int
    codebook_epochs: int
    codebook_batch_size: int
    codebook_learning_rate: float
    codebook_beta: float
    codebook_reset_every: int
    align_weight: float
    align_temperature: float
    align_target: str
    code_collision: str
    # stage two: tasks (a template: one text, or a list sampled per training row)
    seqrec_template: object
    item2text_template: object
    text2item_template: object
    query_template: object
    negative_template: object
    history_separator: str
    aux_task_ratio: dict
    task_loss_weights: dict
    item_text_max_tokens: int
    preference_field: Optional[str]
    prompt_item_field: Optional[str]
    query_title_words: int
    preference_exclude_share: float
    # decoding and serving
    code_softmax: str
    num_beams: int
    beam_batch_size: int

    RUN_ONLY = LLMSettings.RUN_ONLY + ("beam_batch_size",)
