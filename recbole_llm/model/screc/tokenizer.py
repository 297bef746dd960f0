"""SCRec's Alignment Tokenization (stage one).

Collaborative item embeddings (a conventional model's item table, trained on
the training split) go through an MLP encoder into ``codebook_levels``
cascaded residual codebooks and back through a decoder.  The loss is the
RQ-VAE's (reconstruction + codebook + commitment) plus the alignment loss:
the quantised item vector, projected, must find its own item's LLM text
representation among the batch's (InfoNCE), so items whose codes are close
also read alike to the LLM.  The alignment uses the sum of the chosen code
vectors, not the straight-through copy, so its gradient reaches the
codebooks.

What the projection learned also seeds the backbone: with ``align_target:
input_embeddings`` each new code token's input embedding starts at its code
vector projected into the LLM's token space (scaled to the text
embeddings' norm), so an item's code tokens add up near its text.
"""
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from recbole_llm.model.layers import info_nce
from recbole_llm.tokenization import RQVAE, code_perplexity, collision_rate




class AlignedRQVAE(nn.Module):
    """An RQ-VAE over collaborative embeddings with a projection of its
    quantised vectors into the LLM's text-representation space."""

    def __init__(self, in_dim: int, text_dim: int, s):
        super().__init__()
        self.rq = RQVAE(in_dim, s.codebook_dim, s.codebook_size, s.codebook_levels,
                        s.codebook_hidden, s.codebook_beta)
        self.align = nn.Linear(s.codebook_dim, text_dim)

    def losses(self, x: torch.Tensor, text: torch.Tensor, ids: torch.Tensor, temperature: float,
               has_text: torch.Tensor = None):
        """``(reconstruction, quantisation, alignment)`` losses of a batch; the
        alignment over the rows with text (``has_text``), ``ids`` naming equal
        texts (never each other's negatives)."""
        z = self.rq.encoder(x)
        straight, raw, _, q_loss = self.rq.quantizer.quantize(z)
        recon = nn.functional.mse_loss(self.rq.decoder(straight), x)
        rows = has_text if has_text is not None else slice(None)
        projected, keys, key_ids = self.align(raw)[rows], text[rows], ids[rows]
        align = info_nce(projected, keys, temperature, key_ids) if len(keys) > 1 \
            else raw.sum() * 0.0
        return recon, q_loss, align

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.rq.quantizer.encode(self.rq.encoder(x))

    @torch.no_grad()
    def code_embeddings(self) -> torch.Tensor:
        """``[levels, k, text_dim]``: each code vector projected into the text
        space, without the bias (code vectors add up, so must their projections)."""
        return self.rq.quantizer.codebooks @ self.align.weight.T


def reconstruction_error(model: AlignedRQVAE, x: torch.Tensor) -> float:
    """Mean squared error of the decoded codes, relative to the data's variance
    (0: exact; 1: no better than the mean item)."""
    with torch.no_grad():
        z = model.rq.encoder(x)
        straight, _, _, _ = model.rq.quantizer.quantize(z)
        err = nn.functional.mse_loss(model.rq.decoder(straight), x).item()
    return err / max(float(x.var(dim=0).sum() / x.shape[1]), 1e-12)


def train_alignment_tokenizer(collab: np.ndarray, text: np.ndarray, s, device,
                              show_progress: bool = False) -> dict:
    """Codebooks over ``collab`` (items 1..n, no padding row) aligned with
    ``text`` (the same items' LLM text representations).

    Returns ``codes`` [n, levels] (raw: collisions not yet resolved),
    ``token_init`` [levels, k, text_dim] (code vectors in the text space),
    ``preference`` [n, k] (last-level codes nearest first, for reassigning
    collisions) and ``report``: per-epoch losses, reconstruction error, code usage per level,
    collision rate, dead codes reset."""
    gen = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    collab = np.asarray(collab, dtype=np.float32)
    # standardised per dimension: a recommender's item table is on no fixed scale
    # (SASRec's starts at std 0.02), and codebooks fitted to a tiny spread collapse
    collab = (collab - collab.mean(0)) / np.maximum(collab.std(0), 1e-8)
    x = torch.as_tensor(collab, device=device)
    text = np.asarray(text, dtype=np.float32)
    t = torch.as_tensor(text, device=device)
    has_text = torch.as_tensor(np.abs(text).sum(1) > 0, device=device)
    # items with the same text share an id: an equal text is not a negative
    _, same = np.unique(text, axis=0, return_inverse=True)
    text_ids = torch.as_tensor(same.reshape(-1), device=device)
    model = AlignedRQVAE(x.shape[1], t.shape[1], s).to(device)
    with torch.no_grad():
        model.rq.quantizer.init_from_kmeans(model.rq.encoder(x), seed=s.seed)
    optim = torch.optim.Adam(model.parameters(), lr=s.codebook_learning_rate)
    history, resets = [], 0
    for epoch in tqdm(range(s.codebook_epochs), desc="SCRec codebooks", disable=not show_progress):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        sums, n = np.zeros(3), 0
        for start in range(0, len(x), s.codebook_batch_size):
            rows = order[start:start + s.codebook_batch_size]
            recon, q_loss, align = model.losses(x[rows], t[rows], text_ids[rows],
                                                s.align_temperature, has_text[rows])
            loss = recon + q_loss + s.align_weight * align
            optim.zero_grad()
            loss.backward()
            optim.step()
            sums += np.array([recon.item(), q_loss.item(), align.item()]) * len(rows)
            n += len(rows)
        history.append(dict(zip(("reconstruction", "quantisation", "alignment"),
                                (sums / n).round(6).tolist())))
        last = epoch + 1 == s.codebook_epochs
        if s.codebook_reset_every and (epoch + 1) % s.codebook_reset_every == 0 and not last:
            model.eval()
            with torch.no_grad():
                resets += model.rq.quantizer.reset_dead_codes(model.rq.encoder(x))
    model.eval()
    codes = model.encode(x).cpu().numpy()
    with torch.no_grad():
        z = model.rq.encoder(x)
        _, raw, _, _ = model.rq.quantizer.quantize(z)
        # last-level codes by distance to each item's last residual: where a
        # colliding item is moved (nearest free code first)
        books = model.rq.quantizer.codebooks
        residual = z - (raw - books[-1][torch.as_tensor(codes[:, -1], device=z.device)])
        preference = torch.cdist(residual, books[-1]).argsort(dim=1).cpu().numpy()
        scale = t.norm(dim=1).mean() / model.align(raw).sub(model.align.bias).norm(dim=1).mean()
        token_init = (model.code_embeddings() * scale).cpu().numpy()
    report = {
        "reconstruction_error": round(reconstruction_error(model, x), 6),
        "codes_used": [int(len(np.unique(codes[:, level]))) for level in range(codes.shape[1])],
        "code_perplexity": [round(p, 2) for p in code_perplexity(codes)],
        "collision_rate": round(collision_rate(codes), 6),
        "dead_codes_reset": int(resets),
        "epochs": history,
    }
    return {"codes": codes, "token_init": token_init, "preference": preference, "report": report}
