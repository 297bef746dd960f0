"""The shared base of the plugin's models.

* :class:`PluginModel`: the hooks the plugin's ``Config`` calls on a model
  class, declared here rather than found by ``hasattr``: the model's own
  property files, and for a model that wraps another (Llama4Rec), taking
  the wrapped model's type.
* :class:`LLMSettings`: a model's hyper-parameters, read once from the
  config into a frozen dataclass (RecBole's "load parameters" block as an
  object).  A model reads its settings only from it, so a cache key built
  from it (:meth:`LLMSettings.key_parts`) covers everything the model reads.
* :class:`LLMRecommender`: what every LLM-based method shares: its settings,
  the cache, the backbone (a local Hugging Face causal LM or the small
  default) with the method's new tokens and its tuning (LoRA or full),
  pad/eos ids, item names and device placement.
"""
import dataclasses
from typing import Optional

from recbole_llm.errors import InputError
from recbole_llm.fingerprint import PATH_KEYS, path_fingerprint
from recbole_llm.llm.cache import Cache


class PluginModel:
    """Hooks of a plugin model class, called by ``recbole_llm.config.Config``."""

    #: True for a model wrapping a conventional one named by ``base_model``
    wraps_base_model = False
    #: False where a stage outside RecBole's training loop does not run in several
    #: processes yet (Llama4Rec's inner models and instruction tuning): ``--nproc`` > 1
    #: is refused before any process starts
    supports_multi_process = True

    @classmethod
    def property_files(cls) -> list:
        """Yaml files layered above the model's own ``properties/model/<Model>.yaml``
        and below the dataset's (e.g. RecBole's yaml of a model this one extends)."""
        return []

    @classmethod
    def specialise(cls, base_name: str) -> tuple:
        """``(model class, property files)`` for a wrapper around ``base_name``."""
        return cls, []

    @classmethod
    def check_settings(cls, final: dict) -> None:
        """Raise :class:`InputError` for settings this model cannot run with,
        before any data loads (the run's final settings)."""

    def epoch_losses(self) -> dict:
        """The parts of the training loss since the last call (e.g. per task mean),
        logged by the trainer after each epoch; ``{}``: nothing to add."""
        return {}


@dataclasses.dataclass(frozen=True)
class LLMSettings:
    """The LLM layer's settings every LLM model reads (``properties/overall.yaml``
    and the model's yaml); a method's settings subclass this with its own."""

    seed: int
    llm_path: Optional[str]
    llm_vocab_size: int
    llm_hidden_size: int
    llm_num_layers: int
    llm_num_heads: int
    llm_max_positions: int
    llm_dropout: float
    llm_tie_embeddings: bool
    llm_dtype: str
    llm_gradient_checkpointing: bool
    llm_tuning: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: Optional[list]
    llm_max_prompt_tokens: int
    item_text_fields: list
    item_embedding_field: Optional[str]
    item_text_keyed: bool
    show_progress: bool

    #: fields that never change what a model computes (progress bars, batch sizes
    #: of inference)
    RUN_ONLY = ("show_progress",)

    @classmethod
    def from_config(cls, config) -> "LLMSettings":
        """Every field from the config; a field missing from every property file
        takes its dataclass default, or is an error naming it."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in config.final_config_dict:
                values[field.name] = config.final_config_dict[field.name]
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise InputError(f"setting '{field.name}' of {cls.__name__} is missing: declare it "
                                 "in the model's property file")
        return cls(**values)

    def __getitem__(self, name):
        """``settings["llm_path"]``: the shared LLM helpers read settings like a config."""
        if not hasattr(self, name):
            raise KeyError(f"'{name}' is not a setting of {type(self).__name__}")
        return getattr(self, name)

    def key_parts(self, exclude=(), memo_dir: str = None) -> dict:
        """Every setting (paths as their content; ``memo_dir``: where content
        digests are remembered, the cache root) for a cache key, less
        ``exclude`` (settings acting only after the cached stage) and the
        run-only ones."""
        parts = {}
        for field in dataclasses.fields(self):
            name = field.name
            if name in exclude or name in self.RUN_ONLY:
                continue
            value = getattr(self, name)
            parts[name] = (path_fingerprint(value, memo_dir) if name in PATH_KEYS and value
                           else value)
        # how the folder is loaded, or how the small default is built (with the
        # library that initialises it), shapes everything computed with the LLM
        from recbole_llm.llm.backbone import LOADER_VERSION, SMALL_DEFAULT_VERSION
        if self.llm_path:
            parts["llm_loader"] = LOADER_VERSION
        else:
            import transformers
            parts["llm_default"] = (SMALL_DEFAULT_VERSION, transformers.__version__)
        return parts


class LLMRecommender(PluginModel):
    """Mixin for a RecBole model class built on the shared LLM layer.

    ``class EAGERLLM(LLMRecommender, SequentialRecommender)``; its ``__init__``
    calls ``super().__init__(config, dataset)`` (or ``super().__init__()`` for
    ``AbstractRecommender``), then :meth:`read_settings` and :meth:`load_llm`.
    """

    settings_class = LLMSettings

    def read_settings(self, config) -> LLMSettings:
        """The model's settings object, its cache and its device."""
        self.settings = self.settings_class.from_config(config)
        self.cache = Cache.from_config(config)
        self.device = config["device"]
        return self.settings

    def load_llm(self, corpus, tokens=(), special_tokens=()):
        """The backbone with ``tokens`` (and ``special_tokens``) added, untuned:
        ``(llm, ids of tokens, ids of special tokens)``; the tokenizer is
        ``self.tokenizer``.  ``corpus``: texts the small default's tokenizer
        is trained on."""
        from recbole_llm.llm.backbone import add_tokens, load_backbone

        llm, self.tokenizer = load_backbone(self.settings, corpus=corpus, cache=self.cache)
        ids = add_tokens(llm, self.tokenizer, list(tokens)) if tokens else []
        special = add_tokens(llm, self.tokenizer, list(special_tokens), special=True) \
            if special_tokens else []
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id
        return llm, ids, special

    def tune_llm(self, llm, trainable_token_ids=()):
        """``self.llm``: LoRA (new tokens' rows trainable) or full fine-tuning."""
        from recbole_llm.llm.backbone import apply_tuning

        self.llm = apply_tuning(llm, self.settings, new_token_ids=list(trainable_token_ids))
        return self.llm

    @staticmethod
    def item_names(dataset, field: Optional[str]) -> list:
        """Each item's name for prompts: the raw tokens of ``field`` (e.g. a
        title), or the full item text when no field is named."""
        if field:
            return [" ".join(v) for v in dataset.item_field_values(field)]
        return list(dataset.item_texts())
