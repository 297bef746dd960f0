"""ELCoRec's GAT expert, trained before the LLM and then frozen: which graph
(``gat_mode``), its pre-training with early stopping on held-out rows, its
own validation AUC, and the cache entry of the trained weights.

Pre-training holds out the latest ``gat_valid_share`` of the training rows
(by time, like the test rows that follow them): they are neither training
samples nor edges of the training graph, and their AUC decides early
stopping (``gat_patience`` epochs without improvement, at most
``gat_epochs``).  The best epoch's weights are kept.
"""
import dataclasses
import json
from logging import getLogger

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from tqdm import tqdm

from recbole_llm.fingerprint import dataset_fingerprint
from recbole_llm.model.elcorec.row_graph import RowGATExpert, RowGraphs
from recbole_llm.model.elcorec.settings import GATSettings
from recbole_llm.model.elcorec.user_graph import UserGATExpert, build_hetero_graph
from recbole_llm.utils import forked_rng


@dataclasses.dataclass
class Rows:
    """Labelled rows: user, item, time, label (numpy arrays)."""
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.users)

    def take(self, index) -> "Rows":
        return Rows(*(a[index] for a in (self.users, self.items, self.times, self.labels)))

    @classmethod
    def of(cls, dataset) -> "Rows":
        inter = dataset.inter_feat
        get = lambda f: np.asarray(inter[f].numpy() if hasattr(inter[f], "numpy") else inter[f])
        return cls(get(dataset.uid_field).astype(np.int64), get(dataset.iid_field).astype(np.int64),
                   get(dataset.time_field).astype(np.float32),
                   get(dataset.label_field).astype(np.float32))


def auc(labels, scores) -> float:
    """Area under the ROC curve (ties count half); NaN with one class only."""
    labels = np.asarray(labels) > 0.5
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def held_out_split(rows: Rows, share: float):
    """``(training rows, held-out rows)``: the latest ``share`` of rows by time."""
    order = np.argsort(rows.times, kind="stable")
    n_held = min(max(1, int(round(len(rows) * share))), len(rows) - 1)
    return np.sort(order[:-n_held]), np.sort(order[-n_held:])


@torch.no_grad()
def score(expert, rows: Rows, batch_size: int) -> np.ndarray:
    expert.eval()
    return np.concatenate([
        expert.logits(rows.users[s:s + batch_size], rows.items[s:s + batch_size],
                      rows.times[s:s + batch_size]).cpu().numpy()
        for s in range(0, len(rows), batch_size)]) if len(rows) else np.zeros(0)


def pretrain(expert, train: Rows, held: Rows, s: GATSettings, seed: int,
             show_progress: bool = False) -> dict:
    """BCE on ``train``; early stopping on the AUC of ``held``; the best weights
    are kept.  Returns the report: best validation AUC and LogLoss, best
    epoch, epochs run, and per epoch the mean training loss and validation AUC."""
    rng = np.random.default_rng(seed)
    optim = torch.optim.AdamW([p for p in expert.parameters() if p.requires_grad],
                              lr=s.gat_learning_rate, weight_decay=s.gat_weight_decay)
    labels = torch.as_tensor(train.labels)
    report = {"valid_auc": float("nan"), "valid_logloss": float("nan"), "best_epoch": -1,
              "epochs": 0, "train_loss": [], "valid_auc_curve": []}
    best, best_state, bad = -np.inf, None, 0
    for epoch in tqdm(range(s.gat_epochs), desc="GAT expert", disable=not show_progress):
        expert.train()
        losses = []
        order = rng.permutation(len(train))
        for start in range(0, len(order), s.gat_batch_size):
            rows = order[start:start + s.gat_batch_size]
            logits = expert.logits(train.users[rows], train.items[rows], train.times[rows])
            loss = F.binary_cross_entropy_with_logits(logits, labels[rows].to(logits.device))
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item() * len(rows))
        logits = score(expert, held, max(s.gat_batch_size, 4096))
        valid_auc = auc(held.labels, logits)
        report["train_loss"].append(float(sum(losses) / max(len(order), 1)))
        report["valid_auc_curve"].append(valid_auc)
        report["epochs"] = epoch + 1
        if valid_auc > best or best_state is None:
            best, bad = valid_auc, 0
            best_state = {k: v.detach().clone() for k, v in expert.state_dict().items()}
            report.update(valid_auc=valid_auc, best_epoch=epoch, valid_logloss=float(
                F.binary_cross_entropy_with_logits(torch.as_tensor(logits),
                                                   torch.as_tensor(held.labels)).item()))
        else:
            bad += 1
            if bad >= s.gat_patience:
                break
    if best_state is not None:
        expert.load_state_dict(best_state)
    return report


def build_expert(dataset, timeline, s: GATSettings, device, held_out=None):
    """An untrained expert of ``s.gat_mode`` on the training split ``dataset``;
    for ``user``, its graph leaves out the rows at indices ``held_out``."""
    if s.gat_mode == "user":
        rows = None
        if held_out is not None:
            rows = np.setdiff1d(np.arange(len(dataset.inter_feat)), held_out)
        graph, _ = build_hetero_graph(dataset, s.gat_time_buckets, rows)
        return UserGATExpert(graph.to(device), s.gat_dim, s.gat_layers, s.gat_heads).to(device)
    return RowGATExpert(RowGraphs(dataset, timeline, s.gat_history_len),
                        s.gat_dim, s.gat_layers, s.gat_heads).to(device)


def expert_key(cache, s: GATSettings, seed: int, dataset) -> str:
    """The expert reads only its settings (every field of :class:`GATSettings`),
    the seed and the dataset (training rows with their labels, features, raw
    ratings, and the whole timeline its histories come from)."""
    return cache.key("elcorec-gat", data=dataset_fingerprint(dataset), seed=seed,
                     settings=dataclasses.asdict(s))


def pretrained_expert(dataset, timeline, s: GATSettings, seed: int, cache,
                      show_progress: bool, device):
    """``(frozen expert, report)``: trained once per key (on ``device``), then
    read from the cache."""
    def compute():
        torch.manual_seed(seed)
        rows = Rows.of(dataset)
        train, held = held_out_split(rows, s.gat_valid_share)
        expert = build_expert(dataset, timeline, s, device, held_out=held)
        report = pretrain(expert, rows.take(train), rows.take(held), s, seed, show_progress)
        if s.gat_mode == "user":  # tokens from the graph of every training row
            expert.freeze(build_hetero_graph(dataset, s.gat_time_buckets)[0].to(device))
        arrays = {f"state.{k}": v.cpu().numpy() for k, v in expert.state_dict().items()}
        return dict(arrays, report=np.asarray(json.dumps(report)))

    # the random state after this is the same whether the expert was trained or read
    # (the accelerator's generator too: manual_seed reseeds it)
    device = torch.device(device)
    with forked_rng(device):
        arrays = cache.get_or_compute_arrays(expert_key(cache, s, seed, dataset), compute)
        expert = build_expert(dataset, timeline, s, device)
    expert.load_state_dict({k[len("state."):]: torch.as_tensor(v)
                            for k, v in arrays.items() if k.startswith("state.")})
    expert.eval()
    for p in expert.parameters():
        p.requires_grad_(False)
    report = json.loads(str(arrays["report"]))
    getLogger().info(f"GAT expert ({s.gat_mode}): validation AUC {report['valid_auc']:.4f}, "
                     f"LogLoss {report['valid_logloss']:.4f} on {s.gat_valid_share:.0%} held-out "
                     f"training rows; best epoch {report['best_epoch'] + 1} of {report['epochs']}")
    return expert, report
