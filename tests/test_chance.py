"""Exact permutation-null moments, the chance-adjusted value and the one-engine library API."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import infoplane
from infoplane import kernels as K
from infoplane.estimators import chance, get_estimator, permutation_test
from infoplane.estimators.nhsic import resolvent

torch.set_num_threads(1)


def _monte_carlo(A: torch.Tensor, B: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """Tr(A P B P^T) over n uniform random permutations, vectorised in chunks."""
    m = A.shape[0]
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, 1000):
        perms = torch.stack([torch.randperm(m, generator=g) for _ in range(min(1000, n - start))])
        Bp = B[perms[:, :, None], perms[:, None, :]]
        out.append((A[None] * Bp).sum(dim=(1, 2)))
    return torch.cat(out).numpy()


def _pair(seed: int, m: int, d: int, kind: str, dep: float):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d))
    z = dep * x[:, :2] + rng.normal(size=(m, 2))
    if kind == "label":
        y = rng.integers(0, 4, size=m)
        return z, y, K.label_gram(y, 4)
    return z, x, K.rbf_gram(x, sigma="median")


@settings(max_examples=12, deadline=None, derandomize=True)
@given(m=st.integers(8, 48), eps=st.sampled_from([1e-5, 1e-3, 1e-1]), kind=st.sampled_from(["rbf", "label"]),
       sigma=st.sampled_from(["paper", "median", 0.7]), dep=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 10**6))
def test_nhsic_null_moments_match_4000_permutations(m, eps, kind, sigma, dep, seed):
    z, _, L = _pair(seed, m, 3, kind, dep)
    A = resolvent(K.rbf_gram(z, sigma=sigma), eps)
    B = resolvent(L, eps)
    mean, var = chance.null_moments(chance.summarize(A), chance.summarize(B))
    mc = _monte_carlo(A, B, 4000, seed)
    sd = math.sqrt(var[0])
    assert mean[0] == pytest.approx(mc.mean(), rel=0.01, abs=5 * mc.std() / math.sqrt(4000))
    assert sd == pytest.approx(mc.std(ddof=1), rel=0.05, abs=1e-10)
    # von Neumann: no pairing, the observed one included, exceeds the bound
    bound = chance.upper_bound(chance.summarize(A), chance.summarize(B))[0]
    assert mc.max() <= bound + 1e-9 and float((A * B).sum()) <= bound + 1e-9


def test_hsic_moments_and_scale_through_the_engine():
    z, x, _ = _pair(3, 40, 3, "rbf", 0.5)
    res = infoplane.assess(z, x, "hsic", sigma="median")
    Kc, Lc = K.center(K.rbf_gram(z, sigma="median")), K.center(K.rbf_gram(x, sigma="median"))
    mc = _monte_carlo(Kc, Lc, 4000, 0) / 39 ** 2
    assert res.null_mean == pytest.approx(mc.mean(), rel=0.01)
    assert res.null_sd == pytest.approx(mc.std(ddof=1), rel=0.05)
    assert res.value == pytest.approx(float(get_estimator("hsic").fn(K.rbf_gram(z, sigma="median"),
                                                                      K.rbf_gram(x, sigma="median"))))


def test_mean_formula_is_exact_for_any_doubly_centred_pair():
    """E[Tr(A P B P^T)] = Tr(A) Tr(B) / (m - 1): exhaustive over all 5! permutations."""
    import itertools

    rng = np.random.default_rng(0)
    A = K.center(torch.tensor(rng.normal(size=(5, 5)))); A = A + A.T
    B = K.center(torch.tensor(rng.normal(size=(5, 5)))); B = B + B.T
    vals = [float((A * B[list(p)][:, list(p)]).sum()) for p in itertools.permutations(range(5))]
    mean, var = chance.null_moments(chance.summarize(A), chance.summarize(B))
    assert mean[0] == pytest.approx(np.mean(vals), rel=1e-10)
    assert var[0] == pytest.approx(np.var(vals), rel=1e-10)


def test_adjusted_is_zero_at_chance_and_one_at_perfect_alignment():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    same = infoplane.assess(x, x, sigma="median", eps=1e-3)
    assert same.adjusted == pytest.approx(1.0, abs=1e-9) and same.z > 50 and same.p_value < 1e-10
    # independent pairs: adjusted scatters around 0 with the predicted sd; z is standard-ish
    zs, adj = [], []
    for s in range(40):
        r = np.random.default_rng(100 + s)
        res = infoplane.assess(r.normal(size=(60, 3)), r.integers(0, 3, 60), eps=1e-3, sigma="median")
        zs.append(res.z)
        adj.append(res.adjusted)
        assert res.adjusted <= 1 + 1e-12 and 0 < res.p_value <= 1
    assert abs(np.mean(zs)) < 0.5 and 0.6 < np.std(zs) < 1.4
    assert abs(np.mean(adj)) < 0.02


def test_minibatch_protocol_averages_per_batch_moments():
    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(250, 5)), rng.integers(0, 3, 250)
    res = infoplane.assess(z, y, protocol="minibatch", batch_size=100)
    assert res.n_batches == 2 and res.n_samples == 200 and res.batch_size == 100
    parts = [infoplane.assess(z[i * 100:(i + 1) * 100], y[i * 100:(i + 1) * 100]) for i in range(2)]
    assert res.value == pytest.approx(np.mean([p.value for p in parts]), rel=1e-10)
    assert res.std == pytest.approx(np.std([p.value for p in parts], ddof=1), rel=1e-8)
    assert res.null_mean == pytest.approx(np.mean([p.null_mean for p in parts]), rel=1e-10)
    assert res.null_sd == pytest.approx(math.sqrt(sum(p.null_sd ** 2 for p in parts)) / 2, rel=1e-8)
    assert res.max_value == pytest.approx(np.mean([p.max_value for p in parts]), rel=1e-10)


def test_p_value_is_calibrated_against_a_permutation_test():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 2))
    z = 0.25 * x + rng.normal(size=(80, 2))
    res = infoplane.assess(z, x, sigma="median", eps=1e-3)
    perm = permutation_test(z, x, "nhsic", n_permutations=2000, seed=0, sigma="median", eps=1e-3)
    assert perm.null_mean == pytest.approx(res.null_mean, rel=0.01)
    assert perm.null_sd == pytest.approx(res.null_sd, rel=0.06)
    assert res.p_value == pytest.approx(perm.p_value, abs=0.02 + 0.3 * perm.p_value)


def test_kernel_y_linear_on_integer_labels_is_one_hot():
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(60, 3)), rng.integers(0, 4, 60)
    onehot = infoplane.dependence(z, y, kernel_y="label")
    assert infoplane.dependence(z, y, kernel_y="linear") == pytest.approx(onehot)
    assert infoplane.dependence(z, y) == pytest.approx(onehot)
    with pytest.raises(ValueError, match="ambiguous"):
        infoplane.dependence(z, y.astype(float), kernel_y="linear")


def test_unknown_keywords_raise_type_error():
    rng = np.random.default_rng(6)
    z, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    for fn in (infoplane.dependence, infoplane.assess):
        with pytest.raises(TypeError, match="epsilon"):
            fn(z, y, epsilon=1e-3)
    with pytest.raises(TypeError, match="tolerence"):
        infoplane.assess(z, y, tolerence=1e-3)
    with pytest.raises(TypeError, match="epsilon"):
        permutation_test(z, y, "nhsic", n_permutations=5, epsilon=1e-3)


def test_half_precision_complex_and_non_symmetric_inputs_are_refused():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(30, 3))
    G = K.rbf_gram(z)
    nh = get_estimator("nhsic").fn
    for dt in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match="half-precision"):
            nh(G.to(dt), G.to(dt))
    with pytest.raises(ValueError, match="complex"):
        infoplane.dependence(z + 1j * z, rng.integers(0, 2, 30))
    bad = G.clone()
    bad[0, 1] += 0.1
    with pytest.raises(ValueError, match="not symmetric"):
        nh(bad, G)
    # half-precision *features* are fine: they are data, computed in float64
    zt = torch.tensor(z, dtype=torch.float16)
    assert infoplane.dependence(zt, zt) == pytest.approx(infoplane.dependence(zt.double(), zt.double()))


def test_result_object_prints_and_converts():
    rng = np.random.default_rng(8)
    z, y = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
    res = infoplane.assess(z, y, protocol="minibatch", batch_size=50)
    assert float(res) == res.value and "chance" in str(res) and "adjusted" in str(res)
    d = res.to_dict()
    assert d["n_batches"] == 4 and "batch_values" not in d
    with pytest.raises(ValueError, match="batch_size=500 is larger"):
        infoplane.assess(z, y, protocol="minibatch", batch_size=500)
    with pytest.raises(ValueError, match="protocol"):
        infoplane.assess(z, y, protocol="minibatches")
    with pytest.raises(ValueError, match="tolerance applies"):
        infoplane.assess(z, y, protocol="minibatch", tolerance=1e-3)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(m=st.integers(6, 80), d=st.integers(1, 6), eps=st.sampled_from([1e-5, 1e-3, 1e-1]),
       dep=st.sampled_from([0.0, 0.3, 3.0]), labels=st.booleans(), seed=st.integers(0, 10**6))
def test_adjusted_lies_in_small_negative_to_one(m, d, eps, dep, labels, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d))
    z = dep * x + rng.normal(size=(m, d))
    y = rng.integers(0, 3, m) if labels else x
    res = infoplane.assess(z, y, eps=eps, sigma="median" if m > 10 else 1.0)
    assert res.value <= res.max_value + 1e-9
    if not math.isfinite(res.adjusted):
        # undefined only when chance already reaches the bound (e.g. m <= d + 1: both resolvents ~ H)
        assert res.max_value - res.null_mean <= 1e-9 * max(res.max_value, 1.0)
        return
    assert res.adjusted <= 1 + 1e-9
    # below chance only by what the null's own spread allows
    assert res.adjusted >= -6 * res.null_sd / (res.max_value - res.null_mean)
