"""Trainers whose checkpoints load with ``torch.load(weights_only=True)``.

RecBole pickles its ``Config`` into every checkpoint, which torch >= 2.6
refuses to load by default, and unpickling arbitrary files is unsafe anyway.
The mixin below stores only tensors and plain Python data (the config as a
plain dict of strings and numbers), so reloading never needs
``weights_only=False``.  It wraps any RecBole trainer class, so RecBole's
special trainers (KG, pre-training, ...) get it too.
"""
import functools
import json
import os
import random
import uuid

import numpy as np
import torch
from recbole.utils import set_color

from recbole_llm.distributed import broadcast_value
from recbole_llm.errors import InputError


def _plain(value):
    """Config values reduced to types the weights-only unpickler accepts."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):  # subclasses (numpy floats, str enums) to the plain type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def load_checkpoint(path, device=None):
    """Load a plugin checkpoint (onto ``device``, by default host memory, from
    where a model's ``load_state_dict`` copies it onto its own); refuses
    anything that needs unpickling code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device or torch.device("cpu"), weights_only=True)


_CHECKED = {}  # the last checked resume checkpoint, so the trainer does not read it twice


def _file_state(path):
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def changed_defaults(model_name: str) -> dict:
    """The model class's ``DEFAULTS_BEFORE``: settings whose default has changed, at
    the value a checkpoint that does not name them was trained with."""
    from recbole_llm.registry import get_model_class

    try:
        return dict(getattr(get_model_class(model_name), "DEFAULTS_BEFORE", {}))
    except ValueError as err:  # a checkpoint of a model this install does not have
        raise InputError(str(err)) from None


def saved_settings(model_name: str, final_config: dict) -> dict:
    """A checkpoint's settings, a changed default at its old value where the
    checkpoint, written before the change, does not name it."""
    return {**changed_defaults(model_name), **final_config}


def check_resume_checkpoint(path, config) -> dict:
    """A checkpoint to resume from: readable weights-only and written by the same
    model on the same dataset; checked before any data loads."""
    try:
        state = _file_state(path)
        if state in _CHECKED:
            return _CHECKED[state]
        checkpoint = load_checkpoint(path)
    except FileNotFoundError:
        raise InputError(f"resume_checkpoint '{path}' is not a file") from None
    except Exception as err:  # torn file, pickled objects, not a torch file
        raise InputError(f"resume_checkpoint '{path}' cannot be read weights-only "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); it must be "
                         "a checkpoint written by recbole-llm") from None
    meta = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in checkpoint:
        raise InputError(f"resume_checkpoint '{path}' is not a recbole-llm checkpoint")
    for key in ("model", "dataset"):
        if str(meta.get(key, "")).lower() != str(config[key]).lower():
            raise InputError(f"resume_checkpoint '{path}' was written for {key} "
                             f"'{meta.get(key)}', this run has '{config[key]}'")
    # a setting whose default changed reads the same weights differently: the run must
    # name the checkpoint's value, not inherit today's default
    written = meta.get("final_config_dict") or {}
    for key, old in changed_defaults(config["model"]).items():
        value = written.get(key, old)
        if value != config[key]:
            raise InputError(f"resume_checkpoint '{path}' was trained with {key}={value!r}, "
                             f"this run has {config[key]!r}: pass --{key}={value}")
    _CHECKED.clear()
    _CHECKED[state] = checkpoint
    return checkpoint


def rng_state(loader=None) -> dict:
    """Every random state a training epoch draws from, as plain tensors and lists."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    return state


def model_rng(model):
    """A model's own NumPy generator (``model.rng``: sampled rows, templates,
    negatives), if it has one."""
    rng = getattr(model, "rng", None)
    return rng if isinstance(rng, np.random.Generator) else None


def set_rng_state(state: dict, loader=None) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(loader, "generator", None)
    if "loader" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["loader"])


def adapter_dir(checkpoint_file: str) -> str:
    """Where the LoRA adapter of a checkpoint goes: ``<checkpoint>-adapter/``."""
    root, ext = os.path.splitext(checkpoint_file)
    return f"{root}-adapter"


def save_adapter(model, checkpoint_file: str):
    """A LoRA-tuned backbone's adapter beside its RecBole checkpoint, in peft's own
    format (``adapter_config.json`` + safetensors, new tokens' rows included),
    so it loads with ``PeftModel.from_pretrained``; the folder, or None."""
    llm = getattr(model, "llm", None)
    if llm is None or not hasattr(llm, "peft_config"):
        return None
    folder = adapter_dir(checkpoint_file)
    llm.save_pretrained(folder)
    return folder


def unique_checkpoint_name(model: str) -> str:
    """``Model-<time>-<pid>-<random>.pth``: two runs started in the same second
    never write the same file (RecBole's names have one-second resolution)."""
    from recbole.utils import get_local_time

    return f"{model}-{get_local_time()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.pth"


def save_checkpoint(state, path):
    """Write then rename, so an interrupted save never leaves a torn file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)  # a failed or interrupted save leaves no litter
        raise


class WeightsOnlyCheckpointMixin:
    """Overrides RecBole's checkpoint save/resume/reload with safe equivalents.

    A checkpoint also holds the optimizer, the best validation result and every
    random state (torch, NumPy, Python, the training loader's shuffling), so a
    killed run resumed from it trains exactly as an uninterrupted one.
    """

    def __init__(self, config, model):
        cpu_group = not config["single_spec"] and config["device"].type == "cpu"
        if cpu_group:  # RecBole wraps with device_ids=[rank], which CPU modules refuse
            config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            if cpu_group:
                config["single_spec"] = False
        if cpu_group:
            self.wrap_distributed()
        name = unique_checkpoint_name(config["model"])
        if not config["single_spec"]:  # rank 0 writes it, every rank reloads it
            name = broadcast_value(name)
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self._train_loader = None
        self._resumed_rng = None
        self._eval_loader = None
        self._eval_rows = None
        if not config["single_spec"]:
            collect = self.eval_collector.get_data_struct
            self.eval_collector.get_data_struct = lambda: self._own_rows(collect())

    def wrap_distributed(self) -> None:
        """(Re)build the gradient-averaging wrapper RecBole's training loop uses under
        several processes, for the parameters that train now (a model that adds or
        freezes parameters between stages calls it again).  CPU processes: no
        ``device_ids`` (RecBole passes ``[local_rank]``, which CPU modules refuse)."""
        if self.config["single_spec"]:
            return
        ids = [self.config["local_rank"]] if self.device.type == "cuda" else None
        self.distributed_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._train_loader = train_data
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng, train_data)
            self._resumed_rng = None
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        parts = getattr(self.model, "epoch_losses", dict)()
        if parts:
            self.logger.info(f"epoch {epoch_idx} training parts: "
                             + ", ".join(f"{name} {value:.4f}" for name, value in parts.items()))
        return loss

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
            "best_valid_result": _plain(self.best_valid_result),
            "rng": rng_state(getattr(self, "_train_loader", None)),
            # PCG64's 128-bit state as text: the weights-only loader takes plain data
            "model_rng": json.dumps(model_rng(self.model).bit_generator.state)
            if model_rng(self.model) is not None else None,
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(self._checkpoint_state(epoch), saved_model_file)
        adapter = save_adapter(self.model, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}"
                             + (f" (LoRA adapter in peft's format: {adapter})" if adapter else ""))

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = check_resume_checkpoint(resume_file, self.config)  # on the CPU; the
        # model and the optimizer copy each tensor to its parameter's device
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise InputError(f"resume_checkpoint '{resume_file}' does not fit this model "
                             f"(other settings?): {str(err).splitlines()[0][:300]}") from None
        _CHECKED.clear()
        self.best_valid_result = checkpoint.get("best_valid_result")
        self._resumed_rng = checkpoint.get("rng")
        if checkpoint.get("model_rng") and model_rng(self.model) is not None:
            model_rng(self.model).bit_generator.state = json.loads(checkpoint["model_rng"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_model_weights(self, checkpoint_file):
        if not self.config["single_spec"]:  # rank 0 may still be writing it
            torch.distributed.barrier()
        checkpoint = load_checkpoint(checkpoint_file, self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self.load_model_weights(model_file or self.saved_model_file)
        self._eval_loader = eval_data
        result = super().evaluate(eval_data, load_best_model=False, model_file=None,
                                  show_progress=show_progress)
        if isinstance(result, dict):  # plain floats, not NumPy scalars, in logs and results
            result = type(result)((key, _plain(value)) for key, value in result.items())
        return result

    # Several processes: RecBole's evaluation gives each process an equal share, padded
    # with repeated rows (``DistributedSampler``), and averages the processes' metrics
    # weighted by 4 per batch (the length of a batch tuple).  Here a process drops its
    # padding row, and the metrics are weighted by the users (ranking) or rows (CTR)
    # each process evaluated; CTR scores and labels are pooled first, so AUC is the
    # AUC of all rows, as in one process.
    _ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")

    def _own_rows(self, struct):
        from recbole.utils import EvaluatorType

        from recbole_llm.distributed import gather_rows

        value = self.config["eval_type"] == EvaluatorType.VALUE
        loader = self._eval_loader
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            real = len(sampler.dataset)
            # the position of this process's last sample in the padded order; past the
            # real samples it repeats sample (last - real) % real (at most one per process)
            last = sampler.rank + sampler.num_replicas * (sampler.num_samples - 1)
            if last >= real:
                rows = 1
                grouped = getattr(loader, "neg_sample_args", {}).get("distribution", "none") \
                    != "none" and loader.neg_sample_args.get("sample_num", "none") != "none"
                if value and grouped:  # a sample is a user's rows with their negatives
                    uid = loader.uid_list[(last - real) % real]
                    rows = int(loader.uid2items_num[uid] * loader.times)
                for key in self._ROW_KEYS:
                    if key in struct:
                        struct.set(key, struct.get(key)[:-rows])
        if value and "rec.score" in struct and "data.label" in struct:
            score, label, _ = gather_rows(struct.get("rec.score").to(self.device),
                                          struct.get("data.label").to(self.device))
            struct.set("rec.score", score.cpu())
            struct.set("data.label", label.cpu())
            self._eval_rows = None  # every process computes the pooled metrics
        else:
            key = next((k for k in self._ROW_KEYS if k in struct), None)
            self._eval_rows = len(struct.get(key)) if key else 0
        return struct

    def _map_reduce(self, result, num_sample):
        if self._eval_rows is None:
            return {key: round(float(value), self.config["metric_decimal_place"])
                    for key, value in result.items()}
        if not self._eval_rows:  # only a padding sample here: weight 0, and not NaN x 0
            result = {key: 0.0 for key in result}
        return super()._map_reduce(result, self._eval_rows)


@functools.lru_cache(maxsize=None)
def with_weights_only_checkpoints(trainer_class):
    """``trainer_class`` with the mixin in front (idempotent)."""
    from recbole.trainer import Trainer

    # Decision-tree trainers keep their own (non-torch) model files.
    if issubclass(trainer_class, WeightsOnlyCheckpointMixin) or not issubclass(trainer_class, Trainer):
        return trainer_class
    return type(trainer_class.__name__, (WeightsOnlyCheckpointMixin, trainer_class),
                {"__module__": __name__, "__doc__": trainer_class.__doc__})
