"""Smoke test of benchmarks/gaussian_accuracy.py (the full run is `python -m benchmarks.gaussian_accuracy`)."""
import numpy as np
import pandas as pd
import pytest

from benchmarks import gaussian_accuracy as ga
from benchmarks.groundtruth import LabelTask, bivariate_task


def test_quick_run_writes_consistent_outputs(tmp_path):
    cfg = ga.BenchConfig(ms=(32, 64), eps=(1e-3, 1e-1), seeds=2, sigma_rules=("sqrt-d",), threads=1,
                         out=tmp_path, quick=True, progress=False,
                         tasks=[bivariate_task(0.75), LabelTask(c=2, d=2, delta=2.0)])
    df = ga.run(cfg)
    for ext in ("csv", "md", "png"):
        assert (tmp_path / f"gaussian_accuracy.{ext}").stat().st_size > 0
    assert not list(tmp_path.glob("*.partial"))
    back = pd.read_csv(tmp_path / "gaussian_accuracy.csv")
    assert len(back) == len(df) == 2 * 2 * 2 * (2 + 2)  # tasks * m * seeds * (eps + 2 HSIC rows)
    biv = back[(back.task == "bivariate-rho0.75") & (back.estimator == "nhsic")]
    assert np.allclose(biv["truth"], 0.75 ** 2 / (1 - 0.75 ** 2))
    nh = back[back.estimator == "nhsic"]
    assert (nh["value"] > nh["baseline"]).mean() > 0.9  # dependent pairs beat the shuffled null
    # eps path: larger eps -> smaller nHSIC, for every (task, m, seed)
    piv = nh.pivot_table(index=["task", "m", "seed"], columns="eps", values="value")
    assert (piv[1e-3] > piv[1e-1]).all()
    md = (tmp_path / "gaussian_accuracy.md").read_text()
    assert "within 10% of the chi2-MI" in md and "above its null" in md and "## Headline (m = 64)" in md
    (tmp_path / "gaussian_accuracy.md").unlink()
    assert ga.main(["--report-only", "--out", str(tmp_path)]) == 0  # rebuild report from the CSV alone
    assert "rebuilt from the CSV" in (tmp_path / "gaussian_accuracy.md").read_text()


def test_seeded_and_reproducible():
    a = ga.run_unit(bivariate_task(0.75), 40, 1, "paper", [1e-3])
    b = ga.run_unit(bivariate_task(0.75), 40, 1, "paper", [1e-3])
    assert [r["value"] for r in a] == [r["value"] for r in b]
    with pytest.raises(KeyError):
        ga.run_unit(bivariate_task(0.75), 40, 1, "silverman", [1e-3])
