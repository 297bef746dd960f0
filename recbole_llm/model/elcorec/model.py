"""ELCoRec (arXiv 2406.18825) as a RecBole context-aware (CTR) model.

Paper: Chen et al., "ELCoRec: Enhance Language Understanding with
Co-Propagation of Numerical and Categorical Features for Recommendation",
https://arxiv.org/abs/2406.18825; authors' code: https://github.com/Otsuts/ELCoRec.

What makes it ELCoRec, and where it lives here:

* Histories are features: a row's history is every interaction of its user
  strictly before the row's time, from the whole table (every split), never
  the row's own item (``recbole_llm.data.history.Timeline``).  Rows with
  fewer than ``min_history`` (paper: 5) earlier interactions are dropped
  before the split, for every model alike (``create_dataset``).
* GAT expert network (``expert.py``), pre-trained on the training rows and
  frozen.  ``gat_mode: sample`` (authors' code, ``row_graph.py``): one graph
  per row of its user, its target item, the ``gat_history_len`` most recent
  history items (each with its rating and a sinusoidal encoding of the time
  since it) and their categorical feature values (genre, year, ...), as
  nodes; a heterogeneous GAT (torch_geometric ``HeteroConv`` of ``GATConv``)
  propagates it and the target node's output is the row's soft token.
  ``gat_mode: user`` (ablation, ``user_graph.py``): one graph of all training
  interactions, one static vector per user.  Early stopping on the AUC of
  held-out training rows, which the training samples and graph leave out;
  that AUC is logged and kept as ``gat_valid_auc`` / ``expert_report``.
* Soft prompt: the expert's output, through a trainable
  ``Linear(gat_dim -> hidden)``, replaces the ``[PREF]`` placeholder's embedding.
* RAP: the prompt shows the ``rap_k_similar`` history items most similar to
  the target by item-text embedding (faiss, search restricted to the
  history) and the ``rap_k_recent`` most recent ones, with their ratings,
  then the target and a yes/no question.
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
from recbole_llm.model.elcorec.expert import pretrained_expert
from recbole_llm.model.elcorec.settings import ELCoRecSettings, GATSettings

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
        share = final.get("gat_valid_share")
        if share is not None and not 0 < share < 1:
            raise InputError(f"gat_valid_share must be between 0 and 1 (exclusive), got "
                             f"{share!r}: the GAT expert's early stopping needs held-out rows "
                             "and training rows")

    def __init__(self, config, dataset):
        super().__init__()
        s = self.read_settings(config)
        self.USER_ID, self.ITEM_ID = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.LABEL, self.TIME = config["LABEL_FIELD"], config["TIME_FIELD"]
        self.n_users, self.n_items = dataset.user_num, dataset.item_num
        self.max_prompt = s.llm_max_prompt_tokens
        self.k_similar, self.k_recent = s.rap_k_similar, s.rap_k_recent
        self.use_rap, self.use_soft_prompt = s.rap, s.soft_prompt

        if not hasattr(dataset, "timeline"):
            raise InputError("ELCoRec reads histories from the whole interaction table: its "
                             "dataset must be a CTRTextDataset (the registry's choice)")
        self.timeline = dataset.timeline()
        self._check_min_history(dataset, s.min_history)
        self._build_retrieval(dataset)
        if s.soft_prompt:
            self.expert, self.expert_report = pretrained_expert(
                dataset, self.timeline, GATSettings.of(s), s.seed, self.cache, s.show_progress,
                self.device)
            self.gat_valid_auc = self.expert_report["valid_auc"]
        else:  # the ablation without the soft token trains no expert
            self.expert, self.expert_report, self.gat_valid_auc = None, None, float("nan")

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
        self._check_lengths()
        self.soft_proj = nn.Linear(s.gat_dim, llm.config.hidden_size)

    def train(self, mode: bool = True):
        """The frozen expert stays in evaluation mode."""
        super().train(mode)
        if self.expert is not None:
            self.expert.eval()
        return self

    # --- data side ------------------------------------------------------
    def _build_retrieval(self, dataset):
        import faiss

        emb = item_text_embeddings(dataset, self.settings, self.cache, self.device).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norms, 1e-12)
        self.text_index = faiss.IndexFlatIP(emb.shape[1])
        self.text_index.add(emb)
        self.text_emb = emb

    def _check_min_history(self, dataset, min_history: int) -> None:
        """The training rows obey ``min_history``: a dataset built another way
        than ``create_dataset`` would not have dropped the short ones."""
        if not min_history:
            return
        inter = dataset.inter_feat
        short = self.timeline.history_lengths(inter[self.USER_ID].numpy(),
                                               inter[self.ITEM_ID].numpy(),
                                               inter[self.TIME].numpy()) < min_history
        if short.any():
            raise InputError(f"{int(short.sum())} training rows have fewer than min_history="
                             f"{min_history} earlier interactions: build the dataset with "
                             "recbole_llm.quick_start.create_dataset, which drops them")

    def _tokenise_items(self, dataset):
        names = self.item_names(dataset, self.settings.prompt_item_field)
        limit = self.settings.item_text_max_tokens
        self.item_ids = [ids[:limit] for ids in
                         self.tokenizer(names, add_special_tokens=False)["input_ids"]]
        sep = self.tokenizer("; ", add_special_tokens=False)["input_ids"]
        self.sep_ids = sep
        self._rating_ids = {}

    def _check_lengths(self) -> None:
        """The longest possible prompt fits ``llm_max_prompt_tokens`` (checked before
        training: prompts are never cut)."""
        s = self.settings
        rating = max(len(self._rating_tokens(r)) for r in [float("nan")] + list(np.arange(0, 10.5, 0.5)))
        shown = s.rap_k_similar + s.rap_k_recent
        item = s.item_text_max_tokens + rating
        # similar and recent lists: items and the separators inside each list (one
        # list without RAP)
        lists = shown * item + max(shown - (2 if s.rap else 1), 0) * len(self.sep_ids)
        need = len(self.template.fill([], [], [], [], [])) + max(map(len, self.profiles)) + lists \
            + 1 + s.item_text_max_tokens
        if need > self.max_prompt:
            raise InputError(f"ELCoRec prompts take up to {need} tokens (rap_k_similar + "
                             f"rap_k_recent = {shown} items of up to {item}, item_text_max_tokens="
                             f"{s.item_text_max_tokens}), over llm_max_prompt_tokens="
                             f"{self.max_prompt}: raise it")

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
        """(similar items, recent items) of the row's history (before ``time``)."""
        import faiss

        history = self.timeline.history(user, target, time)[0]
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

    def _render(self, ratings: dict, items) -> list:
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
            seen, _, rated = self.timeline.history(u, i, t)
            ratings = dict(zip(seen.tolist(), rated.tolist()))  # the latest rating of an item
            prompts.append(self.template.fill(self.profiles[u], self._render(ratings, similar),
                                              self._render(ratings, recent), pref,
                                              self.item_ids[i]))
        return prompts

    @torch.no_grad()
    def soft_token_inputs(self, interaction) -> torch.Tensor:
        """The frozen expert's output for each row (``[rows, gat_dim]``)."""
        return self.expert.tokens(interaction[self.USER_ID].cpu().numpy(),
                                  interaction[self.ITEM_ID].cpu().numpy(),
                                  interaction[self.TIME].cpu().numpy())

    # --- scoring --------------------------------------------------------
    def yes_no_logits(self, interaction) -> torch.Tensor:
        prompts = self.prompts(interaction)
        input_ids, mask = inference_batch(prompts, self.pad_id, self.max_prompt)
        device = self.soft_proj.weight.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        embeds = self.llm.get_input_embeddings()(input_ids)
        if self.use_soft_prompt:
            slot = input_ids == self.pref_id
            rows = slot.nonzero()[:, 0]
            tokens = self.soft_token_inputs(interaction).to(device)[rows]
            embeds = embeds.clone()
            embeds[slot] = self.soft_proj(tokens).to(embeds.dtype)
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
