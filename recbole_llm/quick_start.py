"""``run_recbole_llm()``: RecBole's train-and-test pipeline, plugin-aware.

It follows ``recbole.quick_start.run_recbole`` step for step; it differs only
where the plugin must: the plugin ``Config`` (property files, option
checks), the registry's model/dataset/trainer classes, atomic files checked
before loading, thread settings, and checkpoints that load weights-only.
RecBole's own quick start cannot be used as is: it imports ray, which does
not import on today's setuptools and NumPy.
"""
import argparse
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
from recbole_llm.utils import set_cpu_threads


class InputError(Exception):
    """Bad input found while setting up a run (config, data files, model folders)."""


def check_paths(config) -> None:
    """Local model folders named in the config exist: fail before any long work."""
    if config["llm_path"]:
        from recbole_llm.llm.backbone import check_llm_path
        check_llm_path(config["llm_path"])
    for key in ("resume_checkpoint", "behavior_checkpoint", "base_checkpoint"):
        value = config[key] if key in config.final_config_dict else None
        if value and not os.path.isfile(value):
            raise FileNotFoundError(f"{key} '{value}' is not a file")
    path = config["text_encoder_path"]
    if path and not os.path.isdir(path):
        raise FileNotFoundError(f"text_encoder_path '{path}' is not a folder; it must name a local "
                                "sentence-transformers or Hugging Face encoder folder")


def check_inputs(config) -> None:
    """Everything checkable before long work: model folders, pandas mode, atomic files."""
    check_paths(config)
    check_pandas_copy_on_write()
    check_dataset_files(config)


def create_dataset(config, checked: bool = False):
    """The registry's dataset class for plugin models, RecBole's choice otherwise."""
    if not checked:
        check_pandas_copy_on_write()
        check_dataset_files(config)
    dataset_class = registry.get_dataset_class(config["model"])
    if dataset_class is None:
        return _recbole_create_dataset(config)
    return dataset_class(config)


def build(config, checked: bool = False):
    """Dataset, splits, model and trainer for a config: everything but training.
    ``checked``: :func:`check_inputs` already ran."""
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    if not checked:
        check_paths(config)
    dataset = create_dataset(config, checked)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = config.model_class  # what Config resolved (a wrapper specialised to its base)
    model = model_class(config, train_data.dataset).to(config["device"])
    logger.info(model)
    trainer = registry.get_trainer_class(config["model"], config["MODEL_TYPE"])(config, model)
    return dataset, (train_data, valid_data, test_data), model, trainer


def run_recbole_llm(model=None, dataset=None, config_file_list=None, config_dict=None,
                    saved=True):
    """Train, validate, reload the best checkpoint and test; RecBole's result dict."""
    try:  # setup: what fails here is the user's input, reported without a traceback
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                        config_dict=config_dict)
        set_cpu_threads(config["cpu_threads"])
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        logger = getLogger()
        logger.info(sys.argv)
        logger.info(config)
        check_inputs(config)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise InputError(str(err)) from err

    _, (train_data, valid_data, test_data), _, trainer = build(config, checked=True)
    if config["resume_checkpoint"]:
        trainer.resume_checkpoint(config["resume_checkpoint"])
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    test_result = trainer.evaluate(test_data, load_best_model=saved,
                                   show_progress=config["show_progress"])

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run a recbole-llm or RecBole model; any other --key=value "
                    "overrides a config setting, as in RecBole.")
    parser.add_argument("--model", "-m", type=str, default="BPR", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None,
                        help="space-separated yaml files, later ones win")
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        run_recbole_llm(model=args.model, dataset=args.dataset, config_file_list=files)
    except InputError as err:
        logging.shutdown()
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    return 0
