import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from infoplane.estimators import soft_nearest_neighbour_loss as snn


def naive_snn(z: np.ndarray, y: np.ndarray, T: float) -> float:
    """Eq. 30 of Sakamoto & Sato 2024 with plain loops (reference)."""
    b = len(z)
    tot = 0.0
    for i in range(b):
        num = sum(math.exp(-np.sum((z[i] - z[j]) ** 2) / T) for j in range(b) if j != i and y[j] == y[i])
        den = sum(math.exp(-np.sum((z[i] - z[k]) ** 2) / T) for k in range(b) if k != i)
        tot += math.log(num / den)
    return -tot / b


def test_hand_value():
    z = np.array([[0.0], [1.0], [0.0], [1.0]])
    y = np.array([0, 0, 1, 1])
    # every sample: partner at distance 1 (e^-1); others: e^0 and e^-1 -> 1 + log(1 + 2/e)
    assert float(snn(z, y, 1.0)) == pytest.approx(1 + math.log(1 + 2 / math.e))


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(4, 10), st.integers(1, 3)),
              elements=st.floats(-3, 3, allow_nan=False, width=64)),
       st.floats(0.2, 20), st.randoms(use_true_random=False))
def test_matches_naive_and_invariances(z, T, rnd):
    y = np.array([i % 2 for i in range(len(z))])
    v = float(snn(z, y, T))
    assert v == pytest.approx(naive_snn(z, y, T), rel=1e-9, abs=1e-9)
    p = list(range(len(z)))
    rnd.shuffle(p)
    assert float(snn(z[p], y[p], T)) == pytest.approx(v, rel=1e-9, abs=1e-9)
    assert float(snn(z + 3.0, y, T)) == pytest.approx(v, rel=1e-9, abs=1e-9)  # translation
    assert float(snn(torch.tensor(z), torch.tensor(y), T)) == pytest.approx(v, rel=1e-12, abs=1e-12)


def test_log_space_stable_at_tiny_temperature():
    z = np.array([[0.0], [0.1], [50.0], [50.1]])
    y = np.array([0, 0, 1, 1])
    v = float(snn(z, y, 1e-3))  # naive exp underflows for the cross-class terms
    assert math.isfinite(v) and v == pytest.approx(0.0, abs=1e-12)


def test_paper_temperature():
    z = np.random.default_rng(0).normal(size=(8, 4))
    y = np.arange(8) % 2
    assert float(snn(z, y, "paper")) == pytest.approx(naive_snn(z, y, 2 * (5 * 2) ** 2))


def test_no_partner_raise_or_exclude():
    z = np.array([[0.0], [1.0], [2.0], [5.0]])
    y = np.array([0, 0, 1, 2])
    with pytest.raises(ValueError, match=r"2 sample\(s\) \(indices 2, 3\) have no other sample"):
        snn(z, y, 1.0)
    v = float(snn(z, y, 1.0, no_partner="exclude"))
    full = np.exp(-np.array([[0, 1, 4, 25], [1, 0, 1, 16]]) / 1.0)
    ref = -np.mean([np.log(full[0, 1] / (full[0, 1:].sum())), np.log(full[1, 0] / (full[1, [0, 2, 3]].sum()))])
    assert v == pytest.approx(ref)
    with pytest.raises(ValueError, match="every sample would be dropped"):
        snn(z[1:], y[1:], 1.0, no_partner="exclude")


def test_gradient_finite():
    z = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    y = torch.arange(10) % 3
    snn(z, y, 2.0).backward()
    assert torch.isfinite(z.grad).all()


def test_bad_inputs():
    z = np.zeros((4, 2))
    with pytest.raises(ValueError, match="4 samples but y has 3"):
        snn(z, np.array([0, 0, 1]), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        snn(z, np.array([0, 0, 1, 1]), 0.0)
    with pytest.raises(ValueError, match="integer labels"):
        snn(z, np.array([0.0, 0.0, 1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="no_partner"):
        snn(z, np.array([0, 0, 1, 1]), 1.0, no_partner="ignore")
    bad = np.zeros((4, 2))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        snn(bad, np.array([0, 0, 1, 1]), 1.0)
