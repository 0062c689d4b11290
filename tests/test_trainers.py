"""Tests of the trainers package: regimes, losses, heads, the loop, checkpoints and the CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from infoplane.checkpoint import load_checkpoint
from infoplane.data import load_dataset
from infoplane.models import build_model
from trainers import TrainConfig, get_regime, list_regimes, train
from trainers import losses
from trainers.heads import make_head
from trainers.loop import checkpoint_epochs, prepare_out_dir

REPO = Path(__file__).resolve().parents[1]
LENET_SMALL = {"channels": [4, 8], "hidden": [32, 16]}
MLP_SMALL = {"width": 32, "depth": 3}


@pytest.fixture(scope="module")
def batch():
    """A fixed class-balanced batch of 80 digits (1, 8, 8)."""
    ds = load_dataset("digits", "train", subset=80, seed=0)
    x, y = ds.tensors
    return x.float(), y.long()


def make(regime: str, model: str = "lenet5", **kw):
    kwargs = dict(LENET_SMALL if model == "lenet5" else MLP_SMALL)
    torch.manual_seed(0)
    net = build_model(model, input_shape=(1, 8, 8), num_classes=10, **kwargs)
    cfg = TrainConfig(model=model, regime=regime, lr=kw.pop("lr", 3e-3), epochs=kw.pop("epochs", 10),
                      progress=False, **kw)
    return net, get_regime(regime)(net, cfg, torch.device("cpu"))


CASES = [
    ("e2e", "lenet5", dict(loss="ce")),
    ("e2e", "mlp", dict(loss="supcon")),
    ("e2e", "lenet5", dict(loss="simclr")),
    ("layerwise", "lenet5", dict(local_loss="ce", aux="linear")),
    ("layerwise", "mlp", dict(local_loss="ce", aux="mlp")),
    ("layerwise", "lenet5", dict(local_loss="ce", aux="mlp2")),
    ("layerwise", "lenet5", dict(local_loss="supcon", aux="none")),
    ("layerwise", "mlp", dict(local_loss="supcon", aux="linear")),
    ("layerwise", "lenet5", dict(local_loss="sim", aux="auto")),
    ("layerwise", "lenet5", dict(local_loss="sp-hard")),
    ("layerwise", "mlp", dict(local_loss="sp-soft")),
    ("layerwise", "lenet5", dict(local_loss="ce", nhsic_lambda=0.05)),
    ("layerwise", "mlp", dict(local_loss="ce", nhsic_lambda=0.05, nhsic_target="block-input")),
    ("layerwise-sequential", "lenet5", dict(local_loss="ce", epochs_per_layer=1)),
]


@pytest.mark.parametrize("regime,model,kw", CASES, ids=[f"{r}-{m}-{'-'.join(map(str, k.values()))}"
                                                        for r, m, k in CASES])
def test_loss_falls_on_fixed_batch(batch, regime, model, kw):
    x, y = batch
    torch.manual_seed(1)
    _, reg = make(regime, model, **kw)
    reg.on_epoch_start(1)
    hist = [reg.training_step(x, y)["loss"] for _ in range(25)]
    assert all(torch.isfinite(torch.tensor(hist)))
    first, last = sum(hist[:3]) / 3, sum(hist[-3:]) / 3
    assert last < first, (hist[:3], hist[-3:])
    reg.eval()
    with torch.no_grad():
        assert reg.predict(x).shape == (len(y), 10)


def test_registry_lists_core_regimes():
    assert {"e2e", "layerwise", "layerwise-sequential"} <= set(list_regimes())
    with pytest.raises(ValueError, match="unknown regime"):
        get_regime("no-such-regime")


@pytest.mark.parametrize("local_loss,aux,lam", [("ce", "linear", 0.0), ("ce", "mlp", 0.1), ("supcon", "none", 0.0),
                                                ("sim", "auto", 0.0), ("sp-hard", "none", 0.0),
                                                ("sp-soft", "none", 0.1)])
def test_gradient_isolation(batch, local_loss, aux, lam):
    """Backpropagating only layer k's local loss leaves every earlier layer's .grad None (eq. 2)."""
    x, y = batch
    net, reg = make("layerwise", local_loss=local_loss, aux=aux, nhsic_lambda=lam)
    names = net.layer_names
    for k in range(1, len(names)):
        reg.model.zero_grad(set_to_none=True)
        per_layer = reg.local_losses(x[:32], y[:32])
        per_layer[names[k]].backward()
        for j, name in enumerate(names):
            grads = [p.grad for p in net.get_submodule(name).parameters()]
            if j < k:
                assert all(g is None for g in grads), f"loss of {names[k]} reached {name}"
            elif j == k:
                assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name} got no gradient"


def test_e2e_gradient_reaches_first_layer(batch):
    x, y = batch
    net, reg = make("e2e")
    before = net.conv1[0].weight.detach().clone()
    reg.on_epoch_start(1)
    reg.training_step(x, y)
    assert not torch.equal(before, net.conv1[0].weight)


def test_e2e_probe_does_not_touch_backbone(batch):
    """The linear evaluation head of contrastive E2E sees detached features: its learning rate
    cannot change the backbone's trajectory."""
    x, y = batch
    states = []
    for probe_lr in (1e-3, 1e-1):
        net, reg = make("e2e", "mlp", loss="supcon", probe_lr=probe_lr)
        torch.manual_seed(5)
        reg.on_epoch_start(1)
        for _ in range(4):
            reg.training_step(x, y)
        states.append((net.state_dict(), reg.heads.state_dict()))
    (a, ha), (b, hb) = states
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(ha[k], hb[k]) for k in ha)


def test_batches_dataloader_path():
    from torch.utils.data import Dataset

    class Plain(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 3

    from trainers.loop import Batches
    got = list(Batches(Plain(), 4, shuffle=True, seed=0))
    assert [len(yb) for _, yb in got] == [4, 4, 2] and got[0][1].dtype == torch.long
    assert sorted(torch.cat([xb[:, 0] for xb, _ in got]).tolist()) == [float(i) for i in range(10)]


def test_sequential_freezes_earlier_layers(batch):
    x, y = batch
    net, reg = make("layerwise-sequential", epochs_per_layer=2)
    assert reg.total_epochs() == 2 * len(net.layer_names)
    reg.on_epoch_start(5)  # epochs 5-6: stage 2 = fc1
    assert reg.stage == 2
    snap = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for _ in range(3):
        reg.training_step(x, y)
    assert not net.conv1.training and not net.conv2.training and net.fc1.training
    for k, v in net.state_dict().items():
        layer = k.split(".")[0]
        if layer in ("conv1", "conv2", "fc2", "out"):
            assert torch.equal(v, snap[k]), f"{k} changed outside the current stage"
        elif k.endswith("weight"):
            assert not torch.equal(v, snap[k]), f"{k} of the current stage did not change"
    assert all(not p.requires_grad for p in net.conv1.parameters())


def _run(tmp_path: Path, name: str, **kw) -> list:
    cfg = dict(model="lenet5", model_kwargs=LENET_SMALL, dataset="digits", subset=120, test_subset=60,
               epochs=2, batch_size=32, progress=False, device="cpu", out=str(tmp_path / name))
    cfg.update(kw)
    return train(TrainConfig(**cfg))


def test_checkpoints_load_and_rebuild(tmp_path):
    paths = _run(tmp_path, "lw", regime="layerwise", aux="mlp")
    assert [p.name for p in paths] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    ck = load_checkpoint(paths[-1])
    assert ck.epoch == 2 and ck.regime["name"] == "layerwise" and ck.regime["aux"] == "mlp"
    assert {"train_acc", "test_acc", "train_loss", "test_loss"} <= set(ck.metrics)
    assert set(ck.aux_state["heads"]) and all(k.split(".")[0] in ("conv1", "conv2", "fc1", "fc2")
                                              for k in ck.aux_state["heads"])
    assert set(ck.state_dict) == set(build_model("lenet5", input_shape=(1, 8, 8), num_classes=10,
                                                 **LENET_SMALL).state_dict())
    model = ck.build_model()
    x = load_dataset("digits", "test", subset=60, seed=0).tensors[0]
    with torch.no_grad():
        acc_logits = model(x)
    assert acc_logits.shape == (60, 10)
    rows = list(csv.DictReader(open(tmp_path / "lw" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert abs(float(rows[-1]["test_acc"]) - ck.metrics["test_acc"]) < 1e-9
    conf = json.loads((tmp_path / "lw" / "config.json").read_text())
    assert conf["config"]["regime"] == "layerwise" and conf["resolved"]["total_epochs"] == 2
    assert TrainConfig.from_dict(conf["config"]).aux == "mlp"


def test_determinism_same_seed(tmp_path):
    a = _run(tmp_path, "a", regime="layerwise", local_loss="supcon", seed=3, epochs=1)
    b = _run(tmp_path, "b", regime="layerwise", local_loss="supcon", seed=3, epochs=1)
    c = _run(tmp_path, "c", regime="layerwise", local_loss="supcon", seed=4, epochs=1)
    sa, sb, sc = (load_checkpoint(p[-1]).state_dict for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_out_dir_refused_unless_overwrite(tmp_path):
    _run(tmp_path, "r", epochs=1)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(tmp_path, "r", epochs=1)
    (tmp_path / "r" / "notes.txt").write_text("keep me")
    paths = _run(tmp_path, "r", epochs=1, overwrite=True, save_init=False)
    assert [p.name for p in paths] == ["epoch_0001.pt"]
    assert sorted(f.name for f in (tmp_path / "r").iterdir()) == ["config.json", "epoch_0001.pt",
                                                                   "metrics.csv", "notes.txt"]
    with pytest.raises(NotADirectoryError):
        prepare_out_dir(tmp_path / "r" / "notes.txt", overwrite=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_determinism_cuda(tmp_path):
    a = _run(tmp_path, "ga", regime="e2e", seed=3, epochs=1, device="cuda", deterministic=True)
    b = _run(tmp_path, "gb", regime="e2e", seed=3, epochs=1, device="cuda", deterministic=True)
    sa, sb = (load_checkpoint(p[-1]).state_dict for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_schedule():
    assert checkpoint_epochs(4, "every") == [1, 2, 3, 4]
    log = checkpoint_epochs(100, "log", 10)
    assert log[0] == 1 and log[-1] == 100 and len(log) <= 10 and log == sorted(set(log))
    assert log[1] - log[0] < log[-1] - log[-2]
    with pytest.raises(ValueError):
        checkpoint_epochs(5, "weekly")


def test_config_validation_and_milestones():
    assert TrainConfig(epochs=400).resolved_milestones() == [200, 300, 350, 375]
    assert TrainConfig(epochs=8).resolved_milestones() == [4, 6, 7]
    assert TrainConfig(milestones=(3, 5)).resolved_milestones() == [3, 5]
    for bad in (dict(loss="mse"), dict(aux="huge"), dict(lr=0), dict(milestones=(5, 3)), dict(device="tpu")):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="needs an auxiliary classifier"):
        make("layerwise", local_loss="ce", aux="none")
    with pytest.raises(ValueError, match="uses no auxiliary network"):
        make("layerwise", local_loss="sp-hard", aux="linear")


def test_cli_subprocess(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "trainers", "--model", "mlp", "--model-kwargs", "width=16", "depth=2",
           "--dataset", "digits", "--regime", "layerwise", "--aux", "linear", "--epochs", "2", "--subset", "100",
           "--schedule", "log", "--num-checkpoints", "2", "--device", "cpu", "--no-progress", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    assert load_checkpoint(out / "epoch_0002.pt").model_kwargs["width"] == 16
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr


# -- losses and heads ---------------------------------------------------------------------

def test_sim_loss_zero_at_labels_and_positive_otherwise():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    h = 3.0 * torch.nn.functional.one_hot(y, 3).float()
    assert losses.sim_matching_loss(h, y, 3) < 1e-10
    assert losses.sim_matching_loss(torch.randn(6, 3), y, 3) > 1e-3


def test_supcon_prefers_clustered_features_and_simclr_matches_supcon():
    torch.manual_seed(0)
    y = torch.arange(4).repeat(4)
    centers = torch.randn(4, 8) * 5
    clustered = centers[y] + 0.1 * torch.randn(16, 8)
    assert losses.supcon_loss(clustered, y, 0.5) < losses.supcon_loss(torch.randn(16, 8), y, 0.5)
    h1, h2 = torch.randn(5, 8), torch.randn(5, 8)
    idx = torch.arange(5)
    assert torch.allclose(losses.simclr_loss(h1, h2), losses.supcon_loss(torch.cat([h1, h2]),
                                                                         torch.cat([idx, idx])))


def test_sp_target_hard_topk_and_soft_rows_sum_to_one():
    s = torch.randn(10, 5)
    hard = losses.sp_target(s, hard=True, topk=3)
    assert torch.equal(hard.sum(1), torch.full((10,), 3.0))
    assert torch.allclose(losses.sp_target(s, hard=False).sum(1), torch.ones(10))


def test_nhsic_term_is_differentiable_and_bounded():
    x = torch.randn(20, 4)
    z = torch.randn(20, 3, requires_grad=True)
    v = losses.nhsic_term(z, x)
    v.backward()
    assert 0 <= float(v.detach()) <= 20 and z.grad is not None and z.grad.abs().sum() > 0


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 64), hw=st.integers(1, 20), max_features=st.sampled_from([16, 64, 2048]))
def test_pool_features_bound(c, hw, max_features):
    z = torch.randn(2, c, hw, hw)
    out = losses.pool_features(z, max_features)
    assert out.shape[0] == 2 and out.shape[1] <= max(max_features, c)
    if c * hw * hw <= max_features:
        assert out.shape[1] == c * hw * hw


@pytest.mark.parametrize("kind,shape,expect", [("linear", (8, 4, 4), 10), ("mlp2", (30,), 10),
                                               ("conv", (8, 4, 4), 8), ("none", (8, 4, 4), 128)])
def test_heads_shapes(kind, shape, expect):
    head = make_head(kind, shape, 10 if kind != "conv" else 8, hidden=16)
    assert head(torch.randn(3, *shape)).shape == (3, expect)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(2, 6), seed=st.integers(0, 1000))
def test_similarity_losses_invariances(n, d, seed):
    """sim(H) (eq. 16) ignores a positive per-row scale and a per-row shift; eq. 14 ignores scale."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.5
    shift = torch.randn(n, 1, generator=g, dtype=torch.float64)
    assert torch.allclose(losses.sim_matching_loss(h, y, 3), losses.sim_matching_loss(h * scale + shift, y, 3),
                          atol=1e-9)
    yy = torch.cat([y, y])
    hh = torch.cat([h, h + 0.1])
    assert torch.allclose(losses.supcon_loss(hh, yy), losses.supcon_loss(hh * 3.0, yy), atol=1e-9)
