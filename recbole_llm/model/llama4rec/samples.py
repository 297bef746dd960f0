"""Llama4Rec's training data for the LLM and from the LLM.

* instruction samples (next-item choice, listwise ranking, rating) cut from
  the users' training histories, with candidates from the base model;
* rating samples (rating prediction with a rating regressor as the base);
* augmentation prompts (the LLM picks among un-interacted items) and the
  rows they become in the base model's own batch format.
"""
import numpy as np
import torch
from recbole.data.interaction import Interaction


def holdout_rows(dataset, n: int) -> np.ndarray:
    """Mask of each user's last ``n`` rows of a training split, by time (row
    order breaks ties; sequential splits: the rows whose target is one of the
    user's last ``n`` training interactions)."""
    inter = dataset.inter_feat
    users = np.asarray(inter[dataset.uid_field])
    rows = np.arange(len(users))
    times = np.asarray(inter[dataset.time_field]) if dataset.time_field and \
        dataset.time_field in inter else rows
    order = np.lexsort((rows, times, users))
    ranked = users[order]
    # position of each sorted row counted from its user's last row
    last = np.searchsorted(ranked, ranked, side="right") - 1
    held = np.zeros(len(users), dtype=bool)
    held[order[last - np.arange(len(users)) < n]] = True
    return held


def eligible_users(model, at_least: int = 0) -> np.ndarray:
    """Users with ``it_min_history`` (and ``at_least``) training interactions."""
    need = max(model.settings.it_min_history, at_least)
    return np.flatnonzero(np.array([len(h) >= need for h in model.histories]))


def instruction_samples(model, rng) -> list:
    """(prompt, answer token ids) for every task, built from the training split
    with ``model.base`` the tuning model (trained without each user's last
    ``it_holdout_items`` training interactions).

    A sample cuts a user's training history before one of those held-out
    items: the prefix is the history, the next item the target.  Candidates
    are the target plus the base model's best items outside the prefix (hard
    negatives, as at inference).  Tasks: ``next_item`` (answer: the target's label),
    ``listwise`` (labels of every candidate the user goes on to interact
    with, best rated first), ``rating`` (the target's rating; datasets with
    ratings only).
    """
    s = model.settings
    if model.rating_task:
        return rating_samples(model, rng)
    tasks = list(s.it_tasks)
    if model.ratings is None and "rating" in tasks:
        tasks.remove("rating")
    users = eligible_users(model, at_least=2)  # one item before the first cut
    if not len(users):
        raise ValueError(f"no user has it_min_history={s.it_min_history} "
                         "training interactions: nothing to instruction-tune on")
    n = s.it_samples_per_task
    eos = [model.tokenizer.eos_token_id]
    samples = []
    for task in tasks:
        picked = rng.choice(users, size=n, replace=True)
        lengths = [len(model.histories[u]) for u in picked]
        cuts = [int(rng.integers(max(m - s.it_holdout_items, 1), m)) for m in lengths]
        for start in range(0, n, 256):
            rows = range(start, min(start + 256, n))
            prefixes = [model.histories[picked[r]][:cuts[r]] for r in rows]
            scores = model.base_scores(picked[list(rows)], prefixes)
            for j, r in enumerate(rows):
                u, cut, prefix = int(picked[r]), cuts[r], prefixes[j]
                target = int(model.histories[u][cut])
                row = scores[j].clone()
                row[0] = float("-inf")
                row[torch.as_tensor(prefix, dtype=torch.long)] = float("-inf")
                cands = row.topk(model.topn).indices.tolist()
                if target not in cands:
                    cands[-1] = target
                if task == "rating":
                    similar, base_top = model.augmentation(u, cands)
                    hist = prefix[-s.prompt_history_items:]
                    prompt = model.writer.rating(hist, model.rated(u, hist), target, similar, base_top)
                    value = int(np.clip(np.rint(model.rated(u, [target])[0]), 1, 5))
                    samples.append((prompt, [model.rating_ids[value - 1]] + eos))
                    continue
                prompt, perm = model.ranking_prompt(task, u, prefix, cands, int(rng.integers(2**31)))
                position = {cands[p]: k for k, p in enumerate(perm)}  # item -> shown label
                if task == "next_item":
                    answer = [target]
                else:
                    future = model.histories[u][cut:].tolist()
                    liked = [i for i in future if i in position]
                    rated = model.rated(u, liked)
                    if rated is not None:
                        liked = [i for _, i in sorted(zip(-np.nan_to_num(rated, nan=0.0), liked),
                                                      key=lambda x: x[0])]
                    answer = liked[:s.listwise_max_answer]
                samples.append((prompt, [model.label_ids[position[i]] for i in answer] + eos))
    return samples


def rating_samples(model, rng) -> list:
    """Rating instructions from the held-out training rows (each user's last
    ``it_holdout_items``) of users with enough history, rated by the tuning
    model, which was not fitted on them."""
    dataset = model.dataset
    inter = dataset.inter_feat
    users = np.asarray(inter[model.USER_ID])
    held = holdout_rows(dataset, model.settings.it_holdout_items)
    eligible = np.flatnonzero(held & (model.counts[users] >= model.settings.it_min_history))
    rows = rng.choice(eligible, size=min(model.settings.it_samples_per_task, len(eligible)),
                      replace=False)
    eos = [model.tokenizer.eos_token_id]
    samples = []
    for start in range(0, len(rows), 1024):
        batch = dataset.join(inter[torch.as_tensor(rows[start:start + 1024])])
        pred = model.wrapped.ratings(batch)
        for prompt, u, i in zip(model.rating_prompts(batch, pred), batch[model.USER_ID].tolist(),
                                batch[model.ITEM_ID].tolist()):
            value = int(np.clip(np.rint(model.rated(u, [i])[0]), 1, 5))
            samples.append((prompt, [model.rating_ids[value - 1]] + eos))
    return samples


def augmentation_prompts(model, rng) -> list:
    """(user, candidates, prompt) for ``aug_users`` sampled users: the LLM
    chooses among ``aug_candidates`` items the user never interacted with."""
    s = model.settings
    users = eligible_users(model)
    n_users = min(s.aug_users, len(users))
    picked = rng.choice(users, size=n_users, replace=False)
    scores = model.base_scores(picked) if s.prompt_augmentation else None
    jobs = []
    for j, u in enumerate(picked):
        seen = set(model.histories[u].tolist())
        pool = [i for i in rng.choice(np.arange(1, model.n_items), size=4 * s.aug_candidates + 8,
                                      replace=False).tolist() if i not in seen]
        cands = pool[:s.aug_candidates]
        if len(cands) < 2:
            continue
        base_order = cands
        if scores is not None:
            row = scores[j].clone()
            row[0] = float("-inf")
            row[torch.as_tensor(model.histories[u], dtype=torch.long)] = float("-inf")
            base_order = row.topk(model.topn).indices.tolist()
        similar, base_top = model.augmentation(int(u), base_order)
        history = model.histories[u][-s.prompt_history_items:]
        listed = cands  # already a random draw: no base order to hide
        prompt = model.writer.ranking("next_item", history, model.rated(u, history), listed,
                                      similar, base_top)
        jobs.append((int(u), cands, prompt))
    return jobs


def augmented_rows(model, choices, rng):
    """Training rows in the base model's batch format: ``(u, i+, i-)`` per
    rejected candidate (general), or the prefixes of the user's sequence
    with the chosen item inserted at a random position (sequential)."""
    if not choices:
        return None
    if not model.sequential:
        users, pos, neg = [], [], []
        for user, chosen, rejected in choices:
            users += [user] * len(rejected)
            pos += [chosen] * len(rejected)
            neg += list(rejected)
        return Interaction({model.USER_ID: torch.as_tensor(users),
                            model.ITEM_ID: torch.as_tensor(pos),
                            model.NEG_ITEM_ID: torch.as_tensor(neg)})
    max_len = model.settings.MAX_ITEM_LIST_LENGTH
    seqs, targets = [], []
    for user, chosen, _ in choices:
        history = model.histories[user].tolist()
        at = int(rng.integers(0, len(history) + 1))
        new = history[:at] + [chosen] + history[at:]
        for t in range(max(at, 1), len(new)):  # only prefixes the insertion changes
            seqs.append(new[max(0, t - max_len):t])
            targets.append(new[t])
    batch = model.wrapped.sequence_batch(seqs)
    batch.update(Interaction({model.ITEM_ID: torch.as_tensor(targets)}))
    return batch
