"""EIMF (arXiv 2411.09410) as a RecBole sequential model.

Paper: "LLM-based Bi-level Multi-interest Learning Framework for Sequential
Recommendation", https://arxiv.org/abs/2411.09410.

What makes it EIMF, and where it lives here:

* IBIM (``ibim.py``): a multi-interest sequential encoder giving K interest
  vectors per user (``interest_extractor``: dynamic routing or
  self-attentive, optionally over ``encoder_layers`` Transformer layers);
  trained with target-aware attention over the interests and RecBole's
  cross-entropy over all items.  ``interest_scoring``: ``target`` (MIND,
  ComiRec) scores every item against the target-attended user vector and
  serves each item's best interest (max over the K); ``candidate`` (default) lets every
  item attend over the interests with its own affinity, in training (the
  target's logit is the same) and at serving alike.
* ESIM (``esim.py``, training only; ``prepare_semantics``, which
  ``EIMFTrainer.fit`` calls before training): users' training histories as
  text, embedded by the text encoder, clustered by Affinity Propagation; the
  LLM (``llm_path``, the small default, or a served model through
  ``llm_api_base``) answers ``esim_prompt`` on each cluster's exemplar only;
  the encoded interests are shared by the cluster.  Cached under the settings
  it reads, the encoder's and the training data's content and the LLM's
  identity.
* Integration: a modality-alignment InfoNCE between users' sets of K
  behavioural interests and their clusters' sets of semantic interests
  (projected into the interest space; users of the same cluster are not each
  other's negatives), and a semantic-prediction task (each semantic interest
  from the behavioural interests mapped into the text space), weighted by
  ``align_weight`` and ``semantic_weight``.
* Serving uses IBIM alone: building the model runs no ESIM, and
  ``full_sort_predict`` and ``predict`` touch neither the LLM, nor the text
  encoder, nor the clusters, none of which is in the checkpoint.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llm.distributed import gather_rows, global_sum, world_size
from recbole_llm.errors import InputError
from recbole_llm.fingerprint import dataset_fingerprint, module_fingerprint, path_fingerprint
from recbole_llm.model.abstract import LLMRecommender
from recbole_llm.model.eimf.esim import semantic_interests
from recbole_llm.model.eimf.ibim import IBIM
from recbole_llm.model.eimf.settings import EIMFSettings
from recbole_llm.utils import forked_rng

# bumped when ESIM's computation changes (its cache then misses)
ESIM_VERSION = 4
# settings read only after ESIM (IBIM, the losses): not part of its cache key
AFTER_ESIM = ("hidden_size", "num_interests", "interest_extractor", "routing_iterations",
              "interest_positions", "attention_hidden", "dropout_prob", "encoder_layers",
              "encoder_heads", "encoder_dropout", "interest_scoring", "align_weight",
              "align_temperature", "semantic_weight")


def encoder_dim(path) -> int:
    """The text encoder's output size, read from its config (the encoder is not
    loaded).  Needed to build the model, even to serve it: the checkpoint holds the
    integration heads it sizes."""
    from transformers import AutoConfig

    from recbole_llm.llm.encoder import default_encoder_path

    path = path or default_encoder_path()
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True).hidden_size
    except (OSError, ValueError) as e:
        raise InputError(f"text_encoder_path {path!r}: EIMF sizes its semantic heads by this "
                         f"text encoder and cannot read its config.json ({e})") from None


class EIMF(LLMRecommender, SequentialRecommender):
    """RecBole sequential model; see the module docstring."""

    input_type = InputType.POINTWISE
    settings_class = EIMFSettings
    # IBIM was ComiRec-SA's until these defaults changed: a checkpoint that lacks one of
    # them was trained with this value (``recbole_llm.load`` fills it in)
    DEFAULTS_BEFORE = {"interest_positions": "first", "interest_scoring": "target"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        s = self.read_settings(config)
        self.USER_ID = config["USER_ID_FIELD"]
        self.ibim = IBIM(self.n_items, s.hidden_size, s.num_interests, s.interest_extractor,
                         s.routing_iterations, s.attention_hidden, self.max_seq_length,
                         s.dropout_prob, s.interest_positions, s.encoder_layers,
                         s.encoder_heads, s.encoder_dropout)
        # the integration heads (training only); the text side's size is the encoder's
        text_dim = encoder_dim(s.text_encoder_path)
        self.sem_proj = nn.Linear(text_dim, s.hidden_size)   # semantic -> interest space
        self.sem_head = nn.Linear(s.hidden_size, text_dim)   # interests -> semantic space
        # ESIM's output, set by prepare_semantics() before training (EIMFTrainer.fit):
        # never built for prediction, never saved
        self.register_buffer("user_cluster", None, persistent=False)
        self.register_buffer("semantic", None, persistent=False)
        self.register_buffer("semantic_mask", None, persistent=False)
        self.esim_report = None

    @classmethod
    def check_settings(cls, final: dict) -> None:
        if final["esim_prompt"].count("{history}") != 1:
            raise InputError(f"esim_prompt {final['esim_prompt']!r} must hold {{history}} exactly once")
        if final["encoder_layers"] and final["hidden_size"] % final["encoder_heads"]:
            raise InputError(f"encoder_heads ({final['encoder_heads']}) must divide hidden_size "
                             f"({final['hidden_size']}) when encoder_layers > 0")
        sampling = final.get("train_neg_sample_args")
        if isinstance(sampling, dict) and sampling.get("distribution", "none") != "none":
            # RecBole would add the negatives as rows labelled 0, which the cross-entropy
            # over all items would take for targets
            raise InputError("EIMF trains with the cross-entropy over all items and takes no "
                             "sampled negatives: set train_neg_sample_args: ~")
        esim_runs = final["align_weight"] or final["semantic_weight"]
        if esim_runs and final["esim_source"] == "llm" and not final.get("llm_api_base") \
                and final["esim_max_new_tokens"] >= final["llm_max_prompt_tokens"]:
            raise InputError(f"esim_max_new_tokens ({final['esim_max_new_tokens']}) leaves no "
                             f"room for the prompt in llm_max_prompt_tokens "
                             f"({final['llm_max_prompt_tokens']}): raise llm_max_prompt_tokens "
                             "or lower esim_max_new_tokens")

    # ------------------------------------------------------------------ ESIM
    def _llm_identity(self, config) -> str:
        """Who answers: a served model (endpoint and name), or the local backbone
        (whose weights the settings and the data fix)."""
        from recbole_llm.llm.client import client_from_config

        if config["llm_api_base"]:
            return client_from_config(config).identity
        return "local"

    def prepare_semantics(self, config, dataset) -> dict:
        """ESIM on the training split, once before training (cached); the random
        state after it is the same whether it was computed or read."""
        with forked_rng(self.device):
            esim = self._semantic_interests(config, dataset)
        self.esim_report = esim["report"]
        self.logger.info(f"EIMF ESIM: {self.esim_report}")
        device = self.ibim.item_embedding.weight.device
        self.user_cluster = torch.as_tensor(esim["user_cluster"], device=device)
        self.semantic = torch.as_tensor(esim["semantic"], device=device)
        self.semantic_mask = torch.as_tensor(esim["semantic_mask"], device=device)
        return esim

    def _semantic_interests(self, config, dataset) -> dict:
        from recbole_llm.llm.encoder import MAX_LENGTH, default_encoder_path, encode_cached

        s, cache = self.settings, self.cache
        encoder_path = s.text_encoder_path or default_encoder_path()
        # IBIM's and the losses' settings act after ESIM: left out of its key
        import sklearn  # Affinity Propagation's results are its version's

        key = cache.key("eimf-esim", version=ESIM_VERSION, sklearn=sklearn.__version__,
                        settings=s.key_parts(exclude=AFTER_ESIM, memo_dir=cache.root),
                        encoder=path_fingerprint(encoder_path, cache.root), max_length=MAX_LENGTH,
                        data=dataset_fingerprint(dataset), llm=self._llm_identity(config))
        if cache.has_arrays(key) and cache.has_json(key):
            arrays = cache.load_arrays(key)
            report = dict(cache.load_json(key), cached=True)
            return dict(arrays, report=report)
        from recbole_llm.llm.client import client_from_config
        from recbole_llm.llm.encoder import TextEncoder

        names = self.item_names(dataset, s.prompt_item_field)
        histories = dataset.user_histories()
        encoder = TextEncoder(encoder_path, device=self.device)
        llm = tokenizer = None
        if not config["llm_api_base"] and s.esim_source == "llm":
            from recbole_llm.llm.backbone import load_backbone

            if not s.llm_path:
                self.logger.warning(
                    "EIMF ESIM: no llm_path or llm_api_base, so the exemplars' interests come "
                    "from the small default LLM, randomly initialised: its answers are noise. "
                    "Set llm_path (a pretrained model folder) or llm_api_base, or use "
                    "esim_source: history")

            corpus = [n for n in names if n] + [s.esim_prompt]
            llm, tokenizer = load_backbone(s, corpus=corpus, cache=cache)
            llm.to(self.device)
        client = None if s.esim_source != "llm" else client_from_config(
            config, llm, tokenizer, cache_dir=os.path.join(cache.root, "eimf-answers"),
            local_name=module_fingerprint(llm) if llm is not None else "")

        def prompt_fits(prompt):
            if tokenizer is None:  # a server refuses an over-long prompt with an error
                return True
            need = len(tokenizer(prompt)["input_ids"]) + s.esim_max_new_tokens
            return need <= s.llm_max_prompt_tokens

        def encode(texts):  # cached per text list (user texts recur across settings)
            return encode_cached(cache, texts, encoder_path, s.text_encoder_batch_size,
                                 s.show_progress, encoder=encoder)

        limit = encoder.max_length - 2  # [CLS] and [SEP]

        def encoder_fits(text):
            return len(encoder.tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit

        result = semantic_interests(histories, names, s, encode, client, prompt_fits, encoder_fits)
        arrays = {k: result[k] for k in ("user_cluster", "semantic", "semantic_mask", "exemplars")}
        cache.save_arrays(key, **arrays)
        cache.save_json(key, result["report"])
        return dict(arrays, report=result["report"])

    # ------------------------------------------------------------------ train
    def calculate_loss(self, interaction):
        s = self.settings
        interests = self.ibim.interests(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        targets = interaction[self.POS_ITEM_ID]
        loss = F.cross_entropy(self.train_scores(interests, targets), targets)
        if not (s.align_weight or s.semantic_weight):
            return loss
        if self.semantic is None:
            raise RuntimeError("EIMF's semantic interests are not prepared: call "
                               "prepare_semantics(config, train_dataset) first (EIMFTrainer.fit does)")
        clusters = self.user_cluster[interaction[self.USER_ID]]
        known = clusters >= 0
        # several processes: the whole batch counts (every process takes this branch)
        if global_sum(known.sum()) < 2:
            return loss
        interests, clusters = interests[known], clusters[known]
        semantic, mask = self.semantic[clusters], self.semantic_mask[clusters].float()
        if s.align_weight:
            loss = loss + s.align_weight * self.alignment_loss(interests, semantic, mask, clusters)
        if s.semantic_weight:
            loss = loss + s.semantic_weight * self.semantic_prediction_loss(interests, semantic, mask)
        return loss

    def train_scores(self, interests, targets):
        """Every item's logit for the cross-entropy: against the target-attended user
        vector (``target``), or through each item's own attention (``candidate``)."""
        table = self.ibim.item_embedding.weight
        if self.settings.interest_scoring == "candidate":
            return IBIM.candidate_scores(interests, table)
        return IBIM.target_attention(interests, self.ibim.item_embedding(targets)) @ table.T

    def alignment_loss(self, interests, semantic, mask, clusters):
        """InfoNCE between users' interest sets and semantic interest sets: a pair
        scores the mean, over the semantic interests (projected into the interest
        space), of their best cosine with one of the K behavioural interests; a
        user's own set is the positive, users of other clusters the negatives.
        Under several processes the negatives are the whole batch's users (gathered),
        and the loss is scaled so the averaged gradients are the one-process mean's."""
        p = F.normalize(self.sem_proj(semantic), dim=-1)             # [B, M, H]
        v, all_clusters, start = gather_rows(F.normalize(interests, dim=-1), clusters)  # [N, K, H]
        best = torch.einsum("bmh,ckh->bcmk", p, v).max(dim=-1).values   # [B, N, M]
        score = (best * mask[:, None, :]).sum(-1) / mask.sum(-1, keepdim=True)
        logits = score / self.settings.align_temperature
        own = torch.arange(len(logits), device=logits.device) + start
        same = clusters[:, None] == all_clusters[None, :]
        same[torch.arange(len(logits), device=logits.device), own] = False
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, own, reduction="sum") * world_size() / len(v)

    def semantic_prediction_loss(self, interests, semantic, mask):
        """Each semantic interest predicted from the behavioural interests: 1 - the
        best cosine between it and one interest mapped into the text space (the mean
        over the whole batch's interests, under several processes too)."""
        predicted = F.normalize(self.sem_head(interests), dim=-1)    # [B, K, D]
        target = F.normalize(semantic, dim=-1)                       # [B, M, D]
        best = torch.einsum("bmd,bkd->bmk", target, predicted).max(dim=-1).values   # [B, M]
        return ((1 - best) * mask).sum() * world_size() / global_sum(mask.sum())

    # ---------------------------------------------------------------- serving
    def full_sort_predict(self, interaction):
        interests = self.ibim.interests(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.ibim.full_scores(interests, self.settings.interest_scoring)

    def predict(self, interaction):
        interests = self.ibim.interests(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        items = self.ibim.item_embedding(interaction[self.ITEM_ID])
        return IBIM.over_interests(interests @ items[..., None], self.settings.interest_scoring)[:, 0]
