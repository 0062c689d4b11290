"""Information-plane and per-layer figures (infoplane.plot)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from matplotlib.figure import Figure  # noqa: E402

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


def test_plane_and_curves(tmp_path, rng):
    df = _table(rng)
    fig = P.plot_information_plane(df, tmp_path / "plane.png")
    out = tmp_path / "plane.png"
    assert isinstance(fig, Figure)
    assert out.stat().st_size > 10_000 and not list(tmp_path.glob("*.partial*"))
    labelled = [(a.get_xlabel(), a.get_ylabel(), a.get_title()) for a in fig.axes if a.get_xlabel()]
    cbars = [a.get_ylabel() for a in fig.axes if not a.get_xlabel()]
    panels = [t for t in labelled if t[2].startswith("layer")]
    assert [t[2] for t in panels] == ["layer 1: conv1", "layer 2: fc1", "layer 3: out"]
    assert all(t[0] == "nHSIC(X;Z)" and t[1] == "nHSIC(Y;Z)" for t in panels)
    assert "epoch (e2e)" in cbars and "epoch (layerwise)" in cbars
    img = plt.imread(out)
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05           # not a blank canvas
    curves = P.plot_layer_curves(df, P.curves_path(out))
    assert P.curves_path(out).name == "plane_curves.png" and P.curves_path(out).exists()
    assert {"nHSIC(X;Z)", "nHSIC(Y;Z)"} <= {a.get_ylabel() for a in curves.axes}


def test_figure_returned_and_saving_optional(tmp_path, rng):
    df = _table(rng)
    fig = P.plot_information_plane(df)
    assert isinstance(fig, Figure) and not list(tmp_path.iterdir())  # nothing written without out=
    assert len([a for a in fig.axes if a.get_title().startswith("layer")]) == 3
    assert plt.get_fignums() == []                                      # not kept alive by pyplot
    curves = P.plot_layer_curves(df, targets="y")
    assert [a.get_ylabel() for a in curves.axes] == ["nHSIC(Y;Z)", "nHSIC(Y;Z)"]  # one row: y, two series
    # out= is checked before any drawing: a bad path fails even for a table that could not be drawn
    with pytest.raises(ValueError, match="no figure extension"):
        P.plot_information_plane(df.drop(columns=["target"]), tmp_path / "plane.txt")
    with pytest.raises(ValueError, match="is a directory"):
        P.plot_layer_curves(df, tmp_path)
    with pytest.raises(ValueError, match="dpi must be a positive number"):
        P.plot_information_plane(df, dpi=0)
    with pytest.raises(ValueError, match="targets must be"):
        P.plot_layer_curves(df, targets=("x", "z"))


def test_dpi_is_one_constant(tmp_path, rng):
    from infoplane import report

    df = _table(rng)
    assert report.FIGURE_DPI is P.FIGURE_DPI
    P.plot_information_plane(df, tmp_path / "a.png", layers=["fc1"])
    P.plot_information_plane(df, tmp_path / "b.png", layers=["fc1"], dpi=P.FIGURE_DPI / 2)
    wa, wb = plt.imread(tmp_path / "a.png").shape[1], plt.imread(tmp_path / "b.png").shape[1]
    assert wb == pytest.approx(wa / 2, rel=0.08)


def test_into_given_axes_and_figures(tmp_path, rng):
    df = _with_null(_table(rng))
    fig, ax = plt.subplots()
    try:
        assert P.plot_information_plane(df, ax=ax, layers=["fc1"]) is fig
        assert ax.get_title() == "layer 2: fc1" and ax.get_legend() is not None and _bands(fig)
        with pytest.raises(ValueError, match=r"ax has 1 Axes but the figure has 3 panels "
                                             r"\(3 layers: conv1, fc1, out\)"):
            P.plot_information_plane(df, ax=ax)
        with pytest.raises(ValueError, match="not both"):
            P.plot_information_plane(df, ax=ax, fig=fig, layers=["fc1"])
        with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
            P.plot_information_plane(df, ax="left", layers=["fc1"])
        with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
            P.plot_information_plane(df, fig=ax)
    finally:
        plt.close(fig)
    fig, axes = plt.subplots(2, 2)                       # 4 Axes for 3 layers: the spare one is hidden
    try:
        assert P.plot_information_plane(df, tmp_path / "grid.png", ax=axes) is fig
        assert [a.get_title() for a in axes.ravel()[:3]] == ["layer 1: conv1", "layer 2: fc1", "layer 3: out"]
        assert [a.get_visible() for a in axes.ravel()] == [True, True, True, False]
        assert (tmp_path / "grid.png").stat().st_size > 10_000
        for a in axes.ravel():
            a.clear()
        assert P.plot_layer_curves(df, ax=axes) is fig    # 2 targets x 2 series, target-major
        assert [a.get_title() for a in axes[0]] == ["e2e", "layerwise"]
        assert [a.get_ylabel() for a in axes[:, 0]] == ["nHSIC(X;Z)", "nHSIC(Y;Z)"]
    finally:
        plt.close(fig)
    root = Figure(layout="constrained")
    left, right = root.subfigures(1, 2)
    assert P.plot_information_plane(df, fig=left, layers=["conv1", "out"], ncols=1) is root
    assert P.plot_layer_curves(df[df["regime"] == "e2e"], fig=right) is root
    assert [a.get_title() for a in left.axes if a.get_title()] == ["layer 1: conv1", "layer 3: out"]
    assert len(right.axes) == 2 and right.axes[0].get_title() == "e2e"
    root.savefig(tmp_path / "both.png")
    assert plt.imread(tmp_path / "both.png")[..., :3].std() > 0.05


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


def _bands(fig):
    return [a for ax in fig.axes for a in list(ax.patches) + list(ax.collections) if a.get_gid() == "chance-band"]


def test_chance_band(tmp_path, rng):
    df = _with_null(_table(rng))
    fig = P.plot_information_plane(df, tmp_path / "plane.png")
    assert (tmp_path / "plane.png").stat().st_size > 10_000
    bands = _bands(fig)
    assert len(bands) == 3 * 2 * 2                      # layers x series x targets
    lo, hi = 0.4 - 2 * 0.03, 0.4 + 0.02 * 3 + 2 * 0.03  # range over epochs of null_mean +- 2 null_sd
    xs = [b for b in bands if b.get_height() == 1]      # axvspan: full height in axes units
    assert xs and all(b.get_x() == pytest.approx(lo) and b.get_x() + b.get_width() == pytest.approx(hi) for b in xs)
    assert len(_bands(P.plot_layer_curves(df, tmp_path / "curves.png"))) == 2 * 2 * 3  # series x targets x layers
    # older tables (no null columns): no band, still a figure
    assert not _bands(P.plot_information_plane(_table(rng), tmp_path / "old.png")) and (tmp_path / "old.png").exists()
    assert not _bands(P.plot_information_plane(df, tmp_path / "off.png", chance=False))


def test_adjusted_plot(tmp_path, rng):
    df = _with_null(_table(rng))
    fig = P.plot_information_plane(df, tmp_path / "adj.png", adjusted=True, layers=["fc1"])
    ax = [a for a in fig.axes if a.get_title().startswith("layer")][0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("adjusted nHSIC(X;Z)", "adjusted nHSIC(Y;Z)")
    pts = np.vstack([c.get_offsets() for c in ax.collections if c.get_label() in ("e2e", "layerwise")])
    sel = df[df["layer"] == "fc1"]
    assert np.allclose(np.sort(pts[:, 0]), np.sort(sel.loc[sel.target == "x", "adjusted"]))
    assert ax.get_xlim()[0] <= 0 <= ax.get_xlim()[1]    # the chance line at 0 is in view
    assert _bands(fig)
    curves = P.plot_layer_curves(df, tmp_path / "adj_curves.png", adjusted=True)
    assert {"adjusted nHSIC(X;Z)", "adjusted nHSIC(Y;Z)"} <= {a.get_ylabel() for a in curves.axes}
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
