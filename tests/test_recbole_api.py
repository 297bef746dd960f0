"""RecBole's own API where the plugin is installed: run_recbole, HyperTuning, and the
plugin's --hyper search for any model."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import DATA, ML_TINY, ML_TINY_ARGS, recbole_reloaded_test_result
from recbole_llm.errors import InputError
from recbole_llm.hyper import read_params_file

RUN_RECBOLE = f"""
import json, recbole_llm, torch
from recbole.quick_start import run_recbole
result = run_recbole(model="BPR", dataset="ml-tiny", config_dict={{
    "data_path": {DATA!r}, "epochs": 1, "show_progress": False, "state": "WARNING",
    "load_col": {{"inter": ["user_id", "item_id", "rating", "timestamp"]}}}})
print("TEST", json.dumps({{k: float(v) for k, v in result["test_result"].items()}}))
"""


def test_run_recbole_trains_tests_and_reloads_its_checkpoint(tmp_path):
    # a fresh interpreter: recbole.quick_start imports ray, which needs the shims
    out = subprocess.run([sys.executable, "-c", RUN_RECBOLE], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tested = json.loads(out.stdout.split("TEST", 1)[1])
    import torch
    saved = list((tmp_path / "saved").glob("BPR-*.pth"))
    assert len(saved) == 1
    assert "state_dict" in torch.load(saved[0], weights_only=True)
    # RecBole's load_data_and_model rebuilds the same splits and weights
    assert recbole_reloaded_test_result(saved[0], tmp_path) == pytest.approx(tested, abs=1e-4)


def test_a_recbole_trainer_built_directly_reloads_its_checkpoint(tmp_path, monkeypatch):
    """``Trainer(config, model)`` as RecBole's tutorials write it: its checkpoint
    holds plain data and its own evaluate reloads it weights-only."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    import recbole_llm  # noqa: F401  (the compatibility layer)

    monkeypatch.chdir(tmp_path)
    config = Config(model="BPR", dataset="ml-tiny", config_dict=dict(
        ML_TINY, epochs=1, show_progress=False, state="WARNING",
        load_col={"inter": ["user_id", "item_id", "rating", "timestamp"]}))
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, BPR(config, train.dataset).to(config["device"]))
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True)
    assert 0 <= result["ndcg@10"] <= 1
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["config"]["model"] == "BPR" and "state_dict" in checkpoint
    again = Trainer(config, BPR(config, train.dataset).to(config["device"]))
    again.resume_checkpoint(trainer.saved_model_file)
    assert again.start_epoch == checkpoint["epoch"] + 1


def test_hyper_tuning_with_recbole_objective(tmp_path):
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("model: BPR\ndataset: ml-tiny\n" + "".join(
        f"{k}: {json.dumps(v)}\n" for k, v in dict(ML_TINY, epochs=1).items()))
    params = tmp_path / "bpr.hyper"
    params.write_text("learning_rate choice [0.01, 0.001]\n")
    tuner = HyperTuning(objective_function, params_file=str(params),
                        fixed_config_file_list=[str(fixed)], algo="exhaustive")
    tuner.run()
    assert len(tuner.params2result) == 2
    assert tuner.best_params["learning_rate"] in (0.01, 0.001)


def test_params_file_is_read_as_data(tmp_path):
    from recbole.trainer import HyperTuning

    marker = tmp_path / "ran"
    params = tmp_path / "evil.hyper"
    params.write_text(f"learning_rate choice [open({str(marker)!r}, 'w')]\n")
    with pytest.raises(InputError, match="line 1"):
        HyperTuning(lambda *a: None, params_file=str(params))  # RecBole would eval it
    assert not marker.exists()
    params.write_text("# a comment\n\nalpha1 choice [0.3, 0.5]\nlr loguniform -9,-4\n"
                      "dim quniform 32,128,32\n")
    assert read_params_file(str(params)) == {"choice": {"alpha1": [0.3, 0.5]},
                                             "loguniform": {"lr": [-9.0, -4.0]},
                                             "quniform": {"dim": [32.0, 128.0, 32.0]}}
    for bad in ("alpha1 normal 0,1", "alpha1 uniform 0.1", "alpha1 choice []", "alpha1"):
        params.write_text(bad + "\n")
        with pytest.raises(InputError, match="evil.hyper, line 1"):
            read_params_file(str(params))


def test_recbole_config_never_runs_a_value(tmp_path):
    from recbole.config import Config

    marker = tmp_path / "ran"
    code = f"__import__('os').system('touch {marker}')"
    config = Config(model="BPR", dataset="ml-tiny",
                    config_dict={"data_path": DATA, "learning_rate": code})
    assert config["learning_rate"] == code and not marker.exists()


def test_hyper_command_searches_a_plugin_model_and_resumes(cli, tmp_path):
    params = tmp_path / "eimf.hyper"
    params.write_text("num_interests choice [2, 3]\n")
    args = ["--hyper", "--model=EIMF", "--dataset=ml-tiny", *ML_TINY_ARGS, "--epochs=1",
            "--align_weight=0.0", "--semantic_weight=0.0", f"--params_file={params}",
            "--output_file=out/eimf.result"]
    out = cli(*args, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best params: {'num_interests':" in out.stdout
    text = (tmp_path / "out" / "eimf.result").read_text()
    assert "num_interests:2" in text and "num_interests:3" in text
    trials = (tmp_path / "out" / "eimf.result.trials.jsonl").read_text().splitlines()
    assert len(trials) == 2
    again = cli(*args, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done before") == 2
    # a stepped range of an integer option: hyperopt's 3.0 reaches the model as 3
    params.write_text("num_interests quniform 2,3,1\n")
    stepped = cli(*args[:-1], "--algo=random", "--max_evals=1", "--output_file=out/q.result",
                  timeout=600)
    assert stepped.returncode == 0, stepped.stderr[-3000:]


@pytest.mark.parametrize("line, words", [
    ("num_interestz choice [2, 3]", "unknown option 'num_interestz'"),
    ("num_interests choice ['two']", "num_interests"),
])
def test_hyper_command_refuses_bad_parameters_before_any_trial(cli, tmp_path, line, words):
    params = tmp_path / "bad.hyper"
    params.write_text(line + "\n")
    out = cli("--hyper", "--model=EIMF", "--dataset=ml-tiny", *ML_TINY_ARGS,
              f"--params_file={params}", "--output_file=out/x.result", timeout=300)
    assert out.returncode == 2 and words in out.stderr
    assert not (tmp_path / "out" / "x.result.trials.jsonl").exists()


@pytest.mark.parametrize("line, fixed, words", [
    ("alpha1 choice [0.3, 0.5]", [], "alpha1, which is replaced by the alpha search"),
    ("fixed_alpha choice [0.2, 0.4]", [], "fixed_alpha, which is used only with adaptive_alpha"),
    ("alpha2 choice [0.1, 0.3]", ["--adaptive_alpha=False"], "alpha2, which is not used"),
])
def test_hyper_command_refuses_a_search_over_a_setting_without_effect(cli, tmp_path, line, fixed,
                                                                      words):
    """Llama4Rec's alpha search replaces alpha1/alpha2: searching them would run the
    same trial again and again, so it is refused before any trial."""
    params = tmp_path / "inert.hyper"
    params.write_text(line + "\n")
    out = cli("--hyper", "--model=Llama4Rec", "--dataset=ml-tiny", *ML_TINY_ARGS, *fixed,
              f"--params_file={params}", "--output_file=out/x.result", timeout=300)
    assert out.returncode == 2 and words in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "out" / "x.result.trials.jsonl").exists()


@pytest.mark.parametrize("lines", [
    ["adaptive_alpha choice [True, False]", "fixed_alpha choice [0.2, 0.4]"],
    ["alpha_search choice [True, False]", "alpha1 choice [0.3, 0.5]"],
])
def test_a_searched_switch_makes_its_settings_searchable(lines):
    """A setting inert under the first value of a searched switch matters under
    another: not refused."""
    from recbole_llm.config import Config
    from recbole_llm.hyper import refuse_inert_parameters

    config = Config(model="Llama4Rec", dataset="ml-100k", argv=[])
    params = {"choice": {}}
    for line in lines:
        name, _, values = line.split(" ", 2)
        params["choice"][name] = yaml.safe_load(values)
    refuse_inert_parameters(config, params)        # no error
    del params["choice"][lines[0].split()[0]]
    with pytest.raises(InputError, match=lines[1].split()[0]):
        refuse_inert_parameters(config, params)
