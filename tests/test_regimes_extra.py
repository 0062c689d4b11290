"""Tests of the K-module regimes (greedy, dgl, infopro, contsup), forward-gradient and forward-forward.

Extraction of every regime's trained function is tested in test_inference.py."""
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
    for bad in ("R0", "X3", "", "R2F", "E2"):
        with pytest.raises(ValueError, match="context=.*allowed: E, R<n>, R<n>E"):
            make("contsup", modules=2, context=bad)
    for option, bad in (("ff_mode", "parallel"), ("ff_loss", "mean"), ("ff_norm", "l1"), ("ff_label", "x")):
        with pytest.raises(ValueError, match=f"{option}=.*not one of"):
            make("forward-forward", model="mlp", **{option: bad})
    with pytest.raises(ValueError, match="unknown --regime-kwargs"):
        make("forward-forward", model="mlp", ff_modes="sequential")
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
    assert after < before - 0.02  # forward gradients converge slowly (Sakamoto & Sato 2024 F.4.2)


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


# -- ContSup contexts (eq. 16) -------------------------------------------------------------------

def test_context_names_parse_and_canonicalise():
    from infoplane.inference.contsup import ALL, canonical_context, history_depth, parse_context

    assert parse_context("E") == (True, 0) and parse_context("R1") == (False, 1)
    assert parse_context("r1e") == (True, 1) and parse_context("R16") == (False, 16)
    assert parse_context("RnE") == (True, ALL) and parse_context("Rn") == (False, ALL)
    assert [canonical_context(c) for c in ("r1e", "rne", "R2", "e")] == ["R1E", "RnE", "R2", "E"]
    assert history_depth("RnE", 4) == 3 and history_depth("R2", 8) == 2 and history_depth("E", 4) == 0


@pytest.mark.parametrize("context,expected", [
    ("R2E", {1: ["ctxE_1", "ctxR_1"], 2: ["ctxE_2", "ctxR_2", "ctxR2_2"], 3: ["ctxE_3", "ctxR_3", "ctxR2_3"]}),
    ("RnE", {1: ["ctxE_1", "ctxR_1"], 2: ["ctxE_2", "ctxR_2", "ctxR2_2"],
             3: ["ctxE_3", "ctxR_3", "ctxR2_3", "ctxR3_3"]}),
    ("R4", {1: ["ctxR_1"], 2: ["ctxR_2", "ctxR2_2"], 3: ["ctxR_3", "ctxR2_3", "ctxR3_3"]}),
    ("E", {1: ["ctxE_1"], 2: ["ctxE_2"], 3: ["ctxE_3"]}),
])
def test_context_encoders_of_each_module(context, expected):
    from infoplane.inference.contsup import build_context_encoders

    enc = build_context_encoders((1, 8, 8), [(4, 8, 8), (8, 4, 4), (8, 4, 4), (10,)], context)
    got: dict = {}
    for name in enc:
        got.setdefault(int(name.rsplit("_", 1)[1]), []).append(name)
    assert got == expected
    # M_{R_i} of module k reads the input of module k-i: x for k = i, h_{k-i-1}'s shape otherwise
    if "ctxR2_3" in enc:
        assert enc["ctxR2_3"].in_shape == (4, 8, 8) and enc["ctxR2_3"].out_shape == (8, 4, 4)
    if "ctxR2_2" in enc:
        assert enc["ctxR2_2"].in_shape == (1, 8, 8)


def test_contsup_net_computes_eq16(digits):
    """ContSupNet's module inputs are h_{k-1} + M_E(x) + M_R1(in_{k-1}) + M_R2(in_{k-2}), by hand."""
    x, _ = digits
    r, _ = make("contsup", model="resnet32", modules=4, context="R2E")
    r.eval()
    from infoplane.inference.contsup import ContSupNet
    net = ContSupNet(r.model, r.split.modules_names, r.heads, "R2E")
    blocks, e = r.split.blocks, r.heads
    with torch.no_grad():
        ins = [x[:8]]
        h = blocks[0](ins[0])
        for k in range(1, 4):
            inp = h + e[f"ctxE_{k}"](x[:8]) + e[f"ctxR_{k}"](ins[k - 1])
            if k >= 2:
                inp = inp + e[f"ctxR2_{k}"](ins[k - 2])
            ins.append(inp)
            h = blocks[k](inp)
        assert torch.allclose(net(x[:8]), h, atol=1e-5)
        assert torch.allclose(r.predict(x[:8]), h, atol=1e-5)


def test_contsup_async_rn_caches_history(digits):
    """Async R2E: module 2 trains on the cached [h_1, in_0, in_1] of the frozen modules 0 and 1."""
    x, y = digits
    r, _ = make("contsup", modules=3, context="R2E", epochs=3, **{"async": 1})
    for epoch in (1, 2, 3):
        r.on_epoch_start(epoch)
        stats = r.training_step(x[:64], y[:64])
        r.on_epoch_end(epoch)
    assert r.stage == 2 and set(stats) == {"loss", "loss_m2"}
    h, hist = r.cache(x[:64])
    assert len(hist) == 2 and hist[0].shape == x[:64].shape
    r.eval()
    with torch.no_grad():
        _, h_ref, hist_ref = r.run(x[:64], None, 0, 2)
    assert torch.allclose(h, h_ref, atol=1e-5) and all(torch.allclose(a, b, atol=1e-5)
                                                        for a, b in zip(hist, hist_ref))


def test_contsup_tau_only_with_contrast():
    from trainers.regimes.contsup import ContSup

    soft = TrainConfig(regime="contsup", regime_kwargs={"context": "R2"})
    con = TrainConfig(regime="contsup", regime_kwargs={"contsup_loss": "contrast"})
    assert "tau" not in ContSup.options_for(soft) and "tau" in ContSup.options_for(con)
    assert "context" in ContSup.options_for(soft)


# -- forward-forward: normalisation, losses, sequential training, inference ----------------------------

def test_ff_normalisations_and_losses():
    from infoplane.inference.forward_forward import ff_normalize, mean_goodness
    from trainers.regimes.forward_forward import ff_layer_loss, ff_reference_loss

    z = torch.randn(5, 3, 4, 4) * 7
    assert torch.allclose(ff_normalize(z, "l2").flatten(1).norm(dim=1), torch.ones(5), atol=1e-4)
    assert torch.allclose(ff_normalize(z, "rms").flatten(1).pow(2).mean(1), torch.ones(5), atol=1e-4)
    assert torch.allclose(ff_normalize(z, "rms"), ff_normalize(z, "l2") * math.sqrt(48), atol=1e-3)
    with pytest.raises(ValueError, match="ff_norm"):
        ff_normalize(z, "l1")
    h = torch.randn(6, 20)
    g = mean_goodness(h)
    theta, d = 2.0, 20
    ref = torch.cat([F.softplus(theta - g[:3]), F.softplus(g[3:] - theta)]).mean()
    assert torch.allclose(ff_reference_loss(g[:3], g[3:], theta), ref)
    # ours: the same margins d times sharper, softplus(d (theta - g))
    ours = (F.softplus(d * (theta - g[:3])) + F.softplus(d * (g[3:] - theta))).mean()
    assert torch.allclose(ff_layer_loss(d * g[:3], d * g[3:], theta * d), ours, atol=1e-5)


def test_ff_label_embedding_is_per_sample():
    from infoplane.inference.forward_forward import embed_neutral

    x = torch.randn(12, 1, 8, 8)
    y = torch.arange(12) % 10
    assert torch.equal(embed_onehot(x[:5], y[:5], 10), embed_onehot(x, y, 10)[:5])  # no batch dependence
    e = embed_onehot(x, y, 10).flatten(1)[:, :10]
    assert torch.allclose(e.max(1).values, x.flatten(1).max(1).values)
    n = embed_neutral(x, 10).flatten(1)[:, :10]
    assert torch.allclose(n, x.flatten(1).max(1, keepdim=True).values.expand(-1, 10) / 10)


def test_ff_sequential_trains_one_layer_at_a_time(digits):
    x, y = digits
    r, _ = make("forward-forward", model="mlp", lr=1e-2, epochs=3, ff_mode="sequential")
    L = len(r.layers)
    assert r.epochs_per_layer == 1 and r.total_epochs() == L
    snap = lambda: [[p.detach().clone() for p in layer.parameters()] for _, layer in r.layers]  # noqa: E731
    for epoch in (1, 2):
        r.on_epoch_start(epoch)
        before = snap()
        stats = r.training_step(x, y)
        after = snap()
        changed = [any(not torch.equal(a, b) for a, b in zip(pb, pa)) for pb, pa in zip(before, after)]
        assert changed == [i == epoch - 1 for i in range(L)]
        assert set(stats) == {"loss", f"loss_{r.layer_names[epoch - 1]}", "stage"}
        r.on_epoch_end(epoch)
    assert not r.layers[0][1].training and r.layers[1][1].training  # frozen layers in eval mode
    assert r.score_layers() == r.layer_names[:2] and r.describe()["stage_layer"] == r.layer_names[1]
    with pytest.raises(ValueError, match="epochs_per_layer"):
        r2 = TrainConfig(model="mlp", regime="forward-forward", epochs_per_layer=2,
                         regime_kwargs={"ff_mode": "simultaneous"})
        get_regime("forward-forward")(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, width=32),
                                      r2, CPU)


def test_ff_options_for_narrows_epochs_per_layer():
    from trainers.regimes.forward_forward import ForwardForward

    seq = TrainConfig(regime="forward-forward")
    sim = TrainConfig(regime="forward-forward", regime_kwargs={"ff_mode": "simultaneous"})
    assert "epochs_per_layer" in ForwardForward.options_for(seq)
    assert "epochs_per_layer" not in ForwardForward.options_for(sim)
    assert {"ff_label", "ff_mode", "ff_loss", "ff_norm", "threshold"} <= ForwardForward.options_for(sim)


@pytest.mark.parametrize("label,mode", [("onehot", "simultaneous"), ("prototype", "sequential")])
def test_ff_net_matches_regime_and_hooks_once(label, mode, digits):
    """FFNet (what extraction builds) returns the regime's scores; hooks record each layer once, on
    the normalised label-free path, and the scores as ``goodness``."""
    from infoplane.hooks import capture
    from infoplane.inference.forward_forward import FFNet, embed_neutral, ff_normalize

    x, y = digits
    r, _ = make("forward-forward", model="lenet5", lr=1e-2, ff_label=label, ff_mode=mode)
    r.on_epoch_start(1)
    for _ in range(3):
        r.training_step(x, y)
    r.eval()
    net = FFNet(r.model, label=label, norm=r.ff_norm, score_layers=r.score_layers(),
                prototypes=r.heads["prototypes"] if label == "prototype" else None).eval()
    with torch.no_grad(), capture(net, "all,goodness") as acts:
        s = net(x[:16])
    assert list(acts) == r.model.layer_names + ["goodness"]
    assert torch.allclose(s, r.predict(x[:16]), atol=1e-5) and torch.allclose(acts["goodness"], s)
    with torch.no_grad():
        start = x[:16] if label == "prototype" else embed_neutral(x[:16], 10)
        first = r.model.conv1(ff_normalize(start, r.ff_norm))
    assert torch.allclose(acts["conv1"], first, atol=1e-5)


def test_not_captured_suspends_hooks():
    from infoplane.hooks import capture, not_captured

    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with capture(m, "0") as acts:
        m(torch.randn(2, 3))
        assert list(acts) == ["0"]
        with not_captured():
            m(torch.randn(2, 3))
        assert acts == {}


def test_inference_records_legacy_and_unknown():
    from infoplane.inference import inference_spec

    with pytest.warns(UserWarning, match="batch maximum"):
        spec = inference_spec({"name": "forward-forward", "ff_label": "prototype"}, {"heads": {}})
    assert spec["kind"] == "forward-forward" and spec["norm"] == "rms" and spec["label"] == "prototype"
    assert inference_spec({"name": "e2e", "loss": "supcon"}, None)["kind"] == "linear-eval"
    assert inference_spec({"name": "e2e", "loss": "ce"}, None) == {"kind": "backbone", "prediction_layer": "out"}
    assert inference_spec({"name": "contsup", "modules": [["a"], ["b"]], "context": "r1e"}, None)["context"] == "R1E"
    with pytest.raises(ValueError, match="kind 'mystery'.*upgrade"):
        inference_spec({"name": "x"}, {"inference": {"kind": "mystery"}})
