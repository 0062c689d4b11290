import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from infoplane.bounds import nhsic_rank_bound
from infoplane.estimators import nhsic, nhsic_eps_path
from infoplane.kernels import label_gram, linear_gram, rbf_gram

FLOATS = st.floats(-5, 5, allow_nan=False, allow_infinity=False, width=64)
SAMPLES = arrays(np.float64, st.tuples(st.integers(3, 14), st.integers(1, 3)), elements=FLOATS)
EPS = st.sampled_from([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])


def paper_form(K: np.ndarray, L: np.ndarray, eps: float) -> float:
    """Tr[KH(KH + eps m I)^-1 LH(LH + eps m I)^-1] literally as in Sakamoto & Sato 2024 app. F.1.2 (numpy solves)."""
    m = K.shape[0]
    H = np.eye(m) - 1.0 / m
    KH, LH = K @ H, L @ H
    A = np.linalg.solve((KH + eps * m * np.eye(m)).T, KH.T).T  # KH (KH + eps m I)^-1
    B = np.linalg.solve((LH + eps * m * np.eye(m)).T, LH.T).T
    return float(np.trace(A @ B))


@pytest.mark.parametrize("c, m, eps", [(2, 10, 1e-5), (3, 12, 1e-2), (5, 20, 0.1)])
def test_label_self_exact(c, m, eps):
    """Balanced labels: L~ has eigenvalue m/c with multiplicity c-1, so
    nHSIC(L, L) = (c-1) (1/(1+c eps))^2 exactly."""
    y = np.arange(m) % c
    L = label_gram(y)
    exact = (c - 1) / (1 + c * eps) ** 2
    for method in ("solve", "eigh"):
        assert float(nhsic(L, L, eps, method=method)) == pytest.approx(exact, rel=1e-10)
    assert float(nhsic_eps_path(L, L, [eps])[0]) == pytest.approx(exact, rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(SAMPLES, st.floats(0.3, 5), EPS)
def test_paths_agree_and_match_paper_form(x, sigma, eps):
    K = rbf_gram(x, sigma)
    L = linear_gram(np.sin(x[:, :1]))
    ref = paper_form(K.numpy(), L.numpy(), eps)
    tol = dict(rel=1e-6, abs=1e-8)
    assert float(nhsic(K, L, eps, method="solve")) == pytest.approx(ref, **tol)
    assert float(nhsic(K, L, eps, method="eigh")) == pytest.approx(ref, **tol)
    assert float(nhsic(K.numpy(), L.numpy(), eps)) == pytest.approx(ref, **tol)
    assert float(nhsic_eps_path(K, L, [eps, 1.0])[0]) == pytest.approx(ref, **tol)


@settings(max_examples=25, deadline=None)
@given(SAMPLES, st.floats(0.3, 5), EPS, st.randoms(use_true_random=False))
def test_bounds_symmetry_permutation(x, sigma, eps, rnd):
    K = rbf_gram(x, sigma)
    L = rbf_gram(x[:, :1] ** 2, 1.0)
    v = float(nhsic(K, L, eps))
    assert -1e-10 <= v <= nhsic_rank_bound(K, L) + 1e-8
    assert float(nhsic(L, K, eps)) == pytest.approx(v, rel=1e-8, abs=1e-10)
    p = list(range(len(x)))
    rnd.shuffle(p)
    p = torch.tensor(p)
    assert float(nhsic(K[p][:, p], L[p][:, p], eps)) == pytest.approx(v, rel=1e-8, abs=1e-10)


def test_label_bound_c_minus_1(rng):
    z = rng.normal(size=(60, 4))
    y = rng.integers(0, 4, size=60)
    v = float(nhsic(rbf_gram(z, 1.0), label_gram(y), 1e-5))
    assert 0 <= v <= len(np.unique(y)) - 1 + 1e-9


def test_eps_path_monotone_and_matches_singles(rng):
    x = rng.normal(size=(80, 2))
    y = x[:, :1] + 0.5 * rng.normal(size=(80, 1))
    K, L = rbf_gram(x, 1.0), rbf_gram(y, 1.0)
    eps = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    path = nhsic_eps_path(K, L, eps)
    singles = torch.stack([nhsic(K, L, e) for e in eps])
    assert torch.allclose(path, singles, rtol=1e-8)
    assert bool((path[1:] < path[:-1]).all())  # a = lam/(lam + eps m) decreases in eps


def test_float32_within_stated_tolerance(rng):
    """float32 agrees with float64 to 1% at eps >= 1e-3 (documented: float64 is the default because
    small eps with low-rank L needs it)."""
    x = rng.normal(size=(100, 3))
    y = rng.integers(0, 3, size=100)
    K, L = rbf_gram(x, 2.0), label_gram(y)
    v64 = float(nhsic(K, L, 1e-3))
    v32 = float(nhsic(K.float(), L.float(), 1e-3, dtype=torch.float32))
    assert v32 == pytest.approx(v64, rel=1e-2)


def test_gradcheck_and_gradient_as_loss():
    torch.manual_seed(0)
    x = torch.randn(6, 2, dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    K = rbf_gram(x, 1.0)
    f = lambda zz: nhsic(K, rbf_gram(zz, 1.0), 1e-2)  # noqa: E731
    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-5)
    f_e = lambda zz: nhsic(K, rbf_gram(zz, 1.0), 1e-2, method="eigh")  # noqa: E731
    assert torch.autograd.gradcheck(f_e, (z,), eps=1e-6, atol=1e-5)
    # Sakamoto & Sato 2024 eq. 11: -lambda * nHSIC(X, f(Z)) as a loss term, gradient reaches the weights
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    loss = -0.05 * nhsic(K, rbf_gram(x @ w, "paper"), 1e-5)
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and float(w.grad.abs().sum()) > 0


def test_bad_inputs():
    K = np.eye(4)
    for e in (0.0, -1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            nhsic(K, K, e)
    with pytest.raises(ValueError, match="eps"):
        nhsic_eps_path(K, K, [1e-3, 0.0])
    with pytest.raises(ValueError, match="different sample counts"):
        nhsic(K, np.eye(5))
    with pytest.raises(ValueError, match="at least m=2"):
        nhsic(np.eye(1), np.eye(1))
    with pytest.raises(ValueError, match="method"):
        nhsic(K, K, method="inverse")
    bad = np.eye(4)
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match=r"1 non-finite.*rows 3"):
        nhsic(K, bad)
