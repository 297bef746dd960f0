"""EAGER-LLM's two training phases on RecBole's ``Trainer``.

Phase one is RecBole's own ``fit`` (multi-task + GCT, validation, early
stopping, best checkpoint).  Phase two, Annealing Adapter Tuning, loads the
best stage-one weights, freezes them, adds the annealing adapter and runs
``fit`` again for ``aat_epochs`` with its own learning rate.  The annealed
model is kept only if it validates at least as well as stage one; otherwise
the stage-one checkpoint is put back (both scores are logged), so
``evaluate`` reloads the better of the two.

Under several processes the process that writes checkpoints alone moves the files (every rank reloads
them after a barrier) and the gradient-averaging wrapper is rebuilt for the
annealing adapter's parameters.
"""
import os
import shutil

from recbole.trainer import Trainer

from recbole_llm.distributed import broadcast_value
from recbole_llm.trainer import WeightsOnlyCheckpointMixin, adapter_dir


def _move_adapter(src: str, dst, copy: bool = False) -> None:
    """The peft adapter folder travels with its checkpoint (``dst`` None: removed)."""
    src_dir = adapter_dir(src)
    if not os.path.isdir(src_dir):
        return
    if dst is None:
        shutil.rmtree(src_dir)
        return
    dst_dir = adapter_dir(dst)
    if os.path.isdir(dst_dir):
        shutil.rmtree(dst_dir)
    (shutil.copytree if copy else shutil.move)(src_dir, dst_dir)


class EAGERTrainer(WeightsOnlyCheckpointMixin, Trainer):
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        # the process that writes checkpoints on this machine moves them
        writer = self.config["single_spec"] or self.config["local_rank"] == 0
        settings = self.model.settings
        epochs = settings.aat_epochs
        if not epochs or self.model.annealing:
            return result
        compare = broadcast_value(saved and valid_data is not None  # rank 0 writes the files
                                  and os.path.isfile(self.saved_model_file))
        stage_one = f"{self.saved_model_file}.stage-one"
        if compare:
            self.load_model_weights(self.saved_model_file)  # best stage-one weights
            if writer:
                shutil.copyfile(self.saved_model_file, stage_one)
                _move_adapter(self.saved_model_file, stage_one, copy=True)
        stage_one_score, stage_one_result = self.best_valid_score, self.best_valid_result
        self.model.start_annealing()
        self.wrap_distributed()  # the adapter's parameters train now, the rest is frozen
        self.logger.info(f"Annealing adapter tuning: {epochs} epoch(s) on samples with at least "
                         f"{settings.aat_min_history} history items")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params=params,
                                               learning_rate=settings.aat_learning_rate)
        self.epochs, self.start_epoch, self.cur_step = epochs, 0, 0
        self.eval_step = epochs  # validate (and save) once, after the annealing epochs
        self.best_valid_score = float("-inf") if self.valid_metric_bigger else float("inf")
        self.best_valid_result = None
        annealed = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if not compare:
            self.logger.info("annealing kept without comparison: no saved stage-one checkpoint "
                             "and validation to compare with")
            return annealed
        better = annealed[0] >= stage_one_score if self.valid_metric_bigger \
            else annealed[0] <= stage_one_score
        self.logger.info(f"valid {self.config['valid_metric']}: stage one {stage_one_score:.4f}, "
                         f"after annealing {annealed[0]:.4f}: keeping "
                         f"{'the annealed model' if better else 'stage one'}")
        if better:
            if writer:
                os.remove(stage_one)
                _move_adapter(stage_one, None)
            return annealed
        if writer:
            os.replace(stage_one, self.saved_model_file)
            _move_adapter(stage_one, self.saved_model_file)
        self.load_model_weights(self.saved_model_file)  # after a barrier under several processes
        self.best_valid_score, self.best_valid_result = stage_one_score, stage_one_result
        return stage_one_score, stage_one_result
