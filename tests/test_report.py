"""Report generation on a tiny synthetic CSV and store; numbers in the report match the CSV."""
import math
import re

import numpy as np
import pandas as pd
import pytest

from infoplane import report


def _trajectory(kind, epochs):
    t = np.asarray(epochs, float)
    if kind == "rise":
        return 1.0 + 0.1 * t
    if kind == "rise_fall":
        return 1.0 + 0.2 * t - 0.03 * t ** 2  # peak at t ~ 3.3, falls by ~1.2
    return np.full_like(t, 2.0) + 0.001 * np.sin(t)  # flat, wiggles well inside the noise


def _estimates_csv(path):
    epochs = list(range(10))
    spec = {  # run -> layer -> (x kind, y kind)
        "e2e": {"conv1": ("rise", "rise"), "fc1": ("rise", "rise"), "out": ("rise_fall", "flat")},
        "layerwise": {"conv1": ("rise_fall", "rise_fall"), "fc1": ("rise", "rise"), "out": ("rise", "rise")},
    }
    rows = []
    for run, layers in spec.items():
        for li, (layer, kinds) in enumerate(layers.items(), start=1):
            for target, kind in zip(("x", "y"), kinds):
                for e, v in zip(epochs, _trajectory(kind, epochs)):
                    rows.append(dict(run=run, regime=run, model="lenet5", dataset="digits", checkpoint=f"epoch_{e:04d}",
                                     epoch=e, layer=layer, layer_index=li, estimator="nhsic", target=target,
                                     value=float(v), baseline=0.5, n_samples=500, batch_size=100, n_batches=5,
                                     std=0.05, baseline_std=0.01, seconds=0.1))
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def test_statistics_and_markdown_match_csv(tmp_path):
    df = _estimates_csv(tmp_path / "est.csv")
    md_path = report.build_report([tmp_path / "est.csv"], tmp_path / "rep", progress=False)
    md = md_path.read_text()
    dyn = pd.read_csv(tmp_path / "rep" / "dynamics.csv")
    assert len(dyn) == 2 * 3 * 2
    for _, r in dyn.iterrows():
        sub = df[(df.run == r.run) & (df.layer == r.layer) & (df.target == r.target)].sort_values("epoch")
        assert r.peak == pytest.approx(sub.value.max())
        assert r.last == pytest.approx(sub.value.iloc[-1])
        assert r.noise == pytest.approx(0.05)
        assert r.compression == pytest.approx((sub.value.max() - sub.value.iloc[-1]) / 0.05)
        assert r.margin == pytest.approx((sub.value.iloc[-1] - 0.5) / 0.05)
        # the markdown row shows the same numbers
        row = re.search(rf"^\| {r.run} \| {r.layer} \| {r.target} \|(.*)$", md, re.M)
        assert row is not None
        cells = [c.strip() for c in row.group(1).split("|")]
        assert float(cells[1]) == pytest.approx(r.peak, rel=1e-3)
        assert float(cells[7]) == pytest.approx(r.compression, rel=1e-3, abs=1e-3)
    comp = dyn.set_index(["run", "layer", "target"])["compresses"]
    assert comp[("layerwise", "conv1", "x")] and not comp[("layerwise", "fc1", "x")]
    assert comp[("e2e", "out", "x")] and not comp[("e2e", "out", "y")]

    ib = pd.read_csv(tmp_path / "rep" / "ib_signature.csv").set_index("run")
    assert bool(ib.loc["e2e", "ib_signature"]) and not bool(ib.loc["layerwise", "ib_signature"])
    assert "`e2e`: the last layer `out` shows the IB signature" in md

    diff = pd.read_csv(tmp_path / "rep" / "differentiation.csv").set_index(["run", "target"])
    assert diff.loc[("layerwise", "x"), "n_compressing"] == 1
    assert bool(diff.loc[("layerwise", "x"), "differentiated"])
    assert (tmp_path / "rep" / "plane_nhsic.png").stat().st_size > 0
    assert "## Definitions" in md and "compression" in md


def test_flat_trajectory_does_not_compress():
    df = pd.DataFrame({"run": "r", "estimator": "nhsic", "target": "x", "layer": "l", "layer_index": 1,
                       "epoch": range(8), "value": 2.0 + 0.001 * np.sin(np.arange(8)), "std": 0.05,
                       "baseline": 0.1, "baseline_std": 0.01})
    dyn = report.trajectory_statistics(df, threshold=2.0)
    assert not dyn["compresses"].iloc[0] and dyn["compression"].iloc[0] < 0.1


def test_noise_fallback_without_minibatch_sd():
    df = pd.DataFrame({"run": "r", "estimator": "nhsic", "target": "x", "layer": "l", "layer_index": 1,
                       "epoch": range(4), "value": [1.0, 2.0, 1.5, 1.0], "std": np.nan,
                       "baseline": [0.1, 0.3, 0.1, 0.3], "baseline_std": np.nan})
    dyn = report.trajectory_statistics(df)
    sd = float(np.std([0.1, 0.3, 0.1, 0.3], ddof=1))
    assert dyn["noise_source"].iloc[0] == "baseline sd over checkpoints"
    assert dyn["compression"].iloc[0] == pytest.approx(1.0 / sd)


def _tiny_store(path, run):
    from infoplane.store import ActivationStore
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 3
    x = rng.random((n, 1, 8, 8)).astype(np.float32)
    st = ActivationStore.create(path, index=np.arange(n), labels=y, input_shape=(1, 8, 8),
                                model={"name": "toy", "kwargs": {}},
                                dataset={"name": "synthetic", "num_classes": 3}, split="test")
    st.write_inputs(0, x)
    st.mark_inputs_complete()
    for e, acc in ((0, 0.4), (1, 0.75)):
        c = f"epoch_{e:04d}"
        st.begin_checkpoint(c, attrs={"epoch": e, "step": e, "regime": {"name": run}, "run": run,
                                      "metrics": {"test_acc": acc, "train_loss": 1.0 - acc}, "sha256": c})
        st.write_layer_rows(c, "conv1", 0, np.repeat(x, 2, axis=1), order=0)
        st.write_layer_rows(c, "fc1", 0, np.eye(3)[y] + rng.normal(0, 0.1, (n, 3)), order=1)
        st.set_rows_done(c, n)
        st.finish_checkpoint(c)
    st.close()


def test_report_from_store_with_probes_and_reconstructions(tmp_path):
    _tiny_store(tmp_path / "e2e.h5", "e2e")
    _estimates_csv(tmp_path / "est.csv")
    md = report.build_report([tmp_path / "e2e.h5", tmp_path / "est.csv"], tmp_path / "rep", reconstruct=3,
                             decoder_epochs=1, probe_epochs=3, progress=False).read_text()
    assert "| e2e | e2e | 1 | 0.75 |" in md  # accuracy at the last epoch from the checkpoint attrs
    probes = pd.read_csv(tmp_path / "rep" / "probes.csv")
    assert set(probes["estimator"]) == {"linear-probe", "decoder"}
    assert set(probes["layer"]) == {"conv1", "fc1"}
    for f in ("accuracy.png", "probes.png", "reconstructions_e2e.png", "report.md"):
        assert (tmp_path / "rep" / f).exists()
    assert not list((tmp_path / "rep").glob("*.partial*"))


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        report.build_report([tmp_path / "missing.csv"], tmp_path / "rep")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError):
        report.build_report([tmp_path / "x.txt"], tmp_path / "rep")
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="not an estimates table"):
        report.build_report([tmp_path / "bad.csv"], tmp_path / "rep")
    _estimates_csv(tmp_path / "est.csv")
    with pytest.raises(ValueError, match="unknown report option"):
        report.build_report([tmp_path / "est.csv"], tmp_path / "rep", bogus=1)


def test_cli_entry(tmp_path, capsys):
    import argparse
    _estimates_csv(tmp_path / "est.csv")
    ap = argparse.ArgumentParser()
    report.add_cli(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["report", str(tmp_path / "est.csv"), "--out", str(tmp_path / "r"), "--no-progress"])
    assert args.func(args) == 0
    assert (tmp_path / "r" / "report.md").exists() and "report.md" in capsys.readouterr().out


from hypothesis import given, settings, strategies as st


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=12), st.floats(0.01, 2.0), st.floats(0.1, 10.0),
       st.floats(-3, 3))
def test_compression_affine_invariant(values, sd, scale, shift):
    """compression and margin are unchanged by v -> a v + b (with sd -> a sd, baseline -> a b0 + b)."""
    def frame(v, s, b):
        return pd.DataFrame({"run": "r", "estimator": "e", "target": "x", "layer": "l", "layer_index": 1,
                             "epoch": range(len(v)), "value": v, "std": s, "baseline": b, "baseline_std": s})
    v = np.asarray(values)
    a = report.trajectory_statistics(frame(v, sd, 0.3)).iloc[0]
    b = report.trajectory_statistics(frame(scale * v + shift, scale * sd, scale * 0.3 + shift)).iloc[0]
    assert a.compression >= 0 and a.compression == pytest.approx(b.compression, rel=1e-6, abs=1e-6)
    assert a.margin == pytest.approx(b.margin, rel=1e-6, abs=1e-6)
