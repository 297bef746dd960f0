"""Llama4Rec's settings, read once (``properties/model/Llama4Rec.yaml`` documents each)."""
import dataclasses
from typing import Optional

from recbole_llm.model.abstract import LLMSettings


@dataclasses.dataclass(frozen=True)
class Llama4RecSettings(LLMSettings):
    # the conventional model
    base_model: str
    base_checkpoint: Optional[str]
    MAX_ITEM_LIST_LENGTH: int
    # adaptive aggregation
    rerank_topn: int
    adaptive_alpha: bool
    alpha1: float
    alpha2: float
    fixed_alpha: float
    alpha_search: bool
    alpha_grid: list
    long_tail_transform: str
    utility_c: float
    # prompts and prompt augmentation
    prompt_augmentation: bool
    prompt_history_items: int
    prompt_similar_items: int
    prompt_base_items: int
    item_name_max_tokens: int
    prompt_history_tokens: int
    prompt_similar_tokens: int
    prompt_base_tokens: int
    prompt_candidate_tokens: int
    prompt_item_field: Optional[str]
    llama4rec_next_item_template: str
    llama4rec_listwise_template: str
    llama4rec_rating_template: str
    llama4rec_similar_text: str
    llama4rec_base_text: str
    llama4rec_base_rating_text: str
    # instruction tuning
    it_tasks: list
    it_samples_per_task: int
    it_min_history: int
    it_holdout_items: int
    listwise_max_answer: int
    llm_epochs: int
    llm_batch_size: int
    llm_learning_rate: float
    llm_weight_decay: float
    llm_eval_batch_size: int
    # data augmentation
    data_augmentation: bool
    aug_users: int
    aug_candidates: int
    aug_decoding: str
    aug_max_new_tokens: int
    aug_warm_start: bool

    RUN_ONLY = LLMSettings.RUN_ONLY + ("llm_eval_batch_size",)
    #: settings that act only after instruction tuning (serving-time aggregation,
    #: augmentation of the conventional model's data, a finished base checkpoint,
    #: whose content is keyed separately)
    AFTER_TUNING = ("adaptive_alpha", "alpha1", "alpha2", "fixed_alpha", "alpha_search",
                    "alpha_grid", "long_tail_transform",
                    "utility_c", "data_augmentation", "aug_users", "aug_candidates",
                    "aug_decoding", "aug_max_new_tokens", "aug_warm_start", "base_checkpoint")
