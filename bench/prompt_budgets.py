"""How Llama4Rec's prompts fit their token budgets on real data.

    python bench/prompt_budgets.py            # ml-100k and Beauty, default budgets

For every user with a training history, the next-item prompt Llama4Rec shows
at evaluation (the user's training history, the base model's top-N as
candidates, prompt augmentation on) is built with the dataset's own tokenizer;
the table gives the prompt lengths, how many history sections were shortened
to their budget and how many items they kept.  Writes
bench/results/prompt_budgets.md.  The base model is untrained: only the
lengths of the items it names matter here.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
DATASETS = {"ml-100k": "movielens-100k", "Beauty": "amazon_beauty_5core"}


def measure(dataset: str) -> dict:
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build

    config = Config(model="Llama4Rec", dataset=dataset, argv=[],
                    config_dict={"data_path": DATA, "base_model": "LightGCN", "state": "ERROR",
                                 "show_progress": False})
    _, (train, _, _), model, _ = build(config)
    s, writer = model.settings, model.writer
    lengths, kept, full = [], [], []
    users = [u for u in range(1, model.n_users) if len(model.histories[u])]
    for start in range(0, len(users), 512):
        batch = users[start:start + 512]
        scores = model.base_scores(np.asarray(batch))
        for row, u in enumerate(batch):
            history = model.histories[u]
            top = scores[row].topk(model.topn).indices.tolist()
            before = writer.shortened["history"]
            prompt, _ = model.ranking_prompt("next_item", u, history, top, u)
            lengths.append(len(model.tokenizer(prompt)["input_ids"]))
            shown = min(len(history), s.prompt_history_items)
            full.append(writer.shortened["history"] == before)
            section = prompt.split("interacted with: ", 1)[1].split(". A similar user")[0]
            kept.append(len(section.split("; ")) / shown)
    lengths = np.asarray(lengths)
    return {"users": len(users), "median": int(np.median(lengths)), "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()), "limit": s.llm_max_prompt_tokens,
            "history full": float(np.mean(full)), "items kept": float(np.mean(kept)),
            "history budget": s.prompt_history_tokens, "items asked": s.prompt_history_items}


def main():
    rows = {name: measure(ds) for name, ds in DATASETS.items()}
    cols = ["users", "median", "p95", "max", "limit", "history budget", "items asked",
            "history full", "items kept"]
    lines = ["Llama4Rec next-item prompts at evaluation, default budgets, the dataset's own "
             "BPE tokenizer (`python bench/prompt_budgets.py`). history full = share of users "
             "whose history section shows all the items asked (min(history, items asked)); "
             "items kept = mean share of those items shown.", "",
             "| dataset | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(HERE, "results", "prompt_budgets.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.argv = sys.argv[:1]
    main()
