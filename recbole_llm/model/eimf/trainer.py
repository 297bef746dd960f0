"""EIMF's trainer: ESIM runs once on the training split before RecBole's
``fit`` (so a model built for prediction never runs it); with both semantic
weights at 0 (IBIM alone) it does not run at all.  Under several processes
rank 0 runs it first into the cache, the others read it."""
from recbole.trainer import Trainer

from recbole_llm.distributed import main_process_first
from recbole_llm.trainer import WeightsOnlyCheckpointMixin


class EIMFTrainer(WeightsOnlyCheckpointMixin, Trainer):
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        s = self.model.settings
        if s.align_weight or s.semantic_weight:
            with main_process_first():
                self.model.prepare_semantics(self.config, train_data.dataset)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
