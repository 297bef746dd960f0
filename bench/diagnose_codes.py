"""Where a generative recommender loses the target: level by level, on real rows.

    python bench/diagnose_codes.py --checkpoint=saved/EAGERLLM-....pth \
        --baseline=bench/results/eagerllm_beauty/sasrec.pth --users=2000

For the first ``--users`` validation rows (RecBole's split of the checkpoint's
own settings) it reports, per code level of the target item:

* the branching factor (valid children of the target's prefix in the trie);
* teacher-forced: the rank of the target's code among those children given
  the true prefix, as hit@1/5/20 and the mean log-probability;
* the same for a conventional baseline's full-sort scores (e.g. SASRec),
  the item softmax summed over the items under each child prefix: how well
  a model that ranks items directly ranks the same code prefixes;

and for the whole decode: beam recall@20 (the target among the beams), and
search errors (the target's code log-probability above the 20th beam's, yet
not found).  The answer to "why does it lose to the baseline" is the level
where its hit rate falls below the baseline's.  Prints a table and writes it,
with the command, to ``--out``.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def validation_rows(valid_data, n):
    """(item_seq, item_len, target) of the first ``n`` validation rows."""
    seqs, lens, targets = [], [], []
    for batch in valid_data:
        inter = batch[0]
        seqs.append(inter["item_id_list"])
        lens.append(inter["item_length"])
        targets.append(inter["item_id"])
        if sum(len(t) for t in targets) >= n:
            break
    return torch.cat(seqs)[:n], torch.cat(lens)[:n], torch.cat(targets)[:n]


@torch.no_grad()
def code_logprobs(model, seq, lens, targets, batch_size=64):
    """Per batch: (log-probabilities over the vocabulary at each target code
    position, given the prompt and the true prefix, the target tokens, the row of
    each, the target token's log-probability as decoding scores it)."""
    from recbole_llm.llm.prompts import answer_logits

    out = []
    for start in range(0, len(seq), batch_size):
        prompts = model.history_prompts(seq[start:start + batch_size], lens[start:start + batch_size])
        answers = [model.index.token_ids(int(i)) for i in targets[start:start + batch_size]]
        batch, codes = model.packed_batch(prompts, answers)
        with model._inference_llm():
            logits, target, (rows, cols), _ = answer_logits(model.llm, batch)
        # as decoding scores the target: over the vocabulary, or the prefix's children
        decoded = -model.token_losses(logits, target, codes)
        out.append((torch.log_softmax(logits, -1), target, batch.owner[rows, cols], decoded))
    return out


def level_ranks(model, seq, lens, targets):
    """Per row and level: (rank of the target code among the prefix's children,
    number of children, log-prob of the target code renormalised over them,
    its log-prob as decoding scores it)."""
    trie = model.trie
    n, depth = len(targets), trie.depth
    ranks = np.zeros((n, depth), dtype=np.int64)
    width = np.zeros((n, depth), dtype=np.int64)
    logps = np.zeros((n, depth))
    decoded = np.zeros((n, depth))
    row = 0
    for logp, target, owner, as_decoded in code_logprobs(model, seq, lens, targets):
        for r in torch.unique(owner).tolist():
            token_logp = logp[owner == r]             # [depth, V], answer order
            codes = target[owner == r].tolist()
            mine_decoded = as_decoded[owner == r]
            node = 0
            for level in range(depth):
                allowed = trie.allowed(level, node)
                scores = token_logp[level, torch.as_tensor(allowed)]
                mine = scores[int(np.flatnonzero(allowed == codes[level])[0])]
                ranks[row, level] = int((scores > mine).sum())
                width[row, level] = len(allowed)
                logps[row, level] = float(mine - torch.logsumexp(scores, 0))
                decoded[row, level] = float(mine_decoded[level])
                node = trie.child(level, node, codes[level])
            row += 1
    return ranks, width, logps, decoded


def baseline_level_ranks(checkpoint, model, seq, lens, targets):
    """The same ranks for a conventional model: its item softmax summed per child prefix."""
    from recbole_llm.serving import load_model_and_data

    _, _, _, base = load_model_and_data(checkpoint, use_gpu=False)
    base.eval()
    codes = model.item_codes.cpu().numpy()                 # [n_items, L], row 0 = -1
    from recbole.data.interaction import Interaction
    ranks = np.zeros((len(targets), codes.shape[1]), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(seq), 256):
            inter = Interaction({"item_id_list": seq[start:start + 256],
                                 "item_length": lens[start:start + 256]})
            probs = torch.softmax(base.full_sort_predict(inter).view(len(inter), -1)[:, 1:], -1).numpy()
            for j, p in enumerate(probs):
                t = int(targets[start + j])
                prefix_ok = np.ones(len(p), dtype=bool)
                for level in range(codes.shape[1]):
                    under = prefix_ok
                    child = codes[1:, level]
                    mass = np.bincount(child[under], weights=p[under], minlength=child.max() + 1)
                    present = np.bincount(child[under], minlength=child.max() + 1) > 0
                    mine = mass[codes[t, level]]
                    ranks[start + j, level] = int(((mass > mine) & present).sum())
                    prefix_ok = prefix_ok & (child == codes[t, level])
    return ranks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--baseline", help="a conventional model's checkpoint on the same data")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--wide_beam", type=int, default=0,
                        help="also decode with this many beams (top 20 kept): the search's share of the loss")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "diagnose_codes.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from recbole_llm.serving import load_model_and_data

    config, dataset, (_, valid, _), model = load_model_and_data(args.checkpoint, use_gpu=False)
    model.eval()
    seq, lens, targets = validation_rows(valid, args.users)
    start = time.time()
    ranks, width, logps, decoded = level_ranks(model, seq, lens, targets)
    items, scores = model.recommend(seq, lens)
    found = (items == targets[:, None]).any(1).numpy()
    # search error: the target's code log-prob (as the beams score it) beats the last
    # beam's, yet the search did not find it
    search_errors = ((torch.as_tensor(decoded.sum(1)) > scores[:, -1].double()) &
                     ~torch.as_tensor(found)).double().mean()
    def ranking(found_items):
        hit = found_items[:, :20] == targets[:, None]
        rank = torch.where(hit.any(1), hit.float().argmax(1), torch.tensor(99))
        ndcg = torch.where(rank < 10, 1 / torch.log2(rank.float() + 2), torch.tensor(0.0)).mean()
        return f"NDCG@10 {float(ndcg):.4f}, recall@20 {float((rank < 20).float().mean()):.4f}"

    width_used = model.settings.num_beams
    beams = [f"beam {width_used}: {ranking(items)}"]
    if args.wide_beam:
        import dataclasses
        model.settings = dataclasses.replace(model.settings, num_beams=args.wide_beam)
        beams.append(f"beam {args.wide_beam}: {ranking(model.recommend(seq, lens, top_k=20)[0])}")
    base_ranks = baseline_level_ranks(args.baseline, model, seq, lens, targets) if args.baseline else None
    levels = model.index.prefixes
    lines = [f"{os.path.basename(args.checkpoint)}: {len(targets)} validation rows of "
             f"{config['dataset']}; beam recall@{width_used}: {found.mean():.4f}; "
             f"search errors: {float(search_errors):.4f}; " + "; ".join(beams),
             f"code_softmax: {model.settings.code_softmax}", "",
             "| level | children (median) | hit@1 | hit@5 | hit@20 | mean log-p (renormalised) | mean log-p (as decoded) |"
             + (" baseline hit@1 | hit@5 | hit@20 |" if base_ranks is not None else ""),
             "|---" * (7 + (3 if base_ranks is not None else 0)) + "|"]
    for level, name in enumerate(levels):
        r = ranks[:, level]
        line = (f"| {name} | {np.median(width[:, level]):.0f} | {np.mean(r < 1):.4f} | "
                f"{np.mean(r < 5):.4f} | {np.mean(r < 20):.4f} | {logps[:, level].mean():.3f} | "
                f"{decoded[:, level].mean():.3f} |")
        if base_ranks is not None:
            b = base_ranks[:, level]
            line += f" {np.mean(b < 1):.4f} | {np.mean(b < 5):.4f} | {np.mean(b < 20):.4f} |"
        lines.append(line)
    lines += ["", f"{time.time() - start:.0f} s", "",
              "    python bench/diagnose_codes.py " + " ".join(argv or sys.argv[1:])]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "a") as f:
        f.write(text + "\n\n")


if __name__ == "__main__":
    main()
