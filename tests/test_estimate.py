"""estimate_store over a synthetic store: protocol, baseline, fast path vs registry, kinds."""
import numpy as np
import pandas as pd
import pytest
import torch

import infoplane.estimate as est
from infoplane.estimate import COLUMNS, EstimateConfig, estimate_store, write_csv_atomic
from infoplane.estimators import get_estimator
from infoplane.kernels import label_gram, rbf_gram
from infoplane.store import ActivationStore

N = 250


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("est") / "s.h5"
    y = rng.integers(0, 3, N)
    x = rng.normal(size=(N, 6)).astype(np.float32)
    layers = {"informative": (np.eye(3)[y] * 3 + 0.1 * rng.normal(size=(N, 3))).astype(np.float32),
              "noise": rng.normal(size=(N, 4)).astype(np.float32),
              "copy": x.copy()}
    st = ActivationStore.create(path, index=np.arange(N), labels=y, input_shape=(6,),
                                model={"name": "toy", "kwargs": {}}, dataset={"name": "toy", "num_classes": 3},
                                split="test")
    st.write_inputs(0, x)
    st.mark_inputs_complete()
    for epoch in (0, 1):
        c = f"epoch_{epoch:04d}"
        st.begin_checkpoint(c, attrs={"epoch": epoch, "step": epoch, "regime": {"name": "e2e"}, "metrics": {},
                                      "sha256": str(epoch), "model": "toy", "run": "r"})
        for order, (name, z) in enumerate(layers.items()):
            st.write_layer_rows(c, name, 0, z, order=order)
        st.set_rows_done(c, N)
        st.finish_checkpoint(c)
    st.close()
    return path, x, y, layers


def _row(df, layer, target, ckpt="epoch_0000"):
    r = df[(df.layer == layer) & (df.target == target) & (df.checkpoint == ckpt)]
    assert len(r) == 1
    return r.iloc[0]


def test_minibatch_protocol_matches_manual_nhsic(store):
    path, x, y, layers = store
    df = estimate_store(path, EstimateConfig(progress=False, baseline=True))
    assert list(df.columns) == COLUMNS and len(df) == 2 * 3 * 2
    r = _row(df, "informative", "y")
    assert r.n_batches == 2 and r.batch_size == 100 and r.n_samples == 200     # remainder 50 left out
    nh = get_estimator("nhsic").fn
    z = layers["informative"]
    manual = [float(nh(rbf_gram(z[b * 100:(b + 1) * 100]), label_gram(y[b * 100:(b + 1) * 100], 3), eps=1e-5))
              for b in range(2)]
    assert r.value == pytest.approx(np.mean(manual), rel=1e-6)
    assert r["std"] == pytest.approx(np.std(manual, ddof=1), rel=1e-5, abs=1e-9)
    # dependence reads against the shuffled baseline
    assert r.value > 2 * r.baseline
    noise = _row(df, "noise", "y")
    assert noise.value < 0.5 * r.value and abs(noise.value - noise.baseline) < 0.3 * noise.baseline + 0.05
    assert _row(df, "copy", "x").value > 1.5 * _row(df, "copy", "x").baseline
    # the exact chance level agrees with the shuffled baseline, and reads the same way
    assert abs(noise.null_mean - noise.baseline) < 4 * noise.null_sd * np.sqrt(2) + 0.05
    assert abs(noise.z) < 4 and r.z > 10 and noise.adjusted < 0.1 < r.adjusted <= 1
    assert list(df[df.checkpoint == "epoch_0000"].drop_duplicates("layer").layer_index) == [1, 2, 3]


def test_store_values_equal_the_library_engine(store):
    """One engine: the CSV row equals infoplane.assess on the same arrays and options."""
    import infoplane

    path, x, y, layers = store
    for protocol in ("minibatch", "full"):
        df = estimate_store(path, EstimateConfig(progress=False, protocol=protocol, checkpoints=["epoch_0000"],
                                                 eps=1e-3, sigma="median"))
        n = 200 if protocol == "minibatch" else N
        for target, other in (("x", x[:n]), ("y", y[:n])):
            r = _row(df, "informative", target)
            lib = infoplane.assess(layers["informative"][:n], other, protocol=protocol, batch_size=100, eps=1e-3,
                                   sigma="median", kernel_y="rbf" if target == "x" else "label")
            for col in ("value", "std", "null_mean", "null_sd", "z", "p_value", "adjusted", "max_value"):
                np.testing.assert_allclose(r[col], getattr(lib, col), rtol=1e-9, equal_nan=True, err_msg=col)


def test_full_sample_and_low_rank(store):
    path, x, y, layers = store
    exact = estimate_store(path, EstimateConfig(protocol="full", baseline=False, layers=["copy"], progress=False))
    r = _row(exact, "copy", "x")
    assert r.n_batches == 1 and r.n_samples == N and np.isnan(r["std"]) and np.isnan(r.baseline)
    ref = float(get_estimator("nhsic").fn(rbf_gram(x), rbf_gram(x), eps=1e-5))
    assert r.value == pytest.approx(ref, rel=1e-6)
    low = estimate_store(path, EstimateConfig(protocol="full", tolerance=1e-6, baseline=False, layers=["copy"],
                                              progress=False))
    assert _row(low, "copy", "x").value == pytest.approx(ref, rel=2e-2)


def test_other_estimators(store):
    path = store[0]
    h = estimate_store(path, EstimateConfig(estimator="hsic", progress=False, layers=["informative"]))
    assert (h.estimator == "hsic").all() and np.isnan(h.eps).all() and (h.value >= 0).all()
    s = estimate_store(path, EstimateConfig(estimator="snn", progress=False, layers=["informative", "noise"],
                                            checkpoints=["epoch_0000"]))
    assert set(s.target) == {"y"}                   # label-only estimator: no X rows
    assert _row(s, "informative", "y").value < _row(s, "noise", "y").value


def test_bad_configs(store):
    path = store[0]
    with pytest.raises(ValueError, match="eps"):
        estimate_store(path, EstimateConfig(eps=0, progress=False))
    with pytest.raises(ValueError, match="matches nothing stored"):
        estimate_store(path, EstimateConfig(layers=["conv9"], progress=False))
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_store(path, EstimateConfig(estimator="mine", progress=False))
    with pytest.raises(ValueError, match="tolerance"):
        estimate_store(path, EstimateConfig(tolerance=1e-3, progress=False))
    with pytest.raises(ValueError, match="sigma"):
        estimate_store(path, EstimateConfig(sigma="wide", progress=False))


def test_write_csv_atomic(tmp_path):
    out = write_csv_atomic(pd.DataFrame({"a": [1, 2]}), tmp_path / "sub" / "e.csv")
    assert pd.read_csv(out).a.tolist() == [1, 2] and not list(out.parent.glob("*.partial"))


def test_thread_setting_is_restored(store):
    before = torch.get_num_threads()
    estimate_store(store[0], EstimateConfig(progress=False, layers=["noise"], checkpoints=["epoch_0000"],
                                            threads=1))
    assert torch.get_num_threads() == before


def _damaged_store(path, nan_layer=True, incomplete=True):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, N)
    x = rng.normal(size=(N, 6)).astype(np.float32)
    st = ActivationStore.create(path, index=np.arange(N), labels=y, input_shape=(6,),
                                model={"name": "toy", "kwargs": {}}, dataset={"name": "toy", "num_classes": 3},
                                split="test")
    st.write_inputs(0, x)
    st.mark_inputs_complete()
    good = rng.normal(size=(N, 4)).astype(np.float32)
    bad = good.copy()
    bad[7, 1] = np.nan
    bad[9, 0] = np.inf
    st.begin_checkpoint("epoch_0001", attrs={"epoch": 1, "step": 1, "regime": {"name": "e2e"}, "sha256": "1"})
    st.write_layer_rows("epoch_0001", "good", 0, good, order=0)
    st.write_layer_rows("epoch_0001", "bad", 0, bad if nan_layer else good, order=1)
    st.set_rows_done("epoch_0001", N)
    st.finish_checkpoint("epoch_0001")
    if incomplete:
        st.begin_checkpoint("epoch_0002", attrs={"epoch": 2, "step": 2, "regime": {"name": "e2e"}, "sha256": "2"})
        st.write_layer_rows("epoch_0002", "good", 0, good[:100], order=0)
        st.set_rows_done("epoch_0002", 100)
    st.close()


def test_incomplete_checkpoints_are_refused_or_recorded(tmp_path, caplog):
    path = tmp_path / "d.h5"
    _damaged_store(path, nan_layer=False)
    with pytest.raises(ValueError, match=r"incomplete checkpoints \(epoch_0002\).*--allow-incomplete"):
        estimate_store(path, EstimateConfig(progress=False))
    df = estimate_store(path, EstimateConfig(progress=False, allow_incomplete=True))
    skipped = df[df.status != "ok"]
    assert list(skipped.checkpoint) == ["epoch_0002"] and skipped.status.iloc[0] == "skipped: incomplete (100 of 250 rows)"
    assert (df[df.status == "ok"].checkpoint == "epoch_0001").all() and "epoch_0002" in caplog.text


def test_non_finite_activations_are_named_and_the_rest_estimated(tmp_path, caplog):
    path = tmp_path / "d.h5"
    _damaged_store(path, incomplete=False)
    df = estimate_store(path, EstimateConfig(progress=False))
    bad = df[df.layer == "bad"]
    assert len(bad) == 2 and bad.value.isna().all() and (bad.status == "non-finite activations (2 values)").all()
    good = df[df.layer == "good"]
    assert len(good) == 2 and good.value.notna().all() and (good.status == "ok").all()
    assert "'epoch_0001', layer 'bad' has 2 non-finite" in caplog.text
    # plots and reports leave the marked rows out, and say so
    from infoplane.plot import plot_information_plane
    caplog.clear()
    plot_information_plane(df, tmp_path / "p.png")
    assert "non-finite activations" in caplog.text


def test_estimate_to_csv_streams_rows_and_resumes_after_an_interrupt(tmp_path, monkeypatch):
    """Finished layers survive an interrupt in OUT.partial.jsonl; the re-run reuses them and writes
    exactly the table of an uninterrupted run (and removes the partial file)."""
    import infoplane.estimate as est
    from _ckpt_helpers import make_checkpoints
    from infoplane.extract import extract

    store = extract(make_checkpoints(tmp_path / "run", n=2), layers="conv2,fc1,fc2", out=tmp_path / "s.h5",
                    samples=40, progress=False)
    cfg = est.EstimateConfig(batch_size=20, progress=False, jobs=1)   # one job at a time: a fixed order of calls
    ref = est.estimate_store(store, cfg)
    real, calls = est._Runner.result, {"n": 0}

    def flaky(self, reader, target, shuffled, cache=None):
        calls["n"] += 1
        if calls["n"] == 7:   # the 4th layer: 3 layers (6 values) are finished
            raise KeyboardInterrupt
        return real(self, reader, target, shuffled, cache)

    monkeypatch.setattr(est._Runner, "result", flaky)
    out = tmp_path / "e.csv"
    with pytest.raises(KeyboardInterrupt):
        est.estimate_to_csv(store, out, cfg)
    assert not out.exists() and est.resume_path(out).exists()
    computed = []

    def counting(self, reader, target, shuffled, cache=None):
        computed.append(1)
        return real(self, reader, target, shuffled, cache)

    monkeypatch.setattr(est._Runner, "result", counting)
    est.estimate_to_csv(store, out, cfg)
    assert len(computed) == 2 * 6 - 6                       # only the unfinished layers were estimated
    got = pd.read_csv(out)
    cols = ["checkpoint", "layer", "target", "value", "null_mean", "z"]
    pd.testing.assert_frame_equal(got[cols], ref[cols].reset_index(drop=True), check_dtype=False)
    assert not est.resume_path(out).exists()
    # other settings: the partial file of another run is not reused
    est.resume_path(out).write_text('{"resume_key": {"store": "elsewhere"}}\n')
    est.estimate_to_csv(store, out, est.EstimateConfig(batch_size=10, progress=False))
    assert len(pd.read_csv(out)) == len(ref)


def test_estimator_parameters_targets_and_extras(store, tmp_path):
    path = store[0]
    # --param reaches the estimator (binning with 2 bins differs from 30 bins), named errors otherwise
    a = estimate_store(path, EstimateConfig(estimator="binning", batch_size=50, progress=False, params={"bins": 2}))
    b = estimate_store(path, EstimateConfig(estimator="binning", batch_size=50, progress=False))
    assert not np.allclose(a["value"], b["value"])
    assert set(a["sigma_rule"]) == {""}                             # no bandwidth rule for a non-kernel estimator
    with pytest.raises(ValueError, match="--param"):
        estimate_store(path, EstimateConfig(estimator="binning", progress=False, params={"nbins": 2}))
    with pytest.raises(ValueError, match="--eps"):
        estimate_store(path, EstimateConfig(estimator="nhsic", progress=False, params={"eps": 1e-3}))
    # a label-only estimator has no x rows; dims are recorded
    snn = estimate_store(path, EstimateConfig(estimator="snn", batch_size=50, progress=False))
    assert set(snn["target"]) == {"y"}
    nh = estimate_store(path, EstimateConfig(batch_size=50, progress=False))
    row = nh[(nh.layer == "noise") & (nh.target == "x")].iloc[0]
    assert (row.dim_z, row.dim_target) == (4, 6)
    assert nh[(nh.layer == "noise") & (nh.target == "y")].iloc[0].dim_target == 3
    # extra fields of a samples estimator are averaged over the minibatches (kde's lower bound)
    kde = estimate_store(path, EstimateConfig(estimator="kde", batch_size=50, progress=False))
    assert "lower_bound" in kde.columns and kde["lower_bound"].notna().all()
    assert (kde["lower_bound"] <= kde["value"] + 1e-9).all()


def test_cli_param_option(store, tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "infoplane", "estimate", str(store[0]), "--estimator", "binning",
            "--batch-size", "50", "--no-progress"]
    ok = subprocess.run(base + ["--param", "bins=2", "--out", str(tmp_path / "a.csv")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(base + ["--param", "bins", "--out", str(tmp_path / "b.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
