import numpy as np
import pytest
import torch

from infoplane.estimators import (get_estimator, list_estimators, null_baseline, permutation_test,
                                  permutation_test_grams, register_estimator)
from infoplane.estimators import registry
from infoplane.estimators.registry import EstimatorSpec
from infoplane.kernels import label_gram, rbf_gram
import infoplane


def _pair(rng, m=120, rho=0.8):
    x = rng.normal(size=(m, 1))
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=(m, 1))
    return x, y


@pytest.mark.parametrize("est", ["nhsic", "hsic", "hsic-unbiased"])
def test_fast_null_equals_recomputation(rng, est):
    """The O(m^2) permuted-resolvent path equals re-running the estimator on L[p][:, p]."""
    x, y = _pair(rng, m=40)
    K, L = rbf_gram(x, 1.0), rbf_gram(y, 1.0)
    spec = get_estimator(est)
    res = permutation_test_grams(K, L, est, n_permutations=5, seed=3)
    g = torch.Generator().manual_seed(3)
    ref = [float(spec.fn(K, L[p][:, p], **spec.defaults)) for p in (torch.randperm(40, generator=g) for _ in range(5))]
    np.testing.assert_allclose(res.null_values, ref, rtol=1e-8, atol=1e-12)
    assert res.value == pytest.approx(float(spec.fn(K, L, **spec.defaults)), rel=1e-8)


def test_pvalue_convention_and_power(rng):
    x, y = _pair(rng)
    dep = permutation_test(x, y, "nhsic", n_permutations=49, seed=0, sigma_x=1.0, sigma_y=1.0)
    assert dep.p_value == pytest.approx(1 / 50)  # (1 + 0) / (1 + 49): never 0
    assert dep.value > dep.null_mean + 3 * dep.null_sd
    assert dep.p_value == (1 + np.sum(dep.null_values >= dep.value)) / 50
    ind = permutation_test(x, rng.normal(size=(120, 1)), "nhsic", 49, seed=0, sigma_x=1.0, sigma_y=1.0)
    assert ind.p_value > 0.05
    assert ind.null_values.shape == (49,)


def test_null_baseline_level_and_reproducible(rng):
    x, y = _pair(rng)
    b1 = null_baseline(x, y, "nhsic", n_permutations=3, seed=5, sigma_x=1.0, sigma_y=1.0)
    b2 = null_baseline(x, y, "nhsic", n_permutations=3, seed=5, sigma_x=1.0, sigma_y=1.0)
    assert b1 == b2
    v = infoplane.dependence(x, y, "nhsic", sigma_x=1.0, sigma_y=1.0)
    assert 0 < b1 < v


def test_samples_kind_uses_reversed_direction(rng):
    """SNN loss falls with dependence: p-value counts null <= value."""
    y = np.arange(60) % 2
    z = rng.normal(size=(60, 2)) + 3.0 * y[:, None]
    res = permutation_test(z, y, "snn", n_permutations=19, seed=0, temperature=2.0)
    assert res.value < res.null_mean
    assert res.p_value == pytest.approx(1 / 20)
    assert null_baseline(z, y, "snn", n_permutations=2, temperature=2.0) > res.value


def test_dependence_dispatch(rng):
    x, y = _pair(rng, m=50)
    K, L = rbf_gram(x, "paper"), rbf_gram(y, "paper")
    assert infoplane.dependence(x, y) == pytest.approx(float(get_estimator("nhsic").fn(K, L, 1e-5)))
    labels = (x[:, 0] > 0).astype(int)
    Kl = label_gram(labels)
    assert infoplane.dependence(x, labels, "nhsic", eps=1e-3) == pytest.approx(
        float(get_estimator("nhsic").fn(K, Kl, eps=1e-3)))
    assert infoplane.dependence(torch.tensor(x), torch.tensor(labels), "hsic") == pytest.approx(
        infoplane.dependence(x, labels, "hsic"))


def test_registry():
    names = list_estimators()
    assert {"nhsic", "hsic", "hsic-unbiased", "snn"} <= set(names)
    assert get_estimator("HSIC_unbiased").name == "hsic-unbiased"
    assert get_estimator("nhsic").defaults == {"eps": 1e-5}
    with pytest.raises(ValueError, match="valid: .*nhsic"):
        get_estimator("mine")
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("nhsic", "kernel", lambda K, L: 0.0)
    with pytest.raises(ValueError, match="kind"):
        EstimatorSpec("x", "magic", lambda: 0)
    spec = register_estimator("test-probe", "neural", lambda x, y, epochs: 0.5 * epochs, "a test", {"epochs": 1})
    try:
        assert spec.kind == "neural" and "test-probe" in list_estimators("neural")
        assert infoplane.dependence(np.zeros((4, 2)), np.array([0, 1, 0, 1]), "test-probe") == 0.5
        assert infoplane.dependence(np.zeros((4, 2)), np.array([0, 1, 0, 1]), "test-probe", epochs=3) == 1.5
    finally:
        registry._REGISTRY.pop("test-probe", None)  # keep the global registry clean for other tests


def test_bad_inputs(rng):
    x, y = _pair(rng, m=20)
    with pytest.raises(ValueError, match="x has 20 samples but y has 19"):
        infoplane.dependence(x, y[:19])
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_test(x, y, "nhsic", n_permutations=0)
    with pytest.raises(ValueError, match="n_permutations"):
        null_baseline(x, y, "hsic", n_permutations=-1)
    with pytest.raises(ValueError, match="eps"):
        infoplane.dependence(x, y, "nhsic", eps=0.0)
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        infoplane.dependence(np.ones((20, 3)), y, sigma_x="median")
    with pytest.raises(ValueError, match="kind 'samples'"):
        permutation_test_grams(np.eye(3), np.eye(3), "snn")
