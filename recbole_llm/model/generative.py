"""The shared base of generative (item-code) recommenders: EAGERLLM, SCRec.

Both turn every item into a few code tokens added to the backbone, train it
on several prompted tasks (next-item generation first) and recommend by
constrained beam search over valid codes.  What they share lives here once:

* task templates (several per task, one drawn per training row, the first at
  inference), checked before data loads with the run's other settings;
* history prompts: the items' code tokens with a separator between items;
* the per-task loss: each task's mean token loss times its weight, so long
  text answers do not outweigh 4-code recommendation answers;
* inference: beam search into RecBole's full-sort scores, and teacher-forced
  code log-probabilities for sampled evaluation.

A subclass sets ``TASK_SLOTS`` (task -> its template's slot), builds
``self.index`` (an ``ItemIndex`` bound to the tokenizer) and calls
:meth:`setup_prompts` after :meth:`load_llm`.
"""
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llm.distributed import global_sum, rank, world_size
from recbole_llm.errors import InputError
from recbole_llm.llm.generation import constrained_beam_search, to_full_sort_scores
from recbole_llm.llm.prompts import Template, answer_logits, inference_batch, training_batch
from recbole_llm.model.abstract import LLMRecommender


def as_list(templates) -> list:
    """A template setting: one text or a list of texts."""
    return [templates] if isinstance(templates, str) else list(templates or [])


class GenerativeRecommender(LLMRecommender, SequentialRecommender):
    """RecBole sequential model generating the next item's codes; see the module docstring."""

    input_type = InputType.POINTWISE
    #: task -> the slot (or slots, in order) its templates fill (``seqrec``: the
    #: next-item task, always on)
    TASK_SLOTS = {"seqrec": "history"}

    @classmethod
    def slots(cls, task: str) -> tuple:
        slot = cls.TASK_SLOTS[task]
        return (slot,) if isinstance(slot, str) else tuple(slot)

    # ------------------------------------------------------------- settings
    @classmethod
    def check_settings(cls, final: dict) -> None:
        """Before any data loads: with full ranking, metric cut-offs within
        ``num_beams`` (beam search ranks that many items; beyond it, ties in id
        order); known tasks, a loss weight for each task in use, templates with
        their slot exactly once."""
        mode = (final.get("eval_args") or {}).get("mode", "full")
        modes = set(mode.values()) if isinstance(mode, dict) else {mode}
        topk = final.get("topk") or []
        topk = [topk] if isinstance(topk, int) else topk
        if "full" in modes and topk and max(topk) > final["num_beams"]:
            raise InputError(f"topk {list(topk)} goes past num_beams={final['num_beams']}: beam "
                             f"search ranks only num_beams items; set num_beams >= {max(topk)}")
        ratios = final.get("aux_task_ratio") or {}
        weights = final.get("task_loss_weights") or {}
        unknown = (set(ratios) | set(weights)) - set(cls.TASK_SLOTS)
        if unknown:
            raise InputError(f"unknown task(s) {sorted(unknown)} in aux_task_ratio / "
                             f"task_loss_weights (tasks: {', '.join(cls.TASK_SLOTS)})")
        for task in ["seqrec", *(t for t, r in ratios.items() if r)]:
            if task not in weights:
                raise InputError(f"task_loss_weights has no weight for task '{task}'")
        for task in cls.TASK_SLOTS:
            texts = final.get(f"{task}_template")
            if (task == "seqrec" or ratios.get(task)) and not as_list(texts):
                raise InputError(f"{task}_template is empty: give at least one template")
            slots = cls.slots(task)
            for text in as_list(texts):
                marks = ["{" + slot + "}" for slot in slots]
                at = [text.find(m) for m in marks] if isinstance(text, str) else []
                if not isinstance(text, str) or any(text.count(m) != 1 for m in marks) \
                        or at != sorted(at):
                    raise InputError(f"{task}_template {text!r} must hold "
                                     f"{' then '.join(marks)} exactly once")

    def template_texts(self) -> dict:
        """Each task's template texts, from the settings ``<task>_template``."""
        return {task: as_list(getattr(self.settings, f"{task}_template"))
                for task in self.TASK_SLOTS}

    def setup_prompts(self, separator: str) -> None:
        """Templates and the history separator as token ids (tokenised once)."""
        self.templates = {task: [Template(self.tokenizer, text, *self.slots(task))
                                 for text in group]
                          for task, group in self.template_texts().items() if group}
        self.separator_ids = self.tokenizer(separator, add_special_tokens=False)["input_ids"] \
            if separator else []  # "" or None: items' codes back to back
        self.task_ratio = dict(self.settings.aux_task_ratio or {})
        self.loss_weights = dict(self.settings.task_loss_weights or {})
        # templates, auxiliary rows, sampled negatives: each process draws its own
        self.rng = np.random.default_rng(self.settings.seed + rank())

    def code_length(self) -> int:
        """The most code tokens an item takes."""
        return max(len(self.index.token_ids(i)) for i in range(1, self.n_items))

    def history_length(self) -> int:
        """Tokens of the longest history slot."""
        n = self.max_seq_length
        return n * self.code_length() + (n - 1) * len(self.separator_ids)

    def check_task_lengths(self, slot: dict, answer: dict) -> None:
        """Every task's longest sequence (template + its slots + answer) fits
        ``llm_max_prompt_tokens``, checked before training: prompts are never cut."""
        limit = self.settings.llm_max_prompt_tokens
        for task, group in self.templates.items():
            if task != "seqrec" and not self.task_ratio.get(task):
                continue
            fixed = max(len(t.fill(*[[]] * len(t.slots))) for t in group)
            need = fixed + slot[task] + answer[task]
            if need > limit:
                raise InputError(f"{type(self).__name__}'s {task} sequences take up to {need} "
                                 f"tokens (template {fixed}, {slot[task]} in its slot, answer "
                                 f"{answer[task]}), over llm_max_prompt_tokens={limit}: raise it")

    # --------------------------------------------------------------- prompts
    def history_ids(self, seq, length) -> list:
        """The items' code tokens, in order, the separator between two items."""
        out = []
        for n, item in enumerate(seq[:length]):
            if n:
                out += self.separator_ids
            out += self.index.token_ids(int(item))
        return out

    def template(self, task: str, training: bool) -> Template:
        """At inference the task's first template, in training one drawn per row."""
        group = self.templates[task]
        return group[int(self.rng.integers(len(group)))] if training and len(group) > 1 \
            else group[0]

    def history_prompts(self, item_seq, item_len, training: bool = False) -> list:
        """Next-item prompts (token ids) of a batch of histories."""
        seqs, lens = item_seq.tolist(), item_len.tolist()
        return [self.template("seqrec", training).fill(self.history_ids(s, n))
                for s, n in zip(seqs, lens)]

    def aux_rows(self, n: int, task: str) -> np.ndarray:
        """Batch rows drawn (without replacement) for an auxiliary task: ``aux_task_ratio`` of ``n``."""
        ratio = self.task_ratio.get(task, 0)
        count = min(int(np.ceil(ratio * n)), n) if ratio > 0 else 0
        return self.rng.choice(n, size=count, replace=False) if count else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ loss
    def task_loss(self, batch, tasks: list, codes: "CodeTargets" = None):
        """Sum over tasks of ``task_loss_weights[task]`` x the task's mean token loss:
        pooled over tokens, a 49-token text answer would outweigh a 4-code
        recommendation answer; ``(loss, last hidden states)``.  ``codes`` (from
        :meth:`packed_batch`): code answers scored over their prefix's children.  Under several
        processes each task's mean is over the whole batch's tokens (counts summed
        over the processes), so the averaged gradients are one process's."""
        logits, target, (rows, cols), hidden = answer_logits(self.llm, batch)
        token_loss = self.token_losses(logits, target, codes)
        names = sorted(self.TASK_SLOTS)
        task_of_seq = torch.as_tensor([names.index(t) for t in tasks], device=token_loss.device)
        task_of_token = task_of_seq[batch.owner[rows, cols]]
        sums = torch.zeros(len(names), device=token_loss.device).index_add(0, task_of_token, token_loss)
        local = torch.bincount(task_of_token, minlength=len(names))
        counts = self.batch_token_counts(local)
        weights = torch.as_tensor([float(self.loss_weights.get(t, 0.0)) for t in names],
                                  device=sums.device)
        if self.training:  # this process's per-task token losses, for epoch_losses()
            step = torch.stack([sums.detach(), local.to(sums.dtype)])  # stays on the device
            totals = getattr(self, "_task_totals", None)
            self._task_totals = step if totals is None else totals + step
        present = counts > 0  # the tasks of the batch alone: the same sum, term for term
        return (weights * sums / counts.clamp(min=1))[present].sum() * world_size(), hidden

    def packed_batch(self, prompts, answers, suffixes=None):
        """The training batch on the model's device, and with ``code_softmax: trie``
        the :class:`CodeTargets` of its answers that spell an item's codes
        (whatever the task), found on the host before the forward pass."""
        batch = training_batch(prompts, answers, self.pad_id, self.settings.llm_max_prompt_tokens,
                               suffixes, dtype=self.llm.dtype)
        codes = self._code_targets(batch) if self.settings.code_softmax == "trie" else None
        device = self.item_codes.device
        return batch.to(device), (codes.to(device) if codes is not None else None)

    def _code_targets(self, batch) -> "CodeTargets":
        target = batch.labels[:, 1:]
        rows, cols = (target != -100).nonzero(as_tuple=True)  # answer_logits' order
        tokens = target[rows, cols].tolist()
        owner = batch.owner[rows, cols + 1].tolist()
        picked, levels, nodes = [], [], []
        start = 0
        while start < len(tokens):  # one answer: the contiguous tokens of one sequence
            end = start + 1
            while end < len(tokens) and owner[end] == owner[start]:
                end += 1
            path = self.trie.path(tokens[start:end])
            if path is not None:
                picked.extend(range(start, end))
                levels.extend(range(end - start))
                nodes.extend(path[0])
            start = end
        return CodeTargets.build(self.trie, picked, levels, nodes)

    @staticmethod
    def token_losses(logits, target, codes=None):
        """Cross-entropy of each answer token; a code token of ``codes`` over its
        prefix's valid children only (a one-child level: zero loss, zero gradient)."""
        loss = F.cross_entropy(logits, target, reduction="none")
        if codes is None or not len(codes.rows):
            return loss
        child = logits[codes.rows[:, None], codes.children].masked_fill(~codes.valid, float("-inf"))
        restricted = torch.logsumexp(child, 1) - logits[codes.rows, target[codes.rows]]
        return loss.index_copy(0, codes.rows, restricted)

    def epoch_losses(self) -> dict:
        """Each task's mean token loss over the epoch's batches (this process's share),
        before its weight: which task the model learns and which it does not."""
        totals, self._task_totals = getattr(self, "_task_totals", None), None
        if totals is None:
            return {}
        return {f"{task} loss": round(float(total / count), 4)
                for task, total, count in zip(sorted(self.TASK_SLOTS), *totals.tolist()) if count}

    def batch_token_counts(self, counts: torch.Tensor = None) -> torch.Tensor:
        """Answer tokens per task (``sorted(TASK_SLOTS)``) in the whole batch.  Every
        process calls it once per step: one with no rows to train on passes
        ``None`` (its counts are zero)."""
        if counts is None:
            counts = torch.zeros(len(self.TASK_SLOTS), dtype=torch.long, device=self.item_codes.device)
        return global_sum(counts)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Weights trained on other item codes would decode to other items: a
        checkpoint whose ``item_codes`` differ from the index built here (its
        stage was recomputed differently, or other settings) is refused."""
        codes = state_dict.get("item_codes")
        if codes is not None and hasattr(self, "item_codes") and (
                codes.shape != self.item_codes.shape or not torch.equal(
                    codes.to(self.item_codes.device), self.item_codes)):
            raise ValueError(f"the checkpoint's item codes differ from this {type(self).__name__}'s "
                             "index (the index was rebuilt differently: a cleared cache, other "
                             "settings or data); its weights would recommend other items")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------- inference
    def _inference_llm(self):
        """Context the backbone decodes in (EAGER: the annealing adapter on or off)."""
        return nullcontext()

    @torch.no_grad()
    def recommend(self, item_seq, item_len, top_k: int = None):
        """Top items per history by constrained beam search: (items, log-probs)."""
        items, scores = [], []
        size = self.settings.beam_batch_size
        device = self.item_codes.device
        with self._inference_llm():
            for start in range(0, len(item_seq), size):
                prompts = self.history_prompts(item_seq[start:start + size],
                                               item_len[start:start + size])
                input_ids, mask = inference_batch(prompts, self.pad_id,
                                                  self.settings.llm_max_prompt_tokens)
                i, s = constrained_beam_search(self.llm, input_ids.to(device), mask.to(device),
                                               self.trie, self.settings.num_beams, top_k,
                                               renormalize=self.settings.code_softmax == "trie")
                items.append(i)
                scores.append(s)
        return torch.cat(items), torch.cat(scores)

    def full_sort_predict(self, interaction):
        items, scores = self.recommend(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return to_full_sort_scores(items, scores, self.n_items)

    @torch.no_grad()
    def predict(self, interaction):
        """Log-probability of each candidate item's codes (sampled evaluation), scored
        as decoding scores them (``code_softmax``)."""
        prompts = self.history_prompts(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        answers = [self.index.token_ids(int(i)) for i in interaction[self.ITEM_ID].tolist()]
        batch, codes = self.packed_batch(prompts, answers)
        with self._inference_llm():
            logits, target, (rows, cols), _ = answer_logits(self.llm, batch)
        token_logp = -self.token_losses(logits, target, codes)
        return torch.zeros(len(prompts), device=token_logp.device).index_add(
            0, batch.owner[rows, cols], token_logp)


class CodeTargets(NamedTuple):
    """The answer tokens of a batch that spell an item's codes: their index in
    ``answer_logits``' order and the valid children of each one's prefix."""
    rows: torch.Tensor      # [C]
    children: torch.Tensor  # [C, W] token ids, padded
    valid: torch.Tensor     # [C, W]

    @classmethod
    def build(cls, trie, rows, levels, nodes):
        rows, levels, nodes = (np.asarray(v, dtype=np.int64) for v in (rows, levels, nodes))
        blocks = [trie.children_block(level, nodes[levels == level]) if (levels == level).any()
                  else None for level in range(trie.depth)]
        width = max([b[0].shape[1] for b in blocks if b is not None], default=1)
        children = np.zeros((len(rows), width), dtype=np.int64)
        valid = np.zeros((len(rows), width), dtype=bool)
        for level, block in enumerate(blocks):
            if block is not None:
                at = levels == level
                children[at, :block[0].shape[1]] = block[0]
                valid[at, :block[2].shape[1]] = block[2]
        return cls(torch.as_tensor(rows), torch.as_tensor(children), torch.as_tensor(valid))

    def to(self, device):
        return CodeTargets(*(t.to(device) for t in self))
