"""Prompt templates as token ids, and LM batches built from them.

Templates hold one ``{slot}``; the text around it is tokenised once, and the
slot is filled with token ids (item codes, item text) per sample, so building
a batch never re-tokenises fixed text.  Training batches are packed (several
sequences per row, labels only on the answer, only answer positions projected
to the vocabulary); inference batches are left-padded (generation continues
from the last column).
"""
from typing import NamedTuple

import torch

from recbole_llm.llm.backbone import decoder_and_head


class Template:
    """``Template(tok, "Liked {items}. Next: {target}?", "items", "target")``;
    ``fill(item_ids, target_ids)`` returns the token ids with the slots filled."""

    def __init__(self, tokenizer, text: str, *slots: str):
        self.parts, rest = [], text
        for slot in slots:
            marker = "{" + slot + "}"
            if rest.count(marker) != 1:
                raise ValueError(f"template {text!r} must contain {marker} exactly once, "
                                 f"after the slots before it")
            before, rest = rest.split(marker)
            self.parts.append(tokenizer(before, add_special_tokens=False)["input_ids"] if before else [])
        self.parts.append(tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])
        self.slots = slots

    @property
    def prefix(self) -> list:
        return self.parts[0]

    def fill(self, *values) -> list:
        if len(values) != len(self.slots):
            raise ValueError(f"template needs {len(self.slots)} slot values, got {len(values)}")
        out = list(self.parts[0])
        for value, part in zip(values, self.parts[1:]):
            out += list(value) + part
        return out


class PackedBatch(NamedTuple):
    input_ids: torch.Tensor       # [R, W]
    position_ids: torch.Tensor    # [R, W], 0 at each sequence's first token
    attention_bias: torch.Tensor  # [R, 1, W, W] additive: causal within a sequence only
    labels: torch.Tensor          # [R, W], -100 off the answers
    owner: torch.Tensor           # [R, W], index of the sequence in each column, -1 on padding
    ends: torch.Tensor            # [N, 2] (row, column) of each sequence's last token

    def to(self, device):
        return PackedBatch(*(t.to(device) for t in self))


def training_batch(prompts: list, answers: list, pad_id: int, max_length: int, suffixes=None,
                   dtype=torch.float32) -> PackedBatch:
    """Training sequences (prompt + answer + suffix, e.g. ``[CON]``), labels on
    the answer only, packed several to a row.

    Prompts and answers differ a lot in length (a 20-item history vs. an item
    title), so padding every row to the longest would waste about half of the
    backbone's work; instead rows of the longest sequence's width are filled
    first-fit-decreasing, and a block-diagonal causal mask keeps each
    sequence blind to its row neighbours.  A sequence longer than
    ``max_length`` is an error, never cut."""
    suffixes = suffixes or [[] for _ in prompts]
    seqs, label_seqs = [], []
    for prompt, answer, suffix in zip(prompts, answers, suffixes):
        _check_length(len(prompt) + len(answer) + len(suffix), max_length, "training sequence")
        seqs.append(list(prompt) + list(answer) + list(suffix))
        label_seqs.append([-100] * len(prompt) + list(answer) + [-100] * len(suffix))
    width = max(len(s) for s in seqs)
    rows, free = [], []                       # sequence ids per row, free columns per row
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        row = next((r for r, f in enumerate(free) if f >= len(seqs[i])), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= len(seqs[i])
    low = torch.finfo(dtype).min
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    owner = torch.full((len(rows), width), -1, dtype=torch.long)
    bias = torch.full((len(rows), 1, width, width), low, dtype=dtype)
    ends = [None] * len(seqs)
    causal = torch.triu(torch.full((width, width), low, dtype=dtype), diagonal=1)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            n = len(seqs[i])
            cols = slice(col, col + n)
            input_ids[r, cols] = torch.tensor(seqs[i])
            labels[r, cols] = torch.tensor(label_seqs[i])
            positions[r, cols] = torch.arange(n)
            owner[r, cols] = i
            bias[r, 0, cols, cols] = causal[:n, :n]
            ends[i] = (r, col + n - 1)
            col += n
        if col < width:  # padding attends to itself only, so no row of the mask is empty
            pad = torch.arange(col, width)
            bias[r, 0, pad, pad] = 0
    return PackedBatch(input_ids, positions, bias, labels, owner, torch.tensor(ends))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def answer_logits(model, batch: PackedBatch):
    """Logits of the positions that predict an answer token, and only those (a
    few percent of a batch: the vocabulary projection is the costly part).
    Returns ``(logits [M, V], targets [M], (rows, cols) of the targets, last
    hidden states [R, W, H])``."""
    decoder, project = decoder_and_head(model)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_bias,
                     position_ids=batch.position_ids).last_hidden_state
    target = batch.labels[:, 1:]
    rows, cols = (target != -100).nonzero(as_tuple=True)
    return project(hidden[rows, cols]).float(), target[rows, cols], (rows, cols + 1), hidden


def answer_lm_loss(model, batch: PackedBatch):
    """Mean token cross-entropy over the answers; ``(loss, last hidden states)``."""
    logits, target, _, hidden = answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits, target), hidden


def _check_length(n: int, max_length: int, what: str) -> None:
    if n > max_length:
        raise PromptTooLong(f"a {what} of {n} tokens exceeds llm_max_prompt_tokens={max_length}: "
                            "raise it (prompts are never cut)")


class PromptTooLong(ValueError):
    """A prompt over ``llm_max_prompt_tokens``: models size their prompts to fit,
    so cutting one would hide a bug (or a setting to change)."""


def inference_batch(prompts: list, pad_id: int, max_length: int):
    """Left-padded ``input_ids, attention_mask`` for generation; a prompt over
    ``max_length`` is an error."""
    for p in prompts:
        _check_length(len(p), max_length, "prompt")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            input_ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
    return input_ids, mask


def answer_logprob(model, prompts: list, answers: list, pad_id: int, max_length: int):
    """Teacher-forced log-probability of each answer given its prompt."""
    device = next(model.parameters()).device
    batch = training_batch(prompts, answers, pad_id, max_length).to(device)
    logits, target, (rows, cols), _ = answer_logits(model, batch)
    token_logp = torch.log_softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    return torch.zeros(len(prompts), device=device).index_add(0, batch.owner[rows, cols], token_logp)


@torch.no_grad()
def answer_distribution(llm, tokenizer, prompts: list, answer_ids: list, max_tokens: int,
                        batch_size: int, valid_counts=None) -> torch.Tensor:
    """Log-probabilities over ``answer_ids`` at each prompt's answer position,
    renormalised over the first ``valid_counts[r]`` answers of row ``r``."""
    device = next(llm.parameters()).device
    ids = tokenizer(list(prompts))["input_ids"]
    out = []
    answer = torch.as_tensor(answer_ids, device=device)
    for start in range(0, len(ids), batch_size):
        input_ids, mask = inference_batch(ids[start:start + batch_size], tokenizer.pad_token_id,
                                          max_tokens)
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = llm(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask),
                     logits_to_keep=1).logits[:, -1].float()
        logits = logits[:, answer]
        if valid_counts is not None:
            counts = torch.as_tensor(valid_counts[start:start + batch_size], device=device)
            logits = logits.masked_fill(torch.arange(len(answer_ids), device=device)[None]
                                        >= counts[:, None], float("-inf"))
        out.append(torch.log_softmax(logits, -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(answer_ids))
