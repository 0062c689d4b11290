"""The worked examples run as they are: examples/notebook_tour.py (a jupytext percent script)."""
import re
import runpy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

TOUR = Path(__file__).resolve().parents[1] / "examples" / "notebook_tour.py"


def _cells(text: str):
    """(kind, lines) of every ``# %%`` cell of a percent script."""
    cells = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    return cells


def test_tour_is_a_percent_notebook():
    cells = _cells(TOUR.read_text())
    kinds = [k for k, _ in cells]
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 8
    for kind, lines in cells:
        if kind == "markdown":  # markdown cells are comment lines only (jupytext renders them as text)
            assert all(not ln.strip() or ln.startswith("#") for ln in lines), lines
    assert re.search(r"ip\.plot_plane\(df, ax=", TOUR.read_text())


def test_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = runpy.run_path(str(TOUR), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    work = tmp_path / "tour"
    assert [p.name for p in g["checkpoints"]] == [f"epoch_{e:04d}.pt" for e in range(4)]
    df = g["df"]
    assert sorted(df["epoch"].unique()) == [0, 1, 2, 3] and (df["status"] == "ok").all()
    assert {"value", "null_mean", "null_sd", "z", "adjusted"} <= set(df.columns)
    final = df[df["epoch"] == 3]
    assert (final["z"] > 2).all() and final["adjusted"].between(0, 1).all()   # trained: every layer above chance
    assert g["fc1"].shape == (300, 2 + 120) and list(g["fc1"].columns[:3]) == ["index", "label", "f0"]
    for name in ("curves.png", "fc1.png"):
        assert plt.imread(work / name)[..., :3].std() > 0.05, name
    own = g["own"].pivot_table(index=["layer", "target"], columns="epoch", values="adjusted")
    assert list(own.columns) == [0, 1, 2, 3]
    assert own.loc[("out", "y"), 3] > own.loc[("out", "y"), 0] + 0.2   # training raised the output's Y-dependence
    assert np.isfinite(own.to_numpy()).all()
