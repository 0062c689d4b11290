"""Tests of the K-module regimes (greedy, dgl, infopro, contsup), forward-gradient and forward-forward."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from infoplane.checkpoint import load_checkpoint, save_checkpoint
from infoplane.data import dataset_tensors, load_dataset
from infoplane.models import build_model
from trainers.config import TrainConfig
from trainers.local_modules import ActivationCache, LocalModules
from trainers.regimes import get_regime, list_regimes
from trainers.regimes.contsup import contsup_model
from trainers.regimes.forward_forward import embed_onehot, goodness, normalize, wrong_labels
from trainers.regimes.forward_gradient import forward_gradient
from trainers.regimes.infopro import infopro_contrast_loss, interpolate_lambdas

CPU = torch.device("cpu")
MODULAR = ["greedy", "dgl", "infopro", "contsup"]


@pytest.fixture(scope="module")
def digits():
    x, y = dataset_tensors(load_dataset("digits", "train"), 128)
    return x, y


def make(regime, model="lenet5", lr=3e-3, epochs=3, **kw):
    torch.manual_seed(0)
    mk = {"width": 32} if model == "mlp" else ({"width": 4, "depth": 8} if model == "resnet32" else {})
    shape = (1, 8, 8)
    net = build_model(model, input_shape=shape, num_classes=10, **mk)
    cfg = TrainConfig(model=model, dataset="digits", regime=regime, regime_kwargs=kw, epochs=epochs, lr=lr,
                      model_kwargs=mk)
    return get_regime(regime)(net, cfg, CPU), mk


def test_registered():
    names = set(list_regimes())
    assert set(MODULAR + ["forward-gradient", "forward-forward"]) <= names


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="unknown --regime-kwargs"):
        make("greedy", modules=2, modulez=3)
    with pytest.raises(ValueError, match="context"):
        make("contsup", modules=2, context="R2")
    with pytest.raises(ValueError, match="infopro_loss"):
        make("infopro", modules=2, infopro_loss="mse")


@pytest.mark.parametrize("regime", MODULAR)
def test_gradient_isolation(regime, digits):
    """Module 1's local loss gives gradients only to module 1 (and its own aux nets)."""
    x, y = digits
    r, _ = make(regime, modules=3)
    losses, _, _ = r.run(x[:32], y[:32])
    losses[1].backward()
    for k, block in enumerate(r.split.blocks):
        grads = [p.grad for p in block.parameters()]
        if k == 1:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads), f"module {k} got a gradient from module 1's loss"
    for name, head in r.heads.items():
        has = any(p.grad is not None for p in head.parameters())
        assert has == name.endswith("_1"), name


def test_split_recorded_and_contiguous():
    r, _ = make("greedy", modules=3)
    d = r.describe()
    assert d["K"] == 3 and [n for m in d["modules"] for n in m] == r.model.layer_names
    assert len(r.split.feature_shapes) == 3


@pytest.mark.parametrize("regime,kw,model", [
    ("greedy", {"modules": 2}, "lenet5"),
    ("dgl", {"modules": 3}, "lenet5"),
    ("infopro", {"modules": 3}, "lenet5"),
    ("infopro", {"modules": 2, "infopro_loss": "softmax", "lambda1": (1.0, 0.5)}, "mlp"),
    ("contsup", {"modules": 3, "context": "R1E"}, "lenet5"),
    ("contsup", {"modules": 2, "context": "R1", "contsup_loss": "contrast"}, "mlp"),
    ("forward-forward", {}, "mlp"),
    ("forward-forward", {"ff_label": "prototype"}, "lenet5"),
])
def test_loss_falls(regime, kw, model, digits):
    x, y = digits
    r, _ = make(regime, model=model, **kw)
    r.on_epoch_start(1)
    first = r.training_step(x, y)["loss"]
    for _ in range(25):
        last = r.training_step(x, y)["loss"]
    assert math.isfinite(last) and last < first


def test_forward_gradient_loss_falls(digits):
    x, y = digits
    r, _ = make("forward-gradient", model="mlp", lr=3e-3, directions=4)
    r.on_epoch_start(1)
    r.eval()
    with torch.no_grad():
        before = F.cross_entropy(r.model(x), y).item()
    r.train()
    for _ in range(100):
        r.training_step(x, y)
    r.eval()
    with torch.no_grad():
        after = F.cross_entropy(r.model(x), y).item()
    assert after < before - 0.02  # forward gradients converge slowly (seed 000 F.4.2)


def test_forward_gradient_unbiased():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    g = torch.Generator().manual_seed(0)
    loss, grads = forward_gradient(m, lambda o: F.cross_entropy(o, y), x, g, directions=1000)
    m.zero_grad()
    ref = F.cross_entropy(m(x), y)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for name in ("0.weight", "3.weight", "3.bias"):
        p = dict(m.named_parameters())[name]
        cos = F.cosine_similarity(grads[name].flatten(), p.grad.flatten(), dim=0)
        assert cos > 0.85, (name, float(cos))
    with pytest.raises(ValueError):
        forward_gradient(m, lambda o: o.sum(), x, g, directions=0)


@pytest.mark.parametrize("regime", ["infopro", "contsup"])
def test_async_trains_one_module_at_a_time(regime, digits):
    x, y = digits
    r, _ = make(regime, modules=3, epochs=3, **{"async": 1})
    assert r.total_epochs() == 3
    r.on_epoch_start(1)
    r.training_step(x, y)
    r.on_epoch_end(1)
    r.on_epoch_start(2)
    assert r.stage == 1
    before0 = [p.detach().clone() for p in r.split.blocks[0].parameters()]
    before1 = [p.detach().clone() for p in r.split.blocks[1].parameters()]
    for _ in range(3):
        stats = r.training_step(x, y)
    assert set(stats) == {"loss", "loss_m1"}
    assert all(torch.equal(a, b) for a, b in zip(before0, r.split.blocks[0].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before1, r.split.blocks[1].parameters()))
    assert r.cache is not None and r.cache.hits == 2 * len(x) and len(r.cache) == len(x)


def test_activation_cache_matches_direct():
    calls = []

    def fn(x):
        calls.append(len(x))
        return [x * 2, x + 1]

    cache = ActivationCache(fn, max_rows=100)
    x = torch.randn(6, 3)
    a = cache(x)
    b = cache(x[torch.tensor([5, 0, 2])])
    assert calls == [6]
    assert torch.allclose(b[0], (x * 2)[[5, 0, 2]]) and torch.allclose(a[1], x + 1)
    with pytest.raises(ValueError):
        ActivationCache(fn, max_rows=-1)


def test_local_modules_resnet():
    net = build_model("resnet32", input_shape=(1, 8, 8), num_classes=10, width=4)
    split = LocalModules(net, 4)
    assert [n for m in split.modules_names for n in m] == net.layer_names
    outs = split.outputs(torch.randn(2, 1, 8, 8))
    assert outs[-1].shape == (2, 10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(2, 6), c=st.integers(1, 4), seed=st.integers(0, 1000))
def test_infopro_contrast_matches_loop(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    tau = 0.5
    zn = F.normalize(z, dim=1)
    num, cnt = 0.0, 0
    for i in range(n):
        den = sum(math.exp(float(zn[i] @ zn[k]) / tau) for k in range(n) if k != i)
        for j in range(n):
            if i != j and y[i] == y[j]:
                num += math.log(math.exp(float(zn[i] @ zn[j]) / tau) / den)
                cnt += 1
    expected = -num / cnt if cnt else 0.0
    assert float(infopro_contrast_loss(z, y, tau)) == pytest.approx(expected, rel=1e-8, abs=1e-10)
    assert float(infopro_contrast_loss(3.0 * z, y, tau)) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_interpolate_lambdas():
    assert interpolate_lambdas((1.0, 0.0), 3) == [1.0, 0.5, 0.0]
    assert interpolate_lambdas("2,4", 2) == [2.0, 4.0]
    assert interpolate_lambdas(0.5, 1) == [0.5]
    with pytest.raises(ValueError):
        interpolate_lambdas(-1, 2)
    with pytest.raises(ValueError):
        interpolate_lambdas("a,b", 2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(1, 8))
def test_ff_helpers(seed, n):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, 4, 4, generator=g) * 7
    assert torch.allclose(normalize(z).flatten(1).pow(2).mean(1), torch.ones(n), atol=1e-4)
    assert torch.allclose(goodness(z), (z ** 2).sum(dim=(1, 2, 3)))
    y = torch.randint(0, 10, (n,), generator=g)
    assert (wrong_labels(y, 10, g) != y).all()
    e = embed_onehot(torch.randn(n, 1, 8, 8, generator=g), y, 10)
    assert (e.flatten(1)[:, :10].argmax(1) == y).all()


def test_ff_onehot_needs_room():
    with pytest.raises(ValueError, match="prototype"):
        embed_onehot(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), 10)


@pytest.mark.parametrize("regime,kw", [("contsup", {"modules": 3, "context": "R1E"}),
                                       ("infopro", {"modules": 2}), ("forward-forward", {})])
def test_checkpoint_roundtrip(regime, kw, tmp_path, digits):
    x, y = digits
    r, mk = make(regime, model="lenet5" if regime != "forward-forward" else "mlp", **kw)
    r.on_epoch_start(1)
    for _ in range(3):
        r.training_step(x, y)
    r.eval()
    model_name = "lenet5" if regime != "forward-forward" else "mlp"
    path = save_checkpoint(tmp_path / "epoch_0001.pt", r.model, model_name=model_name,
                           model_kwargs={"input_shape": [1, 8, 8], "num_classes": 10, **mk}, epoch=1, step=3,
                           regime=r.describe(), dataset={"name": "digits", "num_classes": 10,
                                                         "input_shape": [1, 8, 8]},
                           metrics={}, seed=0, aux_state=r.aux_state())
    ck = load_checkpoint(path)
    net = ck.build_model()
    with torch.no_grad():
        if regime == "contsup":
            full = contsup_model(net, ck.regime, ck.aux_state)
            assert full.layer_names == net.layer_names
            assert torch.allclose(full(x), r.predict(x), atol=1e-5)
            outs = full.forward_layers(x)
            assert list(outs) == net.layer_names
        else:
            assert torch.allclose(net(x), r.model(x), atol=1e-5)
    if "modules" in ck.regime:
        assert [n for m in ck.regime["modules"] for n in m] == net.layer_names


def test_contsup_net_hooks_see_backbone_layers(digits):
    """Extraction on the rebuilt ContSup network hooks the backbone's layers, with context applied."""
    from infoplane.hooks import capture

    x, y = digits
    r, _ = make("contsup", modules=3, context="R1E")
    r.on_epoch_start(1)
    r.training_step(x, y)
    r.eval()
    from trainers.regimes.contsup import ContSupNet
    net = ContSupNet(r.model, r.split.modules_names, r.heads)  # shares the trained modules
    with torch.no_grad(), capture(net, "all") as acts:
        out = net(x[:16])
    assert list(acts) == r.model.layer_names
    assert torch.allclose(acts[r.model.layer_names[-1]], out)
    assert torch.allclose(out, r.predict(x[:16]), atol=1e-6)
    plain = r.model(x[:16])
    assert not torch.allclose(plain, out, atol=1e-4)  # the context paths change the function
