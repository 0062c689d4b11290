"""Exact full-sample nHSIC from Cholesky resolvents (infoplane.estimators.exact) against the
definition, the eigenvector route and the explicit spectral summary."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infoplane.estimators import assess, exact, fast, protocol
from infoplane.estimators.chance import summarize
from infoplane.kernels import center, rbf_gram

torch.set_num_threads(1)


def _data(m=160, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, 7))
    y = rng.integers(0, 4, m)
    z = np.tanh(x[:, :3] @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(m, 5)) + np.eye(4)[y] @ rng.normal(size=(4, 5)))
    return x, y, z


def _definition(K: np.ndarray, L: np.ndarray, eps: float) -> float:
    m = K.shape[0]
    H = np.eye(m) - 1.0 / m
    Kc, Lc = H @ K @ H, H @ L @ H
    a = eps * m
    return float(np.trace(Kc @ np.linalg.inv(Kc + a * np.eye(m)) @ Lc @ np.linalg.inv(Lc + a * np.eye(m))))


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 1e-1])
@pytest.mark.parametrize("squared", [True, False])
def test_value_is_the_definition(eps, squared):
    x, y, z = _data()
    sz, sx = 5.0 * np.sqrt(5), 5.0 * np.sqrt(7)
    K = rbf_gram(torch.tensor(z), sigma=sz, squared=squared).numpy()
    L = rbf_gram(torch.tensor(x), sigma=sx, squared=squared).numpy()
    rz = exact.prepare_resolvent(z, eps=eps, squared=squared)
    rx = exact.prepare_resolvent(x, eps=eps, squared=squared)
    assert exact.resolvent_value(rz, rx) == pytest.approx(_definition(K, L, eps), rel=1e-9)
    Y = np.eye(4)[y]
    fy = fast.factorize(y, kernel="label")
    assert exact.resolvent_value(rz, fy) == pytest.approx(_definition(K, Y @ Y.T, eps), rel=1e-9)


@pytest.mark.parametrize("target", ["x", "y"])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_every_column_agrees_with_the_eigenvector_route(target, eps):
    x, y, z = _data(m=200, seed=1)
    fz = fast.factorize(z)
    ft = fast.factorize(x) if target == "x" else fast.factorize(y, kernel="label")
    rt = exact.prepare_resolvent(x, eps=eps) if target == "x" else ft
    a = protocol.nhsic_factor_result(fz, ft, eps)
    b = protocol.nhsic_resolvent_result(exact.prepare_resolvent(z, eps=eps), rt)
    for col in ("value", "null_mean", "null_sd", "z", "max_value", "adjusted", "p_value"):
        assert getattr(b, col) == pytest.approx(getattr(a, col), rel=1e-8, abs=1e-300), col
    assert b.error_bound == 0.0 and b.rank_target == a.rank_target
    # numerical rank (eigenvalues above eigvalsh's rounding level) vs every positive eigenvalue of eigh
    assert 0 < b.rank_z <= a.rank_z


def test_summary_is_the_explicit_one():
    _, _, z = _data(m=90, seed=2)
    side = exact.prepare_resolvent(z, eps=1e-3)
    explicit = summarize(side.R)
    got = exact.resolvent_summary(side)
    for f in ("trace", "trace_sq", "diag_sq"):
        assert float(getattr(got, f)[0]) == pytest.approx(float(getattr(explicit, f)[0]), rel=1e-9), f
    np.testing.assert_allclose(got.eigenvalues[0].numpy(), explicit.eigenvalues[0].numpy(), atol=1e-10)
    # R = K~ (K~ + a I)^-1, doubly centred
    K = center(rbf_gram(torch.tensor(z), sigma="paper"))
    a = 1e-3 * 90
    R = K @ torch.linalg.inv(K + a * torch.eye(90, dtype=K.dtype))
    torch.testing.assert_close(side.R, 0.5 * (R + R.T), rtol=0, atol=1e-10)
    assert float(side.R.sum(0).abs().max()) < 1e-9


def test_assess_full_uses_it_and_gram_input_agrees():
    x, y, z = _data(m=120, seed=3)
    res = assess(z, x, protocol="full")
    via_gram = exact.resolvent_value(exact.prepare_resolvent(gram=rbf_gram(torch.tensor(z), sigma="paper")),
                                     exact.prepare_resolvent(gram=rbf_gram(torch.tensor(x), sigma="paper")))
    assert res.value == pytest.approx(via_gram, rel=1e-10) and res.error_bound == 0.0
    lab = assess(z, y, protocol="full")
    assert lab.value == pytest.approx(exact.resolvent_value(exact.prepare_resolvent(z),
                                                            fast.factorize(y, kernel="label")), rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(6, 40), eps=st.sampled_from([1e-5, 1e-3, 0.3]))
def test_value_is_permutation_invariant_and_within_its_bounds(seed, m, eps):
    rng = np.random.default_rng(seed)
    z, x = rng.normal(size=(m, 3)), rng.normal(size=(m, 2))
    p = rng.permutation(m)
    rz, rx = exact.prepare_resolvent(z, eps=eps), exact.prepare_resolvent(x, eps=eps)
    v = exact.resolvent_value(rz, rx)
    vp = exact.resolvent_value(exact.prepare_resolvent(z[p], eps=eps), exact.prepare_resolvent(x[p], eps=eps))
    assert vp == pytest.approx(v, rel=1e-8, abs=1e-12)
    r = protocol.nhsic_resolvent_result(rz, rx)
    assert -1e-9 <= v <= r.max_value * (1 + 1e-9) + 1e-12       # von Neumann: below the bound
    assert r.max_value <= min(float(rz.R.trace()), float(rx.R.trace())) + 1e-9


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="exactly one"):
        exact.prepare_resolvent()
    with pytest.raises(ValueError, match="square"):
        exact.prepare_resolvent(gram=np.ones((3, 4)))
    with pytest.raises(ValueError, match="eps"):
        exact.prepare_resolvent(np.ones((5, 2)), eps=0.0)
    a, b = exact.prepare_resolvent(np.random.rand(6, 2)), exact.prepare_resolvent(np.random.rand(7, 2))
    with pytest.raises(ValueError, match="differ"):
        exact.resolvent_value(a, b)
