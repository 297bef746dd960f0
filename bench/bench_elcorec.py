"""ELCoRec vs RecBole's CTR baselines on ml-100k (rating >= 4, time-ordered 8:1:1).

    python bench/bench_elcorec.py --rows deepfm widedeep        # baselines (minutes)
    python bench/bench_elcorec.py --rows elcorec no_gat no_rap  # ELCoRec and its ablations

Every row uses the same split, seed and features (RecBole's ml-100k CTR
fields: age, gender, occupation, release year, genre) and RecBole's AUC and
LogLoss.  Rows are stored in bench/results/elcorec_ml100k/<row>.json and the
table in bench/results/elcorec_ml100k.md.
"""
import os

from runner import main, run_row

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "elcorec_ml100k")

COMMON = {
    "dataset": "ml-100k", "seed": 2020, "show_progress": False, "threshold": {"rating": 4},
    "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": None,
                  "mode": "labeled"},
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                 "user": ["user_id", "age", "gender", "occupation"],
                 "item": ["item_id", "release_year", "class"]},
    "metrics": ["AUC", "LogLoss"], "valid_metric": "AUC", "train_neg_sample_args": None,
}
ELCOREC = {"model": "ELCoRec", "epochs": 1}
ROWS = {
    "deepfm": {"model": "DeepFM"},
    "widedeep": {"model": "WideDeep"},
    "elcorec": ELCOREC,
    "no_gat": dict(ELCOREC, soft_prompt=False),     # no GAT soft token
    "no_rap": dict(ELCOREC, rap=False),             # plain recent history instead of RAP
}


def table(results) -> str:
    lines = ["| row | AUC | LogLoss | fit (min) | eval s per 1k rows |", "|---|---|---|---|---|"]
    for name, r in results.items():
        t = r["test"]
        lines.append(f"| {name} | {t['auc']:.4f} | {t['logloss']:.4f} | {r['fit_s'] / 60:.1f} | "
                     f"{1000 * r['eval_s'] / r['test_rows']:.2f} |")
    return "\n".join(lines)


def row(name, force=False):
    return run_row(name, dict(COMMON, **ROWS[name]), OUT, force)


HEADER = ("ml-100k CTR: label = rating >= 4, global time order, 8:1:1, seed 2020, "
          f"{os.cpu_count()} CPU cores, 1 thread; RecBole's evaluator.")


if __name__ == "__main__":
    main(ROWS, row, OUT, table, HEADER, os.path.join(HERE, "results", "elcorec_ml100k.md"))
