"""RecBole's multi-process training on CPU processes (gloo): the same result as one process."""
import socket

import pytest

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
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", list(SETTINGS))
def test_two_processes_match_one(cli, tmp_path, case):
    args = [f"--model={case.split('+')[0]}", "--dataset=ml-tiny", *ML_TINY_ARGS,
            "--train_batch_size=20000", "--metrics=['Recall','NDCG','Hit']", "--topk=[10,20]",
            "--valid_metric=NDCG@20", *SETTINGS[case]]
    one = cli(*args, f"--llm_cache_dir={tmp_path / 'one'}", timeout=600)
    two = cli(*args, f"--llm_cache_dir={tmp_path / 'two'}", "--nproc=2", "--use_gpu=False",
              "--ip=127.0.0.1", f"--port={_free_port()}", timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    log_one, log_two = one.stdout + one.stderr, two.stdout + two.stderr
    assert log_two.count("test result") == 1  # rank 0 alone logs
    for metric in ("recall@20", "ndcg@20", "hit@20", "ndcg@10"):
        a, b = logged_test_metric(log_one, metric), logged_test_metric(log_two, metric)
        # each process rounds its share's mean to 4 places before they are averaged
        assert abs(a - b) <= 2e-4, (metric, a, b)
    assert logged_test_metric(log_one, "hit@20") > 0  # trained far enough to compare
    assert ("EIMF ESIM:" in log_two) == ("ESIM" in case)  # the semantic stage ran (or not)


@pytest.mark.parametrize("model, launch, words", [
    ("BPR", ["--nproc=0"], "--nproc"),
    ("BPR", ["--nproc=1", "--group_offset=3"], "exceeds world_size"),
    ("EAGERLLM", ["--nproc=2"], "one process only"),
])
def test_bad_launch_settings_exit_2(cli, model, launch, words):
    out = cli(f"--model={model}", "--dataset=ml-tiny", *ML_TINY_ARGS, *launch, timeout=120)
    assert out.returncode == 2 and words in out.stderr
