"""Full-sample (factored, low-rank) and vectorised-minibatch nHSIC against the reference estimator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infoplane import kernels as K
from infoplane.estimators.batched import nhsic_minibatches
from infoplane.estimators.fast import CenteredFactor, factorize, nhsic_factored, nhsic_full
from infoplane.estimators.lowrank import pivoted_cholesky, rbf_columns

try:  # the reference estimator (another module); fall back to a local solve-based Tr[...]
    from infoplane.estimators.nhsic import nhsic as _ref_nhsic

    def ref_nhsic(Kx: torch.Tensor, Ky: torch.Tensor, eps: float = 1e-5) -> float:
        return float(_ref_nhsic(Kx, Ky, eps))
except ImportError:  # pragma: no cover - only while the reference module is missing
    def ref_nhsic(Kx: torch.Tensor, Ky: torch.Tensor, eps: float = 1e-5) -> float:
        m = Kx.shape[0]
        A, B = K.center(Kx), K.center(Ky)
        eye = torch.eye(m, dtype=torch.float64)
        RA = torch.linalg.solve(A + eps * m * eye, A)
        RB = torch.linalg.solve(B + eps * m * eye, B)
        return float((RA * RB.T).sum())


def structured(m: int, seed: int = 0, d: int = 60, dz: int = 30, c: int = 5, latent: int = 3):
    """Gaussian clusters in a low-dim latent space, smooth random features (the benchmark's data)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (m,), generator=g)
    mu = 1.5 * torch.randn(c, latent, generator=g, dtype=torch.float64)
    u = mu[y] + torch.randn(m, latent, generator=g, dtype=torch.float64)
    x = torch.tanh(u @ torch.randn(latent, d, generator=g, dtype=torch.float64) / latent ** 0.5)
    z = torch.tanh(x @ (3 * torch.randn(d, dz, generator=g, dtype=torch.float64) / d ** 0.5))
    return x, z, y


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --------------------------------------------------------------------------- exact path
@settings(max_examples=15, deadline=None)
@given(m=st.integers(3, 40), d=st.integers(1, 6), seed=st.integers(0, 10 ** 6),
       sigma=st.sampled_from(["paper", "median", 0.7]), squared=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]))
def test_exact_factor_matches_reference(m, d, seed, sigma, squared, eps):
    g = np.random.default_rng(seed)
    x = g.normal(size=(m, d))
    z = np.tanh(x @ g.normal(size=(d, 3))) + 0.1 * g.normal(size=(m, 3))
    fx = factorize(x, sigma=sigma, squared=squared)
    fz = factorize(z, sigma=sigma, squared=squared)
    v, err = nhsic_factored(fz, fx, eps=eps)
    r = ref_nhsic(K.rbf_gram(z, sigma, squared), K.rbf_gram(x, sigma, squared), eps)
    assert err == 0.0 and fx.method == "exact"
    assert rel(v, r) < 1e-8 or abs(v - r) < 1e-10
    # symmetry and bounds 0 <= nHSIC <= min ranks
    assert abs(v - nhsic_factored(fx, fz, eps=eps)[0]) <= 1e-10 * max(1.0, v)
    assert -1e-12 <= v <= min(fx.rank, fz.rank) + 1e-9


def test_label_factor_equals_exact():
    x, z, y = structured(120, seed=1)
    fy = factorize(y, kernel="label")
    fy_exact = factorize(gram=K.label_gram(y))
    assert fy.method == "label" and fy.rank <= 4
    np.testing.assert_allclose(fy.s2.numpy(), fy_exact.s2[: fy.rank].numpy(), rtol=1e-10)
    assert float(torch.cat([fy_exact.s2[fy.rank:], torch.zeros(1, dtype=torch.float64)]).abs().max()) < 1e-9
    fz = factorize(z)
    v_label, _ = nhsic_factored(fz, fy)
    v_exact, _ = nhsic_factored(fz, fy_exact)
    r = ref_nhsic(K.rbf_gram(z), K.label_gram(y))
    assert rel(v_label, r) < 1e-8 and rel(v_exact, r) < 1e-8
    # one-hot input and num_classes with an absent class give the same factor
    fy2 = factorize(K.one_hot(y, 7), kernel="label")
    assert rel(nhsic_factored(fz, fy2)[0], r) < 1e-8
    assert rel(nhsic_factored(fz, factorize(y, kernel="label", num_classes=9))[0], r) < 1e-8


def test_linear_and_gram_inputs():
    x, z, _ = structured(80, seed=2)
    r = ref_nhsic(K.rbf_gram(z), K.linear_gram(x))
    fz = factorize(z)
    assert rel(nhsic_factored(fz, factorize(x, kernel="linear"))[0], r) < 1e-8
    assert rel(nhsic_factored(fz, factorize(gram=K.linear_gram(x)))[0], r) < 1e-8


# --------------------------------------------------------------------------- low rank
def test_pivoted_cholesky_invariants():
    x, _, _ = structured(300, seed=3)
    s = K.sigma_paper(x)
    ch = pivoted_cholesky(rbf_columns(x, s), torch.ones(300, dtype=torch.float64), tolerance=1e-6)
    Kx = K.rbf_gram(x, s)
    E = Kx - ch.factor @ ch.factor.T
    assert ch.rel_residual <= 1e-6
    assert abs(float(torch.trace(E)) - ch.residual_trace) < 1e-9 * 300
    assert float(torch.linalg.eigvalsh(E).min()) > -1e-9          # F F^T <= K (PSD residual)
    assert len(set(ch.pivots.tolist())) == ch.rank
    # every prefix is a pivoted Cholesky factor whose residual trace is recorded
    h = ch.rank // 2
    Eh = Kx - ch.factor[:, :h] @ ch.factor[:, :h].T
    assert abs(float(torch.trace(Eh)) - float(ch.trace_history[h])) < 1e-8 * 300


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-7])
def test_lowrank_factor_lower_bound_and_rigorous_bound(tol):
    """factorize(tolerance=t) alone stops at tr(E) <= t tr(K) (the coarse start of nhsic_full); its
    value is a lower bound of the exact one and the returned bound is rigorous."""
    x, z, y = structured(600, seed=4)
    eps = 1e-5
    exact_xz = nhsic_factored(factorize(x), factorize(z), eps)[0]
    fy = factorize(y, kernel="label")
    exact_yz = nhsic_factored(fy, factorize(z), eps)[0]
    lx, lz = factorize(x, tolerance=tol), factorize(z, tolerance=tol)
    assert lx.method == "lowrank" and lx.cholesky.rel_residual <= tol and lz.cholesky.rel_residual <= tol
    assert lx.rank < 600
    for (v, err), exact in ((nhsic_factored(lx, lz, eps), exact_xz), (nhsic_factored(fy, lz, eps), exact_yz)):
        actual = exact - v
        assert -1e-9 * exact <= actual <= err + 1e-9 * exact        # lower bound, within the rigorous bound
        assert err <= (lx.residual_trace + lz.residual_trace) / (eps * 600) + 1e-12
    # nhsic_full turns the tolerance into a relative error of the value
    for other, kern, exact in ((x, "rbf", exact_xz), (y, "label", exact_yz)):
        res = nhsic_full(z, other, kernel_y=kern, eps=eps, tolerance=max(tol, 1e-4))
        assert -1e-9 * exact <= exact - res.value <= res.error_bound + 1e-9 * exact
        assert res.error_bound <= max(tol, 1e-4) * res.value


def test_lowrank_converges_to_exact_and_max_rank():
    x, z, _ = structured(200, seed=5)
    ex = nhsic_factored(factorize(x), factorize(z))[0]
    v, err = nhsic_factored(factorize(x, tolerance=1e-12), factorize(z, tolerance=1e-12))
    assert rel(v, ex) < 1e-6
    ex_ns = nhsic_factored(factorize(x, squared=False), factorize(z, squared=False))[0]
    v_ns, _ = nhsic_factored(factorize(x, squared=False, tolerance=1e-12), factorize(z, squared=False))
    assert rel(v_ns, ex_ns) < 1e-6                          # published code's non-squared distance
    f = factorize(x, tolerance=1e-12, max_rank=7)
    assert f.rank <= 7 and f.rel_error > 1e-12
    v7, err7 = nhsic_factored(f, factorize(z))
    assert v7 <= ex + 1e-9 and err7 > 0


def test_nhsic_full_reuses_other_factor():
    x, z, y = structured(150, seed=6)
    res = nhsic_full(z, x, kernel_y="rbf", eps=1e-5, sigma="paper", tolerance=None)
    assert isinstance(res.other_factor, CenteredFactor) and res.error_bound == 0.0
    v, err, fx = res                                   # legacy unpacking
    res2 = nhsic_full(z, None, kernel_y="rbf", eps=1e-5, sigma="paper", tolerance=None, other_factor=fx)
    assert res2.other_factor is fx and res2.value == pytest.approx(v, rel=1e-12)
    assert rel(v, ref_nhsic(K.rbf_gram(z), K.rbf_gram(x))) < 1e-8
    assert res.rank_z == res.z_factor.rank and res.rank_other == fx.rank
    ry = nhsic_full(z, y, kernel_y="label", eps=1e-5, sigma="paper", tolerance=1e-3)
    assert ry.other_factor.method == "label" and ry.rank_other <= 4
    gap = ref_nhsic(K.rbf_gram(z), K.label_gram(y)) - ry.value
    assert -1e-9 <= gap <= ry.error_bound + 1e-9 and ry.error_bound <= 1e-3 * ry.value


# --------------------------------------------------------------------------- minibatch protocol
@settings(max_examples=8, deadline=None)
@given(n=st.integers(40, 130), b=st.sampled_from([5, 10, 32]), seed=st.integers(0, 10 ** 6),
       sigma=st.sampled_from(["paper", "median", 1.3]), squared=st.booleans())
def test_batched_equals_looped(n, b, seed, sigma, squared):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 4))
    z = np.tanh(x @ g.normal(size=(4, 3))) + 0.3 * g.normal(size=(n, 3))
    y = g.integers(0, 3, size=n)
    vx = nhsic_minibatches(z, x, kernel_y="rbf", batch_size=b, sigma=sigma, squared=squared)
    vy = nhsic_minibatches(z, y, kernel_y="label", batch_size=b, sigma=sigma, squared=squared,
                           num_classes=3)
    assert vx.shape == (n // b,) and vy.shape == (n // b,)          # last partial batch dropped
    for i in range(n // b):
        sl = slice(i * b, (i + 1) * b)
        Kz = K.rbf_gram(z[sl], sigma, squared)
        rx = ref_nhsic(Kz, K.rbf_gram(x[sl], sigma, squared))
        ry = ref_nhsic(Kz, K.label_gram(y[sl], 3))
        assert rel(vx[i], rx) < 1e-8 and rel(vy[i], ry) < 1e-8


def test_batched_float32_close_to_float64():
    x, z, y = structured(1000, seed=7)
    for other, kern in ((x, "rbf"), (y, "label")):
        v64 = nhsic_minibatches(z, other, kernel_y=kern)
        v32 = nhsic_minibatches(z, other, kernel_y=kern, dtype=torch.float32)
        # stated tolerance (docs/speed.md): float32 within 1e-3 relative per batch at b = 100
        np.testing.assert_allclose(v32, v64, rtol=1e-3)


def test_batched_matches_paper_mean_protocol():
    x, z, y = structured(250, seed=8)
    v = nhsic_minibatches(z, y, kernel_y="label", batch_size=100)
    assert v.shape == (2,)
    r = np.mean([ref_nhsic(K.rbf_gram(z[i:i + 100]), K.label_gram(y[i:i + 100])) for i in (0, 100)])
    assert rel(float(v.mean()), r) < 1e-8


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    x, z, y = structured(50, seed=9)
    for tol in (0.0, -1e-3, 1.0, float("nan")):
        with pytest.raises(ValueError, match="tolerance"):
            factorize(x, tolerance=tol)
    with pytest.raises(ValueError, match="m = 2"):
        factorize(x[:1])
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        factorize(bad)
    with pytest.raises(ValueError, match="NaN"):
        factorize(bad, tolerance=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        nhsic_minibatches(bad, y, kernel_y="label", batch_size=10)
    with pytest.raises(ValueError):
        factorize(x, kernel="poly")
    with pytest.raises(ValueError):
        factorize(x, gram=K.rbf_gram(x))
    with pytest.raises(ValueError, match="eps"):
        nhsic_factored(factorize(x), factorize(z), eps=0.0)
    with pytest.raises(ValueError, match="samples"):
        nhsic_factored(factorize(x), factorize(z[:40]))
    with pytest.raises(ValueError, match="batch"):
        nhsic_minibatches(z, x, batch_size=100)
    with pytest.raises(ValueError, match="batch_size"):
        nhsic_minibatches(z, x, batch_size=1)
    with pytest.raises(ValueError, match="samples"):
        nhsic_minibatches(z, x[:40], batch_size=10)
    with pytest.raises(ValueError, match="max_rank"):
        factorize(x, tolerance=1e-3, max_rank=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            factorize(x, device="cuda")


def test_prepared_sides_and_many_match_single_calls():
    from infoplane.estimators.batched import (_resolvent, batched_center, batched_rbf_grams,
                                              nhsic_minibatches_many, prepare_minibatch_side)
    x, z, y = structured(300, seed=10)
    sx = prepare_minibatch_side(x, kernel="rbf", batch_size=50)
    sy = prepare_minibatch_side(y, kernel="label", batch_size=50)
    vx, vy = nhsic_minibatches_many(z, [sx, sy])
    np.testing.assert_allclose(vx, nhsic_minibatches(z, x, batch_size=50), rtol=1e-12)
    np.testing.assert_allclose(vy, nhsic_minibatches(z, y, kernel_y="label", batch_size=50), rtol=1e-12)
    np.testing.assert_allclose(nhsic_minibatches(z, sx), vx, rtol=1e-12)
    # the eigh fallback (used where a Cholesky fails) gives the same resolvent
    Kc = batched_center(batched_rbf_grams(torch.as_tensor(z).reshape(6, 50, -1), "paper"))
    ok = torch.tensor([True, False, True, False, True, True])
    C = torch.linalg.cholesky(Kc + 5e-4 * torch.eye(50, dtype=torch.float64))
    np.testing.assert_allclose(_resolvent(Kc, 5e-4, C, ok).numpy(), _resolvent(Kc, 5e-4).numpy(), atol=1e-9)


def test_speed_benchmark_quick(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick", "--no-whole", "--sections", "jobs", "full", "--out-dir", str(tmp_path)])
    assert (tmp_path / "speed_quick.csv").exists() and (tmp_path / "speed_quick.md").exists()
    jobs = [r for r in rows if r["section"] == "jobs"]
    assert {"(1) published, in-process", "(2) written well, in-process", "ours in-process, 1 job",
            "ours in-process, --jobs 2"} <= {r["what"] for r in jobs}
    assert jobs[0]["jobs2_identical"] and jobs[0]["max_rel_diff_vs_published"] < 2e-3
    full = [r for r in rows if r["section"] == "full"]
    eigh = [r for r in full if r["method"] == "exact (eigh factors)"]
    assert eigh and all(r["rel_err_xz"] < 1e-8 and r["rel_err_yz"] < 1e-8 for r in eigh)
    low = [r for r in full if r["method"].startswith("low rank")]
    assert all(r["rel_err_xz"] <= 1e-3 and r["rel_err_yz"] <= 1e-3 for r in low)    # within the tolerance
