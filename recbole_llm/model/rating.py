"""Rating-regression variants of RecBole's context-aware models.

RecBole's context-aware models are CTR models: BCE on 0/1 labels and a
sigmoid in ``predict``.  Rating prediction (Llama4Rec's third task, RMSE and
MAE) needs a model that predicts the rating itself.  The variant keeps the
model's architecture and features and changes only the head: ``predict`` is
the raw output plus the training mean rating, trained with MSE on the raw
rating (``LABEL_FIELD: rating``, no ``threshold``).  ``DeepFMRating`` is the
Llama4Rec paper's rating baseline (DeepFM) in this form.

The models are RecBole's: DeepFM (Guo et al., IJCAI 2017), FM (Rendle, ICDM
2010), Wide & Deep (Cheng et al., DLRS 2016).
"""
import torch
import torch.nn.functional as F
from recbole.model.context_aware_recommender import FM, DeepFM, WideDeep

from recbole_llm.model.abstract import PluginModel
from recbole_llm.paths import plugin_file, recbole_model_yaml


class RatingRegressionMixin(PluginModel):
    """MSE on the raw label around the training mean; predict = mean + output."""

    regression = True
    recbole_name = None  # the RecBole model whose hyper-parameters this variant keeps

    @classmethod
    def property_files(cls) -> list:
        """RecBole's yaml of the wrapped model, then the rating protocol."""
        return recbole_model_yaml(cls.recbole_name) + [plugin_file("rating.yaml")]

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["threshold"]:
            raise ValueError(f"{type(self).__name__} predicts ratings: remove threshold "
                             f"({config['threshold']}) so that {config['LABEL_FIELD']} stays a rating")
        labels = torch.as_tensor(dataset.inter_feat[config["LABEL_FIELD"]], dtype=torch.float32)
        if labels.max() <= 1.0 and labels.min() >= 0.0 and config["normalize_all"]:
            raise ValueError(f"{config['LABEL_FIELD']} was normalised to [0, 1] by RecBole "
                             "(normalize_all: True); set normalize_all: False (and normalize_field "
                             "for the features you want scaled)")
        self.register_buffer("mean_rating", labels.mean())

    def calculate_loss(self, interaction):
        return F.mse_loss(self.predict(interaction), interaction[self.LABEL].float())

    def predict(self, interaction):
        return self.forward(interaction) + self.mean_rating


class DeepFMRating(RatingRegressionMixin, DeepFM):
    """DeepFM predicting ratings (MSE): the paper's rating baseline."""

    recbole_name = "DeepFM"


class FMRating(RatingRegressionMixin, FM):
    """FM predicting ratings (MSE)."""

    recbole_name = "FM"


class WideDeepRating(RatingRegressionMixin, WideDeep):
    """WideDeep predicting ratings (MSE)."""

    recbole_name = "WideDeep"
