"""Every registered architecture trains under E2E and layer-wise regimes and its checkpoints extract.

Tiny widths on a digits subset (8x8 inputs): this checks the wiring (layer names used for local
losses = layer names extraction sees), not accuracy.
"""
import h5py
import pytest
import torch

from infoplane.checkpoint import load_checkpoint
from infoplane.extract import extract
from infoplane.models import list_models
from tests.test_models import TINY
from trainers import TrainConfig, train


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("regime", ["e2e", "layerwise"])
def test_architecture_trains_and_extracts(tmp_path, name, regime):
    assert name in list_models()
    paths = train(TrainConfig(model=name, model_kwargs=dict(TINY[name]), dataset="digits", regime=regime,
                              subset=40, test_subset=20, epochs=1, batch_size=20, progress=False,
                              device="cpu", out=str(tmp_path / "run")))
    assert len(paths) == 2  # epoch 0 (init) and epoch 1
    ck = load_checkpoint(paths[-1])
    net = ck.build_model()
    before = load_checkpoint(paths[0]).state_dict
    changed = [k for k, v in ck.state_dict.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "training did not change any weight"
    if regime == "layerwise":  # every layer got its own update, the first one included
        assert any(k.startswith(net.layer_names[0] + ".") for k in changed)
    store = extract(paths, layers="all", out=tmp_path / "acts.h5", samples=20, batch_size=10, progress=False)
    with h5py.File(store, "r") as f:
        groups = list(f["checkpoints"])
        assert len(groups) == 2
        assert sorted(f["checkpoints"][groups[-1]]["layers"]) == sorted(net.layer_names)
