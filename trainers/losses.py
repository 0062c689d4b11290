"""Loss functions of the training regimes (Sakamoto & Sato 2024 sec. 2.1, 4.4, appendix B.2 and F.4.1).

All losses take a mini-batch and return a scalar tensor (mean over the batch unless stated).
Shapes: ``h`` (N, d) features, ``y`` (N,) int64 labels, ``z`` (N, ...) representations.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from infoplane import kernels


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 1 / eq. 13: mean softmax cross-entropy of ``logits`` (N, c) against ``y`` (N,)."""
    return F.cross_entropy(logits, y)


def supcon_loss(h: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss, eq. 14 (Khosla et al. 2020, L^sup_out).

    ``h`` (M, d) features of the 2N augmented views (L2-normalised here), ``labels`` (M,).
    For each anchor i, P(i) are the other views with the same label; anchors with an empty
    P(i) are skipped. Denominator: every a != i.
    """
    if h.dim() != 2 or labels.shape[0] != h.shape[0]:
        raise ValueError(f"supcon_loss needs h (M, d) and labels (M,), got {tuple(h.shape)} and {tuple(labels.shape)}")
    h = F.normalize(h, dim=1)
    m = h.shape[0]
    logits = h @ h.t() / temperature
    self_mask = torch.eye(m, dtype=torch.bool, device=h.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        raise ValueError("supcon_loss: no anchor has a positive; pass two views per sample")
    pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(pos_log_prob[valid] / n_pos[valid]).mean()


def simclr_loss(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR NT-Xent (Chen et al. 2020; Sakamoto & Sato 2024 F.4.1): the positive of a view is the other
    view of the same sample. ``h1``, ``h2`` (N, d). Equal to eq. 14 with labels = sample index."""
    if h1.shape != h2.shape:
        raise ValueError(f"simclr_loss needs two views of equal shape, got {tuple(h1.shape)} and {tuple(h2.shape)}")
    n = h1.shape[0]
    idx = torch.arange(n, device=h1.device)
    return supcon_loss(torch.cat([h1, h2]), torch.cat([idx, idx]), temperature)


def similarity_matrix(h: torch.Tensor) -> torch.Tensor:
    """Eq. 16: cosine similarities of the mean-centred rows of ``h`` (N, d) -> (N, N)."""
    h = h.flatten(1)
    h = h - h.mean(dim=1, keepdim=True)
    h = F.normalize(h, dim=1, eps=1e-8)
    return h @ h.t()


def sim_matching_loss(h: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Similarity matching loss, eq. 15 (Nøkland & Eidnes 2019): ||sim(H) - sim(Y)||_F^2,
    divided by N^2 (a mean over entries, as in their code, so the scale does not grow with N)."""
    y1 = F.one_hot(y, num_classes).to(h.dtype)
    diff = similarity_matrix(h) - similarity_matrix(y1)
    return diff.pow(2).mean()


def sp_similarity(z: torch.Tensor) -> torch.Tensor:
    """Eq. 18: RowWiseSoftmax(Z Z^T / d) for ``z`` (N, ...) flattened to (N, d)."""
    z = z.flatten(1)
    return torch.softmax(z @ z.t() / z.shape[1], dim=1)


def sp_target(s: torch.Tensor, hard: bool, topk: int = 6) -> torch.Tensor:
    """Targets sim_s(S) of eq. 17 from the forwarded class signal ``s`` (N, ...).

    soft: eq. 18 on the signal. hard (Kohan et al. 2023): for each row the ``topk`` entries of
    S S^T with the highest similarity are 1, the rest 0.
    """
    s = s.flatten(1)
    if not hard:
        return sp_similarity(s)
    k = min(int(topk), s.shape[0])
    scores = s @ s.t()
    idx = scores.topk(k, dim=1).indices
    return torch.zeros_like(scores).scatter_(1, idx, 1.0)


def sp_loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Signal propagation loss, eq. 17: (1/m) sum_ij -T_ij log sim_z(Z)_ij, ``target`` detached."""
    z = z.flatten(1)
    log_p = torch.log_softmax(z @ z.t() / z.shape[1], dim=1)
    return -(target.detach() * log_p).sum(1).mean()


def nhsic_term(z: torch.Tensor, x: torch.Tensor, sigma: Union[float, str] = "paper",
               eps: float = 1e-5) -> torch.Tensor:
    """nHSIC(X, Z) of eq. 11 on a mini-batch, differentiable in ``z`` (float64).

    RBF kernels with bandwidth ``sigma`` ("paper" = 5 sqrt(d), F.1.2) on both ``x`` (treated as
    a constant) and ``z``. The regimes subtract ``lambda * nhsic_term`` from the local loss.
    """
    from infoplane.estimators.nhsic import nhsic  # the differentiable float64 estimator of F.1.2

    z64 = z.flatten(1).to(torch.float64)
    x64 = x.detach().flatten(1).to(torch.float64)
    K = kernels.rbf_gram(x64, sigma=sigma)
    L = kernels.rbf_gram(z64, sigma=sigma)
    return nhsic(K, L, eps=eps)


def pool_features(z: torch.Tensor, max_features: int = 2048) -> torch.Tensor:
    """Average-pool a representation to at most ``max_features`` features and flatten (F.1.1).

    (N, C, H, W): adaptive average pooling to the largest square grid with C*s*s <= max_features
    (1x1 if C alone exceeds it). (N, T, D) token sequences: average over tokens if T*D is too
    large. (N, d): unchanged. Returns (N, d') with d' <= max(max_features, C or D).
    """
    if z.dim() == 2:
        return z
    if z.numel() // z.shape[0] <= max_features:
        return z.flatten(1)
    if z.dim() == 4:
        c, hgt, wid = z.shape[1:]
        s = max(1, int(math.isqrt(max(1, max_features // c))))
        s = min(s, hgt, wid)
        return F.adaptive_avg_pool2d(z, (s, s)).flatten(1)
    if z.dim() == 3:
        return z.mean(dim=1)
    return z.flatten(2).mean(dim=2)


def pooled_size(shape: tuple, max_features: int = 2048) -> int:
    """Number of features :func:`pool_features` returns for one sample of ``shape`` (no batch)."""
    return int(pool_features(torch.zeros((1,) + tuple(shape)), max_features).shape[1])
