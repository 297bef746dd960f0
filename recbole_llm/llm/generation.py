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
    could fill hold item 0 and ``-inf``.
    """
    top_k = top_k or num_beams
    if top_k > num_beams:
        raise ValueError(f"top_k ({top_k}) cannot exceed num_beams ({num_beams})")
    device = input_ids.device if input_ids is not None else inputs_embeds.device
    batch = attention_mask.shape[0]
    positions = _positions(attention_mask)
    out = model(input_ids=None if inputs_embeds is not None else input_ids,
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=positions, use_cache=True)
    past = out.past_key_values
    logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)        # [B, V]
    vocab = logp.shape[-1]

    # step 0: every beam starts at the root
    root_allowed = torch.as_tensor(trie.allowed(0, 0), device=device)
    masked = torch.full_like(logp, float("-inf"))
    masked[:, root_allowed] = logp[:, root_allowed]
    beams = min(num_beams, len(root_allowed))
    scores, tokens = masked.topk(beams, dim=-1)                          # [B, k]
    nodes = np.array([[trie.child(0, 0, int(t)) for t in row] for row in tokens.tolist()])
    past.batch_repeat_interleave(beams)
    attention_mask = attention_mask.repeat_interleave(beams, dim=0)
    last_pos = positions[:, -1:].repeat_interleave(beams, dim=0)

    for level in range(1, trie.depth):
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(attention_mask), 1)], 1)
        last_pos = last_pos + 1
        out = model(input_ids=tokens.reshape(-1, 1), attention_mask=attention_mask,
                    position_ids=last_pos, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)    # [B*k, V]
        cand = torch.full_like(logp, float("-inf"))
        flat_nodes = nodes.reshape(-1)
        flat_scores = scores.reshape(-1)
        for row, node in enumerate(flat_nodes):
            if node < 0 or not torch.isfinite(flat_scores[row]):
                continue
            allowed = torch.as_tensor(trie.allowed(level, int(node)), device=device)
            cand[row, allowed] = flat_scores[row] + logp[row, allowed]
        cand = cand.view(batch, -1)                                        # [B, k*V]
        new_beams = min(num_beams, cand.shape[1])
        scores, flat_idx = cand.topk(new_beams, dim=-1)
        origin = flat_idx // vocab                                         # beam it extends
        tokens = flat_idx % vocab
        global_origin = (origin + torch.arange(batch, device=device)[:, None] * nodes.shape[1])
        past.reorder_cache(global_origin.reshape(-1))
        attention_mask = attention_mask[global_origin.reshape(-1)]
        last_pos = last_pos[global_origin.reshape(-1)]
        origin_np, tokens_np = origin.cpu().numpy(), tokens.cpu().numpy()
        nodes = np.array([[trie.child(level, int(nodes[b, o]), int(t)) if np.isfinite(s) else -1
                           for o, t, s in zip(origin_np[b], tokens_np[b], scores[b].tolist())]
                          for b in range(batch)])

    items = np.where(nodes >= 0, np.vectorize(lambda n: trie.value(n) if n >= 0 else 0)(nodes), 0)
    items = torch.as_tensor(items.astype(np.int64), device=device)[:, :top_k]
    return items, scores[:, :top_k]


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
