import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from benchmarks.groundtruth import (LabelTask, bivariate_task, dense_task, gaussian_chi2_mi, gaussian_mi,
                                    two_pair_task)
from infoplane import bounds
from infoplane.estimators import hsic_biased, nhsic, soft_nearest_neighbour_loss
from infoplane.kernels import label_gram, rbf_gram

Z = st.integers(2, 4).flatmap(lambda c: st.tuples(
    st.just(c), st.integers(2, 5).map(lambda k: k * c),
    st.integers(1, 3)))


@settings(max_examples=25, deadline=None)
@given(Z, st.floats(0.3, 5), st.integers(0, 10_000))
def test_lemma1_identity_and_bound(cfg, sigma, seed):
    """On the empirical measure (balanced classes) HSIC = Tr(K~L~)/m^2 equals (1/c)(E_pos k - E k) exactly."""
    c, m, d = cfg
    rng = np.random.default_rng(seed)
    y = np.arange(m) % c
    z = rng.normal(size=(m, d)) + y[:, None]
    K, L = rbf_gram(z, sigma), label_gram(y)
    v = bounds.hsic_vstat(K, L)
    assert bounds.lemma1_hsic(K, y) == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert bounds.label_hsic_population(K, y) == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert v <= bounds.lemma1_bound(c) + 1e-12
    assert float(hsic_biased(K, L)) == pytest.approx(v * m ** 2 / (m - 1) ** 2, rel=1e-9, abs=1e-12)


def test_label_hsic_unbalanced_and_balance_check(rng):
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    z = rng.normal(size=(9, 2))
    K = rbf_gram(z, 1.0)
    assert bounds.label_hsic_population(K, y) == pytest.approx(bounds.hsic_vstat(K, label_gram(y)))
    with pytest.raises(ValueError, match="balanced"):
        bounds.lemma1_hsic(K, y)


def test_lemma1_tight_for_separated_classes():
    """Collapsed, far-apart classes: E_pos k = 1, E k = 1/c -> HSIC = (1 - 1/c)/c, close to 1/c for large c."""
    c = 5
    y = np.arange(50) % c
    z = 100.0 * np.eye(c)[y]
    v = bounds.hsic_vstat(rbf_gram(z, 1.0), label_gram(y))
    assert v == pytest.approx((1 - 1 / c) / c)


@settings(max_examples=25, deadline=None)
@given(Z, st.floats(0.5, 5), st.integers(0, 10_000))
def test_theorem4_exact_on_empirical_measure(cfg, sigma, seed):
    """Theorem 4 is a statement about a distribution; the empirical measure of a balanced sample is one
    (||z|| <= M = max norm, p(y) = 1/c), and eq. 51 is its n -> infinity limit, so eq. 32 must hold exactly."""
    c, m, d = cfg
    rng = np.random.default_rng(seed)
    y = np.arange(m) % c
    z = rng.normal(size=(m, d)) + 2 * y[:, None]
    r = bounds.theorem4_check(z, y, sigma)
    assert r["holds"] == 1.0, r
    assert r["lhs"] >= r["rhs"]


def test_theorem4_large_sample_eq30():
    """Finite-sample check of the population statement: at m=1200 (balanced, ||z|| <= M by projection onto
    the ball) the batch loss of eq. 30 with T = 2 sigma^2 is within 0.02 of the eq. 51 limit of the sample's
    empirical measure (the gap is the j != i exclusion, O(1/m)), and it exceeds the Theorem 4 bound computed
    with the paper's HSIC estimator by more than that gap, in a regime where the bound is non-vacuous."""
    rng = np.random.default_rng(0)
    c, m, d, M, sigma = 3, 1200, 2, 1.0, 2.0
    y = np.arange(m) % c
    angles = 2 * np.pi * y / c
    z = 0.6 * np.c_[np.cos(angles), np.sin(angles)] + 0.4 * rng.normal(size=(m, d))
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = z / np.maximum(1.0, norms / M)
    loss = float(soft_nearest_neighbour_loss(z, y, 2 * sigma ** 2))
    limit = bounds.snn_population_limit(z, y, sigma)
    assert abs(loss - limit) < 0.02
    h = float(hsic_biased(rbf_gram(z, sigma), label_gram(y)))
    rhs = bounds.theorem4_rhs(h, c, M, sigma)
    assert rhs > 0.5  # non-vacuous (log 3 = 1.10)
    assert loss >= rhs + 0.02


def test_nhsic_rank_bound_is_attained_with_labels():
    c, m = 4, 40
    y = np.arange(m) % c
    L = label_gram(y)
    z = 100.0 * np.eye(c)[y]
    K = rbf_gram(z, 1.0)
    assert bounds.nhsic_rank_bound(K, L) == c - 1
    v = float(nhsic(K, L, 1e-8))
    assert bounds.nhsic_within_bounds(v, K, L)
    assert v == pytest.approx(c - 1, rel=1e-5)
    assert not bounds.nhsic_within_bounds(c - 1 + 0.1, K, L)
    assert not bounds.nhsic_within_bounds(-0.1, K, L)


@pytest.mark.parametrize("task", [bivariate_task(0.75), dense_task(2), dense_task(25), two_pair_task(5)])
def test_gibbs_su_on_gaussian_closed_forms(task):
    assert bounds.gibbs_su_holds(task.mi(), task.chi2_mi())


def test_gibbs_su_on_label_task():
    t = LabelTask(c=3, d=3, delta=2.0)
    assert bounds.gibbs_su_holds(t.mi(n_mc=50_000), t.chi2_mi(n_mc=50_000), tol=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 0.99), min_size=1, max_size=5))
def test_gibbs_su_property(rhos):
    assert bounds.gibbs_su_holds(gaussian_mi(rhos), gaussian_chi2_mi(rhos), tol=1e-12)


def test_gibbs_su_detects_violation_and_bad_input():
    assert not bounds.gibbs_su_holds(1.0, 0.5)
    with pytest.raises(ValueError):
        bounds.gibbs_su_holds(0.1, -1.0)


def test_lemma1_bound_input():
    assert bounds.lemma1_bound(4) == 0.25
    with pytest.raises(ValueError):
        bounds.lemma1_bound(0)
    assert bounds.theorem4_rhs(0.0, 2, 1.0, 1.0) == pytest.approx(math.log(2))
