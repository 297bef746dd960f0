"""The comparison command: one split for every model, failures reported, runs skipped when done."""
import csv
import json
import os

import pytest

from conftest import ML_TINY_ARGS
from recbole_llm.compare import command, report
from recbole_llm.errors import InputError

TINY = ["--dataset=ml-tiny", *ML_TINY_ARGS, "--epochs=1", "--state=WARNING"]


def test_parse_scopes_options_to_models():
    plan = command.parse(["--compare=True", "--models=SASRec,EIMF", "--dataset=ml-tiny",
                          "--seeds=2020,2021", "--epochs=3", "--EIMF.num_interests=8"])
    assert plan.models == ["SASRec", "EIMF"] and plan.seeds == [2020, 2021]
    assert plan.common == {"epochs": "3"} and plan.scoped == {"EIMF": {"num_interests": "8"}}
    eimf = plan.argv("EIMF", 2021)
    assert "--num_interests=8" in eimf and "--seed=2021" in eimf
    assert "--num_interests=8" not in plan.argv("SASRec", 2021)
    assert plan.protocol.endswith(os.path.join("protocol", "leave_one_out.yaml"))
    # the same settings find the same default folder again (so a re-run skips)
    again = command.parse(["--compare=True", "--models=SASRec,EIMF", "--dataset=ml-tiny",
                           "--seeds=2020,2021", "--epochs=3", "--EIMF.num_interests=8"])
    assert again.results_dir == plan.results_dir
    other = command.parse(["--compare=True", "--models=SASRec,EIMF", "--dataset=ml-tiny",
                           "--epochs=4"])
    assert other.results_dir != plan.results_dir


@pytest.mark.parametrize("argv, words", [
    (["--models=BPR", "--dataset=ml-tiny", "--seeds=20x"], "--seeds"),
    (["--models=BPR,BPR", "--dataset=ml-tiny"], "without repeats"),
    (["--dataset=ml-tiny"], "--models"),
    (["--models=BPR"], "--dataset"),
    (["--models=BPR", "--dataset=ml-tiny", "--seed=1"], "--seeds"),
    (["--models=BPR", "--dataset=ml-tiny", "--SASRec.epochs=1"], "not one of the compared"),
    (["--models=BPR", "--dataset=ml-tiny", "--protocol=nope"], "leave_one_out"),
])
def test_parse_refuses_bad_input(argv, words):
    with pytest.raises(InputError, match=words):
        command.parse(["--compare=True", *argv])


def test_one_protocol_for_every_model(tmp_path):
    plan = command.parse(["--compare=True", "--models=BPR,SASRec", *TINY,
                          f"--results_dir={tmp_path / 'r'}"])
    configs = command.check(plan)
    # BPR alone would get RecBole's random 8:1:1 split: here both get leave-one-out
    assert configs["BPR"]["eval_args"] == configs["SASRec"]["eval_args"]
    assert configs["BPR"]["eval_args"]["split"] == {"LS": "valid_and_test"}
    # a per-model split is refused before anything runs
    plan = command.parse(["--compare=True", "--models=BPR,SASRec", *TINY,
                          "--SASRec.eval_args={'split': {'RS': [0.8, 0.1, 0.1]}, 'order': 'TO', "
                          "'mode': 'full'}", f"--results_dir={tmp_path / 'r'}"])
    with pytest.raises(InputError, match="eval_args differs between BPR"):
        command.check(plan)
    # a key of one model only, given to all: the error says how to scope it
    plan = command.parse(["--compare=True", "--models=BPR,EIMF", *TINY, "--num_interests=2",
                          f"--results_dir={tmp_path / 'r'}"])
    with pytest.raises(InputError, match=r"--Model\.key=value"):
        command.check(plan)
    assert not os.path.exists(tmp_path / "r")


def test_ctr_model_under_full_ranking_refused_up_front(tmp_path):
    # DeepFM has no full_sort_predict: leave-one-out full ranking would fail after an epoch
    plan = command.parse(["--compare=True", "--models=BPR,DeepFM", *TINY,
                          f"--results_dir={tmp_path / 'r'}"])
    with pytest.raises(InputError, match="DeepFM scores labelled pairs only"):
        command.check(plan)
    assert not os.path.exists(tmp_path / "r")


def test_bad_input_exits_2_before_any_run(cli, tmp_path):
    out = cli("--compare", "--models=BPR,NoSuchModel", *TINY, f"--results_dir={tmp_path / 'r'}")
    assert out.returncode == 2 and "NoSuchModel" in out.stderr
    assert not os.path.exists(tmp_path / "r")


def test_run_key_follows_data_content(data_copy, tmp_path):
    argv = ["--compare=True", "--models=BPR", "--dataset=ml-tiny", *ML_TINY_ARGS[1:],
            f"--data_path={data_copy}"]
    plan = command.parse(argv)
    key = command.run_key(command.build_config(plan, "BPR", 2020))
    assert key == command.run_key(command.build_config(plan, "BPR", 2020))
    assert key != command.run_key(command.build_config(plan, "BPR", 2021))
    path = data_copy / "ml-tiny" / "ml-tiny.inter"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # one interaction less
    assert key != command.run_key(command.build_config(plan, "BPR", 2020))


def test_run_key_follows_code_and_speed_settings(data_copy, monkeypatch):
    from recbole_llm import fingerprint

    argv = ["--compare=True", "--models=BPR", "--dataset=ml-tiny", *ML_TINY_ARGS[1:],
            f"--data_path={data_copy}"]
    plan = command.parse(argv)
    config = command.build_config(plan, "BPR", 2020)
    key = command.run_key(config)
    # other plugin code (or library versions): a stored run is not reused
    monkeypatch.setattr(fingerprint, "_CODE_FINGERPRINT", "other code")
    assert command.run_key(config) != key
    monkeypatch.setattr(fingerprint, "_CODE_FINGERPRINT", None)
    assert command.run_key(config) == key
    # an inference batch size changes the stored times and memory, not the metrics
    slower = command.build_config(command.parse(argv + ["--eval_batch_size=7"]), "BPR", 2020)
    assert command.run_key(slower) != key


def test_code_fingerprint_reads_the_package_source(tmp_path, monkeypatch):
    import shutil

    import recbole_llm
    from recbole_llm import fingerprint

    package = tmp_path / "recbole_llm"
    shutil.copytree(os.path.dirname(recbole_llm.__file__), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(recbole_llm, "__file__", str(package / "__init__.py"))
    monkeypatch.setattr(fingerprint, "_CODE_FINGERPRINT", None)
    before = fingerprint.code_fingerprint()
    monkeypatch.setattr(fingerprint, "_CODE_FINGERPRINT", None)
    with open(package / "compare" / "report.py", "a") as f:
        f.write("\n# a change\n")
    assert fingerprint.code_fingerprint() != before


def test_summary_mean_spread_and_errors():
    runs = [{"model": "A", "seed": s, "test": {"ndcg@10": v}, "prepare_s": 2.0, "fit_s": 1.0,
             "eval_s": 0.1,
             "peak_rss_mib": m, "peak_cuda_mib": None, "trainable_params": 10,
             "valid_curve": [{"ndcg@10": v}]} for s, v, m in ((1, 0.1, 5), (2, 0.3, 7))]
    runs.append({"model": "B", "seed": 1, "error": "ValueError: broken"})
    summary = report.summarize(["A", "B"], runs)
    assert summary[0]["test"]["ndcg@10"] == pytest.approx(0.2)
    assert summary[0]["test_std"]["ndcg@10"] == pytest.approx(0.1414, abs=1e-4)
    assert summary[0]["peak_rss_mib"] == 7 and summary[0]["seeds"] == [1, 2]
    table = report.markdown(summary, "header", "ndcg@10")
    assert "0.2000 ± 0.1414" in table and "seed 1: ValueError: broken" in table


def test_compare_end_to_end(cli, tmp_path):
    """Three models, two seeds, one of them failing: the others finish, the table,
    CSVs and plots are written, and a second run skips what is done."""
    results = tmp_path / "results"
    # SASRec fails only when its model is built (16 is not a multiple of 3 heads)
    args = ["--compare", "--models=Pop,BPR,SASRec", *TINY, "--seeds=2020,2021",
            "--SASRec.hidden_size=16", "--SASRec.n_heads=3", f"--results_dir={results}"]
    out = cli(*args, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (results / "results.md").read_text()
    assert "| BPR |" in table and "| Pop |" in table
    assert "SASRec" in table and "seed 2020:" in table.split("| SASRec |")[1]
    for name in ("runs.csv", "summary.csv", "metrics.png", "curves.png"):
        assert (results / name).stat().st_size > 0
    with open(results / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in rows] == [
        (m, s) for m in ("Pop", "BPR", "SASRec") for s in ("2020", "2021")]
    done = [r for r in rows if not r["error"]]
    assert len(done) == 4 and all(0 <= float(r["ndcg@10"]) <= 1 for r in done)
    assert all(r["error"] for r in rows if r["model"] == "SASRec")
    records = {}
    for model in ("Pop", "BPR"):
        with open(results / "runs" / f"{model}.seed2020.json") as f:
            records[model] = json.load(f)
    assert records["Pop"]["split"] == records["BPR"]["split"]
    assert records["BPR"]["split"]["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert len(records["BPR"]["valid_curve"]) == 1 and records["BPR"]["trainable_params"] > 0
    assert "| BPR |" in out.stdout  # the table is printed
    # a killed run's resume files under other settings are never resumed from
    stale = [results / "runs" / f"SASRec.seed2020.0123abcd.{part}"
             for part in ("progress.json", "last.pth")]
    for path in stale:
        path.write_text("{}")
    again = cli(*args, timeout=600)
    assert again.returncode == 0
    assert again.stdout.count("done before (same settings, data and code), skipped") == 4
    assert "SASRec seed 2020: FAILED" in again.stdout  # a failed run is tried again
    assert not any(path.exists() for path in stale)
