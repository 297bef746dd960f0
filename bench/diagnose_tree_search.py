"""How much beam search alone loses on an item-code tree, with a perfect model.

    python bench/diagnose_tree_search.py --checkpoint=<EAGERLLM checkpoint> \
        --baseline=bench/results/eagerllm_beauty/sasrec.pth --users=2000 --k 256 64

Takes a conventional model's item softmax (e.g. SASRec) on the first ``--users``
validation rows as if it were the generative model: each level's score is the
mass of the items under a prefix, beam 20 runs over those prefix marginals, and
the top 20 it finds is compared with the exact top 20 (NDCG@10, recall@20).
The trees: the EAGERLLM checkpoint's semantic and behaviour embeddings indexed as
its ``unit`` index with each ``--k``, semantic levels first or behaviour first.
A tree that loses little here loses its beam-search errors to the model, not to
its shape (``bench/results/eagerllm_diagnosis.md``).
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def beam_over_marginals(p, codes, beams=20):
    """Top items of one row by beam search over the prefix masses of ``p``."""
    items = np.arange(1, len(p))
    kept = [()]
    for level in range(codes.shape[1]):
        cand = {}
        for prefix in kept:
            under = items[np.all(codes[items, :level] == np.array(prefix, dtype=int), 1)] \
                if level else items
            mass = np.bincount(codes[under, level], weights=p[under])
            for c in np.unique(codes[under, level]):
                cand[prefix + (int(c),)] = mass[c]
        kept = sorted(cand, key=lambda pre: -cand[pre])[:beams]
    lookup = {tuple(codes[i]): i for i in items}
    found = [lookup[pre] for pre in kept]
    return found + [0] * (beams - len(found))


def ranking(top, targets):
    hit = top == targets[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), 99)
    return np.mean(np.where(rank < 10, 1 / np.log2(rank + 2), 0)), np.mean(rank < 20)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--k", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--iters", type=int, default=30, help="k-means iterations per level")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from recbole.data.interaction import Interaction

    from diagnose_codes import validation_rows
    from recbole_llm.model.eagerllm.index import build_dual_source_codes
    from recbole_llm.serving import load_model_and_data
    from recbole_llm.tokenization import ItemIndex

    _, _, (_, valid, _), model = load_model_and_data(args.checkpoint, use_gpu=False)
    seq, lens, targets = validation_rows(valid, args.users)
    _, _, _, base = load_model_and_data(args.baseline, use_gpu=False)
    base.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(base.full_sort_predict(Interaction(
            {"item_id_list": seq[s:s + 500], "item_length": lens[s:s + 500]})).view(
            len(seq[s:s + 500]), -1), -1) for s in range(0, len(seq), 500)]).numpy()
    probs[:, 0] = 0
    targets = targets.numpy()
    lines = ["| tree | NDCG@10 | recall@20 |", "|---|---|---|",
             "| exact top 20 | %.4f | %.4f |" % ranking(np.argsort(-probs, 1)[:, :20], targets)]
    sem, beh = model.sem_emb.numpy()[1:], model.beh_emb.numpy()[1:]
    s = model.settings
    for k in args.k:
        raw, _ = build_dual_source_codes(sem, beh, "unit", k, s.index_semantic_levels,
                                         s.index_behavior_levels, args.iters, s.seed)
        codes = ItemIndex.build(raw, collision="reassign", k=k).codes
        n_sem, depth = s.index_semantic_levels, codes.shape[1]
        orders = {"semantic first": list(range(depth)),
                  "behaviour first": [*range(n_sem, depth), *range(n_sem)]}
        for name, order in orders.items():
            tree = codes[:, order]
            top = np.array([beam_over_marginals(p, tree) for p in probs])
            lines.append(f"| k={k}, {name} | %.4f | %.4f |" % ranking(top, targets))
            print(lines[-1], flush=True)
    text = "\n".join(lines + ["", "    python bench/diagnose_tree_search.py " +
                              " ".join(argv or sys.argv[1:])])
    print(text)


if __name__ == "__main__":
    main()
