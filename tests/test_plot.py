"""Information-plane and per-layer figures (infoplane.plot)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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
