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
        # no null columns: raw scale, the shuffled baseline is the chance level
        assert r.scale == "raw" and r.chance_source == "shuffled baseline"
        assert r.margin == pytest.approx(r.compression - 2.0)
        assert r.chance_margin == pytest.approx((sub.value.iloc[-1] - 0.5) / 0.05)
        assert r.z_peak == pytest.approx((sub.value.max() - 0.5) / 0.05)
        # the markdown row shows the same numbers
        header = re.search(r"^\| run \| layer \| target \| scale \|.*$", md, re.M).group(0)
        names = [c.strip() for c in header.strip("|").split("|")]
        row = re.search(rf"^\| {r.run} \| {r.layer} \| {r.target} \|.*$", md, re.M)
        assert row is not None
        cells = dict(zip(names, [c.strip() for c in row.group(0).strip("|").split("|")]))
        assert float(cells["peak"]) == pytest.approx(r.peak, rel=1e-3)
        assert float(cells["compression"]) == pytest.approx(r.compression, rel=1e-3, abs=1e-3)
        assert float(cells["margin"]) == pytest.approx(r.margin, rel=1e-3, abs=1e-3)
        assert cells["verdict"] == r.verdict and cells["scale"] == "raw"
    verdict = dyn.set_index(["run", "layer", "target"])["verdict"]
    assert verdict[("layerwise", "conv1", "x")] == "compresses"
    assert verdict[("layerwise", "fc1", "x")] == "does not compress"
    assert verdict[("e2e", "out", "x")] == "compresses" and verdict[("e2e", "out", "y")] == "does not compress"
    assert (dyn["compresses"] == (dyn["verdict"] == "compresses")).all()
    assert "raw value" in md and "shuffled-Z baseline" in md and "re-run `infoplane estimate`" in md.lower()

    ib = pd.read_csv(tmp_path / "rep" / "ib_signature.csv").set_index("run")
    assert ib.loc["e2e", "ib_signature"] == "yes" and ib.loc["layerwise", "ib_signature"] == "no"
    assert "`e2e`: the last layer `out` shows the IB signature" in md

    diff = pd.read_csv(tmp_path / "rep" / "differentiation.csv").set_index(["run", "target"])
    assert diff.loc[("layerwise", "x"), "n_compressing"] == 1
    assert diff.loc[("layerwise", "x"), "differentiated"] == "yes"
    assert (tmp_path / "rep" / "plane_nhsic.png").stat().st_size > 0
    assert not (tmp_path / "rep" / "plane_adjusted_nhsic.png").exists()  # no adjusted column: no such figure
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
    with pytest.raises(ValueError, match="not an estimates CSV"):
        report.build_report([tmp_path / "bad.csv"], tmp_path / "rep")
    _estimates_csv(tmp_path / "est.csv")
    with pytest.raises(ValueError, match="unknown report option"):
        report.build_report([tmp_path / "est.csv"], tmp_path / "rep", bogus=1)


def test_cli_entry(tmp_path, capsys):
    from infoplane.cli import main

    _estimates_csv(tmp_path / "est.csv")
    assert main(["report", str(tmp_path / "est.csv"), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
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
    assert a.chance_margin == pytest.approx(b.chance_margin, rel=1e-6, abs=1e-6)
    assert a.z_peak == pytest.approx(b.z_peak, rel=1e-6, abs=1e-6)
    if abs(a.compression - 2.0) > 1e-6 and abs(a.z_peak - 2.0) > 1e-6:  # not on a decision boundary
        assert a.verdict == b.verdict


# ----------------------------------------------------------------------------- chance-corrected verdicts
def _null_traj(adjusted, *, null_mean=1.0, null_sd=0.05, max_value=5.0, std=0.02, layer="l", layer_index=1,
               target="x", run="r", baseline=True):
    """A trajectory with the null columns of the current `infoplane estimate` (value from `adjusted`)."""
    a = np.asarray(adjusted, float)
    nm = np.broadcast_to(np.asarray(null_mean, float), a.shape)
    mx = np.broadcast_to(np.asarray(max_value, float), a.shape)
    v = nm + a * (mx - nm)
    d = pd.DataFrame({"run": run, "regime": run, "estimator": "nhsic", "target": target, "layer": layer,
                      "layer_index": layer_index, "epoch": range(len(a)), "value": v, "std": std,
                      "null_mean": nm, "null_sd": null_sd, "z": (v - nm) / null_sd, "p_value": 0.5,
                      "adjusted": a, "max_value": mx})
    if baseline:
        d["baseline"], d["baseline_std"] = nm, std
    return d


SHAPE = np.array([0.0, 0.01, 0.02, 0.01, 0.0])  # rises and falls by 0.02 (adjusted units)


def test_rise_and_fall_within_chance_cannot_tell():
    # null_sd 0.05 over a span of 4: 0.02 adjusted = 1.6 null sd at the peak, i.e. at chance; the
    # minibatch sd (0.02 raw = 0.005 adjusted) makes the drop 4 noise units, which alone would "compress"
    r = report.trajectory_statistics(_null_traj(SHAPE)).iloc[0]
    assert r.scale == "adjusted" and r.chance_source == "permutation null"
    assert r.compression == pytest.approx(0.02 / 0.005) and r.compression > 2
    assert r.z_peak == pytest.approx(0.02 * 4 / 0.05) and r.z_peak < 2
    assert r.verdict == "cannot tell" and not r.compresses and "chance" in r.reason


def test_same_shape_far_above_chance_compresses():
    r = report.trajectory_statistics(_null_traj(0.3 + SHAPE)).iloc[0]
    assert r.verdict == "compresses" and r.compresses
    assert r.z_peak == pytest.approx(0.32 * 4 / 0.05)
    assert r.noise == pytest.approx(0.02 / 4)                       # minibatch sd in adjusted units
    assert r.compression == pytest.approx(0.02 / 0.005)
    assert r.margin == pytest.approx(r.compression - 2.0)
    assert r.chance_margin == pytest.approx(r.z_last)
    assert r.peak == pytest.approx(0.32) and r.peak_epoch == 2 and r.raw_peak == pytest.approx(1 + 0.32 * 4)


def test_drop_to_chance_is_compression():
    r = report.trajectory_statistics(_null_traj([0.05, 0.2, 0.3, 0.1, 0.001])).iloc[0]
    assert r.z_peak > 2 and r.z_last < 2
    assert r.verdict == "compresses" and "falls to chance" in r.reason


def test_falling_null_is_not_compression():
    # the raw value falls only because the null level falls (adjusted constant): no compression
    nm = np.array([3.0, 2.5, 2.0, 1.5, 1.0])
    d = _null_traj(np.full(5, 0.3), null_mean=nm, max_value=nm + 4.0)
    assert d["value"].iloc[0] - d["value"].iloc[-1] > 10 * 0.02     # a raw drop of 100 minibatch sds
    r = report.trajectory_statistics(d).iloc[0]
    assert r.scale == "adjusted" and r.compression == pytest.approx(0.0)
    assert r.verdict == "does not compress" and r.margin == pytest.approx(-2.0)


def test_two_checkpoints_cannot_tell():
    r = report.trajectory_statistics(_null_traj([0.5, 0.1])).iloc[0]
    assert r.compression > 2 and r.z_peak > 2                       # would compress with one more checkpoint
    assert r.verdict == "cannot tell" and "3" in r.reason and not r.compresses


def test_unknown_noise_or_chance_cannot_tell():
    d = _null_traj(0.3 + SHAPE, std=np.nan, baseline=False)
    r = report.trajectory_statistics(d).iloc[0]
    assert r.verdict == "cannot tell" and "noise" in r.reason
    old = pd.DataFrame({"run": "r", "estimator": "nhsic", "target": "x", "layer": "l", "layer_index": 1,
                        "epoch": range(5), "value": [1.0, 2.0, 3.0, 2.0, 1.0], "std": 0.05})
    r = report.trajectory_statistics(old).iloc[0]              # old table, run with --no-baseline
    assert r.scale == "raw" and r.compression == pytest.approx(40.0)
    assert r.verdict == "cannot tell" and "chance" in r.reason


def test_chance_z_option():
    d = _null_traj(SHAPE)                                           # z_peak 1.6
    assert report.trajectory_statistics(d, chance_z=1.0).iloc[0].verdict == "compresses"
    assert report.trajectory_statistics(d, chance_z=2.0).iloc[0].verdict == "cannot tell"
    with pytest.raises(ValueError, match="chance_z"):
        report.ReportConfig(chance_z=-1).validate()


def _layers(spec, run="r", target="x"):
    return pd.concat([_null_traj(a, layer=f"l{i}", layer_index=i, run=run, target=target, **kw)
                      for i, (a, kw) in enumerate(spec, start=1)], ignore_index=True)


def test_differentiation_is_three_valued():
    rng = np.random.default_rng(1)
    fall, rise, chance = 0.3 + 10 * SHAPE, 0.1 + 0.05 * np.arange(5), SHAPE
    flat = lambda: 0.4 + 0.002 * rng.standard_normal(5)  # noqa: E731  (above chance, within noise)
    cases = {"yes": [(fall, {}), (rise, {}), (chance, {})],   # some compress, some do not: decided
             "cannot tell": [(rise, {}), (0.1 + 0.06 * np.arange(5), {}), (chance, {})],
             "no": [(flat(), {}), (flat(), {}), (flat(), {})]}
    for expected, spec in cases.items():
        df = _layers(spec)
        dyn = report.trajectory_statistics(df)
        diff = report.differentiation_statistics(df, dyn).iloc[0]
        assert diff["differentiated"] == expected, (expected, diff["reason"])
    # the flat layers' wiggles are uncorrelated noise: they are not used for the correlation criterion
    assert diff["n_layers_corr"] == 0 and not math.isfinite(diff["mean_trajectory_corr"])
    short = _layers([([0.5, 0.1], {}), ([0.1, 0.5], {})])
    d = report.differentiation_statistics(short, report.trajectory_statistics(short)).iloc[0]
    assert d["differentiated"] == "cannot tell"


def test_ib_signature_three_valued():
    fall, rise, chance = 0.3 + 10 * SHAPE, 0.1 + 0.05 * np.arange(5), SHAPE
    for x, y, expected in ((fall, rise, "yes"), (rise, rise, "no"), (rise, chance, "no"),
                           (chance, rise, "cannot tell"), (fall, chance, "cannot tell"), (fall, fall, "no")):
        df = pd.concat([_null_traj(x, target="x", layer="out"), _null_traj(y, target="y", layer="out")])
        ib = report.ib_signature(report.trajectory_statistics(df)).iloc[0]
        assert ib["ib_signature"] == expected, (ib["reason"])
        assert ib["margin_x"] == pytest.approx(ib["compression_x"] - 2.0)


def test_report_on_new_columns(tmp_path, monkeypatch):
    df = pd.concat([_layers([(0.3 + 10 * SHAPE, {}), (0.1 + 0.05 * np.arange(5), {})], target=t)
                    for t in ("x", "y")], ignore_index=True)
    df["n_batches"] = 5
    df.to_csv(tmp_path / "est.csv", index=False)
    bands = []
    real = report._save

    def spy(fig, path):
        if path.name.startswith("dynamics"):
            bands.extend(c for ax in fig.axes for c in ax.collections if c.get_gid() == "chance-band")
        return real(fig, path)

    monkeypatch.setattr(report, "_save", spy)
    md = report.build_report([tmp_path / "est.csv"], tmp_path / "rep", progress=False).read_text()
    dyn = pd.read_csv(tmp_path / "rep" / "dynamics.csv")
    assert (dyn["scale"] == "adjusted").all() and (dyn["chance_source"] == "permutation null").all()
    assert {"z_peak", "z_last", "margin", "chance_margin", "verdict", "reason"} <= set(dyn.columns)
    assert "chance-adjusted value" in md and "permutation null" in md
    assert "l1 (margin +" in md                                    # every verdict with its margin
    assert len(bands) == 4                                         # one chance band per panel (2 layers x 2)
    assert (tmp_path / "rep" / "plane_adjusted_nhsic.png").exists()
    ib = pd.read_csv(tmp_path / "rep" / "ib_signature.csv").iloc[0]
    assert ib["layer"] == "l2" and ib["ib_signature"] == "no"     # the last layer only rises


def test_report_two_checkpoints_refuses(tmp_path):
    df = pd.concat([_null_traj([0.5, 0.1], target=t, layer="out") for t in ("x", "y")])
    df.to_csv(tmp_path / "est.csv", index=False)
    md = report.build_report([tmp_path / "est.csv"], tmp_path / "rep", progress=False).read_text()
    assert "cannot tell whether it shows the IB signature" in md
    assert set(pd.read_csv(tmp_path / "rep" / "dynamics.csv")["verdict"]) == {"cannot tell"}
    assert set(pd.read_csv(tmp_path / "rep" / "differentiation.csv")["differentiated"]) == {"cannot tell"}
