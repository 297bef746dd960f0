import os

import pytest
import torch

from conftest import ML_TINY
from recbole_llm.config import Config
from recbole_llm.quick_start import build, run_recbole_llm
from recbole_llm.trainer import load_checkpoint, save_checkpoint


def test_checkpoint_loads_weights_only_and_resumes():
    result = run_recbole_llm(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, epochs=2))
    path = result["saved_model_file"]
    state = torch.load(path, weights_only=True)            # no pickled Config inside
    assert state["config"]["model"] == "BPR" and isinstance(state["best_valid_score"], float)
    assert state["config"]["final_config_dict"]["dataset"] == "ml-tiny"

    config = Config(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, epochs=3))
    _, _, model, trainer = build(config)
    trainer.resume_checkpoint(path)
    assert trainer.start_epoch == state["epoch"] + 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["state_dict"][name])


def test_resume_refuses_another_models_checkpoint():
    result = run_recbole_llm(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, epochs=1))
    config = Config(model="LightGCN", dataset="ml-tiny", config_dict=dict(ML_TINY, epochs=1))
    _, _, _, trainer = build(config)
    with pytest.raises(ValueError, match="written for model 'BPR'"):
        trainer.resume_checkpoint(result["saved_model_file"])


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth")
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, path)

    def torn_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_pickled_objects_are_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"config": object()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "none.pth"))


def test_item_embeddings_from_a_plugin_checkpoint():
    from recbole_llm.model.conventional import checkpoint_item_embeddings
    result = run_recbole_llm(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, epochs=1))
    state = torch.load(result["saved_model_file"], weights_only=True)["state_dict"]
    n_items = state["item_embedding.weight"].shape[0]
    emb = checkpoint_item_embeddings(result["saved_model_file"], n_items)
    assert emb.shape == (n_items, 64) and (emb == state["item_embedding.weight"].numpy()).all()
    with pytest.raises(ValueError, match="rows, the dataset"):
        checkpoint_item_embeddings(result["saved_model_file"], n_items + 1)


def _bpr_ml100k(tmp_path, epochs, resume=None):
    config = Config(model="BPR", dataset="ml-100k", config_dict={
        "epochs": epochs, "stopping_step": 100, "state": "WARNING", "show_progress": False,
        "checkpoint_dir": str(tmp_path / "saved")})
    _, (train, valid, _), model, trainer = build(config)
    if resume:
        trainer.resume_checkpoint(resume)
    trainer.fit(train, valid, saved=True)
    return trainer, model


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    """Stopping after epoch 2 and resuming from its checkpoint gives the same
    losses and weights as four epochs in one go (optimizer, shuffling and
    negative-sampling random states all restored)."""
    whole, whole_model = _bpr_ml100k(tmp_path, epochs=4)
    first, _ = _bpr_ml100k(tmp_path, epochs=2)
    checkpoint = load_checkpoint(first.saved_model_file)
    assert checkpoint["epoch"] == 1, "validation did not improve at epoch 2: nothing to resume"
    resumed, resumed_model = _bpr_ml100k(tmp_path, epochs=4, resume=first.saved_model_file)
    assert resumed.start_epoch == 2
    assert [resumed.train_loss_dict[e] for e in (2, 3)] == [whole.train_loss_dict[e] for e in (2, 3)]
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


def test_checkpoint_names_are_unique_per_run():
    config = Config(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, epochs=1))
    _, _, model, trainer = build(config)
    other = type(trainer)(config, model)
    assert trainer.saved_model_file != other.saved_model_file
    assert os.path.basename(trainer.saved_model_file).startswith("BPR-")


def test_a_models_own_generator_travels_with_the_checkpoint(tmp_path):
    """EAGERLLM and Llama4Rec draw rows, templates and negatives from ``model.rng``."""
    import numpy as np

    config = Config(model="BPR", dataset="ml-tiny", config_dict=dict(
        ML_TINY, epochs=1, checkpoint_dir=str(tmp_path / "saved")))
    _, (train, valid, _), model, trainer = build(config)
    model.rng = np.random.default_rng(7)
    trainer.fit(train, valid, saved=True)
    expected = model.rng.integers(10 ** 9, size=3)   # the draws that follow the saved state
    model.rng = np.random.default_rng(0)
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert (model.rng.integers(10 ** 9, size=3) == expected).all()
