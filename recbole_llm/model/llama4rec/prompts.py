"""Llama4Rec's prompts, instruction-tuning samples and LLM answers.

Text prompts (not token-id templates) because the same prompt goes to the
local backbone and, for augmentation, to an OpenAI-compatible server.
Candidates carry labels ``[A]``, ``[B]``, ...; the local backbone gets them as
new tokens, so that a choice is one token and a candidate list can be scored
in one forward pass (the label distribution at the answer position).
"""
import re

import numpy as np

LABELS = [f"[{chr(ord('A') + i)}]" for i in range(26)]
RATING_WORDS = ["1", "2", "3", "4", "5"]


# a bare letter counts as a label only as the whole answer or after a cue word:
# in free text, "A" and "I" are usually an article and a pronoun
_BARE = re.compile(r"^\W*\(?([A-Z])\)?\W*$")
_CUED = re.compile(r"(?i:\b(?:answer|option|choice|candidate|label|pick|choose|select|recommend|"
                   r"say|be|is|item)\b)\W{0,5}\(?([A-Z])\b(?!'|\s+[A-Z][a-z])")


def parse_choice(text: str, n_candidates: int, names=None):
    """Index of the candidate an LLM answer names, or None.

    Accepts ``[C]``; a bare ``C`` as the whole answer or after a cue, in any
    case ("pick C", "Answer: C", "**Answer:** C", "I'd say C") and not opening
    a title ("it is A Bug's Life"), so that an article or a pronoun is never
    read as a label; failing those, a candidate's name quoted in the
    answer.  Only the first ``n_candidates`` labels count.
    """
    valid = {chr(ord("A") + i): i for i in range(n_candidates)}
    for match in re.finditer(r"\[([A-Z])\]", text):
        if match.group(1) in valid:
            return valid[match.group(1)]
    bare = _BARE.match(text)
    if bare and bare.group(1) in valid:
        return valid[bare.group(1)]
    for match in _CUED.finditer(text):
        if match.group(1) in valid:
            return valid[match.group(1)]
    if names:
        lowered = text.lower()
        hits = [i for i, name in enumerate(names[:n_candidates]) if name and name.lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None


def offered_labels(prompt: str) -> int:
    """How many candidates a ranking prompt of :class:`PromptWriter` lists: its
    candidate list starts at the last ``[A] `` and each next label opens an entry
    after ``; `` (a label inside an item name elsewhere does not count)."""
    at = prompt.rfind(f"{LABELS[0]} ")
    if at < 0:
        return 0
    count = 1
    while count < len(LABELS):
        at = prompt.find(f"; {LABELS[count]} ", at)
        if at < 0:
            break
        count += 1
    return count


class PromptWriter:
    """Renders Llama4Rec's prompts, each section to its own token budget.

    A prompt is fixed template text plus four sections: the user's history,
    the most similar user's items, the base model's items (or its rating) and
    the candidates (or the rated target).  Each item name is at most
    ``item_name_max_tokens`` tokens; the history and the similar user's items
    keep their most recent items that fit their budget (the newest always
    fits), the base items their best ones; candidates are never dropped.
    The budgets add up to at most ``llm_max_prompt_tokens`` (checked when the
    tokenizer is bound, before any long work), so no prompt needs cutting (and
    the batches that tokenise it refuse one that would);
    how many sections showed fewer items than asked is counted in ``shortened``.
    """

    def __init__(self, names: list, config):
        self.full_names = list(names)
        self.names = self.full_names  # cut to item_name_max_tokens by bind()
        self.templates = {"next_item": config["llama4rec_next_item_template"],
                          "listwise": config["llama4rec_listwise_template"],
                          "rating": config["llama4rec_rating_template"]}
        self.similar_text = config["llama4rec_similar_text"]
        self.base_text = config["llama4rec_base_text"]
        self.base_rating_text = config["llama4rec_base_rating_text"]
        self.name_tokens = config["item_name_max_tokens"]
        self.budget = {"history": config["prompt_history_tokens"],
                       "similar": config["prompt_similar_tokens"],
                       "base": config["prompt_base_tokens"],
                       "candidates": config["prompt_candidate_tokens"]}
        self.max_prompt = config["llm_max_prompt_tokens"]
        self.topn = config["rerank_topn"]
        self.tokenizer = None
        self.shortened = {"history": 0, "similar": 0, "base": 0}
        self._entry_counts = {}
        self.built = 0

    # --- token counts ----------------------------------------------------------
    def count(self, text: str) -> int:
        """Tokens of ``text`` alone (inside a prompt a token more or less at each
        end: the budget check allows for it, and every prompt is counted whole)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def bind(self, tokenizer) -> None:
        """Cut item names to ``item_name_max_tokens`` tokens and check that every
        prompt fits ``llm_max_prompt_tokens`` (``ValueError`` naming the settings)."""
        self.tokenizer = tokenizer
        self._sep = self.count("; ")
        ids = tokenizer(self.full_names, add_special_tokens=False)["input_ids"]
        self.names = [name if len(i) <= self.name_tokens else
                      tokenizer.decode(i[:self.name_tokens]).strip()
                      for name, i in zip(self.full_names, ids)]
        one = self.name_tokens + self.count(" (4.5 stars); ") + 1  # one history entry, at most
        if self.budget["history"] < one:
            raise ValueError(f"prompt_history_tokens={self.budget['history']} cannot hold the "
                             f"user's last item (up to {one} tokens with item_name_max_tokens="
                             f"{self.name_tokens}): raise it")
        label = max(self.count(f"{lab} ") for lab in LABELS[:self.topn])
        entry = label + self.name_tokens + self.count("; ") + 1
        if self.budget["candidates"] < self.topn * entry:
            raise ValueError(f"prompt_candidate_tokens={self.budget['candidates']} cannot hold "
                             f"rerank_topn={self.topn} candidates of up to {entry} tokens each "
                             f"(item_name_max_tokens={self.name_tokens}): raise it to "
                             f"{self.topn * entry}")
        bos = len(tokenizer("", add_special_tokens=True)["input_ids"])
        wrappers = self.count(self.similar_text.format(items="")) + \
            max(self.count(self.base_text.format(items="")),
                self.count(self.base_rating_text.format(rating="")) + 2)
        for task, template in self.templates.items():
            empty = {k: "" for k in ("history", "candidates", "similar", "base", "target")}
            fixed = self.count(template.format(**empty)) + wrappers + bos
            last = self.budget["candidates"] if task != "rating" else self.name_tokens + 1
            # a section's text meets the template's at two boundaries: a token each
            worst = fixed + self.budget["history"] + self.budget["similar"] + \
                self.budget["base"] + last + 2 * len(self.budget)
            if worst > self.max_prompt:
                raise ValueError(
                    f"llm_max_prompt_tokens={self.max_prompt} is below the {task} prompt's budget "
                    f"of {worst} tokens (template {fixed}, prompt_history_tokens "
                    f"{self.budget['history']}, prompt_similar_tokens {self.budget['similar']}, "
                    f"prompt_base_tokens {self.budget['base']}, candidates {last}): raise "
                    "llm_max_prompt_tokens or lower the section budgets")

    # --- sections --------------------------------------------------------------
    def _entry(self, item, rating=None) -> str:
        name = self.names[int(item)]
        if rating is not None and not np.isnan(rating):
            name += f" ({rating:g} stars)"
        return name

    def _entry_tokens(self, entry: str) -> int:
        """Token count of one entry (a name, maybe with its rating), remembered:
        histories repeat the same entries across every prompt."""
        n = self._entry_counts.get(entry)
        if n is None:
            n = self._entry_counts[entry] = self.count(entry)
        return n

    def fit_items(self, section: str, items, ratings=None, newest_last: bool = True) -> str:
        """The items joined by ``; ``: as many as fit the section's budget, the
        most recent kept (``newest_last``) or the first ones.  The remembered
        entry counts pick how many; one exact count of the joined text confirms."""
        entries = [self._entry(i, None if ratings is None else ratings[n])
                   for n, i in enumerate(items)]
        budget, sep = self.budget[section], self._sep
        keep, used = 0, -sep
        for entry in (reversed(entries) if newest_last else entries):
            used += self._entry_tokens(entry) + sep
            if used > budget:
                break
            keep += 1
        text = ""
        while keep:
            text = "; ".join(entries[len(entries) - keep:] if newest_last else entries[:keep])
            if self.count(text) <= budget:
                break
            keep, text = keep - 1, ""
        if keep < len(entries) and section in self.shortened:
            self.shortened[section] += 1
        return text

    def _augmentation(self, similar, base_top) -> dict:
        """Prompt augmentation slots; empty text when a part is switched off."""
        similar_items = self.fit_items("similar", similar) if len(similar) else ""
        base_items = self.fit_items("base", base_top, newest_last=False) if len(base_top) else ""
        return {"similar": self.similar_text.format(items=similar_items) if similar_items else "",
                "base": self.base_text.format(items=base_items) if base_items else ""}

    def _built(self, prompt: str) -> str:
        """Counted for :meth:`report`; its length is checked where it is tokenised
        (``inference_batch`` / ``training_batch`` refuse an over-long prompt)."""
        self.built += 1
        return prompt

    def ranking(self, task, history, ratings, candidates, similar=(), base_top=()) -> str:
        listed = "; ".join(f"{LABELS[k]} {self.names[int(i)]}" for k, i in enumerate(candidates))
        if self.count(listed) > self.budget["candidates"]:
            raise ValueError(f"{len(candidates)} candidates take {self.count(listed)} tokens, "
                             f"over prompt_candidate_tokens={self.budget['candidates']}")
        return self._built(self.templates[task].format(
            history=self.fit_items("history", history, ratings), candidates=listed,
            **self._augmentation(similar, base_top)))

    def rating(self, history, ratings, target, similar=(), base_top=(), base_rating=None) -> str:
        """``base_rating``: the base model's rating, named in the base slot
        instead of its top items (rating prediction)."""
        slots = self._augmentation(similar, base_top)
        if base_rating is not None:
            slots["base"] = self.base_rating_text.format(rating=f"{base_rating:.1f}")
        return self._built(self.templates["rating"].format(
            history=self.fit_items("history", history, ratings),
            target=self.names[int(target)], **slots))

    def report(self) -> str:
        """How many of the prompts built so far showed fewer items than asked."""
        return (f"{self.built} prompts; sections shortened to their token budget: "
                + ", ".join(f"{k} {v}" for k, v in self.shortened.items()))
