"""Prompt templates as token ids, and LM batches built from them.

Templates hold one ``{slot}``; the text around it is tokenised once, and the
slot is filled with token ids (item codes, item text) per sample, so building
a batch never re-tokenises fixed text.  Training batches are right-padded with
labels only on the answer; inference batches are left-padded (generation
continues from the last column).
"""
import torch


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


def training_batch(prompts: list, answers: list, pad_id: int, max_length: int, suffixes=None,
                   left_pad: bool = False):
    """``input_ids, attention_mask, labels`` (+ position of each suffix's last token,
    e.g. ``[CON]``), labels on the answer only.  Over-long prompts lose their
    oldest tokens.  ``left_pad`` puts every row's end in the last column, so a
    model can project only the last columns to the vocabulary
    (:func:`tail_lm_loss`); positions then come from :func:`position_ids`."""
    suffixes = suffixes or [[] for _ in prompts]
    rows, label_rows = [], []
    for prompt, answer, suffix in zip(prompts, answers, suffixes):
        keep = max_length - len(answer) - len(suffix)
        prompt = prompt[-keep:] if keep > 0 else []
        rows.append(prompt + answer + suffix)
        label_rows.append([-100] * len(prompt) + answer + [-100] * len(suffix))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    ends = []
    for i, (r, l) in enumerate(zip(rows, label_rows)):
        cols = slice(width - len(r), width) if left_pad else slice(0, len(r))
        input_ids[i, cols] = torch.tensor(r)
        labels[i, cols] = torch.tensor(l)
        mask[i, cols] = 1
        ends.append(width - 1 if left_pad else len(r) - 1)
    return input_ids, mask, labels, torch.tensor(ends)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def tail_lm_loss(model, input_ids, attention_mask, labels, **kwargs):
    """Causal-LM loss when every label lies in the last columns (left padding):
    only those columns are projected to the vocabulary.  Returns (loss, output)."""
    labelled = (labels != -100).any(0).nonzero()
    keep = input_ids.shape[1] - int(labelled.min()) + 1 if len(labelled) else 1
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), logits_to_keep=keep, **kwargs)
    logits = out.logits[:, :-1].float()                  # predicts columns T-keep+1 .. T-1
    target = labels[:, labels.shape[1] - keep + 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             target.reshape(-1), ignore_index=-100)
    return loss, out


def inference_batch(prompts: list, pad_id: int, max_length: int):
    """Left-padded ``input_ids, attention_mask`` for generation."""
    prompts = [p[-max_length:] for p in prompts]
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
    input_ids, mask, labels, _ = training_batch(prompts, answers, pad_id, max_length)
    logits = model(input_ids=input_ids.to(model.device),
                   attention_mask=mask.to(model.device)).logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * (target != -100)).sum(-1)


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
