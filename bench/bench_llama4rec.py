"""Llama4Rec over RecBole's BPR, LightGCN and SASRec on ml-100k (the paper's dataset).

    python bench/bench_llama4rec.py                       # every row
    python bench/bench_llama4rec.py --rows lightgcn lightgcn_l4r

Leave-one-out by time, full ranking, seed 2020, RecBole's evaluator.  Per base
model: the base alone; Llama4Rec on it; ablations without data augmentation,
without prompt augmentation, with a fixed alpha.  Llama4Rec rows start from
the base row's checkpoint (``base_checkpoint``: the conventional model on D
is that row's model), so "no data aug" differs from the base row only by the
LLM's re-ranking.  Results per row in bench/results/llama4rec_ml100k/<row>.json
(resumable), the table in bench/results/llama4rec_ml100k.md, with head (the
20% most active users in training) and tail users apart.
"""
import os

from runner import FIRST_SEED, base_ratio, cell, main, run_row, seeded

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "llama4rec_ml100k")

COMMON = {"dataset": "ml-100k", "seed": 2020, "show_progress": False,
          "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                        "mode": "full"},
          "metrics": ["Hit", "NDCG", "Recall"], "topk": [3, 5, 10], "valid_metric": "NDCG@5",
          "_head_share": 0.2, "cpu_threads": 2}
BASES = {
    "bpr": {"model": "BPR"},
    "lightgcn": {"model": "LightGCN"},
    # SASRec: ~100 s per epoch here; the same 10-epoch budget for the base alone
    # and for its retraining on D' inside Llama4Rec
    "sasrec": {"model": "SASRec", "MAX_ITEM_LIST_LENGTH": 20, "epochs": 10, "stopping_step": 3,
               "train_neg_sample_args": None},
}
VARIANTS = {
    "l4r": {},
    "no_data_aug": {"data_augmentation": False},
    "no_prompt_aug": {"prompt_augmentation": False},
    "fixed_alpha": {"adaptive_alpha": False},
    # 4.5x the instruction-tuning steps (3 epochs over 3,000 per task): is the
    # small backbone's listwise choice informative with more tuning?
    "more_tuning": {"llm_epochs": 3, "it_samples_per_task": 3000},
    # the pretrained all-MiniLM-L6-v2 as the backbone (LoRA; 512 positions)
    "minilm": {"llm_path": "minilm", "llm_max_prompt_tokens": 512},
}
ROWS = dict(BASES)
for base, settings in BASES.items():
    for variant, extra in VARIANTS.items():
        ROWS[f"{base}_{variant}"] = (base, extra)

# Rating prediction (RMSE / MAE): DeepFM as a regressor (MSE on the raw rating,
# recbole_llm.model.rating), random 8:1:1 split, RecBole's ml-100k features.
RATING = {"model": "DeepFMRating",
          "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                       "user": ["user_id", "age", "gender", "occupation"],
                       "item": ["item_id", "release_year", "class"]}}
RATING_COMMON = {"dataset": "ml-100k", "seed": 2020, "show_progress": False}
ROWS["deepfm_rating"] = RATING
ROWS["deepfm_rating_l4r"] = ("deepfm_rating", {})
ROWS["deepfm_rating_no_prompt_aug"] = ("deepfm_rating", {"prompt_augmentation": False})
ROWS["deepfm_rating_fixed_alpha"] = ("deepfm_rating", {"adaptive_alpha": False})


def make_row(rows: dict, common_for, out: str):
    """Row runner: a dict spec is a plain RecBole run; ``(base, extra)`` is
    Llama4Rec on the base row's model, starting from that row's checkpoint."""
    def row(name, force=False, seed=FIRST_SEED):
        spec = rows[name]
        if isinstance(spec, dict):
            return run_row(seeded(name, seed), dict(common_for(name), **spec, seed=seed), out, force)
        base, extra = spec
        base_settings = dict(rows[base])
        base_model = base_settings.pop("model")
        settings = dict(common_for(name), **base_settings, model="Llama4Rec",
                        base_model=base_model, **extra, seed=seed)
        settings["base_checkpoint"] = row(base, seed=seed)["checkpoint"]  # same seed's base
        return run_row(seeded(name, seed), settings, out, force)
    return row


row = make_row(ROWS, lambda name: RATING_COMMON if name.startswith("deepfm_rating") else COMMON, OUT)


def table(results):
    rating = {k: v for k, v in results.items() if k.startswith("deepfm_rating")}
    ranking = {k: v for k, v in results.items() if k not in rating}
    text = ranking_table(ranking)
    if rating:
        text += ("\n\nRating prediction, random 8:1:1 split, RMSE / MAE in stars:\n\n"
                 "| row | RMSE | MAE | fit (min) | eval s |\n|---|---|---|---|---|\n")
        text += "\n".join(f"| {k} | {cell(r, 'rmse')} | {cell(r, 'mae')} | "
                           f"{r['fit_s'] / 60:.1f} | {r['eval_s']:.0f} |" for k, r in rating.items())
    return text


def ranking_table(results):
    cols = ["hit@3", "ndcg@3", "hit@5", "ndcg@5", "recall@10", "ndcg@10"]
    lines = ["| row | " + " | ".join(cols) + " | NDCG@5 / base (same seeds) | tail H@5 | tail N@5 | head H@5 | "
             "head N@5 | fit (min) | eval s |", "|---" * (len(cols) + 8) + "|"]
    for name, r in results.items():
        t, g = r["test"], r.get("groups") or {}
        base = results.get(name.split("_")[0])
        ratio = base_ratio(r, base, "ndcg@5") if base else float("nan")
        grp = [g.get(s, {}).get(m, float("nan")) for s in ("tail", "head") for m in ("hit@5", "ndcg@5")]
        lines.append(f"| {name} | " + " | ".join(cell(r, c) for c in cols) + f" | {ratio:.2f}x | "
                     + " | ".join(f"{v:.4f}" for v in grp)
                     + f" | {r['fit_s'] / 60:.1f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


HEADER = ("ml-100k, leave-one-out by time, full ranking over all items, seeds as listed (n), 2 CPU threads (one row at a time), "
          "RecBole's evaluator; Llama4Rec with its yaml defaults (small random-init backbone "
          "128 x 2, 2,000 instructions per task, 500 augmented users, top-10 re-ranked). "
          "Head = the 20% most active users in training.")

if __name__ == "__main__":
    main(ROWS, row, OUT, table, HEADER, os.path.join(HERE, "results", "llama4rec_ml100k.md"))
