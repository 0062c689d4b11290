import textwrap

import pytest
import torch
from torch import nn

from infoplane.checkpoint import (FORMAT, CheckpointError, checkpoint_filename, list_checkpoints, load_checkpoint,
                                  save_checkpoint, wrap_state_dict)
from infoplane.data import dataset_info
from infoplane.models import build_model

KW = dict(input_shape=(1, 8, 8), num_classes=10, channels=(2, 3), hidden=(8, 6))


def _save(path, model, **over):
    args = dict(model_name="lenet5", model_kwargs=KW, epoch=3, step=42, regime={"name": "layerwise", "loss": "ce"},
                dataset=dataset_info("digits"), metrics={"train_acc": 0.5, "test_acc": 0.25}, seed=7)
    args.update(over)
    return save_checkpoint(path, model, **args)


def test_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = build_model("lenet5", **KW)
    head = nn.Linear(3, 10)
    p = _save(tmp_path / "run" / checkpoint_filename(3), m, aux_state={"heads": {"conv2": head.state_dict()}})
    assert p.name == "epoch_0003.pt" and not (tmp_path / "run" / "epoch_0003.pt.partial").exists()
    raw = torch.load(p, weights_only=True)  # plain types only
    assert raw["format"] == FORMAT
    assert set(raw["state_dict"]) == set(m.state_dict())
    c = load_checkpoint(p)
    assert (c.epoch, c.step, c.seed, c.model_name) == (3, 42, 7, "lenet5")
    assert c.regime == {"name": "layerwise", "loss": "ce"} and c.metrics["test_acc"] == 0.25
    assert c.dataset["name"] == "digits" and c.dataset["input_shape"] == [1, 8, 8]
    assert c.versions["torch"] == str(torch.__version__) and "python" in c.versions and c.created
    assert len(c.sha256) == 64
    m2 = c.build_model()
    assert not m2.training
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    h2 = nn.Linear(3, 10)
    h2.load_state_dict(c.aux_state["heads"]["conv2"])
    assert torch.equal(h2.weight, head.weight)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(m.eval()(x), m2(x))


def test_non_plain_metadata_rejected(tmp_path):
    with pytest.raises(ValueError, match="cannot be stored"):
        _save(tmp_path / "a.pt", build_model("lenet5", **KW), metrics={"obj": object()})
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch file"):
        load_checkpoint(tmp_path / "garbage.pt")
    p = _save(tmp_path / "ok.pt", build_model("lenet5", **KW))
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_foreign_checkpoint_and_wrap(tmp_path):
    m = build_model("lenet5", **KW)
    torch.save({"epoch": 5, "model_state_dict": m.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "foreign.pt")
    msg = str(err.value)
    assert "model_state_dict" in msg and "wrap_state_dict" in msg
    torch.save(m, tmp_path / "pickled_module.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "pickled_module.pt")
    out = wrap_state_dict(tmp_path / "foreign.pt", tmp_path / "wrapped.pt", model_name="lenet5", model_kwargs=KW,
                          dataset="digits", epoch=5)
    c = load_checkpoint(out)
    assert c.epoch == 5 and c.regime == {"name": "imported"}
    assert torch.equal(c.build_model().conv1[0].weight, m.conv1[0].weight)
    prefixed = {"module." + k: v for k, v in m.state_dict().items()}
    wrap_state_dict(prefixed, tmp_path / "w2.pt", model_name="lenet5", model_kwargs=KW, dataset="digits",
                    strip_prefix="module.")
    with pytest.raises(CheckpointError, match="Unexpected keys"):
        wrap_state_dict(prefixed, tmp_path / "w3.pt", model_name="lenet5", model_kwargs=KW, dataset="digits")
    assert not (tmp_path / "w3.pt").exists()


def test_wrong_state_dict(tmp_path):
    p = _save(tmp_path / "a.pt", build_model("lenet5", **KW))
    c = load_checkpoint(p)
    c.model_kwargs = dict(KW, hidden=(9, 6))
    with pytest.raises(CheckpointError, match="Shape mismatches: fc1"):
        c.build_model()
    with pytest.raises(CheckpointError, match="Missing keys: .*extra"):
        c2 = load_checkpoint(p)

        def factory(**kw):
            net = build_model("lenet5", **kw)
            net.extra = nn.Linear(1, 1)
            return net

        c2.build_model(factory=factory)


def test_model_factory_path(tmp_path, monkeypatch):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "zoo.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(width=3, num_classes=2):
            return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from infoplane.checkpoint import resolve_factory

    net = resolve_factory("mynets.zoo:make")(width=4)
    p = save_checkpoint(tmp_path / "user.pt", net, model_name="my-net", model_kwargs={"width": 4}, epoch=0,
                        step=0, regime="e2e", dataset={"name": "toy-rings"}, metrics={}, seed=None)
    c = load_checkpoint(p)
    with pytest.raises(CheckpointError, match="--model-factory"):
        c.build_model()  # nothing is imported because the checkpoint names it
    rebuilt = c.build_model(factory="mynets.zoo:make")
    assert torch.equal(rebuilt[0].weight, net[0].weight)
    with pytest.raises(ValueError, match="package.module:function"):
        c.build_model(factory="mynets.zoo.make")
    with pytest.raises(ValueError, match="cannot import"):
        c.build_model(factory="no_such_pkg_xyz:make")


def test_list_checkpoints(tmp_path):
    m = build_model("lenet5", **KW)
    for e in (10, 2, 1):
        _save(tmp_path / checkpoint_filename(e), m, epoch=e)
    (tmp_path / "epoch_0011.pt.partial").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0010.pt"]
    with pytest.raises(FileNotFoundError):
        list_checkpoints(tmp_path / "missing")
