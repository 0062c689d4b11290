"""Careless or hostile inputs end in a clear message (or a loudly labelled result), never silently."""
import math

import pytest
import torch

from trainers import TrainConfig, train
from trainers.loop import NonFiniteLossError

torch.set_num_threads(1)


def _cfg(tmp_path, **kw):
    return TrainConfig(model="lenet5", dataset="digits", regime="e2e", epochs=2, subset=120, test_subset=60,
                       batch_size=32, out=str(tmp_path / "run"), progress=False, device="cpu",
                       model_kwargs={"channels": (2, 4), "hidden": (8, 8)}, **kw)


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"became nan at epoch 1, step \d+.*Lower --lr"):
        train(_cfg(tmp_path, lr=1e8))
    kept = sorted(p.name for p in (tmp_path / "run").glob("epoch_*.pt"))
    assert kept == ["epoch_0000.pt"]                      # nothing written from the diverged epoch


def test_allow_nonfinite_keeps_training_and_records_it(tmp_path):
    paths = train(_cfg(tmp_path, lr=1e8, allow_nonfinite=True, overwrite=True))
    assert len(paths) == 3
    import pandas as pd

    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    later = m.loc[m["epoch"] >= 1, "train_loss"]
    assert not any(math.isfinite(v) for v in later)       # the non-finite loss is on record, not hidden


def test_ctrl_c_during_training_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    import trainers.loop as loop
    from trainers.__main__ import main

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    code = main(["--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
