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
_CUED = re.compile(r"(?:\b(?:answer|option|choice|candidate|label|pick|choose|select|recommend|"
                   r"say|be|is|item)\b\W{0,3})\(?([A-Z])\b")


def parse_choice(text: str, n_candidates: int, names=None):
    """Index of the candidate an LLM answer names, or None.

    Accepts ``[C]``; a bare ``C`` as the whole answer or after a cue ("pick
    C", "the answer is C", "I'd say C"), so that an article or a pronoun is
    never read as a label; failing those, a candidate's name quoted in the
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
    """Renders Llama4Rec's prompts from item names, ratings and templates."""

    def __init__(self, names: list, config):
        self.names = [n[:config["item_name_max_chars"]] for n in names]
        self.templates = {"next_item": config["llama4rec_next_item_template"],
                          "listwise": config["llama4rec_listwise_template"],
                          "rating": config["llama4rec_rating_template"]}
        self.similar_text = config["llama4rec_similar_text"]
        self.base_text = config["llama4rec_base_text"]

    def items(self, items, ratings=None) -> str:
        parts = []
        for n, item in enumerate(items):
            name = self.names[int(item)]
            if ratings is not None and not np.isnan(ratings[n]):
                name += f" ({ratings[n]:g} stars)"
            parts.append(name)
        return "; ".join(parts)

    def _augmentation(self, similar, base_top) -> dict:
        """Prompt augmentation slots; empty text when a part is switched off."""
        return {"similar": self.similar_text.format(items=self.items(similar)) if len(similar) else "",
                "base": self.base_text.format(items=self.items(base_top)) if len(base_top) else ""}

    def ranking(self, task, history, ratings, candidates, similar=(), base_top=()) -> str:
        listed = "; ".join(f"{LABELS[k]} {self.names[int(i)]}" for k, i in enumerate(candidates))
        return self.templates[task].format(history=self.items(history, ratings),
                                           candidates=listed, **self._augmentation(similar, base_top))

    def rating(self, history, ratings, target, similar=(), base_top=(), base_text=None) -> str:
        """``base_text`` replaces the base-model slot (rating prediction names
        the base model's rating rather than its top items)."""
        slots = self._augmentation(similar, base_top)
        if base_text is not None:
            slots["base"] = base_text
        return self.templates["rating"].format(history=self.items(history, ratings),
                                               target=self.names[int(target)], **slots)
