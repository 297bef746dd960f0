"""Does a change alter what the models compute?  One reduced real run per model
(ml-100k users with 20-24 interactions, small backbones, one epoch, seed 2020),
each in a fresh process through the benchmark runner, stored under a tag;
``--compare A B`` prints both tags' test metrics side by side and says whether
every number is identical.

    python bench/same_metrics.py --tag before          # on the old code
    python bench/same_metrics.py --tag after           # on the new code
    python bench/same_metrics.py --compare before after

Each row takes 0.5-2 minutes on one CPU thread.  The full benchmark rows
(bench_*.py) take 5-45 minutes each and test the same code paths at scale.
"""
import argparse
import json
import os

from runner import run_row

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL_LLM = {"llm_hidden_size": 32, "llm_num_layers": 1, "llm_num_heads": 2, "llm_vocab_size": 400}
COMMON = {"dataset": "ml-100k", "seed": 2020, "show_progress": False, "epochs": 1,
          "metric_decimal_place": 8,
          "user_inter_num_interval": "[20,24]"}
ROWS = {
    "eagerllm": dict(SMALL_LLM, model="EAGERLLM", user_inter_num_interval="[20,21]",
                     MAX_ITEM_LIST_LENGTH=5, behavior_epochs=1,
                     behavior_model_args={"hidden_size": 16, "inner_size": 32, "n_layers": 1,
                                          "n_heads": 1},
                     index_k=8, index_kmeans_iters=10, index_collision="extra_code",
                     aat_epochs=1, train_batch_size=256, beam_batch_size=64),
    "llama4rec_bpr": dict(SMALL_LLM, model="Llama4Rec", base_model="BPR",
                          it_samples_per_task=32, aug_users=16),
    "llama4rec_sasrec": dict(SMALL_LLM, model="Llama4Rec", base_model="SASRec",
                             it_samples_per_task=32, aug_users=16, MAX_ITEM_LIST_LENGTH=10),
    "llama4rec_rating": dict(SMALL_LLM, model="Llama4Rec", base_model="DeepFMRating",
                             it_samples_per_task=32),
    "elcorec": dict(SMALL_LLM, model="ELCoRec", threshold={"rating": 4},
                    eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": None,
                               "mode": "labeled"},
                    load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
                              "user": ["user_id", "age", "gender", "occupation"],
                              "item": ["item_id", "release_year", "class"]},
                    metrics=["AUC", "LogLoss"], valid_metric="AUC", train_neg_sample_args=None,
                    gat_epochs=2, train_batch_size=128),
}


def out_dir(tag):
    return os.path.join(HERE, "results", "same_metrics", tag)


def compare(a, b):
    same = True
    print(f"| row | metric | {a} | {b} |\n|---|---|---|---|")
    for name in ROWS:
        paths = [os.path.join(out_dir(t), f"{name}.json") for t in (a, b)]
        if not all(os.path.isfile(p) for p in paths):
            print(f"| {name} | (missing) | | |")
            same = False
            continue
        results = [json.load(open(p))["test"] for p in paths]
        for metric in sorted(results[0]):
            x, y = results[0][metric], results[1].get(metric)
            same &= x == y
            print(f"| {name} | {metric} | {x:.8f} | {y if y is None else f'{y:.8f}'} |")
    print("identical" if same else "DIFFERENT")
    return same


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--compare", nargs=2)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(0 if compare(*args.compare) else 1)
    for name in args.rows:
        settings = dict(COMMON, **ROWS[name])
        settings["llm_cache_dir"] = os.path.join(out_dir(args.tag), "cache")
        run_row(name, settings, out_dir(args.tag), args.force)


if __name__ == "__main__":
    main()
