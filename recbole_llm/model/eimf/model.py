"""EIMF (arXiv 2411.09410) as a RecBole sequential model.

Paper: "LLM-based Bi-level Multi-interest Learning Framework for Sequential
Recommendation", https://arxiv.org/abs/2411.09410.

What makes it EIMF, and where it lives here:

* IBIM (``ibim.py``): a multi-interest sequential encoder giving K interest
  vectors per user (``interest_extractor``: dynamic routing or
  self-attentive); trained with target-aware attention over the interests and
  RecBole's cross-entropy over all items; full-sort prediction scores each
  item by its best interest (max over the K).
* ESIM (``esim.py``, training only): users' training histories as text,
  embedded by the text encoder, clustered by Affinity Propagation; the LLM
  (``llm_path``, the small default, or a served model through
  ``llm_api_base``) answers ``esim_prompt`` on each cluster's exemplar only;
  the encoded interests are shared by the cluster.  Cached under every
  setting, the training data's content and the LLM's identity.
* Integration: a modality-alignment InfoNCE between a user's pooled
  behavioural interests and its cluster's semantic interests (projected into
  the behavioural space; users of the same cluster are not each other's
  negatives), and a semantic-prediction task (the user's cluster from its
  interests), weighted by ``align_weight`` and ``semantic_weight``.
* Serving uses IBIM alone: ``full_sort_predict`` and ``predict`` touch
  neither the LLM, nor the text encoder, nor the clusters, which are not
  part of the checkpoint.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llm.errors import InputError
from recbole_llm.fingerprint import dataset_fingerprint, module_fingerprint
from recbole_llm.model.abstract import LLMRecommender
from recbole_llm.model.eimf.esim import semantic_interests
from recbole_llm.model.eimf.ibim import IBIM
from recbole_llm.model.eimf.settings import EIMFSettings
from recbole_llm.model.layers import info_nce


class EIMF(LLMRecommender, SequentialRecommender):
    """RecBole sequential model; see the module docstring."""

    input_type = InputType.POINTWISE
    settings_class = EIMFSettings

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        s = self.read_settings(config)
        self.USER_ID = config["USER_ID_FIELD"]
        self.ibim = IBIM(self.n_items, s.hidden_size, s.num_interests, s.interest_extractor,
                         s.routing_iterations, s.attention_hidden, self.max_seq_length,
                         s.dropout_prob)

        # ESIM: semantic interests per user cluster (training only, not checkpointed)
        esim = self._semantic_interests(config, dataset)
        self.esim_report = esim["report"]
        self.logger.info(f"EIMF ESIM: {self.esim_report}")
        self.register_buffer("user_cluster", torch.as_tensor(esim["user_cluster"]),
                             persistent=False)
        self.register_buffer("semantic", torch.as_tensor(esim["semantic"]), persistent=False)
        clusters, text_dim = esim["semantic"].shape
        self.sem_proj = nn.Linear(text_dim, s.hidden_size)
        self.cluster_head = nn.Linear(s.hidden_size, clusters)

    @classmethod
    def check_settings(cls, final: dict) -> None:
        if final["esim_prompt"].count("{history}") != 1:
            raise InputError(f"esim_prompt {final['esim_prompt']!r} must hold {{history}} exactly once")

    # ------------------------------------------------------------------ ESIM
    def _llm_identity(self, config) -> str:
        """Who answers: a served model (endpoint and name), or the local backbone
        (whose weights the settings and the data fix)."""
        from recbole_llm.llm.client import client_from_config

        if config["llm_api_base"]:
            return client_from_config(config).identity
        return "local"

    def _semantic_interests(self, config, dataset) -> dict:
        s, cache = self.settings, self.cache
        key = cache.key("eimf-esim", settings=s.key_parts(memo_dir=cache.root),
                        data=dataset_fingerprint(dataset), llm=self._llm_identity(config))
        if cache.has_arrays(key) and cache.has_json(key):
            arrays = cache.load_arrays(key)
            return dict(arrays, report=cache.load_json(key))
        from recbole_llm.llm.client import client_from_config
        from recbole_llm.llm.encoder import TextEncoder

        names = self.item_names(dataset, s.prompt_item_field)
        histories = dataset.user_histories()
        encoder = TextEncoder(s.text_encoder_path, device=self.device)
        llm = tokenizer = None
        if not config["llm_api_base"]:
            from recbole_llm.llm.backbone import load_backbone

            corpus = [n for n in names if n] + [s.esim_prompt]
            llm, tokenizer = load_backbone(s, corpus=corpus, cache=cache)
            llm.to(self.device)
        client = client_from_config(config, llm, tokenizer,
                                    cache_dir=os.path.join(cache.root, "eimf-answers"),
                                    local_name=module_fingerprint(llm) if llm is not None else "")

        def prompt_fits(prompt):
            if tokenizer is None:  # a server refuses an over-long prompt with an error
                return True
            need = len(tokenizer(prompt)["input_ids"]) + s.esim_max_new_tokens
            return need <= s.llm_max_prompt_tokens

        result = semantic_interests(histories, names, s, encoder, client, prompt_fits,
                                    s.show_progress)
        del llm, client, encoder
        arrays = {k: result[k] for k in ("user_cluster", "semantic", "exemplars")}
        cache.save_arrays(key, **arrays)
        cache.save_json(key, result["report"])
        return dict(arrays, report=result["report"])

    # ------------------------------------------------------------------ train
    def calculate_loss(self, interaction):
        s = self.settings
        interests = self.ibim.interests(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        targets = interaction[self.POS_ITEM_ID]
        user = IBIM.target_attention(interests, self.ibim.item_embedding(targets))
        loss = F.cross_entropy(user @ self.ibim.item_embedding.weight.T, targets)
        if not (s.align_weight or s.semantic_weight):
            return loss
        clusters = self.user_cluster[interaction[self.USER_ID]]
        known = clusters >= 0
        if known.sum() < 2:
            return loss
        pooled, clusters = interests[known].mean(1), clusters[known]
        if s.align_weight:
            semantic = self.sem_proj(self.semantic[clusters])
            loss = loss + s.align_weight * info_nce(pooled, semantic, s.align_temperature, clusters)
        if s.semantic_weight:
            loss = loss + s.semantic_weight * F.cross_entropy(self.cluster_head(pooled), clusters)
        return loss

    # ---------------------------------------------------------------- serving
    def full_sort_predict(self, interaction):
        interests = self.ibim.interests(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.ibim.full_scores(interests)

    def predict(self, interaction):
        interests = self.ibim.interests(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        items = self.ibim.item_embedding(interaction[self.ITEM_ID])
        return (interests @ items[..., None]).squeeze(-1).max(dim=1).values
