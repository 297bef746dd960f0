"""ELCoRec (arXiv 2406.18825) as a RecBole context-aware (CTR) model.

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
from tqdm import tqdm

from recbole_llm.llm.backbone import add_tokens, answer_token_ids, apply_tuning, load_backbone
from recbole_llm.llm.cache import Cache
from recbole_llm.llm.encoder import item_text_embeddings
from recbole_llm.llm.prompts import Template, inference_batch, position_ids
from recbole_llm.fingerprint import dataset_fingerprint

PREF_TOKEN = "[PREF]"


# ----------------------------------------------------------------- the graph
def _count_edges(src: np.ndarray, dst: np.ndarray):
    pairs, counts = np.unique(np.stack([src, dst], 1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], np.log1p(counts).astype(np.float32)


def build_hetero_graph(dataset, time_buckets: int):
    """The heterogeneous graph of the dataset's (training) interactions.

    Returns ``(HeteroData, info)``; every relation is added in both
    directions so that every node type receives messages.
    """
    from torch_geometric.data import HeteroData

    inter = dataset.inter_feat
    users = np.asarray(inter[dataset.uid_field]).astype(np.int64)
    items = np.asarray(inter[dataset.iid_field]).astype(np.int64)
    data = HeteroData()
    data["user"].num_nodes = dataset.user_num
    data["item"].num_nodes = dataset.item_num
    edges = {}

    def relate(src_type, name, dst_type, src, dst, weight=None):
        if weight is None:
            src, dst, weight = _count_edges(src, dst)
        index = torch.as_tensor(np.stack([src, dst]), dtype=torch.long)
        attr = torch.as_tensor(weight, dtype=torch.float32)[:, None]
        edges[(src_type, name, dst_type)] = (index, attr)
        edges[(dst_type, f"rev_{name}", src_type)] = (index.flip(0), attr)

    relate("user", "interacts", "item", users, items, np.ones(len(users), np.float32))
    ratings = np.array([dataset.rating_of(u, i) for u, i in zip(users, items)])
    known = ~np.isnan(ratings)
    levels = np.unique(ratings[known])
    if len(levels):
        level = np.searchsorted(levels, ratings[known])
        data["rating"].num_nodes = len(levels)
        relate("user", "gives", "rating", users[known], level)
        relate("item", "receives", "rating", items[known], level)
    time_field = dataset.time_field
    edges_time = None
    if time_field and time_field in inter:
        times = np.asarray(inter[time_field]).astype(np.float64)
        edges_time = np.unique(np.quantile(times, np.linspace(0, 1, time_buckets + 1)[1:-1]))
        bucket = np.searchsorted(edges_time, times, side="right")
        data["time"].num_nodes = len(edges_time) + 1
        relate("user", "active_at", "time", users, bucket)
        relate("item", "consumed_at", "time", items, bucket)
    categorical = []
    for owner, feat, n in (("user", dataset.user_feat, dataset.user_num),
                           ("item", dataset.item_feat, dataset.item_num)):
        if feat is None:
            continue
        for field in feat.interaction if hasattr(feat, "interaction") else feat:
            ftype = dataset.field2type.get(field)
            if field in (dataset.uid_field, dataset.iid_field) or \
                    ftype not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                continue
            values = np.asarray(feat[field])
            rows = np.repeat(np.arange(n), values.shape[1]) if values.ndim == 2 else np.arange(n)
            values = values.reshape(-1)
            keep = values > 0  # 0 is padding / missing
            node = f"{owner}_{field}"
            data[node].num_nodes = dataset.num(field)
            relate(owner, f"has_{field}", node, rows[keep], values[keep])
            categorical.append(node)
    for key, (index, attr) in edges.items():
        data[key].edge_index = index
        data[key].edge_attr = attr
    return data, {"rating_levels": levels.tolist(), "time_edges": edges_time,
                  "categorical": categorical}


class GATExpert(nn.Module):
    """Heterogeneous GAT over :func:`build_hetero_graph`; scores users x items."""

    def __init__(self, graph, dim: int = 32, layers: int = 2, heads: int = 8):
        from torch_geometric.nn import GATConv, HeteroConv

        super().__init__()
        self.embeddings = nn.ModuleDict({t: nn.Embedding(graph[t].num_nodes, dim)
                                         for t in graph.node_types})
        for emb in self.embeddings.values():
            nn.init.normal_(emb.weight, std=0.1)
        self.convs = nn.ModuleList([
            HeteroConv({et: GATConv((-1, -1), dim, heads=heads, concat=False,
                                    add_self_loops=False, edge_dim=1)
                        for et in graph.edge_types}, aggr="sum")
            for _ in range(layers)])
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, graph) -> dict:
        h = {t: emb.weight for t, emb in self.embeddings.items()}
        for conv in self.convs:
            out = conv(h, graph.edge_index_dict, edge_attr_dict=graph.edge_attr_dict)
            h = {t: F.elu(out[t]) + h[t] if t in out else h[t] for t in h}
        return h

    def logits(self, h, users, items):
        return self.scale * F.cosine_similarity(h["user"][users], h["item"][items], dim=-1)


def pretrain_gat(expert, graph, users, items, labels, epochs, lr, weight_decay, batch_size,
                 patience, seed, show_progress=False):
    """BCE on the training pairs; early stopping on a held-out tenth of them."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    n_val = max(1, len(order) // 10)
    val, train = order[:n_val], order[n_val:]
    labels = torch.as_tensor(labels, dtype=torch.float32)
    users, items = torch.as_tensor(users), torch.as_tensor(items)
    optim = torch.optim.Adam(expert.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad = float("inf"), None, 0
    for _ in tqdm(range(epochs), desc="GAT expert", disable=not show_progress):
        expert.train()
        shuffled = rng.permutation(train)
        for start in range(0, len(train), batch_size):
            rows = torch.as_tensor(shuffled[start:start + batch_size])
            h = expert(graph)
            loss = F.binary_cross_entropy_with_logits(
                expert.logits(h, users[rows], items[rows]), labels[rows])
            optim.zero_grad()
            loss.backward()
            optim.step()
        expert.eval()
        with torch.no_grad():
            h = expert(graph)
            rows = torch.as_tensor(val)
            val_loss = F.binary_cross_entropy_with_logits(
                expert.logits(h, users[rows], items[rows]), labels[rows]).item()
        if val_loss < best:
            best, bad = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in expert.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    expert.load_state_dict(best_state)
    return best


# ----------------------------------------------------------------- the model
def gat_settings(config) -> dict:
    """The expert's settings: every ``gat_*`` key."""
    return {k: v for k, v in config.final_config_dict.items() if k.startswith("gat_")}


def gat_key(cache, config, dataset) -> str:
    """The expert reads only its settings, the seed and the dataset (labels after
    thresholding, ratings, times, item features)."""
    return cache.key("elcorec-gat", data=dataset_fingerprint(dataset), seed=config["seed"],
                     settings=gat_settings(config))


class ELCoRec(AbstractRecommender):
    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__()
        self.config = config
        self.USER_ID, self.ITEM_ID = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.LABEL, self.TIME = config["LABEL_FIELD"], config["TIME_FIELD"]
        self.n_users, self.n_items = dataset.user_num, dataset.item_num
        self.device = config["device"]
        self.max_prompt = config["llm_max_prompt_tokens"]
        self.k_similar, self.k_recent = config["rap_k_similar"], config["rap_k_recent"]
        self.use_rap, self.use_soft_prompt = config["rap"], config["soft_prompt"]
        cache = Cache.from_config(config)

        self._build_histories(dataset)
        self._build_retrieval(dataset, config, cache)
        user_pref = self._gat_user_embeddings(dataset, config, cache)
        self.register_buffer("user_pref", user_pref)  # frozen GAT output

        texts = dataset.item_texts()
        templates = [config["elcorec_template"], " yes no"]
        llm, self.tokenizer = load_backbone(config, corpus=[t for t in texts if t] + templates
                                            + [f"{r:g} stars" for r in range(11)], cache=cache)
        self.pref_id = add_tokens(llm, self.tokenizer, [PREF_TOKEN], special=True)[0]
        # "yes"/"no" as single tokens (new ones for the small default's BPE)
        (self.yes_id, self.no_id), new_ids = answer_token_ids(
            llm, self.tokenizer, ["yes", "no"], special=True,
            spellings=lambda w: (" " + w, w, " " + w.capitalize(), w.capitalize()))
        self.llm = apply_tuning(llm, config, new_token_ids=[self.pref_id] + new_ids)
        self.pad_id = self.tokenizer.pad_token_id
        self.template = Template(self.tokenizer, config["elcorec_template"],
                                 "profile", "similar", "recent", "pref", "target")
        self._tokenise_items(dataset, config)
        self.profiles = self._user_profiles(dataset)
        self.soft_proj = nn.Linear(user_pref.shape[1], llm.config.hidden_size)

    # --- data side ------------------------------------------------------
    def _build_histories(self, dataset):
        """Per user: training items, ratings and times, in time order."""
        inter = dataset.inter_feat
        users = np.asarray(inter[dataset.uid_field])
        items = np.asarray(inter[dataset.iid_field])
        times = np.asarray(inter[self.TIME]) if self.TIME in inter else np.arange(len(users))
        order = np.lexsort((times, users))
        users, items, times = users[order], items[order], times[order]
        bounds = np.searchsorted(users, np.arange(self.n_users + 1))
        self.hist_items = [items[bounds[u]:bounds[u + 1]] for u in range(self.n_users)]
        self.hist_times = [times[bounds[u]:bounds[u + 1]] for u in range(self.n_users)]
        self.hist_ratings = [np.array([dataset.rating_of(u, i) for i in self.hist_items[u]])
                             for u in range(self.n_users)]

    def _build_retrieval(self, dataset, config, cache):
        import faiss

        emb = item_text_embeddings(dataset, config, cache).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norms, 1e-12)
        self.text_index = faiss.IndexFlatIP(emb.shape[1])
        self.text_index.add(emb)
        self.text_emb = emb

    def _gat_user_embeddings(self, dataset, config, cache) -> torch.Tensor:
        settings = gat_settings(config)
        key = gat_key(cache, config, dataset)

        def compute():
            graph, _ = build_hetero_graph(dataset, settings["gat_time_buckets"])
            torch.manual_seed(config["seed"])
            expert = GATExpert(graph, settings["gat_dim"], settings["gat_layers"],
                               settings["gat_heads"])
            inter = dataset.inter_feat
            pretrain_gat(expert, graph, np.asarray(inter[self.USER_ID]),
                         np.asarray(inter[self.ITEM_ID]), np.asarray(inter[self.LABEL]),
                         settings["gat_epochs"], settings["gat_learning_rate"],
                         settings["gat_weight_decay"], settings["gat_batch_size"],
                         settings["gat_patience"], config["seed"], config["show_progress"])
            with torch.no_grad():
                h = expert(graph)
            return {"user": h["user"].numpy(), "item": h["item"].numpy()}

        arrays = cache.get_or_compute_arrays(key, compute)
        self.gat_item = torch.as_tensor(arrays["item"])
        return torch.as_tensor(arrays["user"])

    def _tokenise_items(self, dataset, config):
        field = config["prompt_item_field"]
        if field:
            names = [" ".join(v) for v in dataset.item_field_values(field)]
        else:
            names = dataset.item_texts()
        limit = config["item_text_max_tokens"]
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

    def _prompts(self, interaction) -> list:
        users = interaction[self.USER_ID].tolist()
        items = interaction[self.ITEM_ID].tolist()
        times = interaction[self.TIME].tolist() if self.TIME in interaction.interaction \
            else [float("inf")] * len(users)
        prompts = []
        pref = [self.pref_id] if self.use_soft_prompt else []
        for u, i, t in zip(users, items, times):
            similar, recent = self.rap_items(u, i, t)
            prompts.append(self.template.fill(self.profiles[u], self._render(u, similar),
                                              self._render(u, recent), pref, self.item_ids[i]))
        return prompts

    # --- scoring --------------------------------------------------------
    def yes_no_logits(self, interaction) -> torch.Tensor:
        prompts = self._prompts(interaction)
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
