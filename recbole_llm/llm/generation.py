"""Batched generation: free text, and constrained beam search over item codes.

``constrained_beam_search`` decodes exactly ``trie.depth`` code tokens per
beam, with every step restricted to the children of the beam's trie node, so
each finished beam *is* an item.  It runs many users at once, keeps the KV
cache (the prompt is encoded once per user and shared by its beams through
tree attention), and returns the top-K items with their summed
log-probabilities.
``to_full_sort_scores`` turns that into RecBole's full-sort score row.
"""
import numpy as np
import torch

from recbole_llm.llm.prompts import position_ids


@torch.no_grad()
def constrained_beam_search(model, input_ids, attention_mask, trie, num_beams: int = 20,
                            top_k: int = None, inputs_embeds=None, renormalize: bool = False):
    """Top items for each prompt of a left-padded batch.

    Returns ``(items [B, K], scores [B, K])`` sorted by score (log-probability
    of the item's code sequence given the prompt); slots that no valid item
    could fill hold item 0 and ``-inf``.  ``renormalize``: each step's
    log-probabilities are taken over the valid children only (a token with one
    valid child costs nothing), instead of over the whole vocabulary as
    Hugging Face's ``prefix_allowed_tokens_fn`` does.

    Tree attention: the prompt is encoded once per user and never copied per
    beam.  Each step feeds the ``k`` beam tokens of a user as one block whose
    4D attention mask lets a token see the prompt and its own ancestors only;
    the KV cache grows by ``k`` tokens per user and level and is never
    reordered.  Candidates come from the trie's child blocks, so no step builds
    a vocabulary-wide mask.
    """
    top_k = top_k or num_beams
    if top_k > num_beams:
        raise ValueError(f"top_k ({top_k}) cannot exceed num_beams ({num_beams})")
    device = attention_mask.device
    batch, prompt_len = attention_mask.shape
    positions = position_ids(attention_mask)
    out = model(input_ids=None if inputs_embeds is not None else input_ids,
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=positions, use_cache=True)
    past = out.past_key_values
    logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)        # [B, V]
    low = torch.finfo(torch.float32).min
    prompt_bias = torch.zeros(batch, prompt_len, device=device).masked_fill(attention_mask == 0, low)
    next_pos = positions[:, -1:] + 1                                      # [B, 1]
    nodes = np.zeros((batch, 1), dtype=np.int64)                          # all at the root
    scores = torch.zeros(batch, 1, device=device)
    ancestors = torch.zeros(batch, 1, 0, dtype=torch.long, device=device)  # tree slots per beam
    tree_len = 0
    for level in range(trie.depth):
        beams_in = nodes.shape[1]
        cand_tok, cand_node, valid = trie.children_block(level, nodes.reshape(-1))
        width = cand_tok.shape[1]
        cand_tok_t = torch.as_tensor(cand_tok, device=device)
        valid_t = torch.as_tensor(valid, device=device) & torch.isfinite(scores.reshape(-1, 1))
        step = logp.gather(1, cand_tok_t).masked_fill(~valid_t, float("-inf"))  # [B*k, M]
        if renormalize:
            step = step - torch.logsumexp(step, dim=1, keepdim=True).nan_to_num(neginf=0.0)
        cand = (scores.reshape(-1, 1) + step).view(batch, beams_in * width)
        beams = min(num_beams, cand.shape[1])
        scores, flat = cand.topk(beams, dim=-1)                               # [B, k']
        origin = flat // width                                                # beam extended
        rows = (origin + torch.arange(batch, device=device)[:, None] * beams_in).reshape(-1)
        pick = (flat % width).reshape(-1)
        tokens = cand_tok_t[rows, pick].view(batch, beams)
        nodes = cand_node[rows.cpu().numpy(), pick.cpu().numpy()].reshape(batch, beams)
        if level == trie.depth - 1:
            break
        # the new block: beam j sees the prompt, its parent's ancestors and itself
        slots = tree_len + torch.arange(beams, device=device)
        ancestors = torch.cat([ancestors.gather(1, origin[..., None].expand(-1, -1, ancestors.shape[2])),
                               slots.expand(batch, -1)[..., None]], dim=2)     # [B, k', level+1]
        tree_len += beams
        tree_bias = torch.full((batch, beams, tree_len), low, device=device)
        tree_bias.scatter_(2, ancestors, 0.0)
        mask = torch.cat([prompt_bias[:, None, :].expand(-1, beams, -1), tree_bias], dim=2)
        out = model(input_ids=tokens, attention_mask=mask[:, None], past_key_values=past,
                    position_ids=(next_pos + level).expand(-1, beams), use_cache=True)
        past = out.past_key_values
        logp = torch.log_softmax(out.logits.float(), dim=-1).reshape(batch * beams, -1)

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
