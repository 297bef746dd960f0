"""Rebuild the tiny test slices from ../shared/data (run from the repo root).

ml-tiny:     the first 60 users of MovieLens-100K (all their ratings) and the
             items they rated, with the .item and .user rows of those.
beauty-tiny: the first 150 users of Amazon Beauty 5-core (file order) with
             all their interactions, and those items' .item rows.
No other change: these are exact row subsets of the shared atomic files.
"""
import os

import pandas as pd

SRC = os.path.join("..", "shared", "data")
DST = os.path.join("tests", "data")


def _read(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _write(frame, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)


def slice_dataset(src_name, dst_name, n_users, suffixes):
    inter = _read(os.path.join(SRC, src_name, f"{src_name}.inter"))
    users = list(dict.fromkeys(inter.iloc[:, 0]))[:n_users]
    inter = inter[inter.iloc[:, 0].isin(users)]
    _write(inter, os.path.join(DST, dst_name, f"{dst_name}.inter"))
    items = set(inter.iloc[:, 1])
    for suffix in suffixes:
        feat = _read(os.path.join(SRC, src_name, f"{src_name}.{suffix}"))
        keep = items if suffix == "item" else set(users)
        _write(feat[feat.iloc[:, 0].isin(keep)], os.path.join(DST, dst_name, f"{dst_name}.{suffix}"))


if __name__ == "__main__":
    slice_dataset("movielens-100k", "ml-tiny", 60, ["item", "user"])
    slice_dataset("amazon_beauty_5core", "beauty-tiny", 150, ["item"])
