"""Trainers whose checkpoints load with ``torch.load(weights_only=True)``.

RecBole pickles its ``Config`` into every checkpoint, which torch >= 2.6
refuses to load by default, and unpickling arbitrary files is unsafe anyway.
The mixin below stores only tensors and plain Python data (the config as a
plain dict of strings and numbers), so reloading never needs
``weights_only=False``.  It wraps any RecBole trainer class, so RecBole's
special trainers (KG, pre-training, ...) get it too.
"""
import functools
import os

import torch
from recbole.utils import set_color


def _plain(value):
    """Config values reduced to types the weights-only unpickler accepts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def load_checkpoint(path, device="cpu"):
    """Load a plugin checkpoint; refuses anything that needs unpickling code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device, weights_only=True)


def save_checkpoint(state, path):
    """Write then rename, so an interrupted save never leaves a torn file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


class WeightsOnlyCheckpointMixin:
    """Overrides RecBole's checkpoint save/resume/reload with safe equivalents."""

    def _checkpoint_state(self, epoch):
        return {
            "config": {"model": str(self.config["model"]),
                       "dataset": str(self.config["dataset"]),
                       "final_config_dict": _plain(self.config.final_config_dict)},
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(self._checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, self.device)
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            raise ValueError(
                f"checkpoint {resume_file} was written by model "
                f"'{checkpoint['config']['model']}', not '{self.config['model']}'"
            )
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_model_weights(self, checkpoint_file):
        checkpoint = load_checkpoint(checkpoint_file, self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self.load_model_weights(model_file or self.saved_model_file)
        return super().evaluate(eval_data, load_best_model=False, model_file=None,
                                show_progress=show_progress)


@functools.lru_cache(maxsize=None)
def with_weights_only_checkpoints(trainer_class):
    """``trainer_class`` with the mixin in front (idempotent)."""
    from recbole.trainer import Trainer

    # Decision-tree trainers keep their own (non-torch) model files.
    if issubclass(trainer_class, WeightsOnlyCheckpointMixin) or not issubclass(trainer_class, Trainer):
        return trainer_class
    return type(trainer_class.__name__, (WeightsOnlyCheckpointMixin, trainer_class),
                {"__module__": __name__, "__doc__": trainer_class.__doc__})
