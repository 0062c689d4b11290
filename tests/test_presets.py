"""Presets: the papers' settings by name, overridable, recorded; the toy model of Sakamoto & Sato 2024."""
from __future__ import annotations

import json
import re
import shlex

import h5py
import pytest
import torch

from infoplane.checkpoint import load_checkpoint
from infoplane.extract import extract
from infoplane.models import build_model
from trainers import TrainConfig, get_regime, list_presets, train
from trainers.__main__ import build_parser, config_from_args, main
from trainers.presets import PRESETS, get_preset


def parse(argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(shlex.split(argv) + ["--out", "unused"]))


def test_every_preset_resolves_to_its_settings():
    assert set(list_presets()) >= {"sakamoto2024", "sakamoto2024-toy", "wang2021-cifar", "yu2023-cifar"}
    for name, preset in PRESETS.items():
        cfg = TrainConfig.from_preset(name)
        assert cfg.preset == name
        for key, value in preset.settings.items():
            got = getattr(cfg, key)
            if key == "regime_kwargs":
                assert value.items() <= got.items(), (name, key)
            else:
                assert got == (tuple(value) if isinstance(value, list) else value), (name, key)
        assert re.search(r"(et al\.|& Sato) 20\d\d, \"", preset.source), preset.source  # authors, year, title
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_wang2021_is_appendix_f():
    c = parse("--preset wang2021-cifar")
    assert (c.model, c.dataset, c.regime) == ("resnet32", "cifar10", "infopro")
    assert (c.optimizer, c.nesterov, c.momentum, c.weight_decay) == ("sgd", True, 0.9, 1e-4)
    assert (c.lr, c.batch_size, c.epochs, c.lr_schedule, c.warmup) == (0.8, 1024, 160, "cosine", 10)
    assert c.train_augment == "crop-flip" and c.regime_kwargs == {"modules": 4, "infopro_loss": "contrast"}


def test_preset_lr_scales_with_batch_unless_given():
    assert parse("--preset wang2021-cifar --batch-size 128").lr == pytest.approx(0.1)  # STL-10's 0.1 at 128
    assert parse("--preset yu2023-cifar --batch-size 256").lr == pytest.approx(0.2)
    assert parse("--preset wang2021-cifar --batch-size 128 --lr 0.05").lr == 0.05
    assert parse("--preset sakamoto2024 --batch-size 256").lr == 5e-4  # Adam: no scaling rule


def test_explicit_flags_override_and_unused_preset_values_drop():
    c = parse("--preset wang2021-cifar --regime greedy --modules 8 --epochs 3")
    assert c.regime == "greedy" and c.regime_kwargs == {"modules": 8} and c.epochs == 3  # infopro_loss dropped
    c = parse("--preset wang2021-cifar --optimizer adam --lr 1e-3")
    assert c.optimizer == "adam" and c.nesterov is False  # nesterov belongs to SGD: dropped
    c = parse("--preset sakamoto2024-toy --regime e2e")
    assert c.aux == "auto" and c.local_loss == "ce" and c.weight_decay_params == ("w",)
    c = parse("--preset wang2021-cifar --no-nesterov --lr-schedule step")
    assert c.nesterov is False and c.lr_schedule == "step"
    with pytest.raises(ValueError, match=r"--temperature.*'infopro'"):
        parse("--preset wang2021-cifar --temperature 0.2")
    with pytest.raises(ValueError, match=r"--context.*'infopro'"):
        parse("--preset wang2021-cifar --context E")


def test_sakamoto2024_is_the_default_optimisation():
    c, d = TrainConfig.from_preset("sakamoto2024"), TrainConfig()
    for key in ("optimizer", "lr", "weight_decay", "lr_schedule", "gamma", "milestones", "batch_size"):
        assert getattr(c, key) == getattr(d, key)
    assert c.epochs == 400 and c.resolved_milestones() == [200, 300, 350, 375]


def test_preset_infopro_lambdas_are_the_reference_k4_command():
    cfg = TrainConfig.from_preset("wang2021-cifar", model_kwargs={"depth": 8, "width": 2})
    net = build_model("resnet32", input_shape=(3, 32, 32), num_classes=10, depth=8, width=2)
    d = get_regime("infopro")(net, cfg, torch.device("cpu")).describe()
    assert d["lambda1"] == [6.0, 3.5, 1.0] and d["lambda2"] == [0.0, 1.0, 2.0] and d["tau"] == 0.07


def test_toy_linear_is_a_bias_free_2x2_first_layer():
    net = build_model("toy-linear", input_shape=(2,), num_classes=2)
    assert net.layer_names == ["w", "fc1", "fc2", "fc3", "fc4", "fc5", "out"]
    assert net.w.weight.shape == (2, 2) and net.w.bias is None
    assert net.fc1[0].in_features == 2 and net.fc5[0].out_features == 512
    x = torch.randn(5, 2)
    assert torch.allclose(net.forward_layers(x)["w"], x @ net.w.weight.t())


def test_toy_preset_trains_and_extracts(tmp_path):
    out = tmp_path / "toy"
    argv = ["--preset", "sakamoto2024-toy", "--model-kwargs", "width=16", "depth=2", "--epochs", "3",
            "--subset", "200", "--test-subset", "100", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["config"]["preset"] == "sakamoto2024-toy" and conf["config"]["weight_decay_params"] == ["w"]
    assert "Sakamoto & Sato 2024" in conf["resolved"]["preset"]["source"]
    assert "temperature" not in conf["config"] and "loss" not in conf["config"]
    ck = load_checkpoint(out / "epoch_0003.pt")
    assert ck.model_name == "toy-linear" and ck.regime["aux"] == "linear"
    assert ck.state_dict["w.weight"].shape == (2, 2)
    paths = sorted(out.glob("epoch_*.pt"))
    store = extract(paths, layers="all", out=tmp_path / "acts.h5", samples=50, batch_size=25, progress=False)
    with h5py.File(store, "r") as f:
        groups = list(f["checkpoints"])
        assert len(groups) == 4
        assert sorted(f["checkpoints"][groups[-1]]["layers"]) == sorted(["w", "fc1", "fc2", "out"])


def test_toy_weight_decay_only_on_w():
    cfg = TrainConfig.from_preset("sakamoto2024-toy", model_kwargs={"width": 8, "depth": 1})
    net = build_model("toy-linear", input_shape=(2,), num_classes=2, width=8, depth=1)
    reg = get_regime("layerwise")(net, cfg, torch.device("cpu"))
    decayed = [p for g in reg.optimizers[0].param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is net.w.weight
    assert reg.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(1e-2)


@pytest.mark.slow
def test_toy_rank_collapse_under_layerwise_not_e2e(tmp_path):
    """Sec. 4.2 / Figure 4: under layer-wise training W's second singular value collapses; E2E keeps it."""
    s = {}
    for regime in ("layerwise", "e2e"):
        cfg = TrainConfig.from_preset("sakamoto2024-toy", regime=regime, model_kwargs={"width": 64, "depth": 2},
                                      epochs=20, device="cpu", progress=False, out=str(tmp_path / regime),
                                      schedule="log", num_checkpoints=2)
        ck = load_checkpoint(train(cfg)[-1])
        s[regime] = torch.linalg.svdvals(ck.state_dict["w.weight"])
    assert s["layerwise"][1] / s["layerwise"][0] < 0.05
    assert s["e2e"][1] / s["e2e"][0] > 0.3
