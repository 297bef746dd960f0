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
import os

import numpy as np
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_llm.fingerprint import (dataset_fingerprint, path_fingerprint, recbole_settings,
                                     settings_fingerprint)
from recbole_llm.llm.client import client_from_config
from recbole_llm.model.llama4rec import (LabelChooser, _load_state_arrays, _state_arrays,
                                         forget_cached_outputs)
from recbole_llm.trainer import WeightsOnlyCheckpointMixin, load_checkpoint, with_weights_only_checkpoints

# Keys that act only after instruction tuning (aggregation at serving time,
# augmentation of the conventional model's data) or only in evaluation; every
# other setting keys the tuned LLM (see recbole_llm.fingerprint).
_AFTER_TUNING = ("adaptive_alpha", "alpha1", "alpha2", "fixed_alpha",
                 "long_tail_transform", "utility_c", "data_augmentation", "aug_users",
                 "aug_candidates", "aug_decoding", "aug_max_new_tokens", "aug_warm_start",
                 "metrics", "topk", "valid_metric", "valid_metric_bigger", "eval_type",
                 "base_checkpoint")


def base_key(cache, config, train_dataset) -> str:
    """The conventional model on D: RecBole's settings for it and the training data."""
    return cache.key("llama4rec-base", base=config["base_model"],
                     data=dataset_fingerprint(train_dataset),
                     settings=recbole_settings(config, config["base_model"]))


def tuned_llm_key(cache, config, train_dataset, base_id: str) -> str:
    """The instruction-tuned LLM: every setting but those acting after tuning, the
    training data (with item text) and the conventional model it was prompted with."""
    return cache.key("llama4rec-llm", base=base_id, data=dataset_fingerprint(train_dataset),
                     settings=settings_fingerprint(config, exclude=_AFTER_TUNING))


def augmented_base_key(cache, config, base_id: str, llm_id: str, rows_id: str) -> str:
    """The conventional model retrained on D': its settings, where it started
    (``aug_warm_start``), the LLM that labelled the rows and the rows themselves."""
    return cache.key("llama4rec-base-aug", base=base_id, llm=llm_id, rows=rows_id,
                     warm_start=config["aug_warm_start"],
                     settings=recbole_settings(config, config["base_model"]))


class Llama4RecTrainer(WeightsOnlyCheckpointMixin, Trainer):
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
            return "ckpt-" + path_fingerprint(path, model.cache.root)
        cache = model.cache
        key = base_key(cache, config, train_data.dataset)
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
        base_id = self._conventional_model(train_data, valid_data, show_progress)
        model._context_cache = None
        llm_key = tuned_llm_key(model.cache, config, train_data.dataset, base_id)
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
            key = augmented_base_key(model.cache, config, base_id, llm_key,
                                     model.augmented_fingerprint())
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
