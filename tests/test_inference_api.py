"""recbole_llm.load(checkpoint).recommend(...): raw ids in, raw ids and scores out."""
import pytest
import torch

from conftest import ML_TINY_ARGS, check_recommender
from recbole_llm.errors import InputError


def test_general_model_ranks_by_its_own_scores(cli, tmp_path):
    out = cli("--model=BPR", "--dataset=ml-tiny", *ML_TINY_ARGS, "--epochs=1")
    assert out.returncode == 0, out.stderr[-3000:]
    checkpoint = next((tmp_path / "saved").glob("BPR-*.pth"))
    rec, answer = check_recommender(checkpoint, k=10)
    dataset, model = rec.dataset, rec.model
    # the same ranking by hand: user . item embeddings, the user's items left out
    user = dataset.id2token(dataset.uid_field, 1)
    with torch.no_grad():
        scores = model.item_embedding.weight @ model.user_embedding.weight[1]
    scores[0] = -torch.inf
    scores[torch.as_tensor(rec.histories[1])] = -torch.inf
    expected = dataset.id2token(dataset.iid_field, torch.topk(scores, 10).indices.numpy())
    assert [i for i, _ in rec.recommend(user=user, k=10)] == list(expected)
    with pytest.raises(InputError, match="general model"):
        rec.recommend(history=["242"])
    with pytest.raises(InputError, match="unknown user"):
        rec.recommend(user="no-such-user")
    with pytest.raises(InputError, match="positive integer"):
        rec.recommend(user=user, k=0)


def test_traditional_model_and_bad_history(cli, tmp_path):
    out = cli("--model=Pop", "--dataset=ml-tiny", *ML_TINY_ARGS, "--epochs=1")
    assert out.returncode == 0, out.stderr[-3000:]
    rec, answer = check_recommender(next((tmp_path / "saved").glob("Pop-*.pth")), k=10)
    # Pop ranks by its training counts (restored from the checkpoint with the weights)
    model, dataset = rec.model, rec.dataset
    ids = [int(dataset.token2id(dataset.iid_field, i)) for i, _ in answer]
    expected = (model.item_cnt[ids].view(-1).double() / model.max_cnt.double()).tolist()
    assert [s for _, s in answer] == pytest.approx(expected)
    best_unseen = max(c for i, c in enumerate(model.item_cnt.view(-1).tolist())
                      if i and i not in set(rec.histories[1].tolist()))
    assert answer[0][1] == pytest.approx(best_unseen / float(model.max_cnt))


def test_sequential_model_answers_a_user_or_a_history(cli, tmp_path):
    out = cli("--model=SASRec", "--dataset=ml-tiny", *ML_TINY_ARGS, "--epochs=1",
              "--MAX_ITEM_LIST_LENGTH=5", "--n_layers=1", "--n_heads=1", "--hidden_size=16",
              "--inner_size=32")
    assert out.returncode == 0, out.stderr[-3000:]
    rec, _ = check_recommender(next((tmp_path / "saved").glob("SASRec-*.pth")))
    # a history is read oldest first and only its last MAX_ITEM_LIST_LENGTH items count
    history = ["242", "302", "377", "51", "346", "474"]
    assert rec.recommend(history=history, k=5, exclude_seen=False) == rec.recommend(
        history=history[-5:], k=5, exclude_seen=False)
    assert rec.recommend(history=history, k=5) != rec.recommend(history=history[:3], k=5)
    with pytest.raises(InputError, match="unknown item"):
        rec.recommend(history=["no-such-item"])
    with pytest.raises(InputError, match="not one string"):
        rec.recommend(history="242")
