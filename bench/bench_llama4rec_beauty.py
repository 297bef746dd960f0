"""Llama4Rec over RecBole's LightGCN and BPR on Amazon Beauty 5-core.

    python bench/bench_llama4rec_beauty.py

Same protocol and row kinds as bench_llama4rec.py (leave-one-out, full
ranking, seed 2020, head = 20% most active users), on 22,363 users and
12,101 items; results in bench/results/llama4rec_beauty/ and
bench/results/llama4rec_beauty.md.
"""
import os

from bench_llama4rec import COMMON, VARIANTS, make_row, ranking_table
from runner import main

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "llama4rec_beauty")
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
BEAUTY = dict(COMMON, dataset="amazon_beauty_5core", data_path=DATA)
# LightGCN takes ~35 s per epoch on Beauty here: the same 20-epoch budget for the
# base alone and for its retraining on D' inside Llama4Rec
BUDGET = {"epochs": 20, "stopping_step": 5}
BASES = {"lightgcn": dict(BUDGET, model="LightGCN"), "bpr": dict(BUDGET, model="BPR")}
ROWS = dict(BASES)
for base in BASES:
    for variant in ("l4r", "no_data_aug", "fixed_alpha"):
        ROWS[f"{base}_{variant}"] = (base, VARIANTS[variant])
row = make_row(ROWS, lambda name: BEAUTY, OUT)

HEADER = ("Amazon Beauty 5-core, leave-one-out by time, full ranking over all items, seed 2020, "
          "1 CPU thread, RecBole's evaluator; Llama4Rec with its yaml defaults. "
          "Head = the 20% most active users in training.")

if __name__ == "__main__":
    main(ROWS, row, OUT, ranking_table, HEADER, os.path.join(HERE, "results", "llama4rec_beauty.md"))
