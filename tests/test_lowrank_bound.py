"""Low-rank full-sample nHSIC: the tolerance contract ``exact - v in [0, bound]``, ``bound <= t v``,
resumable pivoted Cholesky, reuse (extension) of the input-side factor, and the exact path's memory guard."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infoplane import kernels as K
from infoplane.estimators import fast
from infoplane.estimators.fast import (CenteredFactor, ExactMemoryError, FullSampleNHSIC, extend_factor, factorize,
                                       nhsic_factored, nhsic_full, refine_nhsic)
from infoplane.estimators.lowrank import extend_cholesky, pivoted_cholesky, rbf_columns


def check_contract(res: FullSampleNHSIC, exact: float, t: float, eps: float = 1e-5) -> None:
    # float64 rounding: Gram entries carry ~1e-16 absolute error, which moves nHSIC by ~1e-16 m / (eps m)
    # (seen: two exact computations of a 5e-9 value at eps = 0.1 differ by 6e-17)
    slack = 1e-9 * exact + 1e-14 / eps
    gap = exact - res.value
    assert gap >= -slack, (exact, res.value)                                  # a lower bound
    assert gap <= res.error_bound + slack, (gap, res.error_bound)
    assert res.error_bound <= t * res.value, (res.error_bound, res.value)


# --------------------------------------------------------------------------- (a) random data
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(10, 300), d=st.integers(1, 12), dz=st.integers(1, 8), seed=st.integers(0, 10 ** 6),
       sigma=st.sampled_from(["paper", "median"]), log_eps=st.floats(-5, -1),
       scale=st.floats(0.1, 3.0), noise=st.floats(0.0, 1.0))
def test_contract_random_data(m, d, dz, seed, sigma, log_eps, scale, noise):
    g = np.random.default_rng(seed)
    eps = 10.0 ** log_eps
    x = scale * g.normal(size=(m, d))
    z = np.tanh(x @ g.normal(size=(d, dz))) + noise * g.normal(size=(m, dz))
    y = g.integers(0, 4, size=m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # the contract must be met without a warning
        for other, kern in ((x, "rbf"), (y, "label")):
            exact = nhsic_full(z, other, kernel_y=kern, eps=eps, sigma=sigma)
            assert exact.error_bound == 0.0
            for t in (1e-3, 1e-2):
                res = nhsic_full(z, other, kernel_y=kern, eps=eps, sigma=sigma, tolerance=t)
                check_contract(res, exact.value, t, eps)


def test_bound_formula_and_lower_bound_for_coarse_factors():
    """Any factor (even a very coarse one) gives a lower bound within the stated bound."""
    g = np.random.default_rng(1)
    x = g.normal(size=(200, 5))
    z = np.tanh(x @ g.normal(size=(5, 3)))
    y = g.integers(0, 3, size=200)
    eps = 1e-4
    for tol in (1e-1, 1e-2, 1e-4):
        fx, fz = factorize(x, tolerance=tol), factorize(z, tolerance=tol)
        for a, b, exact in ((fz, fx, nhsic_factored(factorize(z), factorize(x), eps)[0]),
                            (fz, factorize(y, kernel="label"),
                             nhsic_factored(factorize(z), factorize(y, kernel="label"), eps)[0])):
            v, bound = nhsic_factored(a, b, eps)
            assert -1e-9 * exact <= exact - v <= bound + 1e-9 * exact
            assert bound <= (a.residual_trace + b.residual_trace) / (eps * 200) + 1e-12
            assert nhsic_factored(b, a, eps)[1] == pytest.approx(bound, rel=1e-9)


# --------------------------------------------------------------------------- (b) digits and a conv layer
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    m = 1000
    x = torch.tensor(d.data[:m], dtype=torch.float64) / 16.0         # pixels in [0, 1], 64-d
    y = torch.tensor(d.target[:m])
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)).double()
    with torch.no_grad():
        z = conv(x.reshape(m, 1, 8, 8)).reshape(m, -1)                # randomly initialised layer, (m, 64)
    fx, fy, fz = factorize(x), factorize(y, kernel="label"), factorize(z)
    exact = {"xy": nhsic_factored(fx, fy)[0], "zx": nhsic_factored(fz, fx)[0], "zy": nhsic_factored(fz, fy)[0]}
    return x, y, z, exact


@pytest.mark.parametrize("t", [1e-3, 1e-2])
def test_contract_digits_and_conv_layer(digits, t):
    x, y, z, exact = digits
    cases = {"xy": (x, y, "label"), "zx": (z, x, "rbf"), "zy": (z, y, "label")}
    methods = set()
    for key, (a, b, kern) in cases.items():
        res = nhsic_full(a, b, kernel_y=kern, sigma="paper", tolerance=t)
        check_contract(res, exact[key], t)
        assert (exact[key] - res.value) / exact[key] <= t
        methods.add(res.z_factor.method)
    assert "lowrank" in methods                      # not everything fell back to the exact factor


# --------------------------------------------------------------------------- (c) reuse and extension
def test_reused_other_factor_is_extended_and_matches_fresh():
    g = np.random.default_rng(3)
    m, eps, t = 300, 1e-5, 1e-3
    x = g.normal(size=(m, 3))
    z_dep = np.tanh(x @ g.normal(size=(3, 4)))                  # strongly dependent on x: large value
    z_weak = 0.05 * x[:, :1] + g.normal(size=(m, 3))             # weakly dependent: small value
    first = nhsic_full(z_dep, x, eps=eps, tolerance=t)
    fx = first.other_factor
    assert fx.method == "lowrank" and fx.rank < m // 4
    second = nhsic_full(z_weak, None, other_factor=fx, eps=eps, tolerance=t)
    fx2 = second.other_factor
    assert fx2 is not fx and fx2.cholesky.rank > fx.cholesky.rank          # extended for the smaller value
    assert fx2.residual_trace < fx.residual_trace
    assert torch.equal(fx2.cholesky.factor[:, : fx.cholesky.rank], fx.cholesky.factor)   # prefix kept
    assert torch.equal(fx2.cholesky.pivots[: fx.cholesky.rank], fx.cholesky.pivots)
    fresh = nhsic_full(z_weak, x, eps=eps, tolerance=t)
    exact = nhsic_full(z_weak, x, eps=eps).value
    check_contract(second, exact, t)
    check_contract(fresh, exact, t)
    assert abs(second.value - fresh.value) <= t * exact
    # the extended factor serves the first layer as well, and is not extended again
    again = nhsic_full(z_dep, None, other_factor=fx2, eps=eps, tolerance=t)
    assert again.other_factor is fx2
    check_contract(again, nhsic_full(z_dep, x, eps=eps).value, t)
    # legacy tuple unpacking
    v, err, f = again
    assert (v, err, f) == (again.value, again.error_bound, fx2)


def test_refine_extends_given_factors_and_gram_input():
    g = np.random.default_rng(4)
    m, eps, t = 250, 1e-5, 1e-2
    x = g.normal(size=(m, 3))
    z = np.sin(x @ g.normal(size=(3, 2)))
    y = g.integers(0, 5, size=m)
    exact = nhsic_factored(factorize(z), factorize(y, kernel="label"), eps)[0]
    # explicit Gram input, low rank
    fz = factorize(gram=K.rbf_gram(z, "paper"), tolerance=1e-2)
    assert fz.method == "lowrank" and fz.kernel == "gram" and fz.extendable
    res = refine_nhsic(fz, factorize(y, kernel="label"), eps=eps, tolerance=t)
    check_contract(res, exact, t)
    assert res.rank_other <= 4 and res.other_factor.method == "label"
    # a factor passed as z to nhsic_full
    res2 = nhsic_full(factorize(z, tolerance=1e-2), y, kernel_y="label", eps=eps, tolerance=t)
    check_contract(res2, exact, t)


def test_extend_cholesky_invariants():
    g = np.random.default_rng(5)
    x = torch.tensor(g.normal(size=(400, 4)))
    s = K.sigma_median(x)
    Kx = K.rbf_gram(x, s)
    ch = pivoted_cholesky(rbf_columns(x, s), torch.ones(400, dtype=torch.float64), tolerance=1e-2)
    ch2 = extend_cholesky(ch, residual=1e-6 * 400)
    assert ch.residual_trace <= 1e-2 * 400 and ch2.residual_trace <= 1e-6 * 400
    assert ch2.rank > ch.rank and torch.equal(ch2.factor[:, : ch.rank], ch.factor)
    assert len(set(ch2.pivots.tolist())) == ch2.rank
    E = Kx - ch2.factor @ ch2.factor.T
    assert abs(float(torch.trace(E)) - ch2.residual_trace) < 1e-9 * 400
    assert float(torch.linalg.eigvalsh(E).min()) > -1e-9                    # F F^T <= K still
    assert torch.allclose(torch.diagonal(E), ch2.residual_diag, atol=1e-9)
    assert ch2.trace_history.shape == (ch2.rank + 1,)
    assert torch.equal(ch2.trace_history[: ch.rank + 1], ch.trace_history)
    assert extend_cholesky(ch2, residual=1.0) is ch2                         # already there
    full = extend_cholesky(ch2, residual=0.0)
    assert full.complete and full.residual_trace == 0.0 and full.rank <= 400
    f = factorize(x, sigma=s, tolerance=1e-2)
    f2 = extend_factor(f, residual=1e-3)
    assert f2.cholesky.residual_trace <= 1e-3 < f.cholesky.residual_trace
    assert f2.cholesky.rank > f.cholesky.rank and f.extendable and extend_factor(f2, residual=1.0) is f2


def test_max_rank_warns_when_contract_cannot_be_met():
    g = np.random.default_rng(6)
    x = g.normal(size=(200, 8))
    z = np.tanh(x @ g.normal(size=(8, 5)))
    with pytest.warns(RuntimeWarning, match="max_rank"):
        res = nhsic_full(z, x, sigma="median", tolerance=1e-3, max_rank=5)
    exact = nhsic_full(z, x, sigma="median").value
    assert res.z_factor.cholesky.rank <= 5 and res.error_bound > 1e-3 * res.value
    assert -1e-9 * exact <= exact - res.value <= res.error_bound + 1e-9 * exact     # still a valid bound


# --------------------------------------------------------------------------- (d) memory guard
def test_exact_memory_guard(monkeypatch):
    g = np.random.default_rng(7)
    x = g.normal(size=(300, 3))
    z = np.tanh(x)
    need = fast.exact_memory_bytes(300)
    assert need >= 4 * 300 ** 2 * 8
    monkeypatch.setattr(fast, "available_memory_bytes", lambda device=None: need - 1)
    for call in (lambda: factorize(x), lambda: factorize(gram=K.rbf_gram(x)),
                 lambda: nhsic_full(z, x, kernel_y="rbf")):
        with pytest.raises(ExactMemoryError) as info:
            call()
        msg = str(info.value)
        assert "m = 300" in msg and "GiB" in msg and "available" in msg
        assert "tolerance=1e-3" in msg and "--tolerance 1e-3" in msg
        assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError)
    # the low-rank path does not switch to the exact factor without memory, and still meets the contract
    res = nhsic_full(z, x, tolerance=1e-3)
    assert res.z_factor.method == "lowrank" and res.other_factor.method == "lowrank"
    monkeypatch.setattr(fast, "available_memory_bytes", lambda device=None: need)
    exact = nhsic_full(z, x).value
    check_contract(res, exact, 1e-3)


def test_available_memory_is_positive():
    assert fast.available_memory_bytes() > 0
    assert isinstance(fast.available_memory_bytes("cpu"), int)


def test_factor_fields():
    g = np.random.default_rng(8)
    x = g.normal(size=(120, 4))
    f = factorize(x, tolerance=1e-2)
    assert isinstance(f, CenteredFactor) and f.method == "lowrank"
    assert f.rank > 0 and f.residual_trace >= f.cholesky.residual_trace > 0
    assert f.rel_error == pytest.approx(f.residual_trace / 120)
    fe = factorize(x)
    assert fe.exact and fe.residual_trace == 0.0 and fe.cholesky is None


# --------------------------------------------------------------------------- (d) the exact fallback
def _fallback_case(seed: int = 0, m: int = 300):
    g = np.random.default_rng(seed)
    x = g.normal(size=(m, 40))                                   # white noise: needs more than m/4 pivots
    z = np.tanh(x[:, :1]) + 0.01 * g.normal(size=(m, 1))         # smooth, one-dimensional: low rank
    return x, z


def test_a_side_past_half_rank_falls_back_to_its_exact_resolvent():
    from infoplane.estimators import exact, protocol

    x, z = _fallback_case()
    res = nhsic_full(z, x, tolerance=1e-3)
    assert res.z_factor.method == "lowrank" and res.other_factor.method == "resolvent"
    assert res.other_factor.residual_trace == 0.0 and not res.other_factor.extendable
    ref = protocol.nhsic_resolvent_result(exact.prepare_resolvent(z), exact.prepare_resolvent(x))
    check_contract(res, ref.value, 1e-3)
    # the result and its chance level from the mixed pair (low-rank Z, exact X)
    r = protocol.nhsic_factor_result(res.z_factor, res.other_factor, 1e-5)
    assert r.value == pytest.approx(res.value, rel=1e-12) and r.error_bound == pytest.approx(res.error_bound)
    assert r.rank_target == ref.rank_target
    for field_ in ("null_mean", "null_sd", "max_value", "adjusted"):
        assert getattr(r, field_) == pytest.approx(getattr(ref, field_), rel=1e-3), field_
    # both sides exact: the exact value, bound 0
    both = nhsic_full(x[:, :20], x[:, 20:], tolerance=1e-3)
    assert both.z_factor.method == both.other_factor.method == "resolvent" and both.error_bound == 0.0
    ref2 = exact.resolvent_value(exact.prepare_resolvent(x[:, :20]), exact.prepare_resolvent(x[:, 20:]))
    assert both.value == pytest.approx(ref2, rel=1e-12)


def test_exact_side_cache_computes_the_other_side_once_and_changes_no_value():
    x, z = _fallback_case(1)
    z2 = z ** 2 + 0.1 * z
    fx = factorize(x, tolerance=1e-3)
    cache = fast.ExactSideCache()
    a = fast.refine_nhsic(factorize(z, tolerance=1e-3), fx, tolerance=1e-3, other_exact=cache)
    b = fast.refine_nhsic(factorize(z2, tolerance=1e-3), fx, tolerance=1e-3, other_exact=cache)
    assert a.other_factor.method == "resolvent" and b.other_factor is a.other_factor    # computed once
    for zz, r in ((z, a), (z2, b)):
        plain = fast.refine_nhsic(factorize(zz, tolerance=1e-3), fx, tolerance=1e-3)
        assert plain.value == r.value and plain.error_bound == r.error_bound
    with pytest.raises(ValueError, match="eps"):
        a.other_factor.weights(1e-3)
