"""Extraction runs the function each regime trained: for every registered regime (and its variants),
argmax of the stored prediction layer on the stored samples reproduces the checkpoint's recorded test
accuracy on the same samples, and its CE reproduces the recorded test loss.

The prediction layer is ``out`` except for forward-forward (``goodness``: the goodness-based class
scores) and contrastive E2E (``linear_eval``: the evaluation head on the L2-normalised ``out``); the
relation of those layers to the stored network layers is tested too. Tiny models on the embedded
digits data, 1-2 epochs on 160 training samples, test subset of 120 (extracted with ``samples=120``,
which selects the same stratified subset as the training loop with seed 0).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infoplane.checkpoint import load_checkpoint
from infoplane.extract import extract
from infoplane.inference.forward_forward import embed_neutral, ff_normalize
from infoplane.store import ActivationStore
from trainers import TrainConfig, train
from trainers.regimes import list_regimes

LENET = ("lenet5", {"channels": [4, 8], "hidden": [32, 16]})
MLP = ("mlp", {"width": 32, "depth": 2})
RESNET = ("resnet32", {"width": 2, "depth": 8})
TEST_N = 120

# (id, regime, (model, kwargs), TrainConfig extras, regime_kwargs)
VARIANTS = [
    ("e2e-ce", "e2e", LENET, {}, {}),
    ("e2e-supcon", "e2e", MLP, {"loss": "supcon"}, {}),
    ("e2e-simclr", "e2e", LENET, {"loss": "simclr"}, {}),
    *[(f"layerwise-{ll}", "layerwise", LENET, {"local_loss": ll}, {})
      for ll in ("ce", "supcon", "sim", "sp-hard", "sp-soft")],
    *[(f"layerwise-sequential-{ll}", "layerwise-sequential", MLP, {"local_loss": ll, "epochs_per_layer": 1}, {})
      for ll in ("ce", "supcon", "sim", "sp-hard", "sp-soft")],
    ("forward-gradient", "forward-gradient", MLP, {}, {"directions": 2}),
    ("ff-onehot-sequential", "forward-forward", MLP, {"epochs_per_layer": 1}, {"ff_label": "onehot"}),
    ("ff-onehot-simultaneous", "forward-forward", MLP, {}, {"ff_mode": "simultaneous"}),
    ("ff-onehot-sum-rms", "forward-forward", MLP, {}, {"ff_mode": "simultaneous", "ff_loss": "sum",
                                                       "ff_norm": "rms"}),
    ("ff-prototype-sequential", "forward-forward", LENET, {"epochs_per_layer": 1}, {"ff_label": "prototype"}),
    ("ff-prototype-simultaneous", "forward-forward", MLP, {}, {"ff_label": "prototype",
                                                               "ff_mode": "simultaneous", "ff_norm": "rms"}),
    ("greedy", "greedy", LENET, {}, {"modules": 2}),
    ("dgl", "dgl", LENET, {}, {"modules": 3}),
    ("infopro-softmax", "infopro", LENET, {}, {"modules": 2, "infopro_loss": "softmax"}),
    ("infopro-contrast", "infopro", LENET, {}, {"modules": 2, "infopro_loss": "contrast"}),
    *[(f"contsup-{c}", "contsup", LENET, {}, {"modules": 3, "context": c}) for c in ("E", "R1", "R1E")],
    ("contsup-R2", "contsup", RESNET, {}, {"modules": 4, "context": "R2"}),
    ("contsup-R2E", "contsup", RESNET, {}, {"modules": 4, "context": "R2E"}),
    ("contsup-RnE", "contsup", RESNET, {}, {"modules": 4, "context": "RnE"}),
    ("contsup-contrast", "contsup", MLP, {}, {"modules": 2, "context": "R1", "contsup_loss": "contrast"}),
    ("greedy-async", "greedy", LENET, {}, {"modules": 2, "async": 1, "epochs_per_module": 1}),
    ("dgl-async", "dgl", LENET, {}, {"modules": 2, "async": 1, "epochs_per_module": 1}),
    ("infopro-async", "infopro", LENET, {}, {"modules": 2, "async": 1, "epochs_per_module": 1}),
    ("contsup-async-R2E", "contsup", LENET, {}, {"modules": 3, "context": "R2E", "async": 1,
                                                 "epochs_per_module": 1}),
]


def test_every_registered_regime_is_covered():
    assert {v[1] for v in VARIANTS} == set(list_regimes())


def _train_and_extract(tmp_path, regime, model, extras, kw):
    name, mk = model
    paths = train(TrainConfig(model=name, model_kwargs=dict(mk), dataset="digits", regime=regime,
                              regime_kwargs=dict(kw), subset=400, test_subset=TEST_N, epochs=2, batch_size=25,
                              lr=1e-2, seed=0, progress=False, device="cpu", eval_train=False,
                              out=str(tmp_path / "run"), **extras))
    ck = load_checkpoint(paths[-1])
    pred = ck.inference_spec().get("prediction_layer", "out")
    layers = "all" if pred == "out" else f"all,{pred}"
    store = extract(paths[-1:], layers=layers, out=tmp_path / "acts.h5", samples=TEST_N, batch_size=32,
                    progress=False)
    return ck, pred, store


@pytest.mark.parametrize("vid,regime,model,extras,kw", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_stored_prediction_reproduces_recorded_accuracy(tmp_path, vid, regime, model, extras, kw):
    ck, pred, path = _train_and_extract(tmp_path, regime, model, extras, kw)
    backbone = ck.build_model()
    with ActivationStore(path) as st:
        cid = st.checkpoints()[-1]
        attrs = st.checkpoint_attrs(cid)
        assert attrs["metrics_samples"] == "same" and attrs["prediction_layer"] == pred
        stored = st.layers(cid)
        assert stored[:len(backbone.layer_names)] == backbone.layer_names  # hooks see the top-level names
        assert stored[len(backbone.layer_names):] == ([] if pred == "out" else [pred])
        z = torch.from_numpy(st.read(cid, pred))
        y = torch.from_numpy(st.labels())
        out = torch.from_numpy(st.read(cid, "out"))
        x = torch.from_numpy(st.inputs())
    acc = float((z.argmax(1) == y).double().mean())
    assert acc == pytest.approx(ck.metrics["test_acc"], abs=1e-12), (vid, acc, ck.metrics["test_acc"])
    ce = float(F.cross_entropy(z.double(), y))
    assert ce == pytest.approx(ck.metrics["test_loss"], rel=1e-4, abs=1e-5)
    if pred == "linear_eval":  # the evaluation head on the L2-normalised stored out
        head = ck.aux_state["heads"]
        logits = F.normalize(out, dim=1) @ head["linear_eval.weight"].T + head["linear_eval.bias"]
        assert torch.allclose(logits, z, atol=1e-5)
    if regime == "forward-forward":  # stored layers = the normalised label-free path, layer by layer
        spec = ck.inference_spec()
        net = ck.build_inference_model()
        prev = embed_neutral(x, 10) if spec["label"] == "onehot" else x
        with torch.no_grad(), ActivationStore(path) as st:
            for name in backbone.layer_names:
                cur = torch.from_numpy(st.read(cid, name))
                assert torch.allclose(getattr(net, name)(ff_normalize(prev, spec["norm"])), cur, atol=1e-5), name
                prev = cur


def test_contsup_context_changes_the_stored_function(tmp_path):
    """The bare backbone is not what was trained: its out differs from the stored (context) out."""
    ck, _, path = _train_and_extract(tmp_path, "contsup", LENET, {}, {"modules": 3, "context": "R1E"})
    with ActivationStore(path) as st:
        cid = st.checkpoints()[-1]
        out, x = torch.from_numpy(st.read(cid, "out")), torch.from_numpy(st.inputs())
    with torch.no_grad():
        bare = ck.build_model()(x)
        full = ck.build_inference_model()(x)
    assert torch.allclose(full, out, atol=1e-5)
    assert not torch.allclose(bare, out, atol=1e-3)
    # a checkpoint written before aux_state['inference'] existed is rebuilt from its regime record
    aux = {k: v for k, v in ck.aux_state.items() if k != "inference"}
    from infoplane.inference import build_inference_model
    with torch.no_grad():
        legacy = build_inference_model(ck.build_model(), ck.regime, aux)(x)
    assert torch.allclose(legacy, out, atol=1e-5)


def test_metrics_samples_detects_another_subset(tmp_path):
    """Extracting other samples than the loop evaluated on is recorded as 'different'."""
    paths = train(TrainConfig(model=LENET[0], model_kwargs=dict(LENET[1]), dataset="digits", subset=80,
                              test_subset=60, epochs=1, batch_size=40, seed=3, progress=False, device="cpu",
                              eval_train=False, out=str(tmp_path / "run")))
    store = extract(paths[-1:], out=tmp_path / "a.h5", samples=60, progress=False)  # seed 0 != 3
    with ActivationStore(store) as st:
        assert st.checkpoint_attrs(st.checkpoints()[-1])["metrics_samples"] == "different"
    assert math.isfinite(load_checkpoint(paths[-1]).metrics["test_acc"])
    labels = np.arange(10).repeat(6)
    from infoplane.extract import metrics_samples
    assert metrics_samples({}, 0, labels, np.arange(60), "test") == "unknown"
    assert metrics_samples({"test_size": 100}, 0, labels, np.arange(60), "test") == "same"
