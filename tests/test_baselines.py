"""RecBole's own baselines, end to end through the plugin, on a 60-user slice."""
import os
import sys
import time

import pytest
import yaml

from conftest import DATA, ML_TINY
from recbole_llm.quick_start import run_recbole_llm

CTR = dict(ML_TINY, threshold={"rating": 4},
           load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
                     "user": ["user_id", "age", "gender", "occupation"],
                     "item": ["item_id", "release_year", "genre"]})


@pytest.mark.parametrize("model, extra, metric", [
    ("BPR", {}, "recall@10"),
    ("LightGCN", {}, "ndcg@10"),
    ("SASRec", {"MAX_ITEM_LIST_LENGTH": 10, "n_layers": 1}, "ndcg@10"),
])
def test_ranking_baselines_train_reload_and_test(model, extra, metric):
    result = run_recbole_llm(model=model, dataset="ml-tiny",
                             config_dict=dict(ML_TINY, epochs=2, **extra))
    test = result["test_result"]
    assert 0.0 <= test[metric] <= 1.0 and test["hit@10"] > 0
    assert os.path.isfile(result["saved_model_file"])


def test_ctr_baseline_deepfm():
    result = run_recbole_llm(model="DeepFM", dataset="ml-tiny", config_dict=dict(CTR, epochs=2))
    test = result["test_result"]
    assert 0.5 < test["auc"] <= 1.0 and test["logloss"] > 0


def test_command_line_runs_and_prints_test_result(cli, tmp_path):
    user = tmp_path / "tiny.yaml"
    user.write_text(yaml.safe_dump(dict(ML_TINY, epochs=1)))
    out = cli("--model=BPR", "--dataset=ml-tiny", f"--config_files={user}",
              "--embedding_size=16", "--state=INFO", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test result" in out.stdout + out.stderr


@pytest.mark.parametrize("args, message", [
    (["--model=BRP"], "unknown model 'BRP'"),
    (["--model=BPR", "--dataset=nowhere"], "dataset 'nowhere' not found"),
    (["--model=BPR", "--epoch=3"], "unknown option 'epoch'.*epochs"),
    (["--model=EAGERLLM", "--llm_path=/no/such/llama"], "llm_path '/no/such/llama' is not a folder"),
    (["--model=ELCoRec", "--text_encoder_path=/no/enc"], "text_encoder_path '/no/enc' is not a folder"),
])
def test_command_line_errors_are_clear(cli, tmp_path, args, message):
    import re
    start = time.time()
    out = cli(*args, f"--data_path={DATA}", timeout=600)
    assert time.time() - start < 30                      # before any long work
    assert out.returncode == 2
    assert re.search(message, out.stderr), out.stderr[-2000:]
    assert not (tmp_path / "saved").exists() or not os.listdir(tmp_path / "saved")


def test_errors_after_setup_keep_their_traceback(monkeypatch, tmp_path):
    from recbole.model.general_recommender import BPR

    from recbole_llm import registry
    from recbole_llm.quick_start import main

    class Broken(BPR):
        def calculate_loss(self, interaction):
            raise ValueError("a bug inside training")

    defaults = tmp_path / "Broken.yaml"  # the model's own property file (no BPR.yaml)
    defaults.write_text("embedding_size: 8  # (int) width of the user and item tables\n")
    registry.register("Broken", Broken, properties=str(defaults))
    user = tmp_path / "tiny.yaml"
    user.write_text(yaml.safe_dump(dict(ML_TINY, epochs=1)))
    try:
        monkeypatch.setattr(sys, "argv", ["x", "--model=Broken", "--dataset=ml-tiny",
                                          f"--config_files={user}"])
        with pytest.raises(ValueError, match="a bug inside training"):
            main()
    finally:
        registry.unregister("Broken")
