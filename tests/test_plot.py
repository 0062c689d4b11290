"""Information-plane and per-layer figures (infoplane.plot)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from infoplane import plot as P  # noqa: E402


def _table(rng) -> pd.DataFrame:
    rows = []
    for regime in ("e2e", "layerwise"):
        for epoch in range(4):
            for i, layer in enumerate(("conv1", "fc1", "out"), start=1):
                for target in ("x", "y"):
                    rows.append({"run": regime, "regime": regime, "checkpoint": f"epoch_{epoch:04d}",
                                 "epoch": epoch, "layer": layer, "layer_index": i, "estimator": "nhsic",
                                 "target": target, "value": 1 + epoch + rng.random(), "baseline": 0.5,
                                 "std": 0.1})
    return pd.DataFrame(rows)


def test_plane_and_curves(tmp_path, rng, monkeypatch):
    df = _table(rng)
    labels, cbars, ylabels = [], [], []
    real_save = P._save

    def spy(fig, out):
        for ax in fig.axes:
            ylabels.append(ax.get_ylabel())
            if ax.get_xlabel():
                labels.append((ax.get_xlabel(), ax.get_ylabel(), ax.get_title()))
            else:
                cbars.append(ax.get_ylabel())
        return real_save(fig, out)

    monkeypatch.setattr(P, "_save", spy)
    out = P.plot_information_plane(df, tmp_path / "plane.png")
    assert out.stat().st_size > 10_000 and not list(tmp_path.glob("*.partial*"))
    panels = [t for t in labels if t[2].startswith("layer")]
    assert [t[2] for t in panels] == ["layer 1: conv1", "layer 2: fc1", "layer 3: out"]
    assert all(t[0] == "nHSIC(X;Z)" and t[1] == "nHSIC(Y;Z)" for t in panels)
    assert "epoch (e2e)" in cbars and "epoch (layerwise)" in cbars
    img = plt.imread(out)
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05           # not a blank canvas
    ylabels.clear()
    curves = P.plot_layer_curves(df, P.curves_path(out))
    assert curves.name == "plane_curves.png" and curves.exists()
    assert {"nHSIC(X;Z)", "nHSIC(Y;Z)"} <= set(ylabels)


def test_load_and_bad_tables(tmp_path, rng):
    df = _table(rng)
    df.to_csv(tmp_path / "a.csv", index=False)
    assert len(P.load_estimates([tmp_path / "a.csv", tmp_path / "a.csv"])) == 2 * len(df)
    with pytest.raises(FileNotFoundError):
        P.load_estimates(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="lacks columns"):
        P.plot_information_plane(df.drop(columns=["target"]), tmp_path / "p.png")
    two = pd.concat([df, df.assign(estimator="hsic")])
    with pytest.raises(ValueError, match="several estimators"):
        P.plot_information_plane(two, tmp_path / "p.png")
    P.plot_information_plane(two, tmp_path / "p.png", estimator="hsic", layers=["fc1"])
    with pytest.raises(ValueError, match="not in the table"):
        P.plot_information_plane(df, tmp_path / "p.png", layers=["conv9"])
    assert P.estimator_label("nhsic") == "nHSIC" and P.estimator_label("snn") == "snn"


def _with_null(df: pd.DataFrame) -> pd.DataFrame:
    """The null columns of the current `infoplane estimate` (null mean varying over epochs)."""
    df = df.copy()
    df["null_mean"] = 0.4 + 0.02 * df["epoch"]
    df["null_sd"] = 0.03
    df["max_value"] = 10.0
    df["adjusted"] = (df["value"] - df["null_mean"]) / (df["max_value"] - df["null_mean"])
    df["z"] = (df["value"] - df["null_mean"]) / df["null_sd"]
    df["p_value"] = 0.01
    return df


def _figures(monkeypatch):
    figs = []
    real = P._save

    def spy(fig, out):
        figs.append(fig)
        return real(fig, out)

    monkeypatch.setattr(P, "_save", spy)
    return figs


def _bands(fig):
    return [a for ax in fig.axes for a in list(ax.patches) + list(ax.collections) if a.get_gid() == "chance-band"]


def test_chance_band(tmp_path, rng, monkeypatch):
    df = _with_null(_table(rng))
    figs = _figures(monkeypatch)
    out = P.plot_information_plane(df, tmp_path / "plane.png")
    assert out.stat().st_size > 10_000
    bands = _bands(figs[-1])
    assert len(bands) == 3 * 2 * 2                      # layers x series x targets
    lo, hi = 0.4 - 2 * 0.03, 0.4 + 0.02 * 3 + 2 * 0.03  # range over epochs of null_mean +- 2 null_sd
    xs = [b for b in bands if b.get_height() == 1]      # axvspan: full height in axes units
    assert xs and all(b.get_x() == pytest.approx(lo) and b.get_x() + b.get_width() == pytest.approx(hi) for b in xs)
    P.plot_layer_curves(df, tmp_path / "curves.png")
    assert len(_bands(figs[-1])) == 2 * 2 * 3           # series x targets x layers
    # older tables (no null columns): no band, still a figure
    P.plot_information_plane(_table(rng), tmp_path / "old.png")
    assert not _bands(figs[-1]) and (tmp_path / "old.png").exists()
    P.plot_information_plane(df, tmp_path / "off.png", chance=False)
    assert not _bands(figs[-1])


def test_adjusted_plot(tmp_path, rng, monkeypatch):
    df = _with_null(_table(rng))
    figs = _figures(monkeypatch)
    P.plot_information_plane(df, tmp_path / "adj.png", adjusted=True, layers=["fc1"])
    ax = [a for a in figs[-1].axes if a.get_title().startswith("layer")][0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("adjusted nHSIC(X;Z)", "adjusted nHSIC(Y;Z)")
    pts = np.vstack([c.get_offsets() for c in ax.collections if c.get_label() in ("e2e", "layerwise")])
    sel = df[df["layer"] == "fc1"]
    assert np.allclose(np.sort(pts[:, 0]), np.sort(sel.loc[sel.target == "x", "adjusted"]))
    assert ax.get_xlim()[0] <= 0 <= ax.get_xlim()[1]    # the chance line at 0 is in view
    assert _bands(figs[-1])
    P.plot_layer_curves(df, tmp_path / "adj_curves.png", adjusted=True)
    assert {"adjusted nHSIC(X;Z)", "adjusted nHSIC(Y;Z)"} <= {a.get_ylabel() for a in figs[-1].axes}
    assert (tmp_path / "adj.png").exists() and (tmp_path / "adj_curves.png").exists()


def test_adjusted_needs_the_column(tmp_path, rng, capsys):
    df = _table(rng)
    for fn in (P.plot_information_plane, P.plot_layer_curves):
        with pytest.raises(ValueError, match=r"'adjusted'.*re-run `infoplane estimate`"):
            fn(df, tmp_path / "p.png", adjusted=True)
    with pytest.raises(ValueError, match="'adjusted' is empty"):   # e.g. snn: the column is NaN
        P.plot_information_plane(df.assign(adjusted=np.nan), tmp_path / "p.png", adjusted=True)
    mixed = pd.concat([_with_null(df[df.regime == "e2e"]), df[df.regime == "layerwise"]])
    with pytest.raises(ValueError, match="layerwise"):               # an old table among new ones
        P.plot_information_plane(mixed, tmp_path / "p.png", adjusted=True)
    assert not (tmp_path / "p.png").exists()
    from infoplane.cli import main
    df.to_csv(tmp_path / "old.csv", index=False)
    assert main(["plot", str(tmp_path / "old.csv"), "--out", str(tmp_path / "p.png"), "--adjusted"]) == 2
    err = capsys.readouterr().err
    assert "'adjusted'" in err and "infoplane estimate" in err
    _with_null(df).to_csv(tmp_path / "new.csv", index=False)
    assert main(["plot", str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.png"), "--adjusted"]) == 0
    assert (tmp_path / "p.png").exists() and (tmp_path / "p_curves.png").exists()
