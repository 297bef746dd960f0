"""Bad inputs a new user makes, each with the exit status and message it must get.

Every row runs the command line (``quick_start.main``) on a copy of the tiny
test data; a row may damage that copy first.  Exit 2 means the input was
refused before any training, with one line naming what and where.
``bench/probe_bad_inputs.py`` runs the same table as subprocesses against any
checkout (to compare before and after a change).
"""
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
BASE = ["--model=BPR", "--dataset=ml-tiny", "--data_path={data}", "--show_progress=False",
        "--state=WARNING", "--checkpoint_dir={tmp}/saved"]
EAGER = ["--model=EAGERLLM", "--dataset=beauty-tiny", "--data_path={data}", "--epochs=1",
         "--show_progress=False", "--state=WARNING", "--llm_cache_dir={tmp}/cache",
         "--load_col={'inter':['user_id','item_id','timestamp']}",
         "--item_text_fields=['title','brand','categories']", "--checkpoint_dir={tmp}/saved"]


def opts(base, *extra):
    """``base`` with ``extra`` options replacing those of the same key."""
    keys = {a.split("=", 1)[0] for a in extra}
    return [a for a in base if a.split("=", 1)[0] not in keys] + list(extra)


BPR = opts(BASE, "--epochs=1")


@dataclass
class Probe:
    name: str
    args: list
    code: int
    fragment: str = ""                    # must appear in stderr
    setup: Optional[Callable] = None      # setup(data_dir, tmp_dir): damage a copy
    forbidden: list = field(default_factory=list)  # files that must not exist afterwards


def _edit(name, suffix, edit):
    """A setup that rewrites the tiny dataset file ``<name>.<suffix>`` with ``edit(lines)``."""
    def setup(data, tmp):
        path = os.path.join(data, name, f"{name}.{suffix}")
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        with open(path, "wb") as f:
            f.write(b"\n".join(edit(lines)))
    return setup


def _cell(row: int, col: int, value: bytes):
    def edit(lines):
        cells = lines[row].split(b"\t")
        cells[col] = value
        lines[row] = b"\t".join(cells)
        return lines
    return edit


def _write(relpath, content):
    def setup(data, tmp):
        path = os.path.join(tmp, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w" if isinstance(content, str) else "wb") as f:
            f.write(content)
    return setup


def _checkpoint(model, dataset="ml-tiny", torn=False):
    def setup(data, tmp):
        state = {"config": {"model": model, "dataset": dataset, "final_config_dict": {}},
                 "epoch": 0, "cur_step": 0, "best_valid_score": 0.0, "state_dict": {},
                 "other_parameter": None, "optimizer": {}}
        path = os.path.join(tmp, "ckpt.pth")
        torch.save(state, path)
        if torn:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    return setup


def _config_only_model(data, tmp):
    os.makedirs(os.path.join(tmp, "llm"), exist_ok=True)
    with open(os.path.join(tmp, "llm", "config.json"), "w") as f:
        f.write('{"model_type": "llama"}')


PROBES = [
    # --- the command line ---------------------------------------------------
    Probe("space instead of =", opts(BASE, "--epochs", "3"), 2, "argument '--epochs' is not --key=value"),
    Probe("no leading dashes", opts(BASE, "epochs=3"), 2, "argument 'epochs=3' is not --key=value"),
    Probe("single dash", opts(BPR, "-m", "BPR"), 2, "argument '-m' is not --key=value"),
    Probe("one option twice", opts(BPR, "--seed=1", "--seed=2"), 2, "--seed is given twice"),
    Probe("unknown option runs no code",
          opts(BPR, "--nosuchkey=__import__('pathlib').Path('{tmp}/pwned').write_text('y')"), 2,
          "unknown option 'nosuchkey'", forbidden=["pwned"]),
    Probe("known option runs no code",
          opts(BPR, "--seed=__import__('pathlib').Path('{tmp}/pwned').write_text('y')"), 2,
          "option 'seed' (command line) must be an integer", forbidden=["pwned"]),
    Probe("typo with a suggestion", opts(BPR, "--learning_rat=0.1"), 2, "Did you mean: learning_rate"),
    Probe("unknown model", ["--model=NoSuchModel", "--dataset=ml-tiny", "--data_path={data}"], 2,
          "unknown model 'NoSuchModel'"),
    # --- values -------------------------------------------------------------
    Probe("epochs 0", opts(BASE, "--epochs=0"), 2, "option 'epochs' (command line) must be at least 1"),
    Probe("epochs -1", opts(BASE, "--epochs=-1"), 2, "'epochs' (command line) must be at least 1"),
    Probe("epochs abc", opts(BASE, "--epochs=abc"), 2, "'epochs' (command line) must be an integer"),
    Probe("epochs 1.5", opts(BASE, "--epochs=1.5"), 2, "'epochs' (command line) must be an integer"),
    Probe("seed abc", opts(BPR, "--seed=abc"), 2, "'seed' (command line) must be an integer"),
    Probe("train_batch_size 0", opts(BPR, "--train_batch_size=0"), 2, "'train_batch_size' (command line) must be at least 1"),
    Probe("eval_batch_size -5", opts(BPR, "--eval_batch_size=-5"), 2, "'eval_batch_size' (command line) must be at least 1"),
    Probe("negative learning rate", opts(BPR, "--learning_rate=-0.1"), 2, "'learning_rate' (command line) must be > 0"),
    Probe("learning rate nan", opts(BPR, "--learning_rate=float('nan')"), 2, "'learning_rate' (command line) must be a number"),
    Probe("bool that is not one", opts(BPR, "--show_progress=maybe"), 2, "'show_progress' (command line) must be True or False"),
    Probe("cpu_threads abc", opts(BPR, "--cpu_threads=abc"), 2, "'cpu_threads' (command line) must be an integer"),
    Probe("valid_metric not computed", opts(BPR, "--valid_metric=Recall@20"), 2,
          "valid_metric 'Recall@20' is not computed by this run"),
    Probe("unknown metric", opts(BPR, "--metrics=['Recall','Bogus']"), 2, "no metric named 'Bogus'"),
    Probe("topk 0", opts(BPR, "--topk=[0]"), 2, "topk"),
    Probe("dropout above 1", opts(EAGER, "--lora_dropout=1.5"), 2, "'lora_dropout' (command line) must be in [0, 1)"),
    Probe("string option given a string list", opts(BPR, "--metrics=[Recall,NDCG]"), 2,
          "write the strings inside a list or mapping in quotes"),
    Probe("text fields not a list", opts(EAGER, "--item_text_fields=title"), 2,
          "'item_text_fields' (command line) must be a list"),
    Probe("threshold not a mapping", opts(BPR, "--threshold=4"), 2,
          "'threshold' (command line) must be a mapping"),
    Probe("unknown optimizer", opts(BPR, "--learner=adamw"), 2, "'learner' must be one of"),
    Probe("unknown tuning", opts(EAGER, "--llm_tuning=bogus"), 2, "'llm_tuning' must be one of"),
    Probe("unknown index composition", opts(EAGER, "--index_composition=bogus"), 2,
          "'index_composition' must be one of"),
    Probe("unknown behaviour model", opts(EAGER, "--behavior_model=NoSuch"), 2,
          "option 'behavior_model': unknown model 'NoSuch'"),
    Probe("negative auxiliary ratio", opts(EAGER, "--aux_task_ratio={'item2index':-1}"), 2,
          "'item2index' must be a number in [0, 1]"),
    Probe("unknown code softmax", opts(EAGER, "--code_softmax=leaves"), 2,
          "'code_softmax' must be one of"),
    Probe("unknown index quantizer", opts(EAGER, "--index_quantizer=vq"), 2,
          "'index_quantizer' must be one of"),
    Probe("cut-off past the beams", opts(EAGER, "--topk=[10,50]"), 2,
          "topk [10, 50] goes past num_beams=20"),
    Probe("unknown auxiliary task", opts(EAGER, "--aux_task_ratio={'item2text':0.5}"), 2,
          "unknown task(s) ['item2text']"),
    Probe("template without its slot", opts(EAGER, "--seqrec_template=['The next item is']"), 2,
          "must hold {history} exactly once"),
    Probe("behaviour model not sequential", opts(EAGER, "--behavior_model=LightGCN"), 2,
          "LightGCN is not a sequential model"),
    Probe("EIMF prompt without its slot", opts(EAGER, "--model=EIMF", "--esim_prompt=Interests:"),
          2, "must hold {history} exactly once"),
    Probe("EIMF damping out of range", opts(EAGER, "--model=EIMF", "--ap_damping=0.2"), 2,
          "'ap_damping'"),
    Probe("EIMF heads that do not divide the hidden size",
          opts(EAGER, "--model=EIMF", "--encoder_layers=1", "--encoder_heads=3"), 2,
          "encoder_heads (3) must divide hidden_size (64)"),
    Probe("EIMF unknown extractor", opts(EAGER, "--model=EIMF", "--interest_extractor=mind"), 2,
          "'interest_extractor' must be one of"),
    Probe("EIMF with sampled negatives",
          opts(EAGER, "--model=EIMF", "--train_neg_sample_args={'distribution':'uniform','sample_num':1}"),
          2, "EIMF trains with the cross-entropy over all items and takes no sampled negatives"),
    Probe("EIMF answer longer than the prompt limit",
          opts(EAGER, "--model=EIMF", "--esim_max_new_tokens=300", "--llm_max_prompt_tokens=256"),
          2, "esim_max_new_tokens (300) leaves no room for the prompt in llm_max_prompt_tokens (256)"),
    Probe("EIMF source in capitals", opts(EAGER, "--model=EIMF", "--esim_source=LLM"), 2,
          "'esim_source' must be one of llm, history, got 'LLM'"),
    Probe("SCRec negative task without a sampler",
          opts(EAGER, "--model=SCRec", "--train_neg_sample_args=None"), 2,
          "needs RecBole's sampler: set train_neg_sample_args"),
    Probe("SCRec alignment target unknown", opts(EAGER, "--model=SCRec", "--align_target=title"), 2,
          "'align_target' must be one of"),
    Probe("SCRec two-slot template out of order",
          opts(EAGER, "--model=SCRec", "--negative_template=['Is {item} next after {history}?']"),
          2, "must hold {history} then {item} exactly once"),
    Probe("Llama4Rec with sampled evaluation", ["--model=Llama4Rec", "--dataset=ml-tiny",
                                                "--data_path={data}", "--eval_args={'mode':'uni100'}"], 2,
          "would score the base model alone"),
    Probe("ELCoRec without a time field", ["--model=ELCoRec", "--dataset=ml-tiny", "--data_path={data}",
                                           "--load_col={'inter':['user_id','item_id','rating']}"], 2,
          "ELCoRec needs the interactions' time"),
    Probe("ELCoRec with an unknown GAT mode", ["--model=ELCoRec", "--dataset=ml-tiny",
                                               "--data_path={data}", "--gat_mode=graph"], 2,
          "option 'gat_mode' must be one of sample, user"),
    Probe("ELCoRec holding out every training row", [
        "--model=ELCoRec", "--dataset=ml-tiny", "--data_path={data}", "--gat_valid_share=1",
        "--load_col={'inter':['user_id','item_id','rating','timestamp']}"], 2,
          "gat_valid_share must be between 0 and 1 (exclusive)"),
    Probe("negative minimum history", ["--model=DeepFM", "--dataset=ml-tiny", "--data_path={data}",
                                       "--min_history=-1"], 2,
          "'min_history' (command line) must be >= 0"),
    Probe("zero index clusters", opts(EAGER, "--index_k=0"), 2, "'index_k' (command line) must be at least 1"),
    Probe("negative plugin count", opts(EAGER, "--gct_lambda_sem=-5"), 2,
          "'gct_lambda_sem' (command line) must be >= 0"),
    Probe("negative sample count", opts(BPR, "--train_neg_sample_args={'distribution':'uniform','sample_num':-1}"),
          2, "sample_num must be an integer >= 1"),
    Probe("server mode misspelt", ["--model=Llama4Rec", "--dataset=ml-tiny", "--data_path={data}",
                                   "--llm_api_base=http://127.0.0.1:9/v1", "--llm_api_model=m",
                                   "--llm_api_mode=chatt"], 2, "'llm_api_mode' must be one of"),
    Probe("server without a model name", ["--model=Llama4Rec", "--dataset=ml-tiny", "--data_path={data}",
                                          "--llm_api_base=http://127.0.0.1:9/v1"], 2,
          "llm_api_model is empty"),
    Probe("unknown encoding", opts(BPR, "--encoding=bogus-enc"), 2, "unknown text encoding"),
    Probe("code as a class name", ["--model=KD_DAGFM", "--dataset=ml-tiny", "--data_path={data}",
                                   "--teacher=__import__('pathlib').Path('{tmp}/pwned').write_text('y')"],
          2, "'teacher' must be a model class name", forbidden=["pwned"]),
    # --- config files -----------------------------------------------------------
    Probe("yaml typo", opts(BPR, "--config_files={tmp}/user.yaml"), 2,
          "unknown option 'learning_rat' (config file", setup=_write("user.yaml", "learning_rat: 0.5\n")),
    Probe("yaml missing", opts(BPR, "--config_files={tmp}/none.yaml"), 2, "config file not found"),
    Probe("yaml broken", opts(BPR, "--config_files={tmp}/bad.yaml"), 2, "is not valid YAML",
          setup=_write("bad.yaml", "epochs: [1, 2\n")),
    Probe("yaml runs no code", opts(BPR, "--config_files={tmp}/evil.yaml"), 2, "is not valid YAML",
          setup=_write("evil.yaml", "epochs: !!python/object/apply:os.system ['touch pwned']\n"),
          forbidden=["pwned"]),
    Probe("yaml value of the wrong kind", opts(BPR, "--config_files={tmp}/kind.yaml"), 2,
          "'train_batch_size' (config file", setup=_write("kind.yaml", "train_batch_size: big\n")),
    # --- datasets -------------------------------------------------------------
    Probe("dataset with a path", ["--model=BPR", "--dataset=sub/name"], 2,
          "must be a plain folder name"),
    Probe("dataset missing", ["--model=BPR", "--dataset=nosuch", "--data_path={data}"], 2,
          "dataset 'nosuch' not found"),
    Probe("header-only .inter", BPR, 2, "no interactions", setup=_edit("ml-tiny", "inter", lambda l: l[:1])),
    Probe("inf in a float field", BPR, 2, "line 3",
          setup=_edit("ml-tiny", "inter", _cell(2, 3, b"inf"))),
    Probe("empty rating label", opts(BPR, "--load_col={'inter':['user_id','item_id','rating']}",
                                     "--threshold={'rating':4}"), 2,
          "label field 'rating' is empty", setup=_edit("ml-tiny", "inter", _cell(4, 2, b""))),
    Probe("NaN rating", BPR, 2, "field 'rating' holds the non-finite value 'nan'",
          setup=_edit("ml-tiny", "inter", _cell(4, 2, b"nan"))),
    Probe("bytes that are not UTF-8", BPR, 2, "line 6",
          setup=_edit("ml-tiny", "inter", _cell(5, 0, b"\xff\xfe"))),
    Probe("unbalanced quote", BPR, 2, "line 8",
          setup=_edit("ml-tiny", "inter", _cell(7, 0, b'"196'))),
    Probe("short .item row of a text model", EAGER, 2, "beauty-tiny.item, line 4",
          setup=_edit("beauty-tiny", "item", lambda l: l[:3] + [l[3].split(b"\t")[0]] + l[4:])),
    Probe("missing text field", opts(EAGER, "--item_text_fields=['title','nosuch']"), 2,
          "item_text_fields names ['nosuch']"),
    Probe("empty test split", opts(BPR, "--eval_args={'split':{'RS':[1.0,0.0,0.0]}}"), 2,
          "the valid split is empty"),
    # --- files the run loads ------------------------------------------------------
    Probe("resume from nothing", opts(BPR, "--resume_checkpoint={tmp}/none.pth"), 2,
          "resume_checkpoint '{tmp}/none.pth' is not a file"),
    Probe("resume from a torn file", opts(BPR, "--resume_checkpoint={tmp}/ckpt.pth"), 2,
          "cannot be read weights-only", setup=_checkpoint("BPR", torn=True)),
    Probe("resume from another model", opts(BPR, "--resume_checkpoint={tmp}/ckpt.pth"), 2,
          "written for model 'LightGCN'", setup=_checkpoint("LightGCN")),
    Probe("resume from another dataset", opts(BPR, "--resume_checkpoint={tmp}/ckpt.pth"), 2,
          "written for dataset 'ml-100k'", setup=_checkpoint("BPR", dataset="ml-100k")),
    Probe("resume with other shapes", opts(BPR, "--resume_checkpoint={tmp}/ckpt.pth"), 2,
          "does not fit this model", setup=_checkpoint("BPR")),
    Probe("resume from a number", opts(BPR, "--resume_checkpoint=0"), 2,
          "resume_checkpoint '0' is not a file"),
    Probe("llm_path missing", opts(EAGER, "--llm_path={tmp}/nollm"), 2, "is not a folder"),
    Probe("llm_path with only config.json", opts(EAGER, "--llm_path={tmp}/llm"), 2,
          "has no tokenizer", setup=_config_only_model),
    Probe("text encoder missing", opts(EAGER, "--text_encoder_path={tmp}/noenc"), 2, "is not a folder"),
    Probe("behaviour checkpoint missing", opts(EAGER, "--behavior_checkpoint={tmp}/none.pth"), 2,
          "behavior_checkpoint"),
    # --- inputs that must work -------------------------------------------------------
    Probe("encoding on the command line", opts(BPR, "--encoding=latin-1"), 0),
    Probe("a value holding =", opts(BPR, "--checkpoint_dir={tmp}/a=b"), 0),
    Probe("a folder named by a number", opts(BPR, "--checkpoint_dir=2024"), 0),
    Probe("validation switched off", opts(BPR, "--eval_step=0"), 0),
]


def materialise(probe: Probe, tmp: str) -> list:
    """Copy the tiny data into ``tmp``, apply the probe's damage; its arguments."""
    data = os.path.join(tmp, "data")
    if not os.path.isdir(data):
        shutil.copytree(os.path.join(TESTS, "data"), data)
    if probe.setup:
        probe.setup(data, tmp)
    return [a.replace("{data}", data).replace("{tmp}", tmp) for a in probe.args]


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_bad_input(probe, tmp_path, capsys):
    from recbole_llm.quick_start import main

    tmp = str(tmp_path)
    code = main(materialise(probe, tmp))
    err = capsys.readouterr().err
    assert code == probe.code, err[-2000:]
    if probe.code == 2:
        message = [line for line in err.splitlines() if line.startswith("recbole-llm: error:")]
        assert len(message) == 1, err[-2000:]
        assert probe.fragment.replace("{tmp}", tmp) in message[0], message[0]
        assert not os.path.isdir(os.path.join(tmp, "saved")) or not os.listdir(os.path.join(tmp, "saved"))
    for name in probe.forbidden:
        assert not os.path.exists(os.path.join(tmp, name))
        assert not os.path.exists(name)  # cwd
