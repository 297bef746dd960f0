"""An LLM client that answers a multiple-choice prompt with an offered label.

A small model tuned on a few thousand instructions may still put mass on
labels that were not offered; restricting its one-token answer to the offered
labels is constrained decoding.  The offered labels are those a prompt lists
(``[A] ...; [B] ...``: the labels from the first on, up to the first one the
prompt does not contain, or as the prompt's writer counts them: ``offered``).  Answers are computed in batches and cached
(resumable) under a key of the tuned model and the prompts.
"""
import hashlib

from recbole_llm.llm.client import LLMClient
from recbole_llm.llm.prompts import answer_distribution


class LabelChoiceClient(LLMClient):
    def __init__(self, llm, tokenizer, labels: list, label_ids: list, max_prompt_tokens: int,
                 batch_size: int, cache, model_key: str, show_progress: bool = False,
                 offered=None):
        self.llm, self.tokenizer = llm, tokenizer
        if offered is not None:
            self.offered = offered
        self.labels, self.label_ids = list(labels), list(label_ids)
        self.max_prompt_tokens, self.batch_size = max_prompt_tokens, batch_size
        self.cache, self.model_key, self.show_progress = cache, model_key, show_progress

    @property
    def identity(self) -> str:
        return f"labels:{self.model_key}"

    def offered(self, prompt: str) -> int:
        """How many labels the prompt offers (replaced by the ``offered`` argument)."""
        return next((k for k, label in enumerate(self.labels) if label not in prompt),
                    len(self.labels))

    def complete(self, prompts, max_new_tokens=1, temperature=0.0):
        if temperature:
            raise ValueError("LabelChoiceClient picks the most probable label; temperature must be 0")
        counts = [self.offered(p) for p in prompts]
        if min(counts, default=2) < 1:
            raise ValueError("a prompt offers no label ([A], [B], ...) to choose from")
        digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]

        def run(batch):
            texts = [p for p, _ in batch]
            logp = answer_distribution(self.llm, self.tokenizer, texts,
                                       self.label_ids[:max(n for _, n in batch)],
                                       self.max_prompt_tokens, len(batch),
                                       valid_counts=[n for _, n in batch])
            return [self.labels[int(k)] for k in logp.argmax(1)]

        return self.cache.map_batches(f"choices-{self.model_key}-{digest}",
                                      list(zip(prompts, counts)), run, self.batch_size,
                                      desc="LLM choices", show_progress=self.show_progress)
