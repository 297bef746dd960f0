"""Access to the conventional model Llama4Rec wraps, whatever its kind.

RecBole's general, sequential and (rating) context-aware models take
different batches and keep user vectors in different places; these helpers
give Llama4Rec one way to ask any of them for score rows, user vectors,
ratings, and to save or restore its weights.
"""
import numpy as np
import torch
from recbole.data.interaction import Interaction


def state_arrays(module) -> dict:
    """A module's weights as NumPy arrays (to cache them)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_state_arrays(module, arrays: dict) -> None:
    module.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    forget_cached_outputs(module)


def forget_cached_outputs(module) -> None:
    """Drop what a RecBole model caches between evaluations (LightGCN's
    ``restore_user_e``, ...): stale after its weights are replaced."""
    for name in getattr(module, "other_parameter_name", None) or []:
        setattr(module, name, None)


class WrappedModel:
    """The base model of ``owner`` (``owner.base``, which the trainer may replace)."""

    def __init__(self, owner, kind: str, user_field: str, seq_field: str = None,
                 len_field: str = None, max_len: int = None):
        self.owner, self.kind = owner, kind  # kind: general | sequential | rating
        self.user_field, self.seq_field, self.len_field, self.max_len = \
            user_field, seq_field, len_field, max_len

    @property
    def module(self):
        return self.owner.base

    def recent(self, history) -> np.ndarray:
        """The part of a history the base model reads (sequential: the last items)."""
        return history[-self.max_len:] if self.kind == "sequential" else history

    def sequence_batch(self, seqs) -> Interaction:
        lengths = [len(s) for s in seqs]
        items = torch.zeros((len(seqs), self.max_len), dtype=torch.long)
        for row, seq in enumerate(seqs):
            items[row, :len(seq)] = torch.as_tensor(seq[-self.max_len:])
        return Interaction({self.seq_field: items,
                            self.len_field: torch.as_tensor(lengths).clamp(1, self.max_len)})

    @torch.no_grad()
    def scores(self, users, seqs) -> torch.Tensor:
        """Full-sort score rows; ``seqs``: the histories a sequential model reads."""
        self.module.eval()
        if self.kind == "sequential":
            batch = self.sequence_batch([s if len(s) else [0] for s in seqs])
        else:
            batch = Interaction({self.user_field: torch.as_tensor(np.asarray(users))})
        batch = batch.to(self.owner.device)
        return self.module.full_sort_predict(batch).view(len(users), -1).float().cpu()

    @torch.no_grad()
    def ratings(self, interaction) -> torch.Tensor:
        self.module.eval()
        return self.module.predict(interaction.to(self.owner.device)).float().cpu()

    @torch.no_grad()
    def user_vectors(self, histories, n_users: int) -> np.ndarray:
        """The base model's user vectors: its user table, a graph model's
        propagated users, or a sequential model's encoding of the history."""
        base = self.module
        base.eval()
        if self.kind == "sequential":
            out = []
            for start in range(0, n_users, 512):
                users = range(start, min(start + 512, n_users))
                batch = self.sequence_batch([self.recent(histories[u]) if len(histories[u]) else [0]
                                             for u in users]).to(self.owner.device)
                out.append(base.forward(batch[self.seq_field], batch[self.len_field]).cpu())
            return torch.cat(out).numpy()
        if self.kind == "rating":  # the user-id rows of a context model's token embedding table
            names = base.token_field_names
            if self.user_field not in names:
                raise ValueError("prompt augmentation needs the user id among the base model's "
                                 "features; set prompt_augmentation: False")
            at = names.index(self.user_field)
            offset = int(base.token_embedding_table.offsets[at])
            table = base.token_embedding_table.embedding.weight
            return table[offset:offset + n_users].detach().cpu().numpy()
        if hasattr(base, "norm_adj_matrix"):  # LightGCN, NGCF, ...: propagated embeddings
            return base.forward()[0].detach().cpu().numpy()
        if hasattr(base, "user_embedding"):
            return base.user_embedding.weight.detach().cpu().numpy()
        raise ValueError(f"base_model {type(base).__name__} exposes no user embeddings for "
                         "prompt augmentation; set prompt_augmentation: False")


def most_similar_users(vectors: np.ndarray, has_history: np.ndarray) -> np.ndarray:
    """Per user, the other user (with a history) whose vector is closest (cosine)."""
    import faiss

    # a copy: the vectors may share memory with the base model's weights
    reps = np.array(vectors, dtype=np.float32, copy=True)
    reps /= np.maximum(np.linalg.norm(reps, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(reps.shape[1])
    ids = np.flatnonzero(has_history)
    index.add(reps[ids])
    _, found = index.search(reps, min(2, len(ids)))
    found = ids[found]
    own = found[:, 0] == np.arange(len(reps))
    return np.where(own, found[:, -1], found[:, 0])
