"""Batched generation: free text, and constrained beam search over item codes.

``constrained_beam_search`` decodes exactly ``trie.depth`` code tokens per
beam, with every step restricted to the children of the beam's trie node, so
each finished beam *is* an item.  It runs many users at once, keeps the KV
cache (the prompt is encoded once per user, then each step feeds one token
per beam), and returns the top-K items with their summed log-probabilities.
``to_full_sort_scores`` turns that into RecBole's full-sort score row.
"""
import numpy as np
import torch


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def constrained_beam_search(model, input_ids, attention_mask, trie, num_beams: int = 20,
                            top_k: int = None, inputs_embeds=None):
    """Top items for each prompt of a left-padded batch.

    Returns ``(items [B, K], scores [B, K])`` sorted by score (log-probability
    of the item's code sequence given the prompt); slots that no valid item
    could fill hold item 0 and ``-inf``.  Candidates are gathered per beam from
    the trie's child blocks, so no step builds a vocabulary-wide mask.
    """
    top_k = top_k or num_beams
    if top_k > num_beams:
        raise ValueError(f"top_k ({top_k}) cannot exceed num_beams ({num_beams})")
    device = attention_mask.device
    batch = attention_mask.shape[0]
    positions = _positions(attention_mask)
    out = model(input_ids=None if inputs_embeds is not None else input_ids,
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=positions, use_cache=True)
    past = out.past_key_values
    logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)        # [B, V]
    nodes = np.zeros((batch, 1), dtype=np.int64)                          # all at the root
    scores = torch.zeros(batch, 1, device=device)
    tokens = None
    for level in range(trie.depth):
        beams_in = nodes.shape[1]
        cand_tok, cand_node, valid = trie.children_block(level, nodes.reshape(-1))
        width = cand_tok.shape[1]
        cand_tok_t = torch.as_tensor(cand_tok, device=device)
        valid_t = torch.as_tensor(valid, device=device) & torch.isfinite(scores.reshape(-1, 1))
        cand = scores.reshape(-1, 1) + logp.gather(1, cand_tok_t)              # [B*k, M]
        cand = cand.masked_fill(~valid_t, float("-inf")).view(batch, beams_in * width)
        beams = min(num_beams, cand.shape[1])
        scores, flat = cand.topk(beams, dim=-1)                               # [B, k']
        origin = flat // width                                                # beam extended
        rows = (origin + torch.arange(batch, device=device)[:, None] * beams_in).reshape(-1)
        rows_np = rows.cpu().numpy()
        pick = (flat % width).reshape(-1).cpu().numpy()
        tokens = cand_tok_t[rows, torch.as_tensor(pick, device=device)].view(batch, beams)
        nodes = cand_node[rows_np, pick].reshape(batch, beams)
        if level == trie.depth - 1:
            break
        if level == 0:
            past.batch_repeat_interleave(beams)
            attention_mask = attention_mask.repeat_interleave(beams, dim=0)
            positions = positions[:, -1:].repeat_interleave(beams, dim=0)
        else:
            past.reorder_cache(rows)
            attention_mask, positions = attention_mask[rows], positions[rows]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(attention_mask), 1)], 1)
        positions = positions + 1
        out = model(input_ids=tokens.reshape(-1, 1), attention_mask=attention_mask,
                    position_ids=positions, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)    # [B*k, V]

    items = torch.as_tensor(trie.values(nodes).astype(np.int64), device=device)
    items = torch.where(torch.isfinite(scores), items, torch.zeros_like(items))
    return items[:, :top_k], scores[:, :top_k]


def to_full_sort_scores(items: torch.Tensor, scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """RecBole full-sort rows: the beam score at each generated item, the lowest
    finite value elsewhere (so ungenerated items rank last but above RecBole's
    ``-inf`` history mask)."""
    low = torch.finfo(torch.float32).min
    full = torch.full((items.shape[0], n_items), low, device=items.device)
    valid = (items > 0) & torch.isfinite(scores)
    rows = torch.arange(items.shape[0], device=items.device)[:, None].expand_as(items)
    full[rows[valid], items[valid]] = scores[valid].float()
    return full


@torch.no_grad()
def generate_text(model, tokenizer, prompts, max_new_tokens: int = 32, num_beams: int = 1,
                  batch_size: int = 8) -> list:
    """Greedy (or beam) continuation of each prompt; returns the new text only."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt",
                        padding=True).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs
