"""Closed-form ground truth for the accuracy benchmark (docs/estimators.md "Ground truth").

Zero-mean jointly Gaussian (X, Y) with canonical correlations rho_i:
  Shannon MI ``I = -1/2 sum log(1 - rho_i^2)``; chi2-MI ``I_chi2 = prod 1/(1 - rho_i^2) - 1``.
Population HSIC with RBF widths (sx, sy), joint covariance S, B = blockdiag(Sxx, Syy),
A = diag(1/sx^2 on x, 1/sy^2 on y):
  ``HSIC = det(I + 2 S A)^-1/2 - 2 det(I + (S + B) A)^-1/2 + det(I + 2 B A)^-1/2``.
Label tasks: balanced classes, Z | y ~ N(mu_y, s^2 I); HSIC(Y, Z) by Lemma 1 of Sakamoto & Sato 2024 with
``E k = (sig^2/(sig^2 + 2 s^2))^(d/2) exp(-||mu_a - mu_b||^2 / (2 (sig^2 + 2 s^2)))``;
chi2-MI ``E_z[sum_y p(y|z)^2 / p(y)] - 1`` by Monte Carlo (integrand bounded by c).
Task parameters follow Czyz et al. (NeurIPS 2023): bivariate rho = 0.75; "dense" (every off-diagonal
correlation 0.5; one canonical correlation d/(d+1)); "2-pair" (two canonical correlations 0.8).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np
from scipy.special import logsumexp

__all__ = ["gaussian_mi", "gaussian_chi2_mi", "gaussian_hsic_rbf", "GaussianTask", "LabelTask",
           "dense_task", "two_pair_task", "expected_biased_hsic", "bivariate_task", "canonical_correlations"]


def gaussian_mi(rhos) -> float:
    """Shannon MI (nats) from canonical correlations."""
    r = np.asarray(rhos, dtype=float)
    return float(-0.5 * np.sum(np.log1p(-r ** 2)))


def gaussian_chi2_mi(rhos) -> float:
    """chi2 mutual information from canonical correlations: prod 1/(1-rho^2) - 1."""
    r = np.asarray(rhos, dtype=float)
    return float(np.prod(1.0 / (1.0 - r ** 2)) - 1.0)


def canonical_correlations(cov: np.ndarray, dx: int) -> np.ndarray:
    """Canonical correlations of a joint covariance with x = first dx coordinates (descending)."""
    Sxx, Syy, Sxy = cov[:dx, :dx], cov[dx:, dx:], cov[:dx, dx:]
    Wx = np.linalg.inv(np.linalg.cholesky(Sxx))
    Wy = np.linalg.inv(np.linalg.cholesky(Syy))
    return np.linalg.svd(Wx @ Sxy @ Wy.T, compute_uv=False)


def gaussian_hsic_rbf(cov: np.ndarray, dx: int, sx: float, sy: float) -> float:
    """Population HSIC (RBF kernels of widths sx on x, sy on y) for zero-mean Gaussian (x, y)."""
    cov = np.asarray(cov, dtype=float)
    n = cov.shape[0]
    B = np.zeros_like(cov)
    B[:dx, :dx], B[dx:, dx:] = cov[:dx, :dx], cov[dx:, dx:]
    A = np.diag(np.r_[np.full(dx, 1.0 / sx ** 2), np.full(n - dx, 1.0 / sy ** 2)])
    I = np.eye(n)
    f = lambda M: np.linalg.det(I + M @ A) ** -0.5  # noqa: E731
    return float(f(2 * cov) - 2 * f(cov + B) + f(2 * B))


def _set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def expected_biased_hsic(terms: dict, m: int) -> float:
    """Exact ``E[Tr(K~ L~)] / (m-1)^2`` (the paper's biased estimator) for kernels with unit diagonal.

    ``terms``: ``a = E k12 l12``, ``b = E k12 l13``, ``c = E k12 l34``, ``kappa = E k12``,
    ``lam = E l12`` over i.i.d. pairs; ``Tr(K~L~) = S1 - (2/m) S2 + S3/m^2`` with
    S1 = sum K_ij L_ij, S2 = sum K_ij L_iq, S3 = sum K_ij sum L_qr, summed over index patterns.
    """
    def term(i, j, q, r):
        kd, ld = i == j, q == r
        if kd and ld:
            return 1.0
        if kd:
            return terms["lam"]
        if ld:
            return terms["kappa"]
        shared = len({i, j} & {q, r})
        return terms["a"] if shared == 2 else terms["b"] if shared == 1 else terms["c"]

    def expect(names, pick):
        tot = 0.0
        for part in _set_partitions(list(names)):
            block = {n: bi for bi, blk in enumerate(part) for n in blk}
            count = float(np.prod([m - t for t in range(len(part))]))
            tot += count * term(*pick(block))
        return tot

    s1 = expect("ij", lambda b: (b["i"], b["j"], b["i"], b["j"]))
    s2 = expect("ijq", lambda b: (b["i"], b["j"], b["i"], b["q"]))
    s3 = expect("ijqr", lambda b: (b["i"], b["j"], b["q"], b["r"]))
    return (s1 - 2.0 * s2 / m + s3 / m ** 2) / (m - 1) ** 2


@dataclass
class GaussianTask:
    """Jointly Gaussian (x in R^dx, y in R^dy) with joint covariance ``cov`` (unit marginal variances)."""

    name: str
    dx: int
    cov: np.ndarray

    @property
    def rhos(self) -> np.ndarray:
        return canonical_correlations(self.cov, self.dx)

    def mi(self) -> float:
        return gaussian_mi(self.rhos)

    def chi2_mi(self) -> float:
        return gaussian_chi2_mi(self.rhos)

    def hsic(self, sx: float, sy: float) -> float:
        return gaussian_hsic_rbf(self.cov, self.dx, sx, sy)

    def hsic_terms(self, sx: float, sy: float) -> dict:
        """Kernel moments a, b, c, kappa, lam (see ``expected_biased_hsic``) in closed form."""
        cov, dx = self.cov, self.dx
        n = cov.shape[0]
        B = np.zeros_like(cov)
        B[:dx, :dx], B[dx:, dx:] = cov[:dx, :dx], cov[dx:, dx:]
        A = np.diag(np.r_[np.full(dx, 1.0 / sx ** 2), np.full(n - dx, 1.0 / sy ** 2)])
        f = lambda M: float(np.linalg.det(np.eye(n) + M @ A) ** -0.5)  # noqa: E731
        kappa = float(np.linalg.det(np.eye(dx) + 2 * cov[:dx, :dx] / sx ** 2) ** -0.5)
        lam = float(np.linalg.det(np.eye(n - dx) + 2 * cov[dx:, dx:] / sy ** 2) ** -0.5)
        return {"a": f(2 * cov), "b": f(cov + B), "c": f(2 * B), "kappa": kappa, "lam": lam}

    def sample(self, m: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        z = rng.multivariate_normal(np.zeros(self.cov.shape[0]), self.cov, size=m, method="cholesky")
        return z[:, :self.dx], z[:, self.dx:]


def bivariate_task(rho: float = 0.75) -> GaussianTask:
    return GaussianTask(f"bivariate-rho{rho:g}", 1, np.array([[1.0, rho], [rho, 1.0]]))


def dense_task(d: int, corr: float = 0.5) -> GaussianTask:
    """Every off-diagonal correlation ``corr`` (within and across blocks), x, y in R^d."""
    cov = np.full((2 * d, 2 * d), corr)
    np.fill_diagonal(cov, 1.0)
    return GaussianTask(f"dense-{d}x{d}", d, cov)


def two_pair_task(d: int, rho: float = 0.8) -> GaussianTask:
    """Independent coordinates except two pairs (x_1, y_1), (x_2, y_2) with correlation rho."""
    if d < 2:
        raise ValueError("two_pair_task needs d >= 2.")
    cov = np.eye(2 * d)
    for i in range(2):
        cov[i, d + i] = cov[d + i, i] = rho
    return GaussianTask(f"2pair-{d}x{d}", d, cov)


@dataclass
class LabelTask:
    """Balanced labels y in {0..c-1}, z | y ~ N(mu_y, s^2 I_d), mu_y = (delta/sqrt 2) e_y (pairwise distance delta)."""

    c: int
    d: int
    delta: float = 2.0
    s: float = 1.0
    name: str = field(default="")

    def __post_init__(self) -> None:
        if self.d < self.c:
            raise ValueError("LabelTask needs d >= c (means on the coordinate axes).")
        if not self.name:
            self.name = f"labels-c{self.c}-d{self.d}-delta{self.delta:g}"

    @property
    def means(self) -> np.ndarray:
        mu = np.zeros((self.c, self.d))
        mu[np.arange(self.c), np.arange(self.c)] = self.delta / np.sqrt(2.0)
        return mu

    def expected_k(self, sigma: float, same: bool) -> float:
        dist2 = 0.0 if same else self.delta ** 2
        v = sigma ** 2 + 2 * self.s ** 2
        return float((sigma ** 2 / v) ** (self.d / 2) * np.exp(-dist2 / (2 * v)))

    def hsic(self, sigma: float) -> float:
        """Lemma 1: (1/c)(E_pos k - E k)."""
        e_pos = self.expected_k(sigma, True)
        e_all = (e_pos + (self.c - 1) * self.expected_k(sigma, False)) / self.c
        return (e_pos - e_all) / self.c

    def hsic_terms(self, sigma: float) -> dict:
        """Kernel moments (RBF on z, linear on one-hot y) for ``expected_biased_hsic``."""
        e_pos = self.expected_k(sigma, True)
        kappa = (e_pos + (self.c - 1) * self.expected_k(sigma, False)) / self.c
        return {"a": e_pos / self.c, "b": kappa / self.c, "c": kappa / self.c, "kappa": kappa,
                "lam": 1.0 / self.c}

    def chi2_mi(self, n_mc: int = 200_000, seed: int = 12345) -> float:
        """E_z[sum_y p(y|z)^2 / p(y)] - 1 by Monte Carlo (fixed seed)."""
        rng = np.random.default_rng(seed)
        z, _ = self.sample(n_mc, rng)
        mu = self.means
        logp = -((z[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * self.s ** 2)  # (n, c) up to const
        post = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
        return float(np.mean(self.c * (post ** 2).sum(1)) - 1.0)

    def mi(self, n_mc: int = 200_000, seed: int = 12345) -> float:
        """Shannon I(Y; Z) = log c - H(Y|Z) by Monte Carlo."""
        rng = np.random.default_rng(seed)
        z, _ = self.sample(n_mc, rng)
        logp = -((z[:, None, :] - self.means[None]) ** 2).sum(-1) / (2 * self.s ** 2)
        logpost = logp - logsumexp(logp, axis=1, keepdims=True)
        return float(np.log(self.c) + np.mean((np.exp(logpost) * logpost).sum(1)))

    def sample(self, m: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """m samples with exactly balanced labels when c divides m (else near-balanced)."""
        y = np.arange(m) % self.c
        rng.shuffle(y)
        z = self.means[y] + self.s * rng.standard_normal((m, self.d))
        return z, y
