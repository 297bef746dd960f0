"""Head / tail user split of a test evaluation, with RecBole's own metric code.

Users are ranked by their number of training interactions; the ``head_share``
most active are head users, the rest tail users.  Per-user values come from
RecBole's ``Hit`` and ``NDCG`` classes applied to the evaluation's ``rec.topk``
matrix (captured from the trainer's evaluator), then averaged per group.
"""
import numpy as np
from recbole.evaluator.metrics import NDCG, Hit
from recbole.utils import ModelType


def test_users(test_data) -> np.ndarray:
    """Internal user id of each evaluated row, in RecBole's evaluation order."""
    if test_data.config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        return test_data.dataset.inter_feat[test_data.dataset.uid_field].numpy()
    return test_data.uid_list.numpy()


def training_counts(train_dataset, sequential: bool) -> np.ndarray:
    users = np.asarray(train_dataset.inter_feat[train_dataset.uid_field])
    counts = np.bincount(users, minlength=train_dataset.user_num)
    return counts + (counts > 0) if sequential else counts  # a sequence's first item is no target


def group_metrics(struct, test_data, train_dataset, config, head_share: float = 0.2) -> dict:
    topk = struct.get("rec.topk")
    pos_index, pos_len = topk[:, :-1].bool().numpy(), topk[:, -1].numpy()
    hit = Hit(config).metric_info(pos_index)
    ndcg = NDCG(config).metric_info(pos_index, pos_len)
    users = test_users(test_data)
    counts = training_counts(train_dataset, config["MODEL_TYPE"] == ModelType.SEQUENTIAL)[users]
    cut = np.quantile(counts, 1 - head_share)
    out = {}
    for name, rows in (("head", counts >= cut), ("tail", counts < cut)):
        out[name] = {"users": int(rows.sum()), "max_train_count": int(counts[rows].max())}
        for k in config["topk"]:
            out[name][f"hit@{k}"] = float(hit[rows, k - 1].mean())
            out[name][f"ndcg@{k}"] = float(ndcg[rows, k - 1].mean())
    return out
