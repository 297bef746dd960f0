"""EIMF's Explicit Semantic Interest Module (training only).

Each user's training history becomes text (its items' names, most recent
last); the text encoder embeds it; Affinity Propagation groups users with
similar texts; the LLM is asked once per cluster, on its exemplar user, for
that user's interests; the answer's interests are encoded and shared by
every user of the cluster.  So the LLM runs once per cluster, not per user.

For many users (more than ``ap_max_users``) AP's quadratic memory is too
much: a seeded sample of that size is clustered and every other user joins
the exemplar nearest to it (AP's similarity: negative squared distance).
Texts are built to fit, never cut: a user's text keeps the most recent items
whose names fit the encoder's token limit, an exemplar's prompt the most
recent that fit ``llm_max_prompt_tokens``.
"""
import re
import time

import numpy as np

from recbole_llm.errors import InputError

_NUMBERING = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")


def recent_text(names: list, fits, limit: str, separator: str = "; ") -> tuple:
    """``(text, items kept)``: the most recent names (list order: oldest first)
    joined, as many as ``fits(text)`` allows; at least the last, or an error that
    names ``limit`` (what bounds the text, and the settings that move it)."""
    kept = []
    for name in reversed(names):
        trial = separator.join([name] + kept)
        if not fits(trial):
            break
        kept.insert(0, name)
    if names and not kept:
        raise InputError(f"one item name alone does not fit {limit}: {names[-1][:80]!r}...")
    return separator.join(kept), len(kept)


def parse_interests(answer: str, limit: int) -> list:
    """Up to ``limit`` interests from an answer: one per line, or separated by
    ``;`` or ``,`` on a single line; list numbering and bullets removed."""
    lines = [l for l in answer.splitlines() if l.strip()]
    parts = lines if len(lines) > 1 else re.split(r"[;,]", answer)
    out = []
    for part in parts:
        text = _NUMBERING.sub("", part).strip(" .:-\t\n\r")
        if text and text not in out:
            out.append(text)
    return out[:limit]


def affinity_clusters(x: np.ndarray, preference, damping: float, max_users: int,
                      max_iter: int, seed: int) -> tuple:
    """``(labels [n], exemplar rows [C], clustered rows)``: AP on all rows, or on a
    seeded sample of ``max_users`` with the rest joining their nearest exemplar."""
    from sklearn.cluster import AffinityPropagation
    from sklearn.exceptions import ConvergenceWarning
    import warnings

    rng = np.random.default_rng(seed)
    n = len(x)
    sample = np.arange(n) if n <= max_users else np.sort(rng.choice(n, max_users, replace=False))
    ap = AffinityPropagation(preference=preference, damping=damping, max_iter=max_iter,
                             random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            ap.fit(x[sample])
        except ConvergenceWarning:
            raise InputError(f"Affinity Propagation did not converge in {max_iter} iterations: "
                             "raise ap_max_iter, ap_damping (up to 0.99) or lower "
                             "ap_preference") from None
    exemplars = sample[ap.cluster_centers_indices_]
    if len(exemplars) == 0:
        raise InputError("Affinity Propagation found no cluster: change ap_preference")
    centres = x[exemplars]
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, 4096):  # nearest exemplar, in blocks (memory)
        block = x[start:start + 4096]
        dist = (block ** 2).sum(1)[:, None] - 2 * block @ centres.T + (centres ** 2).sum(1)[None]
        labels[start:start + 4096] = dist.argmin(1)
    labels[exemplars] = np.arange(len(exemplars))  # an exemplar is in its own cluster
    labels[sample] = ap.labels_
    return labels, exemplars, len(sample)


def semantic_interests(histories: list, names: list, s, encode_texts, client, prompt_fits,
                       encoder_fits) -> dict:
    """ESIM over ``histories`` (internal item ids per user, time order; users
    without a history take no part).  Returns ``user_cluster`` [n_users] (-1:
    no history), ``semantic`` [clusters, esim_max_interests, dim] (each
    cluster's encoded interests) with ``semantic_mask`` (which are real),
    ``exemplars`` (user ids), ``answers`` and ``report``.  ``encode_texts``:
    texts -> unit vectors; ``encoder_fits(text)``: whether the encoder takes
    the text whole; ``esim_source: history`` puts the exemplar's latest item
    names where the LLM's interests would be (the module without an LLM)."""
    times = {}
    start = time.perf_counter()
    users = [u for u, h in enumerate(histories) if u and len(h)]
    if len(users) < 2:
        raise InputError("EIMF's semantic interests need at least two users with a training history")
    if s.esim_source == "llm" and not prompt_fits(s.esim_prompt.replace("{history}", "")):
        # before the long stages: the prompt without items and the answer must fit
        raise InputError(
            f"esim_prompt with no item and an answer of esim_max_new_tokens "
            f"({s.esim_max_new_tokens}) does not fit llm_max_prompt_tokens "
            f"({s.llm_max_prompt_tokens}): raise llm_max_prompt_tokens, lower "
            "esim_max_new_tokens or shorten esim_prompt")
    encoder_limit = ("the text encoder's token limit (fixed by the encoder): name items by "
                     "a shorter prompt_item_field, or set text_encoder_path to an encoder that "
                     "takes longer texts")
    prompt_limit = (f"llm_max_prompt_tokens ({s.llm_max_prompt_tokens}) with esim_prompt and "
                    f"esim_max_new_tokens ({s.esim_max_new_tokens}) (raise the first, lower the "
                    "second or name items by a shorter prompt_item_field)")

    texts, shortened = [], 0
    for u in users:
        item_names = [names[i] for i in histories[u][-s.esim_history_items:]]
        text, kept = recent_text(item_names, encoder_fits, encoder_limit)
        texts.append(text)
        shortened += kept < len(item_names)
    user_emb = encode_texts(texts)
    times["user_text_s"] = time.perf_counter() - start

    start = time.perf_counter()
    labels, exemplar_rows, clustered = affinity_clusters(
        user_emb.astype(np.float64), s.ap_preference, s.ap_damping, s.ap_max_users,
        s.ap_max_iter, s.seed)
    times["clustering_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sent = getattr(client, "calls", 0)
    if s.esim_source == "llm":
        prompts = []
        for row in exemplar_rows:
            item_names = [names[i] for i in histories[users[row]][-s.esim_history_items:]]
            text, _ = recent_text(item_names,
                                  lambda t: prompt_fits(s.esim_prompt.replace("{history}", t)),
                                  prompt_limit)
            prompts.append(s.esim_prompt.replace("{history}", text))
        answers = client.complete(prompts, max_new_tokens=s.esim_max_new_tokens)
    else:  # "history": the exemplar's latest item names stand for its interests (no LLM)
        answers = ["\n".join(names[i] for i in histories[users[row]][-s.esim_max_interests:])
                   for row in exemplar_rows]
    times["llm_s"] = time.perf_counter() - start

    start = time.perf_counter()
    interests = [parse_interests(a, s.esim_max_interests) for a in answers]
    empty = sum(1 for i in interests if not i)
    # an answer with no interest in it: the exemplar's own history text stands in
    # (counted in the report as empty_answers)
    interests = [i or [texts[row]] for i, row in zip(interests, exemplar_rows)]
    flat = [t for group in interests for t in group]
    emb = encode_texts(flat)
    semantic = np.zeros((len(interests), s.esim_max_interests, emb.shape[1]), dtype=np.float32)
    mask = np.zeros((len(interests), s.esim_max_interests), dtype=bool)
    at = 0
    for c, group in enumerate(interests):
        semantic[c, :len(group)] = emb[at:at + len(group)]
        mask[c, :len(group)] = True
        at += len(group)
    times["interest_encoding_s"] = time.perf_counter() - start

    calls = len(exemplar_rows) if s.esim_source == "llm" else 0
    user_cluster = np.full(len(histories), -1, dtype=np.int64)
    user_cluster[users] = labels
    report = {
        "source": s.esim_source, "llm_prompts_sent": getattr(client, "calls", 0) - sent,
        "users": len(users), "clustered_users": int(clustered),
        "joined_nearest_exemplar": len(users) - int(clustered), "clusters": len(exemplar_rows),
        # one LLM call per exemplar instead of one per user (none with esim_source: history)
        "llm_calls": calls, "llm_calls_saved": len(users) - calls if calls else 0,
        "users_per_call": round(len(users) / calls, 2) if calls else None,
        "user_texts_shortened": int(shortened), "empty_answers": int(empty),
        "interests_per_cluster": round(len(flat) / len(interests), 2),
        **{k: round(v, 2) for k, v in times.items()},
    }
    return {"user_cluster": user_cluster, "semantic": semantic, "semantic_mask": mask,
            "exemplars": np.asarray([users[r] for r in exemplar_rows], dtype=np.int64),
            "answers": answers, "report": report}
