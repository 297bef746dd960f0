"""Llama4Rec's phases on RecBole's ``Trainer``.

1. The conventional model on D: RecBole's own training loop (validation,
   early stopping), cached; or ``base_checkpoint``, a finished run's weights.
2. Instruction tuning of the LLM, prompts augmented with that model (cached).
3. Data augmentation: the tuned LLM labels sampled users (answers cached),
   then the conventional model trains on D' = D U augmented with RecBole's
   ``fit``; model selection on validation uses the conventional model alone,
   as it would without the LLM.
4. Evaluation: the LLM re-ranks the conventional model's top-N with
   adaptive aggregation (``Llama4Rec.full_sort_predict``).
"""
import hashlib
import os

import numpy as np
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_llm.llm.client import client_from_config
from recbole_llm.model.conventional import _recbole_defaults, data_fingerprint
from recbole_llm.model.llama4rec import (LabelChooser, _load_state_arrays, _state_arrays,
                                         forget_cached_outputs)
from recbole_llm.trainer import WeightsOnlyCheckpointMixin, load_checkpoint, with_weights_only_checkpoints

# settings of RecBole's trainer that shape the conventional model
_BASE_TRAINING_KEYS = ("epochs", "train_batch_size", "learner", "learning_rate", "weight_decay",
                       "stopping_step", "eval_step", "valid_metric", "train_neg_sample_args",
                       "MAX_ITEM_LIST_LENGTH", "eval_args", "clip_grad_norm", "reproducibility")
_IT_KEYS = ("it_tasks", "it_samples_per_task", "it_min_history", "listwise_max_answer",
            "llm_epochs", "llm_batch_size", "llm_learning_rate", "llm_weight_decay",
            "llm_max_prompt_tokens", "rerank_topn", "prompt_augmentation", "prompt_history_items",
            "prompt_similar_items", "prompt_base_items", "item_name_max_chars",
            "llama4rec_next_item_template", "llama4rec_listwise_template",
            "llama4rec_rating_template", "llama4rec_similar_text", "llama4rec_base_text",
            "llama4rec_base_rating_text",
            "llm_path", "llm_tuning", "llm_vocab_size", "llm_hidden_size", "llm_num_layers",
            "llm_num_heads", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
            "prompt_item_field")


class Llama4RecTrainer(WeightsOnlyCheckpointMixin, Trainer):
    def _settings(self, keys) -> dict:
        return {k: self.config[k] for k in keys}

    def _conventional_model(self, train_data, valid_data, show_progress) -> str:
        """Train (or load) the conventional model on D; returns its cache identity."""
        config, model = self.config, self.model
        path = config["base_checkpoint"]
        if path:
            state = load_checkpoint(path)["state_dict"]
            if any(k.startswith("base.") for k in state):  # a Llama4Rec checkpoint
                state = {k[5:]: v for k, v in state.items() if k.startswith("base.")}
            try:
                model.base.load_state_dict(state)
                forget_cached_outputs(model.base)
            except RuntimeError as err:
                raise ValueError(f"base_checkpoint {path} does not fit base_model "
                                 f"{config['base_model']} on this dataset: {err}") from None
            with open(path, "rb") as f:
                return "ckpt-" + hashlib.sha256(f.read()).hexdigest()[:16]
        cache = model.cache
        base_keys = sorted(_recbole_defaults(config, config["base_model"]))
        key = cache.key("llama4rec-base", dataset=config["dataset"], base=config["base_model"],
                        data=data_fingerprint(train_data.dataset), seed=config["seed"],
                        settings=self._settings(tuple(base_keys) + _BASE_TRAINING_KEYS))
        if cache.has_arrays(key):
            _load_state_arrays(model.base, cache.load_arrays(key))
            self.logger.info(f"conventional model {config['base_model']} on D: cached ({key})")
            return key
        self.logger.info(set_color(f"Training the conventional model {config['base_model']} on D",
                                   "green"))
        inner = with_weights_only_checkpoints(Trainer)(config, model.base)
        inner.saved_model_file = os.path.join(cache.root, f"{key}.pth.partial")
        os.makedirs(cache.root, exist_ok=True)
        inner.fit(train_data, valid_data, saved=True, show_progress=show_progress)
        if valid_data is not None:
            inner.load_model_weights(inner.saved_model_file)
        cache.save_arrays(key, **_state_arrays(model.base))
        if os.path.isfile(inner.saved_model_file):
            os.remove(inner.saved_model_file)
        return key

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        config, model = self.config, self.model
        model.rerank = False
        base_key = self._conventional_model(train_data, valid_data, show_progress)
        model._context_cache = None
        llm_key = model.cache.key("llama4rec-llm", dataset=config["dataset"], base=base_key,
                                  seed=config["seed"], settings=self._settings(_IT_KEYS))
        info = model.instruction_tune(llm_key, show_progress)
        self.logger.info(f"instruction tuning: loss per epoch {np.round(info['loss'], 4).tolist()}"
                         + (" (cached)" if info["cached"] else f", {info['samples']} samples"))
        for p in model.llm.parameters():
            p.requires_grad_(False)

        result = (float("-inf"), None)
        if config["data_augmentation"] and model.rating_task:
            self.logger.warning("data augmentation for rating prediction (the paper's attribute "
                                "filling) is not implemented: the rating model trains on D")
        elif config["data_augmentation"]:
            if config["llm_api_base"] or config["aug_decoding"] == "free":
                client = client_from_config(config, model.llm, model.tokenizer,
                                            cache_dir=os.path.join(model.cache.root, "llama4rec-answers"),
                                            local_name=llm_key)
            else:  # constrained (checked when the model was built)
                client = LabelChooser(model, model.cache, llm_key, show_progress)
            stats = model.augment(client, np.random.default_rng(config["seed"]))
            self.logger.info(f"data augmentation: {stats['prompts']} prompts, {stats['valid']} valid "
                             f"answers, {stats['dropped']} dropped (no valid candidate named), "
                             f"{stats['rows']} training rows added to {model.train_rows}")
            key = model.cache.key("llama4rec-base-aug", base=base_key, llm=llm_key,
                                  rows=model.augmented_fingerprint(),
                                  settings=self._settings(("aug_warm_start",) + _BASE_TRAINING_KEYS))
            if model.cache.has_arrays(key):  # e.g. an ablation that changes only the aggregation
                _load_state_arrays(model.base, model.cache.load_arrays(key))
                self.logger.info(f"conventional model on D': cached ({key})")
            else:
                if not config["aug_warm_start"]:
                    model.reset_base()
                self.optimizer = self._build_optimizer(params=model.base.parameters())
                result = super().fit(train_data, valid_data, verbose, saved, show_progress,
                                     callback_fn)
                if saved and valid_data is not None:
                    self.load_model_weights(self.saved_model_file)
                model.cache.save_arrays(key, **_state_arrays(model.base))
        if result[1] is None and saved:  # the conventional model above is final
            self._save_checkpoint(0, verbose=verbose)
        model.rerank = True
        if valid_data is not None:
            valid = self.evaluate(valid_data, load_best_model=False, show_progress=show_progress)
            self.logger.info(set_color("valid with LLM re-ranking", "blue") + f": {valid}")
            result = (valid[config["valid_metric"].lower()], valid)
        return result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        # the items RecBole will mask (history) must not take re-ranking slots
        self.model.eval_history = None if self.model.sequential else \
            getattr(eval_data, "uid2history_item", None)
        self.model._context_cache = None  # the base weights may just have been reloaded
        try:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            self.model.eval_history = None
