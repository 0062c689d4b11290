"""Classic information-plane estimators (binning, kde, renyi, knn), their trust rule and the report's
robustness table: ground truth, hand-checkable cases, properties, the CLI end to end."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import infoplane as ip
from infoplane.estimators import (binning_information, get_estimator, kde_information, ksg_information,
                                  renyi_information)
from infoplane.estimators import trust
from infoplane.estimators.binning import discretize, plugin_entropy
from infoplane.estimators.kde import kde_information_bounds

CLASSIC = ("binning", "binning-adaptive", "kde", "renyi", "knn")
PROPS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _gaussian_pair(rng, n, d, mi):
    rho = math.sqrt(-math.expm1(-2.0 * mi / d))
    x = rng.normal(size=(n, d))
    return rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=(n, d)), x


# ----------------------------------------------------------------------------- registry and interface
@pytest.mark.parametrize("name", CLASSIC)
def test_registered_as_samples_estimators_with_chance_by_baseline(name, rng):
    spec = get_estimator(name)
    assert spec.kind == "samples" and spec.larger_is_dependent and spec.null_prepare is None
    z, x = _gaussian_pair(rng, 60, 2, 0.5)
    y = rng.integers(0, 3, 60)
    for target in (x, y):
        r = ip.assess(z, target, estimator=name)
        assert math.isfinite(r.value) and r.n_samples == 60
        assert math.isnan(r.null_mean)                 # no analytic null: `estimate` adds the shuffled baseline
    rt = ip.assess(torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y), estimator=name)
    assert rt.value == pytest.approx(ip.assess(z.astype(np.float32), y, estimator=name).value, rel=1e-9, abs=1e-12)


def test_parameter_errors_name_the_option(rng):
    z, y = rng.normal(size=(20, 2)), rng.integers(0, 2, 20)
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        binning_information(z, y, bins=1)
    with pytest.raises(ValueError, match="scheme must be one of"):
        binning_information(z, y, scheme="log")
    with pytest.raises(ValueError, match="noise_variance must be"):
        kde_information(z, y, noise_variance=0)
    with pytest.raises(ValueError, match="alpha must be"):
        renyi_information(z, y, alpha=1.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ksg_information(z, y, k=0)
    with pytest.raises(ValueError, match="z has 20 samples but target has 19"):
        ksg_information(z, y[:19])
    with pytest.raises(TypeError, match="unexpected parameter"):
        ip.assess(z, y, estimator="binning", eps=1e-3)
    with pytest.raises(ValueError, match="non-finite"):
        binning_information(np.full((4, 1), np.nan), np.arange(4))


# ----------------------------------------------------------------------------- binning
def test_binning_hand_computed():
    z = np.array([[0.0], [0.0], [1.0], [1.0]])       # two bins: codes 0, 0, 1, 1 -> H(T) = log 2
    assert binning_information(z, np.array([0, 1, 0, 1]), bins=2)["value"] == pytest.approx(0.0, abs=1e-15)
    r = binning_information(z, np.array([0, 0, 1, 1]), bins=2)
    assert r["value"] == pytest.approx(math.log(2)) and r["h_z"] == pytest.approx(math.log(2))
    # 3 bins on [0, 3]: 0.1 -> 0, 1.2 -> 1, 2.9 and 3.0 -> 2; patterns (0,2), (1,2), (2,2), (2,2)
    z2 = np.array([[0.1, 3.0], [1.2, 3.0], [2.9, 3.0], [3.0, 3.0]])
    codes = discretize(z2, bins=3, bin_range=(0.0, 3.0))
    assert codes.tolist() == [[0, 2], [1, 2], [2, 2], [2, 2]]
    h = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))            # patterns with p = 1/4, 1/4, 1/2
    x = np.arange(4.0)[:, None]                                       # distinct inputs: I(X;T) = H(T)
    assert binning_information(z2, x, bins=3, bin_range=(0, 3))["value"] == pytest.approx(h)
    assert plugin_entropy(np.array([0, 0, 1, 2])) == pytest.approx(h)


def test_binning_repeated_inputs_use_conditional_entropy():
    x = np.array([[0.0], [0.0], [1.0], [1.0]])        # each input twice
    z_det = np.array([[0.0], [0.0], [1.0], [1.0]])    # T a function of X: I = H(T) = log 2
    assert binning_information(z_det, x, bins=2)["value"] == pytest.approx(math.log(2))
    z_noisy = np.array([[0.0], [1.0], [0.0], [1.0]])  # T independent of X: H(T|X) = H(T) -> I = 0
    r = binning_information(z_noisy, x, bins=2)
    assert r["value"] == pytest.approx(0.0, abs=1e-15) and r["h_z_given_target"] == pytest.approx(math.log(2))


def test_binning_equal_mass_puts_an_atom_in_its_own_bin(rng):
    z = np.concatenate([np.zeros(600), rng.exponential(size=400)])[:, None]   # a ReLU-like layer
    codes = discretize(z, bins=10, scheme="equal-mass").ravel()
    assert set(codes[:600].tolist()) == {0} and 0 not in set(codes[600:].tolist())
    counts = np.bincount(codes[600:])
    assert counts[counts > 0].std() / counts[counts > 0].mean() < 0.2               # about equal mass


def test_binning_converges_to_the_discrete_mi_of_the_binned_gaussian():
    """Plug-in MI on 200,000 samples vs the exact MI of the binned bivariate Gaussian (fixed bins)."""
    from scipy.stats import multivariate_normal

    rho, bins, lo, hi = 0.6, 6, -2.0, 2.0
    edges = np.r_[-np.inf, np.linspace(lo, hi, bins + 1)[1:-1], np.inf]
    cdf = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf
    F = np.array([[cdf([a, b]) if np.isfinite(a) and np.isfinite(b) else
                   (0.0 if (a == -np.inf or b == -np.inf) else (1.0 if a == b == np.inf else
                    (math.erfc(-min(a, b) / math.sqrt(2)) / 2))) for b in edges] for a in edges])
    P = np.diff(np.diff(F, axis=0), axis=1)
    exact = float((P * np.log(P / np.outer(P.sum(1), P.sum(0)))).sum())
    rng = np.random.default_rng(3)
    x = rng.normal(size=200_000)
    z = rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=200_000)
    est = binning_information(z, x[:, None], bins=bins, bin_range=(lo, hi), bin_target=True)["value"]
    assert est == pytest.approx(exact, abs=2e-3)


# ----------------------------------------------------------------------------- kde
def test_kde_two_far_apart_points_and_two_identical():
    far = np.array([[0.0, 0.0], [100.0, 0.0]])
    up, low = kde_information_bounds(far, 0.1)
    assert up == pytest.approx(math.log(2)) and low == pytest.approx(math.log(2))
    r = kde_information(far, np.array([0, 1]))                    # one point per class: I(T;Y) = H(Y)
    assert r["value"] == pytest.approx(math.log(2)) and r["lower_bound"] == pytest.approx(math.log(2))
    same = np.zeros((2, 3))
    assert kde_information_bounds(same) == (0.0, 0.0)
    assert kde_information(same, np.array([0, 1]))["value"] == pytest.approx(0.0, abs=1e-12)


def test_kde_bounds_bracket_the_mixture_information_by_monte_carlo():
    """For T = one of m centres + N(0, var I), lower <= I(T; X) = H(T) - d/2 log(2 pi e var) <= upper."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(5)
    var, d = 0.1, 2
    centres = 0.4 * rng.normal(size=(12, d))
    up, low = kde_information_bounds(centres, var)
    draws = 200_000
    t = centres[rng.integers(0, 12, draws)] + math.sqrt(var) * rng.normal(size=(draws, d))
    d2 = (t ** 2).sum(1)[:, None] - 2 * t @ centres.T + (centres ** 2).sum(1)[None, :]
    logp = logsumexp(-d2 / (2 * var), axis=1) - math.log(12) - d / 2 * math.log(2 * math.pi * var)
    mi = float(-logp.mean() - d / 2 * math.log(2 * math.pi * math.e * var))
    se = float(logp.std() / math.sqrt(draws))
    assert low - 4 * se <= mi <= up + 4 * se and up - low > 0.05


def test_kde_channel_ground_truth(rng):
    """T = Z + N(0, 0.1 I), Z ~ N(0, c^2 I): I(T; Z) = d/2 log(1 + c^2/0.1) lies between the bounds
    (n = 1000, d = 2, 1 nat: the benchmark's channel task)."""
    d, level = 2, 1.0
    c = math.sqrt(0.1 * math.expm1(2 * level / d))
    r = kde_information(c * rng.normal(size=(1000, d)), np.zeros((1000, 1)))
    assert r["lower_bound"] - 0.05 <= level <= r["value"] + 0.05


# ----------------------------------------------------------------------------- renyi
def test_renyi_identical_and_independent_labels():
    y = np.arange(60) % 3
    onehot = np.eye(3)[y]
    r = renyi_information(onehot, y, sigma_z=0.05)          # tiny bandwidth: the Gram of z is the label Gram
    assert r["value"] == pytest.approx(math.log(3), rel=1e-9) and r["h_z"] == pytest.approx(math.log(3), rel=1e-9)
    a, b = np.repeat(np.arange(4), 5), np.tile(np.arange(5), 4)   # every (a, b) once: independent
    assert renyi_information(np.eye(4)[a], b, sigma_z=0.05)["value"] == pytest.approx(0.0, abs=1e-9)


def test_renyi_grows_with_dependence(rng):
    vals = [renyi_information(*_gaussian_pair(np.random.default_rng(1), 300, 2, mi))["value"]
            for mi in (0.0, 0.5, 1.0, 2.0)]
    assert vals == sorted(vals) and vals[0] < 0.1 < vals[1] - vals[0]


# ----------------------------------------------------------------------------- knn
def test_knn_matches_scikit_learn_in_one_dimension():
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    rng = np.random.default_rng(2)
    z, x = _gaussian_pair(rng, 800, 1, 0.5)
    z, x = z / z.std(), x / x.std()                        # scikit-learn rescales to unit sd first
    ours = ksg_information(z, x)["value"]
    assert ours == pytest.approx(float(mutual_info_regression(z, x.ravel(), n_neighbors=3, random_state=0)[0]),
                                 abs=1e-6)
    y = rng.integers(0, 4, 800)
    c = (x.ravel() + y)[:, None]
    c = c / c.std()
    assert ksg_information(c, y)["value"] == pytest.approx(
        float(mutual_info_classif(c, y, n_neighbors=3, random_state=0)[0]), abs=1e-6)


def test_knn_gaussian_ground_truth():
    """d = 1, n = 1000: within 0.1 nat of -1/2 log(1 - rho^2) (the benchmark's range at this size)."""
    for mi in (0.5, 1.0):
        z, x = _gaussian_pair(np.random.default_rng(4), 1000, 1, mi)
        assert ksg_information(z, x)["value"] == pytest.approx(mi, abs=0.1)


# ----------------------------------------------------------------------------- properties
@PROPS
@given(seed=st.integers(0, 10_000), n=st.integers(20, 50), d=st.integers(1, 3))
def test_invariant_to_permuting_samples_jointly(seed, n, d):
    rng = np.random.default_rng(seed)
    z, x = _gaussian_pair(rng, n, d, 0.5)
    y = rng.integers(0, 3, n)
    p = rng.permutation(n)
    for name in ("binning", "binning-adaptive", "kde", "renyi"):
        fn = get_estimator(name)
        for t in (x, y):
            a, b = fn.fn(z, t, **fn.defaults)["value"], fn.fn(z[p], t[p], **fn.defaults)["value"]
            assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
    assert ksg_information(z, x)["value"] == pytest.approx(ksg_information(z[p], x[p])["value"], abs=1e-6)


@PROPS
@given(seed=st.integers(0, 10_000), n=st.integers(10, 60), d=st.integers(1, 4), bins=st.integers(2, 40))
def test_ranges_and_symmetry(seed, n, d, bins):
    rng = np.random.default_rng(seed)
    z, x = _gaussian_pair(rng, n, d, 1.0)
    y = rng.integers(0, 4, n)
    for scheme in ("equal-width", "equal-mass"):
        r = binning_information(z, x, bins=bins, scheme=scheme, bin_target=True)
        assert 0.0 <= r["value"] <= min(r["h_z"], math.log(n)) + 1e-12
        assert r["value"] == pytest.approx(
            binning_information(x, z, bins=bins, scheme=scheme, bin_target=True)["value"], abs=1e-12)
        assert 0.0 <= binning_information(z, y, bins=bins, scheme=scheme)["value"] <= math.log(4) + 1e-12
    up, low = kde_information_bounds(z, 0.1)
    assert 0.0 <= low <= up <= math.log(n) + 1e-12
    r = renyi_information(z, x)
    assert r["value"] == pytest.approx(renyi_information(x, z)["value"], abs=1e-9)
    assert r["value"] <= min(r["h_z"], r["h_target"]) + 1e-9
    assert 0.0 <= r["h_z"] <= math.log(n) + 1e-9
    assert ksg_information(z, x)["value"] == pytest.approx(ksg_information(x, z)["value"], abs=1e-6)


# ----------------------------------------------------------------------------- trust rule
def test_trust_table_matches_the_committed_benchmark():
    from pathlib import Path

    from benchmarks.classic_accuracy import resolution, summarise, trust_table

    csv = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "classic_accuracy.csv"
    table = trust_table(resolution(summarise(pd.read_csv(csv))))
    assert table == trust.TRUST
    assert {e for e, _ in table} == {"binning", "binning-adaptive", "kde", "knn", "renyi", "nhsic"}


def test_trustworthy_rounds_conservatively(monkeypatch):
    monkeypatch.setattr(trust, "TRUST", {("knn", "x"): {100: 2, 300: 10, 1000: 50}})
    assert trust.trustworthy("knn", 10, 300) and trust.trustworthy("knn", 10, 999)     # n rounds down to 300
    assert not trust.trustworthy("knn", 11, 999) and trust.trustworthy("knn", 11, 1000)
    assert not trust.trustworthy("knn", 1, 99)                                          # below the benchmark
    assert not trust.trustworthy("knn", 1, 1000, "y")                                   # no entry: not trusted
    assert not trust.trustworthy("hsic", 1, 1000)
    assert trust.trust_dimension("knn", "x", 84, 784) == 784
    assert trust.trust_dimension("kde", "x", 84, 784) == 84 and trust.trust_dimension("knn", "y", 84, 784) == 84
    with pytest.raises(ValueError, match="target must be 'x'"):
        trust.trustworthy("knn", 1, 100, "z")


# ----------------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from _store_helpers import write_store

    rng = np.random.default_rng(1)
    n = 120
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 5)).astype(np.float32)

    def layers(e):
        return {"fc": np.eye(3)[y] * (1 + e) + 0.1 * rng.normal(size=(n, 3)), "copy": x.copy()}

    return write_store(tmp_path_factory.mktemp("classic") / "s.h5", x, y, layers, epochs=range(3))


@pytest.mark.parametrize("name", CLASSIC)
def test_cli_estimate_end_to_end(tiny_store, tmp_path, name):
    from infoplane.cli import main

    out = tmp_path / f"{name}.csv"
    assert main(["estimate", str(tiny_store), "--estimator", name, "--batch-size", "60", "--out", str(out),
                 "--no-progress"]) == 0
    df = pd.read_csv(out)
    assert len(df) == 3 * 2 * 2 and (df["status"] == "ok").all() and set(df["target"]) == {"x", "y"}
    assert df["value"].notna().all() and df["baseline"].notna().all() and df["std"].notna().all()
    fc_y = df[(df.layer == "fc") & (df.target == "y")]
    if name == "binning-adaptive":   # 30 equal-mass bins cut each cluster finely: every pattern distinct, I = H(Y)
        assert np.allclose(fc_y["value"], fc_y["baseline"]) and np.allclose(fc_y["value"], math.log(3), atol=0.01)
    else:                            # labels are in fc: above the shuffled level
        assert (fc_y["value"] > fc_y["baseline"]).all()


def test_cli_kde_full_protocol_reports_the_lower_bound(tiny_store, tmp_path):
    from infoplane.cli import main

    out = tmp_path / "kde.csv"
    assert main(["estimate", str(tiny_store), "--estimator", "kde", "--full", "--out", str(out), "--no-progress"]) == 0
    df = pd.read_csv(out)
    assert "lower_bound" in df.columns and (df["lower_bound"] <= df["value"] + 1e-12).all()


# ----------------------------------------------------------------------------- report: robustness table
def _traj(estimator, layer, target, values, *, std=0.02, baseline=0.0, dim_z=3, dim_x=2, m=1000, layer_index=1):
    return [dict(run="r", regime="e2e", estimator=estimator, layer=layer, layer_index=layer_index, target=target,
                 epoch=e, checkpoint=f"epoch_{e:04d}", value=v, std=std, baseline=baseline, baseline_std=std,
                 protocol="minibatch", batch_size=m, n_samples=2 * m, n_batches=2, dim_z=dim_z, dim_x=dim_x)
            for e, v in enumerate(values)]


RISE_FALL, FLAT = [0.5, 1.0, 0.6], [0.8, 0.81, 0.8]


def _robust_csv(path):
    rows = []
    for est in ("nhsic", "renyi", "knn"):
        fc_x = RISE_FALL if est != "knn" else FLAT          # knn disagrees on fc X
        rows += _traj(est, "fc", "x", fc_x)
        rows += _traj(est, "fc", "y", FLAT)                  # nobody compresses Y
        rows += _traj(est, "big", "x", RISE_FALL, dim_z=500, layer_index=0)   # only trusted for none
        rows += _traj(est, "big", "y", RISE_FALL, dim_z=500, layer_index=0)
    rows += _traj("binning", "fc", "x", [4.0, 4.0, 4.0], std=0.0, baseline=4.0)            # constant, zero noise
    rows += _traj("binning", "fc", "y", FLAT)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_report_robustness_table(tmp_path, monkeypatch):
    from infoplane import report

    monkeypatch.setattr(trust, "TRUST", {(e, t): {100: 5, 300: 5, 1000: 5} for e in ("nhsic", "renyi", "knn")
                                         for t in ("x", "y")})
    _robust_csv(tmp_path / "est.csv")
    md = report.build_report([tmp_path / "est.csv"], tmp_path / "rep", reconstruct=0, probe=False, progress=False,
                             estimators="nhsic,renyi,knn,binning").read_text()
    rob = pd.read_csv(tmp_path / "rep" / "robustness.csv")
    comp = rob[rob["claim"] == "compression"].set_index(["layer", "target"])
    assert comp.loc[("fc", "x"), "nhsic"] == "compresses" and comp.loc[("fc", "x"), "knn"] == "does not compress"
    assert comp.loc[("fc", "x"), "robust"] == "no"                          # trusted estimators disagree
    assert comp.loc[("fc", "y"), "robust"] == "yes" and comp.loc[("fc", "y"), "robust_verdict"] == "does not compress"
    assert comp.loc[("fc", "y"), "n_trusted"] == 3 and not comp.loc[("fc", "y"), "trusted_binning"]
    assert comp.loc[("big", "x"), "robust"] == "cannot tell" and comp.loc[("big", "x"), "n_trusted"] == 0
    assert comp.loc[("big", "x"), "agreement"] == "compresses 3"
    assert "## Robustness across estimators" in md and "(compresses)" in md
    assert set(rob["claim"]) == {"compression", "differentiation", "ib_signature"}


def test_report_reads_binning_x_against_zero_and_detects_saturation():
    from infoplane import report

    assert report.PAIRING_FREE_X == trust.PAIRING_FREE_X        # the report keeps a torch-free copy

    m = 100
    ceiling = math.log(m)
    sat = pd.DataFrame(_traj("binning", "l", "x", [ceiling] * 4, std=0.0, baseline=ceiling, m=m))
    falls = pd.DataFrame(_traj("kde", "l", "x", [3.0, 3.5, 2.0, 1.9], std=0.05, baseline=[3.0, 3.5, 2.0, 1.9][0], m=m))
    dyn = report.trajectory_statistics(pd.concat([sat, falls]))
    b = dyn[dyn.estimator == "binning"].iloc[0]
    assert b["verdict"] == "cannot tell" and "saturated" in b["reason"]
    k = dyn[dyn.estimator == "kde"].iloc[0]
    assert k["chance_source"] == report.PAIRING_FREE_CHANCE and k["verdict"] == "compresses"
    assert k["z_peak"] == pytest.approx(3.5 / 0.05)
    # on Y the shuffled baseline stays the chance level: a value equal to its baseline is "cannot tell"
    y = pd.DataFrame(_traj("kde", "l", "y", [1.0, 1.5, 1.0], std=0.05, baseline=1.5, m=m))
    assert report.trajectory_statistics(y).iloc[0]["verdict"] == "cannot tell"


def test_report_estimators_option_errors_and_cli(tmp_path, monkeypatch):
    from infoplane import report
    from infoplane.cli import build_parser

    _robust_csv(tmp_path / "est.csv")
    with pytest.raises(ValueError, match="--estimators names kde, not in the tables"):
        report.build_report([tmp_path / "est.csv"], tmp_path / "rep", reconstruct=0, probe=False, progress=False,
                            estimators=["nhsic", "kde"])
    with pytest.raises(ValueError, match="estimators selects nothing"):
        report.ReportConfig(estimators=" , ").validate()
    a = build_parser().parse_args(["report", str(tmp_path / "est.csv"), "--estimators", "nhsic,renyi"])
    assert a.estimators == "nhsic,renyi"
