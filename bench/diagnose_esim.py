"""What ESIM's cluster interests say about a user's next item, read on real rows.

    python bench/diagnose_esim.py bench/results/eimf/eimf_cand_sa.json

Rebuilds a finished EIMF row's data and ESIM (from the plugin cache when an
earlier run left it; no weights are needed), then for every test user compares
the text embedding of the user's test item (its ``prompt_item_field`` name, by
the same text encoder) with three sets of texts, each scored by the best
cosine over the set:

* the user's cluster's semantic interests (what ESIM's losses pull the user's
  behavioural interests toward);
* every other cluster's: the rank of the user's own cluster among all (1: the
  test item's text is nearest the user's cluster; a signal with no user
  information ranks it about halfway);
* the user's own latest items (as many as the cluster has interests): what
  IBIM already reads from the history.

Appends the table to bench/results/eimf_esim_diagnosis.md with the command.
"""
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
command = "python " + " ".join(sys.argv)
sys.argv, path = sys.argv[:1], sys.argv[1]

from recbole.utils import init_logger, init_seed  # noqa: E402

from recbole_llm.config import Config  # noqa: E402
from recbole_llm.llm.encoder import default_encoder_path, encode_cached  # noqa: E402
from recbole_llm.quick_start import build  # noqa: E402
from recbole_llm.utils import configure_cpu  # noqa: E402

row = json.load(open(path))
settings = dict(row["settings"])
model_name, dataset = settings.pop("model"), settings.pop("dataset")
if model_name != "EIMF" or not (settings.get("align_weight") or settings.get("semantic_weight")):
    sys.exit(f"{path}: not an EIMF row with ESIM (align_weight or semantic_weight > 0)")
config = Config(model=model_name, dataset=dataset, config_dict=dict(settings, state="WARNING"))
configure_cpu(config["cpu_threads"])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
_, (train, valid, test), model, _ = build(config)
esim = model.prepare_semantics(config, train.dataset)
s = model.settings

names = model.item_names(train.dataset, s.prompt_item_field)
items = encode_cached(model.cache, [n or "" for n in names],
                      s.text_encoder_path or default_encoder_path(), s.text_encoder_batch_size,
                      show_progress=True)
items = torch.nn.functional.normalize(torch.as_tensor(items, dtype=torch.float32), dim=-1)
semantic = torch.nn.functional.normalize(torch.as_tensor(esim["semantic"], dtype=torch.float32),
                                         dim=-1)                       # [C, M, D]
mask = torch.as_tensor(esim["semantic_mask"])                          # [C, M]
user_cluster = torch.as_tensor(esim["user_cluster"])
m = mask.shape[1]

own, ranks, other_mean, history = [], [], [], []
for data in test:
    batch = data[0] if isinstance(data, tuple) else data
    users, targets = batch[model.USER_ID], batch[model.POS_ITEM_ID]
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    t = items[targets]                                                 # [B, D]
    cos = torch.einsum("cmd,bd->bcm", semantic, t).masked_fill(~mask[None], -2).max(-1).values
    clusters = user_cluster[users]                                     # [B, C] above
    mine = cos.gather(1, clusters[:, None]).squeeze(1)
    own.append(mine)
    ranks.append(1 + (cos > mine[:, None]).sum(1))
    other_mean.append((cos.sum(1) - mine) / (cos.shape[1] - 1))
    positions = torch.arange(seq.shape[1])[None]
    latest = (positions >= (length[:, None] - m)) & (positions < length[:, None])
    h = torch.einsum("bld,bd->bl", items[seq], t).masked_fill(~latest, -2).max(-1).values
    history.append(h)
own, ranks, other_mean, history = (torch.cat(x).float() for x in (own, ranks, other_mean, history))
clusters = semantic.shape[0]

lines = [f"## {os.path.basename(path)} ({dataset}, seed {config['seed']}; {time.strftime('%Y-%m-%d')})",
         "", f"    {command}", "",
         f"{len(own)} test users, {clusters} clusters, up to {m} interests each "
         f"(`esim_source: {s.esim_source}`); cosine of the test item's name embedding:", "",
         "| set | mean best cosine | share of users where it is the best of the three |",
         "|---|---|---|"]
best = torch.stack([own, other_mean, history]).argmax(0)
for i, (label, x) in enumerate([("the user's cluster's interests", own),
                                ("another cluster's interests (mean over clusters)", other_mean),
                                (f"the user's latest {m} items", history)]):
    lines.append(f"| {label} | {x.mean():.3f} | {(best == i).float().mean():.1%} |")
lines += ["", f"Rank of the user's own cluster among {clusters} by that cosine: median "
          f"{ranks.median():.0f}, mean {ranks.mean():.0f} (no information: about "
          f"{(clusters + 1) / 2:.0f}); top 10: {(ranks <= 10).float().mean():.1%} "
          f"(no information: {10 / clusters:.1%}).", ""]
text = "\n".join(lines)
print(text)
with open(os.path.join(HERE, "results", "eimf_esim_diagnosis.md"), "a") as f:
    f.write(text + "\n")
