import pytest
from recbole.data.dataset import SequentialDataset
from recbole.model.general_recommender import BPR
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import KGTrainer, Trainer
from recbole.utils import ModelType

from recbole_llm import registry
from recbole_llm.data import SequentialTextDataset
from recbole_llm.trainer import WeightsOnlyCheckpointMixin


def test_recbole_models_fall_back_to_recbole():
    assert registry.get_model_class("BPR") is BPR
    assert registry.get_dataset_class("BPR") is None
    trainer = registry.get_trainer_class("BPR", ModelType.GENERAL)
    assert issubclass(trainer, Trainer) and issubclass(trainer, WeightsOnlyCheckpointMixin)
    kg = registry.get_trainer_class("KGAT", ModelType.KNOWLEDGE)
    assert issubclass(kg, WeightsOnlyCheckpointMixin)
    assert registry.get_trainer_class("BPR", ModelType.GENERAL) is trainer  # cached


def test_unknown_model_names_both_sources():
    with pytest.raises(ValueError, match="unknown model 'SasRec'.*neither a recbole-llm"):
        registry.get_model_class("SasRec")


def test_register_plugin_model():
    class MySeq(SASRec):
        pass

    try:
        registry.register("MySeq", MySeq, dataset=SequentialTextDataset)
        assert registry.is_plugin_model("MySeq")
        assert registry.get_model_class("MySeq") is MySeq
        assert registry.get_dataset_class("MySeq") is SequentialTextDataset
        assert issubclass(registry.get_dataset_class("MySeq"), SequentialDataset)
        with pytest.raises(ValueError, match="already registered"):
            registry.register("MySeq", MySeq)
        registry.register("MySeq", "recbole.model.sequential_recommender:SASRec",
                          trainer="recbole.trainer:KGTrainer", replace=True)
        assert registry.get_model_class("MySeq") is SASRec
        assert issubclass(registry.get_trainer_class("MySeq", ModelType.SEQUENTIAL), KGTrainer)
    finally:
        registry.unregister("MySeq")
    assert not registry.is_plugin_model("MySeq")
