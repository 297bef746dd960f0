"""EAGER-LLM's two training phases on RecBole's ``Trainer``.

Phase one is RecBole's own ``fit`` (multi-task + GCT, validation, early
stopping, best checkpoint).  Phase two, Annealing Adapter Tuning, loads the
best stage-one weights, freezes them, adds the annealing adapter and runs
``fit`` again for ``aat_epochs`` with its own learning rate; its best
checkpoint is the one ``evaluate`` reloads.
"""
from recbole.trainer import Trainer

from recbole_llm.trainer import WeightsOnlyCheckpointMixin


class EAGERTrainer(WeightsOnlyCheckpointMixin, Trainer):
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        settings = self.model.settings
        epochs = settings.aat_epochs
        if not epochs or self.model.annealing:
            return result
        if saved and valid_data:
            self.load_model_weights(self.saved_model_file)  # best stage-one weights
        self.model.start_annealing()
        self.logger.info(f"Annealing adapter tuning: {epochs} epoch(s) on samples with at least "
                         f"{settings.aat_min_history} history items")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params=params,
                                               learning_rate=settings.aat_learning_rate)
        self.epochs, self.start_epoch, self.cur_step = epochs, 0, 0
        self.eval_step = epochs  # validate (and save) once, after the annealing epochs
        self.best_valid_score = float("-inf") if self.valid_metric_bigger else float("inf")
        self.best_valid_result = None
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
