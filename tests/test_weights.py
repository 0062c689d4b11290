"""Singular values of weights across checkpoints (`infoplane info --weights`, Figure 4's rank collapse)."""
import json

import numpy as np
import pytest
import torch

from infoplane.checkpoint import save_checkpoint
from infoplane.cli import main
from infoplane.models import build_model
from infoplane.weights import weight_spectra


def _run(tmp_path):
    kwargs = {"input_shape": (2,), "num_classes": 2}
    net = build_model("toy-linear", **kwargs)
    paths = []
    for epoch, s2 in enumerate([1.0, 0.5, 0.01]):
        U, _ = torch.linalg.qr(torch.randn(2, 2, generator=torch.Generator().manual_seed(epoch)))
        with torch.no_grad():
            net.w.weight.copy_(U @ torch.diag(torch.tensor([2.0, s2])) @ U.T)
        p = tmp_path / "run" / f"epoch_{epoch:04d}.pt"
        save_checkpoint(p, net, model_name="toy-linear", model_kwargs=kwargs, epoch=epoch, step=epoch,
                        regime={"name": "layerwise"}, dataset="toy-rings")
        paths.append(p)
    return paths


def test_singular_values_per_epoch(tmp_path):
    paths = _run(tmp_path)
    df = weight_spectra(paths[::-1], ["w.weight"])          # any order in, epoch order out
    assert list(df.epoch) == [0, 1, 2] and (df["shape"] == "2x2").all()
    np.testing.assert_allclose(df.s1, 2.0, rtol=1e-6)
    np.testing.assert_allclose(df.s2, [1.0, 0.5, 0.01], rtol=1e-5)
    np.testing.assert_allclose(df.s2_over_s1, [0.5, 0.25, 0.005], rtol=1e-5)
    assert df.effective_rank.iloc[0] > df.effective_rank.iloc[2] > 1.0
    with pytest.raises(ValueError, match="weight matrices: w.weight"):
        weight_spectra(paths, ["conv9.weight"])


def test_cli_reads_a_run_directory(tmp_path, capsys):
    _run(tmp_path)
    assert main(["info", str(tmp_path / "run"), "--weights", "w.*"]) == 0
    out = capsys.readouterr().out
    assert "w.weight" in out and "0.005" in out
    assert main(["info", str(tmp_path / "run"), "--weights", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["parameter"] for r in rows} >= {"w.weight"}
    assert main(["info", str(tmp_path / "run")]) == 0           # a run directory: its table of epochs
    assert "epoch  train_acc" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2         # a directory without checkpoints: one line
    assert "is a directory without checkpoints" in capsys.readouterr().err
