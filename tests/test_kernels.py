import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from infoplane import kernels as kn

FLOATS = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


def test_rbf_hand_values():
    x = np.array([[0.0, 0.0], [3.0, 4.0]])  # distance 5
    K = kn.rbf_gram(x, sigma=5.0)
    assert K.dtype == torch.float64
    assert torch.allclose(K, torch.tensor([[1.0, np.exp(-25 / 50)], [np.exp(-25 / 50), 1.0]], dtype=torch.float64))
    Kn = kn.rbf_gram(x, sigma=5.0, squared=False)  # published-code convention: ||v-w|| in the exponent
    assert float(Kn[0, 1]) == pytest.approx(np.exp(-5 / 50))


def test_bandwidth_rules():
    x = np.zeros((4, 3, 2, 2))
    assert kn.sigma_paper(x) == pytest.approx(5 * np.sqrt(12))
    assert kn.resolve_sigma(x, "paper") == pytest.approx(5 * np.sqrt(12))
    pts = np.array([[0.0], [1.0], [3.0]])  # distances 1, 2, 3 -> median 2
    assert kn.sigma_median(pts) == pytest.approx(2.0)
    assert kn.resolve_sigma(pts, 0.7) == 0.7


def test_flatten_and_numpy_torch_agree(rng):
    x = rng.normal(size=(7, 2, 3))
    assert kn.flatten(x).shape == (7, 6)
    assert kn.flatten(np.arange(5)).shape == (5, 1)
    assert torch.allclose(kn.rbf_gram(x, 2.0), kn.rbf_gram(torch.tensor(x), 2.0))
    K32 = kn.rbf_gram(torch.tensor(x, dtype=torch.float32), 2.0, dtype=torch.float32)
    assert K32.dtype == torch.float32
    assert torch.allclose(K32.double(), kn.rbf_gram(x, 2.0), atol=1e-6)


def test_linear_label_onehot_center():
    y = np.array([0, 2, 2, 1])
    oh = kn.one_hot(y)
    assert oh.shape == (4, 3) and oh.sum() == 4
    assert kn.one_hot(y, num_classes=5).shape == (4, 5)
    L = kn.label_gram(y)
    assert torch.equal(L, (torch.tensor(y)[:, None] == torch.tensor(y)[None, :]).double())
    assert torch.allclose(kn.linear_gram(oh), L)
    Lc = kn.center(L)
    H = torch.eye(4, dtype=torch.float64) - 1 / 4
    assert torch.allclose(Lc, H @ L @ H)
    assert torch.allclose(Lc.sum(0), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_gram_dispatch_auto():
    y = np.array([0, 1, 1, 0])
    assert torch.equal(kn.gram(y, "auto"), kn.label_gram(y))
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert torch.allclose(kn.gram(x, "auto", sigma=1.0), kn.rbf_gram(x, 1.0))
    with pytest.raises(ValueError, match="unknown kernel"):
        kn.gram(x, "poly")


def test_autograd_kept_and_finite_for_duplicates():
    z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    for sq in (True, False):
        K = kn.rbf_gram(z, 1.0, squared=sq)
        (K.sum()).backward()
        assert torch.isfinite(z.grad).all()
        z.grad = None


def test_cross_gram_matches_block(rng):
    x = rng.normal(size=(6, 3))
    K = kn.rbf_gram(x, 1.5)
    Kc = kn.rbf_gram(x[:4], 1.5, other=x[4:])
    assert torch.allclose(Kc, K[:4, 4:])


@pytest.mark.parametrize("bad, msg", [
    (np.array([[1.0, np.nan], [0.0, 1.0], [np.inf, 2.0]]), r"2 non-finite value\(s\) \(1 NaN, 1 inf\).*rows 0, 2"),
])
def test_nonfinite_error_says_how_many_and_where(bad, msg):
    with pytest.raises(ValueError, match=msg):
        kn.rbf_gram(bad, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        kn.linear_gram(bad)


def test_bad_inputs():
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        kn.rbf_gram(np.ones((5, 3)), "median")
    with pytest.raises(ValueError, match="unknown bandwidth rule"):
        kn.resolve_sigma(np.ones((3, 1)), "silverman")
    for s in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            kn.rbf_gram(np.eye(3), s)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        kn.one_hot(np.array([0, -1]), num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        kn.one_hot(np.array([0, 3]), num_classes=2)
    with pytest.raises(ValueError, match="integers"):
        kn.one_hot(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="square"):
        kn.center(np.ones((3, 2)))


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 12), st.integers(1, 4)), elements=FLOATS),
       st.floats(0.1, 10))
def test_rbf_properties(x, sigma):
    """Symmetric, unit diagonal, entries in [0, 1], PSD (up to round-off)."""
    K = kn.rbf_gram(x, sigma)
    assert torch.allclose(K, K.T)
    assert torch.allclose(K.diagonal(), torch.ones(len(x), dtype=torch.float64))
    assert float(K.min()) >= 0 and float(K.max()) <= 1
    assert float(torch.linalg.eigvalsh(K).min()) > -1e-8 * len(x)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 10), st.integers(2, 10)).map(lambda t: (t[0], t[0])),
              elements=FLOATS))
def test_center_idempotent_and_zero_sums(A):
    Kc = kn.center(A)
    assert torch.allclose(kn.center(Kc), Kc, atol=1e-9)
    assert torch.allclose(Kc.sum(0), torch.zeros(len(A), dtype=torch.float64), atol=1e-9)
    assert torch.allclose(Kc.sum(1), torch.zeros(len(A), dtype=torch.float64), atol=1e-9)
