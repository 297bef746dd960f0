"""ELCoRec (arXiv 2406.18825) as a RecBole context-aware (CTR) model.

Paper: Chen et al., "ELCoRec: Enhance Language Understanding with
Co-Propagation of Numerical and Categorical Features for Recommendation",
https://arxiv.org/abs/2406.18825; authors' code: https://github.com/Otsuts/ELCoRec.

What makes it ELCoRec, and where it lives here:

* GAT expert network: a heterogeneous graph of users, items, categorical
  feature values (every token field of the user and item files: age,
  gender, occupation, genre, year, ...) and numerical features (the rating
  levels and time buckets of the training interactions, as nodes joined to
  the users and items they occur with, with the interaction count as edge
  attribute), propagated by torch_geometric's ``HeteroConv`` of ``GATConv``
  layers (2 layers, 8 heads, size 32 as in the authors' code); pre-trained
  on the training split (BCE on the scaled cosine of user and item
  embeddings, early stopping on a held-out tenth) and frozen.
* Soft prompt: the user's GAT embedding, through a trainable
  ``Linear(32 -> hidden)``, replaces the ``[PREF]`` placeholder's embedding.
* RAP: the prompt shows the ``rap_k_similar`` items of the user's earlier
  history most similar to the target by item-text embedding (faiss, search
  restricted to the history) and the ``rap_k_recent`` most recent ones, with
  their ratings, then the target and a yes/no question.
* Scoring: P(yes) = softmax over the "yes"/"no" token logits, so RecBole's
  evaluator computes AUC and LogLoss from ``predict``.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import FeatureType, InputType, ModelType

from recbole_llm.errors import InputError
from recbole_llm.llm.backbone import answer_token_ids
from recbole_llm.llm.encoder import item_text_embeddings
from recbole_llm.llm.prompts import Template, inference_batch, position_ids
from recbole_llm.model.abstract import LLMRecommender
from recbole_llm.model.elcorec.graph import GATExpert, build_hetero_graph, gat_key, pretrain_gat
from recbole_llm.model.elcorec.settings import ELCoRecSettings

PREF_TOKEN = "[PREF]"


class ELCoRec(LLMRecommender, AbstractRecommender):
    """RecBole context-aware model; see the module docstring."""

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    settings_class = ELCoRecSettings

    @classmethod
    def check_settings(cls, final: dict) -> None:
        """A row's history is what the user did before the row's time: without a
        time field a row's own rating could enter its prompt."""
        field = final.get("TIME_FIELD")
        inter = (final.get("load_col") or {}).get("inter")
        if not field or (isinstance(inter, list) and field not in inter):
            raise InputError(f"ELCoRec needs the interactions' time: TIME_FIELD is {field!r}"
                             + (f" and load_col.inter {inter} leaves it out" if field else "")
                             + "; set TIME_FIELD and load it")

    def __init__(self, config, dataset):
        super().__init__()
        s = self.read_settings(config)
        self.USER_ID, self.ITEM_ID = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.LABEL, self.TIME = config["LABEL_FIELD"], config["TIME_FIELD"]
        self.n_users, self.n_items = dataset.user_num, dataset.item_num
        self.max_prompt = s.llm_max_prompt_tokens
        self.k_similar, self.k_recent = s.rap_k_similar, s.rap_k_recent
        self.use_rap, self.use_soft_prompt = s.rap, s.soft_prompt

        self.hist_items, self.hist_times, self.hist_ratings = dataset.timed_histories()
        self._build_retrieval(dataset)
        user_pref = self._gat_user_embeddings(dataset)
        self.register_buffer("user_pref", user_pref)  # frozen GAT output

        texts = dataset.item_texts()
        corpus = [t for t in texts if t] + [s.elcorec_template, " yes no"] + \
            [f"{r:g} stars" for r in range(11)]
        llm, _, (self.pref_id,) = self.load_llm(corpus, special_tokens=[PREF_TOKEN])
        # "yes"/"no" as single tokens (new ones for the small default's BPE)
        (self.yes_id, self.no_id), new_ids = answer_token_ids(
            llm, self.tokenizer, ["yes", "no"], special=True,
            spellings=lambda w: (" " + w, w, " " + w.capitalize(), w.capitalize()))
        self.tune_llm(llm, [self.pref_id] + new_ids)
        self.template = Template(self.tokenizer, s.elcorec_template,
                                 "profile", "similar", "recent", "pref", "target")
        self._tokenise_items(dataset)
        self.profiles = self._user_profiles(dataset)
        self.soft_proj = nn.Linear(user_pref.shape[1], llm.config.hidden_size)

    # --- data side ------------------------------------------------------
    def _build_retrieval(self, dataset):
        import faiss

        emb = item_text_embeddings(dataset, self.settings, self.cache).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norms, 1e-12)
        self.text_index = faiss.IndexFlatIP(emb.shape[1])
        self.text_index.add(emb)
        self.text_emb = emb

    def _gat_user_embeddings(self, dataset) -> torch.Tensor:
        s = self.settings

        def compute():
            graph, _ = build_hetero_graph(dataset, s.gat_time_buckets)
            torch.manual_seed(s.seed)
            expert = GATExpert(graph, s.gat_dim, s.gat_layers, s.gat_heads)
            inter = dataset.inter_feat
            pretrain_gat(expert, graph, np.asarray(inter[self.USER_ID]),
                         np.asarray(inter[self.ITEM_ID]), np.asarray(inter[self.LABEL]),
                         s.gat_epochs, s.gat_learning_rate, s.gat_weight_decay, s.gat_batch_size,
                         s.gat_patience, s.seed, s.show_progress)
            with torch.no_grad():
                h = expert(graph)
            return {"user": h["user"].numpy(), "item": h["item"].numpy()}

        arrays = self.cache.get_or_compute_arrays(gat_key(self.cache, s, dataset), compute)
        self.gat_item = torch.as_tensor(arrays["item"])
        return torch.as_tensor(arrays["user"])

    def _tokenise_items(self, dataset):
        names = self.item_names(dataset, self.settings.prompt_item_field)
        limit = self.settings.item_text_max_tokens
        self.item_ids = [ids[:limit] for ids in
                         self.tokenizer(names, add_special_tokens=False)["input_ids"]]
        sep = self.tokenizer("; ", add_special_tokens=False)["input_ids"]
        self.sep_ids = sep
        self._rating_ids = {}

    def _rating_tokens(self, rating: float) -> list:
        key = "?" if np.isnan(rating) else f"{rating:g}"
        if key not in self._rating_ids:
            self._rating_ids[key] = self.tokenizer(f" ({key} stars)",
                                                   add_special_tokens=False)["input_ids"]
        return self._rating_ids[key]

    def _user_profiles(self, dataset) -> list:
        """'age 24, gender M, occupation technician' from the user file's token fields."""
        feat = dataset.user_feat
        texts = [""] * self.n_users
        if feat is not None:
            fields = [f for f in feat.interaction if f != dataset.uid_field
                      and dataset.field2type.get(f) == FeatureType.TOKEN]
            for u in range(1, self.n_users):
                parts = []
                for f in fields:
                    token = dataset.id2token(f, int(feat[f][u]))
                    if token != "[PAD]":
                        parts.append(f"{f} {token}")
                texts[u] = ", ".join(parts)
        return [ids for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # --- RAP ------------------------------------------------------------
    def rap_items(self, user: int, target: int, time: float):
        """(similar items, recent items) of the user's history before ``time``."""
        import faiss

        cut = int(np.searchsorted(self.hist_times[user], time, side="left"))
        history = self.hist_items[user][:cut]
        if not self.use_rap:
            return [], history[-(self.k_recent + self.k_similar):].tolist()
        recent = history[-self.k_recent:].tolist() if self.k_recent else []
        candidates = np.setdiff1d(history, recent)
        similar = []
        if len(candidates) and self.k_similar:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(candidates.astype(np.int64)))
            k = min(self.k_similar, len(candidates))
            _, found = self.text_index.search(self.text_emb[target:target + 1], k, params=params)
            similar = [int(i) for i in found[0] if i >= 0]
        return similar, recent

    def _render(self, user, items) -> list:
        ratings = dict(zip(self.hist_items[user].tolist(), self.hist_ratings[user].tolist()))
        out = []
        for n, item in enumerate(items):
            if n:
                out += self.sep_ids
            out += self.item_ids[item] + self._rating_tokens(ratings.get(item, float("nan")))
        return out

    def prompts(self, interaction) -> list:
        """The token ids of each row's prompt (RAP, profile, soft-token slot, target)."""
        users = interaction[self.USER_ID].tolist()
        items = interaction[self.ITEM_ID].tolist()
        if self.TIME not in interaction.interaction:
            raise ValueError(f"ELCoRec rows carry no '{self.TIME}' (TIME_FIELD): the history "
                             "before a row's time cannot be cut")
        times = interaction[self.TIME].tolist()
        prompts = []
        pref = [self.pref_id] if self.use_soft_prompt else []
        for u, i, t in zip(users, items, times):
            similar, recent = self.rap_items(u, i, t)
            prompts.append(self.template.fill(self.profiles[u], self._render(u, similar),
                                              self._render(u, recent), pref, self.item_ids[i]))
        return prompts

    # --- scoring --------------------------------------------------------
    def yes_no_logits(self, interaction) -> torch.Tensor:
        prompts = self.prompts(interaction)
        input_ids, mask = inference_batch(prompts, self.pad_id, self.max_prompt)
        input_ids, mask = input_ids.to(self.user_pref.device), mask.to(self.user_pref.device)
        embeds = self.llm.get_input_embeddings()(input_ids)
        if self.use_soft_prompt:
            slot = input_ids == self.pref_id
            rows = slot.nonzero()[:, 0]
            users = interaction[self.USER_ID].to(embeds.device)[rows]
            embeds = embeds.clone()
            embeds[slot] = self.soft_proj(self.user_pref[users]).to(embeds.dtype)
        positions = position_ids(mask)
        # only the answer position is scored: skip the vocabulary projection elsewhere
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                          logits_to_keep=1).logits
        return logits[:, -1, [self.yes_id, self.no_id]].float()

    def calculate_loss(self, interaction):
        logits = self.yes_no_logits(interaction)
        target = (interaction[self.LABEL] < 0.5).long().to(logits.device)  # 0 = yes, 1 = no
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def predict(self, interaction):
        return torch.softmax(self.yes_no_logits(interaction), dim=-1)[:, 0]
