"""One measured run: train, validate every epoch, test, and report what it cost.

Shared by the comparison command (``recbole_llm.compare``) and the quality
benchmarks (``bench/runner.py``).  A run records its validation curve, the
training loss per epoch, fit and test times, peak memory and the number of
trainable parameters beside RecBole's test result.  With ``resume_prefix``
it saves the last finished epoch (``<prefix>.last.pth`` and
``<prefix>.progress.json``) and, run again after a kill, goes on from there.
"""
import json
import os
import resource
import shutil
import time

import torch

from recbole_llm.trainer import adapter_dir

__all__ = ["plain_result", "run_experiment", "peak_rss_mib"]


def plain_result(result) -> dict:
    """RecBole's ``OrderedDict`` of NumPy scalars as ``{metric: float}`` (under
    NumPy 2 the former prints ``np.float64(0.18)``)."""
    return {str(k): float(v) for k, v in (result or {}).items()}


def peak_rss_mib() -> float:
    """This process' peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parameters(model) -> tuple:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


class _Progress:
    """The last finished epoch of a run and its curve so far, written after each
    epoch, so a killed run resumes there."""

    def __init__(self, prefix):
        self.path, self.last = f"{prefix}.progress.json", f"{prefix}.last.pth"

    def resume(self, trainer) -> tuple:
        """``(curve, fit seconds before the kill)``; nothing to resume: ``([], 0)``."""
        if not (os.path.isfile(self.path) and os.path.isfile(self.last)):
            return [], 0.0
        with open(self.path) as f:
            progress = json.load(f)
        trainer.resume_checkpoint(self.last)
        trainer.saved_model_file = progress["best_file"]
        trainer.train_loss_dict.update({int(k): v for k, v in progress["train_loss"].items()})
        if progress["done"]:  # stage one ended (later stages run again): its best weights
            trainer.load_model_weights(progress["best_file"])
            trainer.start_epoch = trainer.epochs
        print(f"resumed after epoch {trainer.start_epoch - 1}", flush=True)
        return progress["curve"], progress["fit_s"]

    def save(self, trainer, epoch, curve, fit_s) -> None:
        if getattr(trainer.model, "annealing", False):  # a later stage: not resumable mid-way
            return
        trainer._save_checkpoint(epoch, verbose=False, saved_model_file=self.last)
        done = trainer.cur_step > trainer.stopping_step or epoch + 1 >= trainer.epochs
        with open(self.path + ".tmp", "w") as f:
            json.dump({"curve": curve, "best_file": trainer.saved_model_file, "done": done,
                       "fit_s": fit_s, "train_loss": {int(k): float(v) for k, v in
                                                      trainer.train_loss_dict.items()}}, f)
        os.replace(self.path + ".tmp", self.path)

    def clear(self) -> None:
        """The run is done: nothing left to resume (the peft export beside too)."""
        for path in (self.path, self.last):
            if os.path.isfile(path):
                os.remove(path)
        shutil.rmtree(adapter_dir(self.last), ignore_errors=True)


def run_experiment(config, resume_prefix=None, on_test=None) -> dict:
    """Train ``config``'s model (RecBole's ``fit``), reload its best checkpoint and
    test it; the measured record (plain JSON).

    ``on_test(struct, test_data, train_data, config)``: called with the
    evaluator's collected test data (per-group metrics); its return value is
    stored as ``groups``."""
    from recbole.utils import init_logger, init_seed

    from recbole_llm.quick_start import build, check_inputs
    from recbole_llm.utils import configure_cpu

    configure_cpu(config["cpu_threads"])
    init_seed(config["seed"], config["reproducibility"])
    check_inputs(config)
    init_logger(config)
    cuda = torch.device(config["device"]).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    _, (train, valid, test), model, trainer = build(config, checked=True)
    prepare_s = time.time() - start
    trainable, total = _parameters(model)  # before training: later stages may freeze parts
    progress = _Progress(resume_prefix) if resume_prefix else None
    curve, fit_before = progress.resume(trainer) if progress else ([], 0.0)

    validate = trainer._valid_epoch

    def record_valid(*args, **kwargs):  # the validation result after every validation
        score, result = validate(*args, **kwargs)
        curve.append(plain_result(result))
        print("VALID " + json.dumps(curve[-1]), flush=True)
        return score, result

    trainer._valid_epoch = record_valid
    fit_start = time.time()

    def after_epoch(epoch, score):
        progress.save(trainer, epoch, curve, fit_before + time.time() - fit_start)

    _, best_valid = trainer.fit(train, valid, saved=True,
                                         show_progress=config["show_progress"],
                                         callback_fn=after_epoch if progress else None)
    fit_s = fit_before + time.time() - fit_start
    trainer.load_model_weights(trainer.saved_model_file)
    captured = {}
    evaluate_struct = trainer.evaluator.evaluate

    def capture(struct):
        captured["struct"] = struct
        return evaluate_struct(struct)

    trainer.evaluator.evaluate = capture
    start = time.time()
    test_result = trainer.evaluate(test, load_best_model=False,
                                   show_progress=config["show_progress"])
    eval_s = time.time() - start
    result = {
        "test": plain_result(test_result),
        "best_valid": plain_result(best_valid),
        "groups": on_test(captured["struct"], test, train, config) if on_test else None,
        "valid_curve": curve,
        "train_loss": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
        "checkpoint": trainer.saved_model_file,
        "expert": getattr(model, "expert_report", None) or getattr(model, "esim_report", None),
        "tokenizer": getattr(model, "tokenizer_report", None),
        "prepare_s": prepare_s, "fit_s": fit_s, "eval_s": eval_s,
        "test_rows": int(test.dataset.inter_num),
        "trainable_params": trainable, "total_params": total,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
    }
    if progress:
        progress.clear()
    return result
