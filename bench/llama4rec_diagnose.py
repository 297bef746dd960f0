"""Where Llama4Rec's re-ranking gains or loses, on real rows of a finished bench row.

    python bench/llama4rec_diagnose.py bench/results/llama4rec_ml100k/bpr_l4r.json

Rebuilds the row's model from its stored settings and checkpoint, prints one
real test prompt, then on the test split compares three orders of the base
model's top-N: the base's own, the LLM's alone (alpha 1 for every user) and
the one the row kept (its searched alpha), each through RecBole's evaluator;
and how the LLM's first choice falls over the shown labels (candidates are
shuffled before labelling, so a model that reads the items spreads its
choices; one that learned a label prior does not).  Appends to
bench/results/llama4rec_diagnosis.md.
"""
import json
import os
import sys

import numpy as np
import torch

command = "python " + " ".join(sys.argv)
sys.argv, path = sys.argv[:1], sys.argv[1]
lines = []


def say(text):
    print(text, flush=True)
    lines.append(text)


from recbole.utils import init_logger, init_seed  # noqa: E402

from recbole_llm.config import Config  # noqa: E402
from recbole_llm.quick_start import build  # noqa: E402
from recbole_llm.utils import configure_cpu  # noqa: E402

row = json.load(open(path))
settings = dict(row["settings"])
settings.pop("_head_share", None)
model_name, dataset = settings.pop("model"), settings.pop("dataset")
config = Config(model=model_name, dataset=dataset, config_dict=dict(settings, state="WARNING"))
configure_cpu(config["cpu_threads"])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
_, (train, valid, test), model, trainer = build(config)
trainer.load_model_weights(row["checkpoint"])
model.eval()

say(f"kept alpha (alpha1, alpha2): {[round(a, 2) for a in model.alpha_pair.tolist()]}")

picks = []
answer_distribution = sys.modules["recbole_llm.model.llama4rec.model"].answer_distribution


def spy(*args, **kwargs):
    out = answer_distribution(*args, **kwargs)
    picks.append(out.argmax(1))
    if len(picks) == 1 and not lines[1:]:
        say("a real test prompt:\n\n    " + args[2][0] + "\n\nLLM probability per shown label: "
            + str([round(float(p), 3) for p in out[0].exp()]))
    return out


sys.modules["recbole_llm.model.llama4rec.model"].answer_distribution = spy
results = {}
for name, alpha in (("base order", 0.0), ("LLM order alone", 1.0), ("kept alpha", None)):
    saved = model.alpha.clone()
    if alpha is not None:
        model.alpha.fill_(alpha)
    picks.clear()
    results[name] = trainer.evaluate(test, load_best_model=False)
    model.alpha.copy_(saved)
    if name == "LLM order alone":
        labels = torch.cat(picks).numpy()
        say(f"LLM first choice per test user, by shown label A..: "
            f"{np.bincount(labels, minlength=model.topn).tolist()}")
say("\n| order of the base's top-N | hit@3 | ndcg@5 | hit@10 |\n|---|---|---|---|")
for name, r in results.items():
    say(f"| {name} | {r['hit@3']:.4f} | {r['ndcg@5']:.4f} | {r['hit@10']:.4f} |")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "llama4rec_diagnosis.md")
with open(out, "a") as f:
    f.write(f"## `{command}`\n\n" + "\n".join(lines) + "\n\n")
