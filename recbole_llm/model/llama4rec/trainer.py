"""Llama4Rec's phases on RecBole's ``Trainer``.

1. The conventional model on D: RecBole's own training loop (validation,
   early stopping), cached; or ``base_checkpoint``, a finished run's weights.
2. Instruction tuning of the LLM (cached) on samples that ask about each
   user's last ``it_holdout_items`` training interactions, candidates and
   prompt augmentation from a second conventional model trained without them
   (the paper's leave-one-out inside the training split: no sample's base
   model has seen its future).
3. Data augmentation: the tuned LLM labels sampled users (answers cached),
   then the conventional model trains on D' = D U augmented with RecBole's
   ``fit``; model selection on validation uses the conventional model alone,
   as it would without the LLM.
4. Evaluation: the LLM re-ranks the conventional model's top-N with
   adaptive aggregation (``Llama4Rec.full_sort_predict``).

Under several processes, phases 1-2 and the LLM's augmentation answers run in
rank 0 first, on the whole training split in that one process, into the
cache; the others read them.  Training on D' and evaluation are RecBole's
multi-process loop.
"""
import os

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_llm.distributed import main_process_first, single_process_config
from recbole_llm.experiment import plain_result
from recbole_llm.fingerprint import dataset_fingerprint, path_fingerprint, recbole_settings
from recbole_llm.llm.choice import LabelChoiceClient
from recbole_llm.llm.client import client_from_config
from recbole_llm.llm.prompts import answer_lm_loss, training_batch
from recbole_llm.model.llama4rec.attributes import fill_attributes
from recbole_llm.model.llama4rec.prompts import LABELS, offered_labels
from recbole_llm.model.llama4rec.samples import holdout_rows
from recbole_llm.trainer import WeightsOnlyCheckpointMixin, load_checkpoint, with_weights_only_checkpoints


def base_key(cache, config, train_dataset) -> str:
    """The conventional model on D: RecBole's settings for it and the training data."""
    return cache.key("llama4rec-base", base=config["base_model"],
                     data=dataset_fingerprint(train_dataset),
                     settings=recbole_settings(config, config["base_model"]))


def tuned_llm_key(cache, settings, train_dataset, base_id: str) -> str:
    """The instruction-tuned LLM: the model's settings but those acting after
    tuning, the training data (with item text) and the conventional model its
    samples were built with."""
    return cache.key("llama4rec-llm", base=base_id, data=dataset_fingerprint(train_dataset),
                     settings=settings.key_parts(exclude=settings.AFTER_TUNING,
                                                 memo_dir=cache.root))


def augmented_base_key(cache, config, settings, base_id: str, llm_id: str, rows_id: str) -> str:
    """The conventional model retrained on D': RecBole's settings for it, where it
    started (``aug_warm_start``), the LLM that labelled the rows and the rows."""
    return cache.key("llama4rec-base-aug", base=base_id, llm=llm_id, rows=rows_id,
                     warm_start=settings.aug_warm_start,
                     settings=recbole_settings(config, config["base_model"]))


class Llama4RecTrainer(WeightsOnlyCheckpointMixin, Trainer):
    def _whole_splits(self, train_data, valid_data):
        """``(config, train, valid)`` for the stages one process runs alone: the run's
        own in one process; under several, a single-process config and loaders over
        the whole splits (the run's loaders hold one process's share)."""
        from recbole.data.dataloader import TrainDataLoader

        if self.config["single_spec"]:
            return self.config, train_data, valid_data
        config = single_process_config(self.config)
        train = TrainDataLoader(config, train_data.dataset, train_data._sampler, shuffle=True)
        valid = None if valid_data is None else \
            type(valid_data)(config, valid_data._dataset, valid_data._sampler, shuffle=False)
        return config, train, valid

    def _tuning_data(self, train_data, config):
        """``(loader, cache identity)`` of the data the tuning model trains on: the
        training split without each user's last ``it_holdout_items`` rows."""
        from recbole.data.dataloader import TrainDataLoader

        held = holdout_rows(train_data.dataset, self.model.settings.it_holdout_items)
        kept = train_data.dataset.copy(train_data.dataset.inter_feat[torch.as_tensor(~held)])
        loader = TrainDataLoader(config, kept, train_data._sampler, shuffle=True)
        return loader, base_key(self.model.cache, config, kept)

    def _tuning_model(self, loader, valid_data, show_progress, config):
        """The conventional model the instruction samples are built with: trained
        like the first but without each user's last ``it_holdout_items`` training
        interactions, the ones the samples ask about, so that its candidates and
        suggestions know no more of a sample's future than the served model
        knows of a test item's."""
        model, s = self.model, self.model.settings
        served = model.base
        model.reset_base(loader.dataset)
        try:
            self._train_or_load_base(loader, valid_data, show_progress,
                                     f"without each user's last {s.it_holdout_items} training "
                                     "interactions (for instruction samples)", config)
            return model.base
        finally:
            model.base = served
            model.forget_context()

    def _conventional_model(self, train_data, valid_data, show_progress, config) -> str:
        """Train (or load) the conventional model on D; returns its cache identity."""
        model = self.model
        path = model.settings.base_checkpoint
        if path:
            state = load_checkpoint(path)["state_dict"]
            if any(k.startswith("base.") for k in state):  # a Llama4Rec checkpoint
                state = {k[5:]: v for k, v in state.items() if k.startswith("base.")}
            try:
                model.load_base_state(state)
            except RuntimeError as err:
                raise ValueError(f"base_checkpoint {path} does not fit base_model "
                                 f"{model.settings.base_model} on this dataset: {err}") from None
            return "ckpt-" + path_fingerprint(path, model.cache.root)
        return self._train_or_load_base(train_data, valid_data, show_progress, "on D", config)

    def _train_or_load_base(self, train_data, valid_data, show_progress, what: str,
                            config) -> str:
        """``model.base`` trained on ``train_data`` with RecBole's loop, or loaded
        from the cache; returns its cache identity."""
        model = self.model
        cache = model.cache
        key = base_key(cache, config, train_data.dataset)
        if cache.has_arrays(key):
            model.load_base_arrays(cache.load_arrays(key))
            self.logger.info(f"conventional model {model.settings.base_model} {what}: cached ({key})")
            return key
        self.logger.info(set_color(f"Training the conventional model {model.settings.base_model} "
                                   f"{what}", "green"))
        inner = with_weights_only_checkpoints(Trainer)(config, model.base)
        inner.saved_model_file = os.path.join(cache.root, f"{key}.pth.partial")
        os.makedirs(cache.root, exist_ok=True)
        inner.fit(train_data, valid_data, saved=True, show_progress=show_progress)
        if valid_data is not None:
            inner.load_model_weights(inner.saved_model_file)
        cache.save_arrays(key, **model.base_arrays())
        if os.path.isfile(inner.saved_model_file):
            os.remove(inner.saved_model_file)
        return key

    def instruction_tune(self, key: str, tuning_model, show_progress: bool = False) -> dict:
        """Tune the LLM on the model's instruction samples (cached under ``key``),
        built with the conventional model ``tuning_model()`` returns."""
        model, s = self.model, self.model.settings
        cache = model.cache
        if cache.has_arrays(key):
            arrays = cache.load_arrays(key)
            model.load_llm_state({k: v for k, v in arrays.items() if k != "__loss"})
            model.llm.eval()  # no LoRA dropout in what it answers next
            return {"loss": arrays["__loss"].tolist(), "cached": True}
        rng = np.random.default_rng(s.seed)
        tuning = tuning_model()
        served, model.base = model.base, tuning
        held = s.it_holdout_items
        model.known_histories = [h[:max(len(h) - held, 0)] for h in model.histories]
        model.forget_context()
        try:
            samples = model.instruction_samples(rng)
        finally:
            model.base, model.known_histories = served, None
            model.forget_context()
        self.logger.info(f"instruction samples: {model.writer.report()}")
        ids = model.tokenizer([p for p, _ in samples])["input_ids"]
        llm = model.llm
        optim = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad],
                                  lr=s.llm_learning_rate, weight_decay=s.llm_weight_decay)
        losses = []
        llm.train()
        for epoch in range(s.llm_epochs):
            order = rng.permutation(len(samples))
            total, steps = 0.0, 0
            bar = tqdm(range(0, len(order), s.llm_batch_size), desc=f"instruction tuning {epoch + 1}",
                       disable=not show_progress, unit="batch")
            for start in bar:
                rows = order[start:start + s.llm_batch_size]
                packed = training_batch(
                    [ids[r] for r in rows], [samples[r][1] for r in rows],
                    model.tokenizer.pad_token_id, s.llm_max_prompt_tokens,
                    dtype=llm.dtype).to(model.device)
                loss, _ = answer_lm_loss(llm, packed)
                optim.zero_grad()
                loss.backward()
                optim.step()
                total, steps = total + loss.item(), steps + 1
            losses.append(total / max(steps, 1))
        llm.eval()
        cache.save_arrays(key, __loss=np.asarray(losses), **model.llm_state())
        return {"loss": losses, "cached": False, "samples": len(samples)}

    def _augmentation_client(self, llm_key: str, show_progress: bool):
        """A server or the local backbone generating text (``aug_decoding: free``),
        else the local backbone choosing among the offered labels."""
        config, model, s = self.config, self.model, self.model.settings
        if config["llm_api_base"] or s.aug_decoding == "free":
            return client_from_config(config, model.llm, model.tokenizer,
                                      cache_dir=os.path.join(model.cache.root, "llama4rec-answers"),
                                      local_name=llm_key)
        return LabelChoiceClient(model.llm, model.tokenizer, LABELS, model.label_ids,
                                 s.llm_max_prompt_tokens, s.llm_eval_batch_size, model.cache,
                                 llm_key, show_progress, offered=offered_labels)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        config, model, s = self.config, self.model, self.model.settings
        model.rerank = False
        with main_process_first():  # rank 0 trains and caches; the others read the cache
            base_id, llm_key, fills = self._before_training(train_data, valid_data, show_progress)
        for p in model.llm.parameters():
            p.requires_grad_(False)

        result = (float("-inf"), None)
        if s.data_augmentation and (not model.rating_task or fills):
            key = augmented_base_key(model.cache, config, s, base_id, llm_key,
                                     model.augmented_fingerprint()
                                     + dataset_fingerprint(train_data.dataset))
            if model.cache.has_arrays(key):  # e.g. an ablation that changes only the aggregation
                model.load_base_arrays(model.cache.load_arrays(key))
                self.logger.info(f"conventional model on D': cached ({key})")
            else:
                if not s.aug_warm_start:
                    model.reset_base()
                self.optimizer = self._build_optimizer(params=model.base.parameters())
                self.wrap_distributed()  # the base model's parameters alone train now
                result = super().fit(train_data, valid_data, verbose, saved, show_progress,
                                     callback_fn)
                if saved and valid_data is not None:
                    self.load_model_weights(self.saved_model_file)
                model.cache.save_arrays(key, **model.base_arrays())
        if result[1] is None and saved:  # the conventional model above is final
            self._save_checkpoint(0, verbose=verbose)
        model.rerank = True
        if valid_data is not None:
            if s.alpha_search and s.adaptive_alpha:
                valid = self.search_alpha(valid_data, show_progress)
                if saved:  # the checkpoint serves with the chosen pair
                    self._save_checkpoint(0, verbose=verbose)
            else:  # through _valid_epoch, so the re-ranked point joins the validation curve
                _, valid = self._valid_epoch(valid_data, show_progress=show_progress)
            self.logger.info(set_color("valid with LLM re-ranking", "blue")
                             + f": {plain_result(valid)}")
            result = (valid[config["valid_metric"].lower()], valid)
        return result

    def _before_training(self, train_data, valid_data, show_progress) -> tuple:
        """Phases 1-2 and the augmentation answers (one process, whole splits);
        ``(base id, tuned LLM key, filled attributes or None)``."""
        model, s = self.model, self.model.settings
        config, train_data, valid_data = self._whole_splits(train_data, valid_data)
        base_id = self._conventional_model(train_data, valid_data, show_progress, config)
        model.forget_context()
        tuning_loader, tuning_id = self._tuning_data(train_data, config)
        llm_key = tuned_llm_key(model.cache, s, train_data.dataset, tuning_id)
        info = self.instruction_tune(
            llm_key, lambda: self._tuning_model(tuning_loader, valid_data, show_progress, config),
            show_progress)
        self.logger.info(f"instruction tuning: loss per epoch {np.round(info['loss'], 4).tolist()}"
                         + (" (cached)" if info["cached"] else f", {info['samples']} samples"))
        fills = None
        if s.data_augmentation and model.rating_task:
            fills = fill_attributes(model, train_data.dataset)
            self.logger.info(f"data augmentation (attribute filling): {len(fills)} missing "
                             f"attributes filled: {fills[:20]}")
            if not fills:
                self.logger.info("no attribute is missing: the rating model trained on D stays")
        elif s.data_augmentation:
            client = self._augmentation_client(llm_key, show_progress)
            stats = model.augment(client, np.random.default_rng(s.seed))
            self.logger.info(f"data augmentation: {stats['prompts']} prompts, {stats['valid']} valid "
                             f"answers, {stats['dropped']} dropped (no valid candidate named), "
                             f"{stats['rows']} training rows added to {model.train_rows}")
        return base_id, llm_key, fills

    def search_alpha(self, valid_data, show_progress=False) -> dict:
        """(alpha1, alpha2) over ``alpha_grid`` x ``alpha_grid`` (alpha2 < 1), the
        best on the validation metric kept (the paper searches both); the LLM's
        answers are computed once.  Returns the best validation result."""
        model, s = self.model, self.model.settings
        metric = self.config["valid_metric"].lower()
        pairs = [(a1, a2) for a1 in s.alpha_grid for a2 in s.alpha_grid if a2 < 1]
        model.keep_llm_outputs(True)
        best, table = None, []
        try:
            for a1, a2 in tqdm(pairs, desc="alpha search", disable=not show_progress):
                model.set_alpha(a1, a2)
                valid = self.evaluate(valid_data, load_best_model=False, show_progress=False)
                table.append((a1, a2, valid[metric]))
                if best is None or (valid[metric] > best[2][metric] if self.valid_metric_bigger
                                    else valid[metric] < best[2][metric]):
                    best = (a1, a2, valid)
            model.set_alpha(best[0], best[1])
            # the kept pair once more through _valid_epoch (LLM answers reused): the
            # validation curve ends with the result the checkpoint serves
            _, valid = self._valid_epoch(valid_data, show_progress=False)
        finally:
            model.keep_llm_outputs(False)
        self.logger.info(f"alpha search on valid {metric}: "
                         + ", ".join(f"({a1:g}, {a2:g}) {v:.4f}" for a1, a2, v in table)
                         + f"; kept alpha1={best[0]:g}, alpha2={best[1]:g}")
        return valid

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        # the items RecBole will mask (history) must not take re-ranking slots
        self.model.set_eval_history(None if self.model.sequential else
                                    getattr(eval_data, "uid2history_item", None))
        self.model.forget_context()  # the base weights may just have been reloaded
        try:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            self.model.set_eval_history(None)
