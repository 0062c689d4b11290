"""The whole CLI chain, train -> extract -> estimate -> plot, on tiny data, and its error paths."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest

from infoplane.cli import main
from infoplane.estimate import COLUMNS


def test_cli_chain_end_to_end(tmp_path, capsys):
    runs = tmp_path / "runs" / "e2e"
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--regime", "e2e", "--epochs", "2",
                 "--subset", "200", "--out", str(runs), "--no-progress"]) == 0
    ckpts = sorted(str(p) for p in runs.glob("epoch_*.pt"))
    assert len(ckpts) == 3                                     # init + 2 epochs
    acts, csv, png = tmp_path / "acts.h5", tmp_path / "est.csv", tmp_path / "plane.png"
    assert main(["extract", *ckpts, "--out", str(acts), "--samples", "200", "--batch-size", "64",
                 "--no-progress"]) == 0
    assert main(["estimate", str(acts), "--estimator", "nhsic", "--batch-size", "100", "--out", str(csv),
                 "--no-progress"]) == 0
    assert main(["plot", str(csv), "--out", str(png)]) == 0
    df = pd.read_csv(csv)
    assert list(df.columns) == COLUMNS
    assert len(df) == 3 * 5 * 2 and set(df["target"]) == {"x", "y"}
    assert (df["n_batches"] == 2).all() and (df["batch_size"] == 100).all()
    assert df["value"].notna().all() and df["null_mean"].notna().all() and df["baseline"].isna().all()
    # every layer depends on its input and label beyond the exact chance level
    assert (df["value"] > df["null_mean"]).all() and (df["z"] > 0).all()
    assert ((df["adjusted"] > 0) & (df["adjusted"] <= 1)).all()
    assert png.stat().st_size > 10_000 and (tmp_path / "plane_curves.png").exists()
    capsys.readouterr()
    assert main(["info", str(acts)]) == 0
    out = capsys.readouterr().out
    assert "epoch_0002" in out and "conv1" in out
    assert main(["info", ckpts[0]]) == 0 and "lenet5" in capsys.readouterr().out
    assert main(["info", "--json", str(acts)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_samples"] == 200 and [c["epoch"] for c in info["checkpoints"]] == [0, 1, 2]


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    assert main(["extract", str(bad), "--out", str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "Traceback" not in err and not (tmp_path / "a.h5").exists()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(2)
    assert main(["estimate", str(foreign), "--out", str(tmp_path / "e.csv")]) == 2
    assert "not an infoplane activation store" in capsys.readouterr().err
    assert not (tmp_path / "e.csv").exists()
    assert main(["plot", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", str(tmp_path / "missing.pt")])


def test_cli_lists(capsys):
    assert main(["estimators"]) == 0
    assert "nhsic" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "lenet5" in capsys.readouterr().out


def test_demo_summary_table():
    from infoplane.demo import summary_table

    df = pd.DataFrame({"regime": "e2e", "layer_index": 1, "layer": "fc1", "target": "y",
                       "epoch": [0, 1, 2], "value": [1.0, 3.0, 2.0], "baseline": [0.5, 0.5, 0.5]})
    row = summary_table(df).iloc[0]
    assert (row["first"], row["peak"], row["peak_epoch"], row["last"]) == (1.0, 3.0, 1, 2.0)


def test_help_and_argument_errors_import_nothing_heavy():
    """--help, --version and usage errors stay fast: the parser is built and errors are reported
    without torch, h5py, pandas or matplotlib (benchmarks/cli_latency.py measures the time)."""
    import subprocess
    import sys

    code = ("import sys\nfrom infoplane.cli import main\n"
            "for argv in (['--help'], ['--version'], ['estimate', '--help'], ['report', '--help'],"
            " ['estimate', 'x.h5', '--batch-size', '1']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'h5py', 'pandas', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
