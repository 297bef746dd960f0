"""``run_recbole_llm()``: RecBole's train-and-test pipeline, plugin-aware.

It follows ``recbole.quick_start.run_recbole`` step for step; it differs only
where the plugin must: the plugin ``Config`` (property files, option
checks), the registry's model/dataset/trainer classes, atomic files checked
before loading, thread settings, and checkpoints that load weights-only.
RecBole's own quick start cannot be used as is: it imports ray, which does
not import on today's setuptools and NumPy.
"""
import logging
import os
import sys
from logging import getLogger

from recbole.data import create_dataset as _recbole_create_dataset
from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_llm import registry
from recbole_llm.compat import check_pandas_copy_on_write
from recbole_llm.config import Config
from recbole_llm.data.atomic import check_dataset_files
from recbole_llm.data.history import check_min_history, drop_rows_with_short_history
from recbole_llm.distributed import main_process_first
from recbole_llm.errors import InputError
from recbole_llm.experiment import plain_result
from recbole_llm.options import parse_argv
from recbole_llm.trainer import check_resume_checkpoint
from recbole_llm.utils import configure_cpu

__all__ = ["InputError", "build", "check_inputs", "create_dataset", "main", "objective_function",
           "prepare_data", "run_recbole_llm"]

# What dataset construction and splitting raise on bad data or settings
# (a missing field, a text field the .item file lacks, an unknown split).
_DATA_ERRORS = (ValueError, KeyError, FileNotFoundError, UnicodeDecodeError, NotImplementedError)


def _optional(config, key):
    return config[key] if key in config.final_config_dict else None


def _is_llm_model(config) -> bool:
    from recbole_llm.model.abstract import LLMRecommender
    return isinstance(config.model_class, type) and issubclass(config.model_class, LLMRecommender)


def check_paths(config) -> None:
    """Local model folders and checkpoints named in the config: fail before any long work."""
    if config["llm_path"]:
        from recbole_llm.llm.backbone import check_llm_path
        check_llm_path(config["llm_path"])
    if _is_llm_model(config):
        from recbole_llm.llm.backbone import check_prompt_fits
        check_prompt_fits(config)
    for key in ("resume_checkpoint", "behavior_checkpoint", "base_checkpoint"):
        value = _optional(config, key)
        if value and not os.path.isfile(value):
            raise InputError(f"{key} '{value}' is not a file")
    path = None if _optional(config, "item_embedding_field") else config["text_encoder_path"]
    if path and not os.path.isdir(path):
        raise InputError(f"text_encoder_path '{path}' is not a folder; it must name a local "
                         "sentence-transformers or Hugging Face encoder folder")
    if _optional(config, "resume_checkpoint"):
        check_resume_checkpoint(config["resume_checkpoint"], config)


def check_protocol(config) -> None:
    """A model that only scores given pairs (RecBole's CTR models: no
    ``full_sort_predict``) under full ranking fails at its first validation,
    after a whole epoch: refuse it before any work."""
    from recbole.model.abstract_recommender import AbstractRecommender

    mode = (config["eval_args"] or {}).get("mode")
    modes = set(mode.values()) if isinstance(mode, dict) else {mode}
    model = registry.get_model_class(config["model"])
    if "full" in modes and model.full_sort_predict is AbstractRecommender.full_sort_predict:
        raise InputError(
            f"{config['model']} scores labelled pairs only (no full ranking), but eval_args "
            f"mode is {mode!r}: use mode 'labeled' (or a sampled mode such as 'uni100'), e.g. "
            "--protocol=ctr with --compare")


def check_inputs(config) -> None:
    """Everything checkable before long work: model folders, pandas mode, atomic
    files, a protocol the model can be evaluated under."""
    try:
        check_protocol(config)
        check_paths(config)
        check_pandas_copy_on_write()
        check_dataset_files(config)
    except InputError:
        raise
    except (ValueError, FileNotFoundError, RuntimeError, TypeError, AttributeError,
            LookupError) as err:  # what the checks raise on a value they cannot read
        plain = isinstance(err, (ValueError, FileNotFoundError))
        raise InputError(str(err) if plain else f"{type(err).__name__}: {err}") from None


def create_dataset(config, checked: bool = False):
    """The registry's dataset class for plugin models, RecBole's choice otherwise;
    rows with fewer than ``min_history`` earlier interactions of their user are
    dropped before any split (``recbole_llm.data.history``)."""
    if not checked:
        check_pandas_copy_on_write()
        check_dataset_files(config)
    min_history = check_min_history(config)
    dataset_class = registry.get_dataset_class(config["model"])
    dataset = _recbole_create_dataset(config) if dataset_class is None else dataset_class(config)
    if min_history:  # every model alike, so a baseline can be given the same rows
        dropped = drop_rows_with_short_history(dataset, min_history)
        getLogger().info(f"min_history={min_history}: dropped {dropped} rows with fewer "
                         f"earlier interactions of their user; {len(dataset.inter_feat)} left")
    return dataset


def _check_splits(config, splits) -> None:
    for name, data in zip(("train", "valid", "test"), splits):
        if data is not None and len(data.dataset) == 0:
            raise InputError(
                f"dataset '{config['dataset']}': the {name} split is empty under eval_args "
                f"{config['eval_args']}; change the split ratios or the filters "
                "(user_inter_num_interval, item_inter_num_interval, ...)")


def prepare_data(config, checked: bool = False):
    """The dataset and its train/valid/test loaders; bad data or split settings
    are an :class:`InputError` naming the dataset, never a traceback."""
    init_seed(config["seed"], config["reproducibility"])
    try:
        dataset = create_dataset(config, checked)
        getLogger().info(dataset)
        splits = data_preparation(config, dataset)
    except InputError:
        raise
    except _DATA_ERRORS as err:
        raise InputError(f"dataset '{config['dataset']}' ({config['data_path']}): "
                         f"{type(err).__name__}: {err}") from None
    _check_splits(config, splits)
    return dataset, splits


def build(config, checked: bool = False):
    """Dataset, splits, model and trainer for a config: everything but training.
    ``checked``: :func:`check_inputs` already ran."""
    logger = getLogger()
    if not checked:
        check_paths(config)
    dataset, (train_data, valid_data, test_data) = prepare_data(config, checked)
    # Every process builds the same model (its pre-training stages seeded alike; rank 0
    # first, so the others read what it cached), then draws its own random numbers
    # for training (RecBole's seed + rank).
    init_seed(config["seed"], config["reproducibility"])
    model_class = config.model_class  # what Config resolved (a wrapper specialised to its base)
    try:
        with main_process_first():
            model = model_class(config, train_data.dataset).to(config["device"])
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as err:  # settings the model checks itself
        raise InputError(f"model {config['model']}: {err}") from err
    if config["local_rank"]:
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    logger.info(model)
    trainer = registry.get_trainer_class(config["model"], config["MODEL_TYPE"])(config, model)
    return dataset, (train_data, valid_data, test_data), model, trainer


def run_recbole_llm(model=None, dataset=None, config_file_list=None, config_dict=None,
                    saved=True, argv=None):
    """Train, validate, reload the best checkpoint and test; RecBole's result dict.

    ``argv``: ``--key=value`` options (default: ``sys.argv[1:]``, as RecBole).
    Bad input raises :class:`InputError` before any long work."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, argv=argv)
    configure_cpu(config["cpu_threads"])
    init_seed(config["seed"], config["reproducibility"])
    check_inputs(config)
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv if argv is None else argv)
    logger.info(config)

    _, (train_data, valid_data, test_data), _, trainer = build(config, checked=True)
    if config["resume_checkpoint"]:
        trainer.resume_checkpoint(config["resume_checkpoint"])
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    test_result = trainer.evaluate(test_data, load_best_model=saved,
                                   show_progress=config["show_progress"])
    # plain floats: RecBole's OrderedDict of NumPy 2 scalars prints np.float64(...)
    best_valid_result, test_result = plain_result(best_valid_result), plain_result(test_result)

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's ``objective_function`` for ``recbole.trainer.HyperTuning``, for every
    model, the plugin's too: one trial's train, validate and test.  Options come
    from ``config_file_list`` (model, dataset, fixed settings) and ``config_dict``
    (the trial's parameters) only, never from the host's command line."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list, argv=[])
    configure_cpu(config["cpu_threads"])
    init_seed(config["seed"], config["reproducibility"])
    check_inputs(config)
    logger = getLogger()
    for handler in logger.handlers[:]:  # one trial's log file, not every trial's
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    _, (train_data, valid_data, test_data), _, trainer = build(config, checked=True)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False,
                                                      saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {"model": config["model"], "best_valid_score": float(best_valid_score),
            "valid_score_bigger": config["valid_metric_bigger"],
            "best_valid_result": plain_result(best_valid_result),
            "test_result": plain_result(test_result)}


USAGE = """usage: run_recbole_llm.py --model=NAME --dataset=NAME [--config_files="a.yaml b.yaml"] [--key=value ...]

Runs a recbole-llm or RecBole model; every other --key=value overrides a
setting, as in RecBole.  Defaults: --model=BPR --dataset=ml-100k.

       run_recbole_llm.py --compare --models=A,B,... --dataset=NAME [--seeds=2020,2021,2022] [--key=value ...]

Compares models on one split and protocol (--compare --help says more).

       run_recbole_llm.py --hyper --model=NAME --dataset=NAME --params_file=FILE [--algo=exhaustive] [--key=value ...]

Searches hyper-parameters with RecBole's HyperTuning (--hyper --help says more)."""


def main(argv=None):
    """The command line; returns the exit status (2: bad input, nothing trained)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--compare" or a.startswith("--compare=") for a in argv):
        from recbole_llm.compare import main as compare_main
        return compare_main(argv)
    if any(a == "--hyper" or a.startswith("--hyper=") for a in argv):
        from recbole_llm.hyper import main as hyper_main
        return hyper_main(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        raw = parse_argv(argv)
        files = raw.pop("config_files", "").split() or None
        model, dataset = raw.pop("model", "BPR"), raw.pop("dataset", "ml-100k")
        from recbole_llm.distributed import check_launch, launch_settings, run_distributed
        launch = launch_settings(raw)
        options = [f"--{k}={v}" for k, v in raw.items()]
        if launch["nproc"] > 1 or launch["world_size"] > 1:
            # every check a single run makes, once, before any process starts
            config = Config(model=model, dataset=dataset, config_file_list=files, argv=options)
            check_inputs(config)
            check_launch(config, launch)
            run_distributed(model, dataset, files, options, launch)
        else:
            run_recbole_llm(model=model, dataset=dataset, config_file_list=files, argv=options)
    except InputError as err:
        logging.shutdown()
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    return 0
