"""Residual quantisation: RQ-KMeans (closed form) and a trainable RQ codebook.

``rq_kmeans`` fits one k-means codebook per level on the residual left by
the previous levels.  ``ResidualQuantizer`` is the trainable version used by
RQ-VAE-style tokenisers (and SCRec): straight-through codes, codebook and
commitment losses, and dead-code reset from live residuals.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_llm.tokenization.kmeans import kmeans


def rq_kmeans(x: np.ndarray, k: int, levels: int, iters: int = 50, seed: int = 0):
    """Returns (codes [n, levels], codebooks [levels, k, d])."""
    residual = np.ascontiguousarray(x, dtype=np.float32).copy()
    codes, books = [], []
    for level in range(levels):
        centroids, assign = kmeans(residual, k, iters=iters, seed=seed + level)
        if len(centroids) < k:  # fewer points than codes
            centroids = np.vstack([centroids, np.zeros((k - len(centroids), x.shape[1]), np.float32)])
        residual -= centroids[assign]
        codes.append(assign)
        books.append(centroids)
    return np.stack(codes, axis=1), np.stack(books)


class ResidualQuantizer(nn.Module):
    """``levels`` codebooks of ``k`` vectors; quantises ``z`` level by level."""

    def __init__(self, dim: int, k: int, levels: int, beta: float = 0.25):
        super().__init__()
        self.k, self.levels, self.beta = k, levels, beta
        self.codebooks = nn.Parameter(torch.randn(levels, k, dim) * 0.1)
        self.register_buffer("usage", torch.zeros(levels, k))

    @torch.no_grad()
    def init_from_kmeans(self, z: torch.Tensor, iters: int = 20, seed: int = 0):
        _, books = rq_kmeans(z.detach().cpu().numpy(), self.k, self.levels, iters, seed)
        self.codebooks.copy_(torch.from_numpy(books))

    def forward(self, z: torch.Tensor):
        """Returns (quantised z (straight-through), codes [n, levels], loss)."""
        straight, _, codes, loss = self.quantize(z)
        return straight, codes, loss

    def quantize(self, z: torch.Tensor):
        """``(straight-through z_q, z_q as the sum of the chosen code vectors,
        codes [n, levels], codebook + commitment loss)``; a loss on the second
        reaches the codebooks (SCRec's alignment loss)."""
        residual, quantised = z, torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for level in range(self.levels):
            book = self.codebooks[level]
            idx = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            chosen = book[idx]
            # codebook loss pulls codes to residuals; commitment keeps residuals near codes
            loss = loss + F.mse_loss(chosen, residual.detach()) + \
                self.beta * F.mse_loss(residual, chosen.detach())
            quantised = quantised + chosen
            residual = residual - chosen.detach()
            codes.append(idx)
            if self.training:
                self.usage[level] += torch.bincount(idx, minlength=self.k).float()
        straight = z + (quantised - z).detach()
        return straight, quantised, torch.stack(codes, dim=1), loss

    @torch.no_grad()
    def reset_dead_codes(self, z: torch.Tensor) -> int:
        """Re-seed codes unused since the last reset with random live residuals."""
        residual, reset = z.detach(), 0
        for level in range(self.levels):
            book = self.codebooks[level]
            dead = torch.nonzero(self.usage[level] == 0).flatten()
            if len(dead):
                pick = torch.randint(0, len(residual), (len(dead),), device=z.device)
                book[dead] = residual[pick]
                reset += len(dead)
            idx = torch.cdist(residual, book).argmin(dim=1)
            residual = residual - book[idx]
        self.usage.zero_()
        return reset

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward(z)[1]


class RQVAE(nn.Module):
    """MLP encoder -> ResidualQuantizer -> MLP decoder, trained to reconstruct."""

    def __init__(self, in_dim: int, latent_dim: int, k: int, levels: int,
                 hidden: int = 256, beta: float = 0.25):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, in_dim))
        self.quantizer = ResidualQuantizer(latent_dim, k, levels, beta)

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        zq, codes, q_loss = self.quantizer(z)
        recon = self.decoder(zq)
        return recon, codes, F.mse_loss(recon, x), q_loss


def train_rqvae(x: np.ndarray, k: int, levels: int, latent_dim: int = 32, hidden: int = 256,
                epochs: int = 50, batch_size: int = 1024, lr: float = 1e-3, beta: float = 0.25,
                reset_every: int = 10, seed: int = 0, extra_loss=None, show_progress: bool = False):
    """Fit an RQ-VAE on ``x``; returns (model, codes [n, levels], history of losses).

    ``extra_loss(model, batch, z_quantised)`` adds a method's own term (e.g.
    SCRec's alignment loss) to reconstruction + quantisation.
    """
    from tqdm import tqdm

    torch.manual_seed(seed)
    data = torch.as_tensor(np.asarray(x, dtype=np.float32))
    model = RQVAE(data.shape[1], latent_dim, k, levels, hidden, beta)
    with torch.no_grad():
        model.quantizer.init_from_kmeans(model.encoder(data), seed=seed)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in tqdm(range(epochs), desc="RQ-VAE", disable=not show_progress):
        perm, total = torch.randperm(len(data)), 0.0
        for start in range(0, len(data), batch_size):
            batch = data[perm[start:start + batch_size]]
            recon, _, rec_loss, q_loss = model(batch)
            loss = rec_loss + q_loss
            if extra_loss is not None:
                loss = loss + extra_loss(model, batch, recon)
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * len(batch)
        history.append(total / len(data))
        if reset_every and (epoch + 1) % reset_every == 0 and epoch + 1 < epochs:
            with torch.no_grad():
                model.quantizer.reset_dead_codes(model.encoder(data))
    model.eval()
    with torch.no_grad():
        codes = model.quantizer.encode(model.encoder(data)).numpy()
    return model, codes, history
