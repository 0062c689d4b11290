"""--device is validated in one place, with one message."""
import pytest
import torch

from infoplane.device import resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA requested but not available"):
        resolve_device("cuda")


def test_nonsense_is_a_clear_error():
    with pytest.raises(ValueError, match="'nonsense' is not a device"):
        resolve_device("nonsense")


def test_cli_paths_use_it(tmp_path, capsys):
    from infoplane.cli import main

    # checked before any file is read
    assert main(["extract", str(tmp_path / "x.pt"), "--device", "nonsense", "--out", str(tmp_path / "a.h5")]) == 2
    assert "'nonsense' is not a device" in capsys.readouterr().err


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    """Empty selections, directories and extension-less figure paths fail first, with the option named."""
    import pandas as pd

    from infoplane.cli import main

    csv = tmp_path / "est.csv"
    pd.DataFrame({"estimator": ["nhsic"], "target": ["x"], "value": [1.0], "layer": ["a"], "epoch": [0],
                  "layer_index": [1]}).to_csv(csv, index=False)
    assert main(["plot", str(csv), "--out", str(tmp_path / "plane")]) == 2
    assert "has no figure extension" in capsys.readouterr().err
    assert main(["plot", str(csv), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["estimate", str(tmp_path / "s.h5"), "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err and not list(tmp_path.glob("*.partial"))
    from infoplane.estimate import EstimateConfig

    with pytest.raises(ValueError, match="--layers selects nothing"):
        EstimateConfig(layers=[]).validate()
