import sys

import pytest

from conftest import ML_TINY
from recbole_llm.config import Config
from recbole_llm.errors import InputError


def test_plugin_files_layer_under_user_files(tmp_path):
    config = Config(model="BPR", dataset="ml-100k", config_dict={"state": "WARNING"})
    assert config["cpu_threads"] == 1                    # plugin overall.yaml
    assert config["item_text_fields"] == ["movie_title", "release_year", "class"]  # dataset yaml
    assert config["embedding_size"] == 64                # RecBole's BPR.yaml untouched
    user = tmp_path / "user.yaml"
    user.write_text("cpu_threads: 2\nembedding_size: 32\n")
    config = Config(model="BPR", dataset="ml-100k", config_file_list=[str(user)])
    assert config["cpu_threads"] == 2 and config["embedding_size"] == 32


def test_command_line_beats_dict_beats_file(tmp_path, monkeypatch):
    user = tmp_path / "user.yaml"
    user.write_text("learning_rate: 0.1\nepochs: 7\ntrain_batch_size: 64\n")
    monkeypatch.setattr(sys, "argv", ["x", "--learning_rate=0.03", "--model=BPR"])
    config = Config(dataset="ml-100k", config_file_list=[str(user)],
                    config_dict={"learning_rate": 0.02, "epochs": 5})
    assert config["model"] == "BPR"
    assert config["learning_rate"] == 0.03 and config["epochs"] == 5
    assert config["train_batch_size"] == 64


def test_model_and_dataset_read_from_user_file(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("model: LightGCN\ndataset: ml-100k\n")
    config = Config(config_file_list=[str(user)])
    assert config["model"] == "LightGCN" and config["n_layers"] == 2


def test_unknown_option_is_an_error_with_a_suggestion(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--learning_rat=0.1"])
    with pytest.raises(ValueError, match="unknown option 'learning_rat'.*learning_rate"):
        Config(model="BPR", dataset="ml-100k")


def test_unknown_option_allowed_when_strictness_is_off(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--my_key=3", "--strict_options=False"])
    assert Config(model="BPR", dataset="ml-100k")["my_key"] == 3


def test_missing_user_file_and_missing_model():
    with pytest.raises(InputError, match="config file not found: nope.yaml"):
        Config(model="BPR", dataset="ml-100k", config_file_list=["nope.yaml"])
    with pytest.raises(ValueError, match="no model given"):
        Config(dataset="ml-100k")


def test_user_dataset_settings(tmp_path):
    config = Config(model="SASRec", dataset="ml-tiny", config_dict=ML_TINY)
    assert config["data_path"].endswith("ml-tiny")
    assert config["eval_args"]["order"] == "TO"          # RecBole's sequential defaults
    assert config["train_neg_sample_args"]["distribution"] == "none"  # CE: no negatives
    with pytest.raises(ValueError, match="should be None when the loss_type is CE"):
        Config(model="SASRec", dataset="ml-tiny", config_dict=dict(
            ML_TINY, train_neg_sample_args={"distribution": "uniform", "sample_num": 1}))


def test_values_are_literals_never_code(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(target)!r}).write_text('y')"
    with pytest.raises(InputError, match="'epochs' \\(config_dict\\) must be an integer"):
        Config(model="BPR", dataset="ml-100k", config_dict={"epochs": code})
    monkeypatch.setattr(sys, "argv", ["x", f"--epochs={code}"])
    with pytest.raises(InputError, match="'epochs' \\(command line\\) must be an integer"):
        Config(model="BPR", dataset="ml-100k")
    assert not target.exists()


def test_values_split_on_the_first_equals_sign_and_parse_as_literals():
    config = Config(model="BPR", dataset="ml-100k", argv=[
        "--checkpoint_dir=/tmp/a=b", "--topk=[5, 10]", "--learning_rate=1e-3",
        "--show_progress=false", "--encoding=latin-1", "--train_neg_sample_args=None"])
    assert config["checkpoint_dir"] == "/tmp/a=b" and config["topk"] == [5, 10]
    assert config["learning_rate"] == 0.001 and config["show_progress"] is False
    assert config["encoding"] == "latin-1"
    assert config["train_neg_sample_args"]["distribution"] == "none"  # None: no sampling


def test_a_typo_in_a_user_yaml_is_an_error_unless_strictness_is_off(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("learning_rat: 0.5\n")
    with pytest.raises(InputError, match=r"unknown option 'learning_rat' \(config file .*user.yaml\)"):
        Config(model="BPR", dataset="ml-100k", config_file_list=[str(user)])
    user.write_text("learning_rat: 0.5\nstrict_options: False\n")
    assert Config(model="BPR", dataset="ml-100k", config_file_list=[str(user)])["learning_rat"] == 0.5


def test_values_recbole_accepts_stay_accepted(monkeypatch):
    config = Config(model="BPR", dataset="ml-100k", argv=[
        "--eval_step=0", "--stopping_step=0", "--llm_api_timeout=2.5", "--checkpoint_dir=2024",
        "--user_inter_num_interval=[5,10]", "--topk=10", "--metrics=Recall",
        "--valid_metric=Recall@10", "--gpu_id=0"])
    assert config["eval_step"] == 0 and config["llm_api_timeout"] == 2.5
    assert config["checkpoint_dir"] == "2024"                      # the text as typed
    assert config["user_inter_num_interval"] == "[5,10]"           # RecBole parses intervals
    assert config["topk"] == [10] and config["metrics"] == ["Recall"]


def test_python_api_skips_the_host_processs_own_arguments(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/k.json"])
    assert Config(model="BPR", dataset="ml-100k")["epochs"] == 300
    monkeypatch.setattr(sys, "argv", ["my_script.py", "--rows", "x", "--epochs=2"])
    assert Config(model="BPR", dataset="ml-100k")["epochs"] == 2  # RecBole's convention
