"""RecBole's multi-process training on CPU processes (gloo): the same result as one process."""
import re
import socket

import pytest
import torch

from conftest import ML_TINY_ARGS, logged_test_metric

# one full batch per epoch and no dropout: two processes, each with half the batch and
# the gradients averaged, train the same model as one process (up to summation order)
SETTINGS = {
    "SASRec": ["--MAX_ITEM_LIST_LENGTH=5", "--hidden_size=16", "--inner_size=32", "--n_layers=1",
               "--n_heads=1", "--hidden_dropout_prob=0.0", "--attn_dropout_prob=0.0",
               "--learning_rate=0.05", "--epochs=8"],
    # EIMF with ESIM: every rank clusters users and asks the (tiny, random-init) LLM for
    # the exemplars' interests before training, into an empty cache of its run; the
    # alignment loss contrasts the whole batch's users (gathered from both processes)
    "EIMF+ESIM": ["--MAX_ITEM_LIST_LENGTH=5", "--hidden_size=16", "--align_weight=0.1",
                  "--semantic_weight=0.1", "--dropout_prob=0.0", "--learning_rate=0.02",
                  "--epochs=4", "--llm_hidden_size=32", "--llm_num_layers=1", "--llm_num_heads=2",
                  "--llm_vocab_size=400", "--esim_max_new_tokens=8", "--prompt_item_field=title"],
    # EAGERLLM, both stages: rank 0 trains the behaviour model and builds the index, the
    # other reads them from the run's cache; GCT's in-batch negatives are the whole
    # batch's targets (gathered); each task's mean is over the whole batch (counts summed
    # over the processes); annealing re-wraps the adapter's parameters.  One template and
    # no sampled rows, so both runs see the same prompts.
    "EAGERLLM": ["--MAX_ITEM_LIST_LENGTH=4", "--behavior_epochs=1",
                 "--behavior_model_args={'hidden_size': 8, 'inner_size': 16, 'n_layers': 1, "
                 "'n_heads': 1}", "--index_k=16", "--index_kmeans_iters=5",
                 "--llm_hidden_size=16", "--llm_num_layers=1", "--llm_num_heads=2",
                 "--llm_vocab_size=300", "--llm_dropout=0.0", "--lora_dropout=0.0",
                 "--seqrec_template=['History: {history}. Next:']",
                 "--aux_task_ratio={'item2index': 0, 'index2item': 0, 'preference': 0}",
                 "--gct_negatives=0", "--learning_rate=0.01", "--epochs=2", "--aat_epochs=1",
                 "--aat_min_history=3", "--num_beams=20", "--beam_batch_size=64"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_and_two(cli, tmp_path, args):
    """The logs of one run in one process and one in two CPU processes (each saves its
    checkpoint under ``<tmp_path>/one/saved`` or ``two/saved``)."""
    one = cli(*args, f"--llm_cache_dir={tmp_path / 'one'}",
              f"--checkpoint_dir={tmp_path / 'one' / 'saved'}", timeout=600)
    two = cli(*args, f"--llm_cache_dir={tmp_path / 'two'}", "--nproc=2", "--use_gpu=False",
              "--ip=127.0.0.1", f"--port={_free_port()}",
              f"--checkpoint_dir={tmp_path / 'two' / 'saved'}", timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    log_one, log_two = one.stdout + one.stderr, two.stdout + two.stderr
    assert log_two.count("test result") == 1  # rank 0 alone logs
    return log_one, log_two


def _saved_weights(folder):
    """The float tensors of the one checkpoint a run saved in ``folder``."""
    (path,) = list(folder.glob("*.pth"))
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items() if v.is_floating_point()}


def _train_losses(log):
    return [float(x) for x in re.findall(r"train loss: ([\d.]+)", log)]


@pytest.mark.parametrize("case", list(SETTINGS))
def test_two_processes_match_one(cli, tmp_path, case):
    args = [f"--model={case.split('+')[0]}", "--dataset=ml-tiny", *ML_TINY_ARGS,
            "--train_batch_size=20000", "--metrics=['Recall','NDCG','Hit']", "--topk=[10,20]",
            "--valid_metric=NDCG@20", *SETTINGS[case]]
    log_one, log_two = _one_and_two(cli, tmp_path, args)
    for metric in ("recall@20", "ndcg@20", "hit@20", "ndcg@10"):
        a, b = logged_test_metric(log_one, metric), logged_test_metric(log_two, metric)
        # each process rounds its share's mean to 4 places before they are averaged
        assert abs(a - b) <= 2e-4, (metric, a, b)
    # the same trained weights (the metrics alone can agree at zero on a toy set); atol: a
    # parameter without a gradient (a key bias) moves by Adam on summation noise
    one, two = _saved_weights(tmp_path / "one" / "saved"), _saved_weights(tmp_path / "two" / "saved")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-3, atol=1e-4), name
    losses = _train_losses(log_one)
    assert losses[-1] < losses[0]  # and it trained
    assert ("EIMF ESIM:" in log_two) == ("ESIM" in case)  # the semantic stage ran (or not)
    assert ("Annealing adapter tuning" in log_two) == (case == "EAGERLLM")


def test_elcorec_two_processes_match_one(cli, tmp_path):
    """ELCoRec: rank 0 pre-trains the GAT expert and tokenises, the other reads its
    cache; the same training step in both runs (one batch, no dropout)."""
    args = ["--model=ELCoRec", "--dataset=ml-tiny", *ML_TINY_ARGS[:2],
            "--load_col={'inter': ['user_id','item_id','rating','timestamp'], "
            "'user': ['user_id','age','gender','occupation'], "
            "'item': ['item_id','release_year','genre']}", "--show_progress=False",
            "--user_inter_num_interval=[20,80]", "--threshold={'rating': 4}",
            "--prompt_item_field=title", "--llm_hidden_size=16", "--llm_num_layers=1",
            "--llm_num_heads=2", "--llm_vocab_size=400", "--llm_dropout=0.0", "--lora_dropout=0.0",
            "--gat_epochs=2", "--gat_dim=8", "--gat_heads=2", "--gat_history_len=4",
            "--train_batch_size=20000", "--learning_rate=0.01", "--epochs=3", "--eval_step=3"]
    log_one, log_two = _one_and_two(cli, tmp_path, args)
    # 71 validation rows: the padding row DistributedSampler repeats is left out, and
    # the scores are pooled before AUC and LogLoss
    for metric in ("auc", "logloss"):
        a, b = logged_test_metric(log_one, metric), logged_test_metric(log_two, metric)
        assert abs(a - b) <= 2e-4, (metric, a, b)
    assert re.search(r"valid result: \s*auc : ([\d.]+)", log_one).group(1) == \
        re.search(r"valid result: \s*auc : ([\d.]+)", log_two).group(1)
    assert logged_test_metric(log_one, "auc") != 0.5 and "GAT expert" in log_two


def test_llama4rec_two_processes_match_one(cli, tmp_path):
    """Llama4Rec: rank 0 trains the conventional models on the whole training split
    and tunes the LLM (the other reads the cache); the LLM re-ranks each process's
    share of the users, with the same alpha search; then, with augmentation, the
    conventional model retrains on D' in both processes."""
    args = ["--model=Llama4Rec", "--dataset=ml-tiny", *ML_TINY_ARGS, "--base_model=BPR",
            "--prompt_item_field=title", "--llm_hidden_size=16", "--llm_num_layers=1",
            "--llm_num_heads=2", "--llm_vocab_size=400", "--llm_dropout=0.0", "--lora_dropout=0.0",
            "--it_samples_per_task=16", "--rerank_topn=5", "--llm_batch_size=16",
            "--train_batch_size=20000", "--epochs=2", "--metrics=['Recall','NDCG','Hit']",
            "--topk=[5,10]", "--valid_metric=NDCG@10"]
    log_one, log_two = _one_and_two(cli, tmp_path, [*args, "--data_augmentation=False"])
    for metric in ("recall@10", "ndcg@10", "hit@10", "ndcg@5"):
        a, b = logged_test_metric(log_one, metric), logged_test_metric(log_two, metric)
        assert abs(a - b) <= 2e-4, (metric, a, b)
    kept = re.compile(r"kept alpha1=[\d.]+, alpha2=[\d.]+")
    assert kept.search(log_one).group(0) == kept.search(log_two).group(0)
    assert "instruction tuning: loss" in log_two and logged_test_metric(log_one, "hit@10") > 0
    augmented = cli(*args, "--aug_users=8", f"--llm_cache_dir={tmp_path / 'aug'}", "--nproc=2",
                    "--use_gpu=False", "--ip=127.0.0.1", f"--port={_free_port()}", timeout=600)
    log = augmented.stdout + augmented.stderr
    assert augmented.returncode == 0, log[-3000:]
    assert "data augmentation: 8 prompts" in log and 0 <= logged_test_metric(log, "ndcg@10") <= 1


@pytest.mark.parametrize("model, launch, words", [
    ("BPR", ["--nproc=0"], "--nproc"),
    ("BPR", ["--nproc=1", "--group_offset=3"], "exceeds world_size"),
])
def test_bad_launch_settings_exit_2(cli, model, launch, words):
    out = cli(f"--model={model}", "--dataset=ml-tiny", *ML_TINY_ARGS, *launch, timeout=120)
    assert out.returncode == 2 and words in out.stderr


def test_a_model_that_trains_in_one_process_only_is_refused():
    """A model class (a user's) may declare ``supports_multi_process = False``:
    ``--nproc`` > 1 is refused before any process starts."""
    from recbole_llm.distributed import check_launch
    from recbole_llm.errors import InputError

    class OneProcess:
        supports_multi_process = False

    class FakeConfig(dict):
        model_class = OneProcess

    config = FakeConfig(model="OneProcess", device=torch.device("cpu"), gpu_id="0")
    with pytest.raises(InputError, match="one process only"):
        check_launch(config, {"nproc": 2})
    OneProcess.supports_multi_process = True
    check_launch(config, {"nproc": 2})
