"""Options are first-class and never silently ignored: flags, the per-regime checks, the lr schedule,
the optimiser options, config.json, and the reference pieces (views, InfoPro loss, head widths)."""
from __future__ import annotations

import csv
import json
import math
import shlex

import pytest
import torch
from hypothesis import given, settings, strategies as st

from infoplane.checkpoint import load_checkpoint
from infoplane.models import build_model
from trainers import TrainConfig, get_regime, train
from trainers.__main__ import build_parser, config_from_args, main
from trainers.augment import (ContrastiveViews, color_jitter, crop_flip, random_resized_boxes, resized_crop,
                              resolve_views)
from trainers.heads import ConvFCHead, convfc_width
from trainers.options import check_options, used_config
from trainers.regimes.infopro import infopro_contrast_loss

SMALL = ["--model", "lenet5", "--model-kwargs", "channels=[2,3]", "hidden=[8,6]", "--dataset", "digits",
         "--subset", "40", "--test-subset", "20", "--epochs", "1", "--batch-size", "20", "--device", "cpu",
         "--no-progress"]


def parse(argv: str):
    return config_from_args(build_parser().parse_args(shlex.split(argv) + ["--out", "unused"]))


# -- misuse is an error naming the option and the regime -----------------------------------------

MISUSE = [
    ("--regime greedy --nhsic-lambda 0.1", "--nhsic-lambda", "greedy"),
    ("--regime greedy --local-loss sim", "--local-loss", "greedy"),
    ("--regime greedy --aux mlp", "--aux", "greedy"),
    ("--regime dgl --temperature 0.2", "--temperature", "dgl"),
    ("--regime forward-gradient --loss supcon", "--loss", "forward-gradient"),
    ("--regime forward-forward --local-loss supcon", "--local-loss", "forward-forward"),
    ("--regime forward-forward --nhsic-lambda 0.1", "--nhsic-lambda", "forward-forward"),
    ("--regime infopro --temperature 0.5", "--temperature", "infopro"),
    ("--regime infopro --infopro-loss softmax --tau 0.1", "--tau", "infopro"),
    ("--regime greedy --epochs-per-layer 2", "--epochs-per-layer", "greedy"),
    ("--regime greedy --epochs-per-module 2", "--epochs-per-module", "greedy"),
    ("--regime e2e --regime-kwargs modules=4", "--modules", "e2e"),
    ("--regime e2e --modules 4", "--modules", "e2e"),
    ("--regime e2e --lambda1 6 1", "--lambda1", "e2e"),
    ("--regime e2e --directions 2", "--directions", "e2e"),
    ("--regime e2e --temperature 0.5", "--temperature", "e2e"),
    ("--regime layerwise --context E", "--context", "layerwise"),
    ("--regime layerwise --temperature 0.3", "--temperature", "layerwise"),
    ("--regime layerwise --sp-topk 3", "--sp-topk", "layerwise"),
    ("--regime layerwise --nhsic-target block-input", "--nhsic-target", "layerwise"),
    ("--regime layerwise --epochs-per-layer 2", "--epochs-per-layer", "layerwise"),
    ("--regime greedy --ff-label prototype", "--ff-label", "greedy"),
    ("--regime contsup --infopro-loss softmax", "--infopro-loss", "contsup"),
]


@pytest.mark.parametrize("argv,option,regime", MISUSE)
def test_unused_option_is_an_error_naming_option_and_regime(argv, option, regime, tmp_path, capsys):
    rc = main(shlex.split(argv) + SMALL + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert option in err and repr(regime) in err, err
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("argv,option,needs", [
    ("--optimizer adam --nesterov", "--nesterov", "--optimizer sgd"),
    ("--momentum 0.5", "--momentum", "--optimizer sgd"),
    ("--lr-schedule cosine --milestones 3", "--milestones", "--lr-schedule step"),
    ("--lr-schedule cosine --gamma 0.5", "--gamma", "--lr-schedule step"),
    ("--weight-decay-params fc1", "--weight-decay-params", "--weight-decay"),
    ("--train-crop-pad 2", "--train-crop-pad", "--train-augment"),
    ("--num-checkpoints 3", "--num-checkpoints", "--schedule log"),
])
def test_conditional_options_are_refused(argv, option, needs, capsys, tmp_path):
    assert main(shlex.split(argv) + SMALL + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert option in err and needs in err, err


def test_library_calls_are_checked_too(tmp_path):
    """Non-default values count as set for library calls; train() refuses them before writing."""
    base = dict(model="lenet5", dataset="digits", subset=20, epochs=1, device="cpu", progress=False,
                out=str(tmp_path / "lib"))
    with pytest.raises(ValueError, match=r"--nhsic-lambda.*'greedy'"):
        train(TrainConfig(regime="greedy", nhsic_lambda=0.1, **base))
    with pytest.raises(ValueError, match=r"--modules.*'e2e'"):
        train(TrainConfig(regime="e2e", regime_kwargs={"modules": 4}, **base))
    with pytest.raises(ValueError, match=r"--aux.*'e2e'"):
        check_options(TrainConfig(regime="e2e", aux="linear"))
    assert not (tmp_path / "lib").exists()
    check_options(TrainConfig(regime="greedy", regime_kwargs={"modules": 2}))  # used: fine


def test_defaults_never_count():
    """Giving nothing is always fine; a value equal to the default given explicitly counts on the CLI."""
    for regime in ("e2e", "layerwise", "layerwise-sequential", "greedy", "dgl", "infopro", "contsup",
                   "forward-forward", "forward-gradient"):
        check_options(TrainConfig(regime=regime))
    with pytest.raises(ValueError, match="--temperature"):
        parse("--regime greedy --temperature 0.1")  # 0.1 is the default, but it was given


def test_flag_and_regime_kwargs_disagree():
    with pytest.raises(ValueError, match="disagree"):
        parse("--regime greedy --modules 4 --regime-kwargs modules=2")
    assert parse("--regime greedy --modules 2 --regime-kwargs modules=2").regime_kwargs == {"modules": 2}


# -- the flags reach the regime kwargs the regimes read ------------------------------------------

def test_flags_map_onto_regime_kwargs():
    c = parse("--regime infopro --modules 3 --infopro-loss contrast --lambda1 6 1 --lambda2 0.5 --tau 0.1 "
              "--async --epochs-per-module 2 --cache-rows 100")
    assert c.regime_kwargs == {"modules": 3, "infopro_loss": "contrast", "lambda1": (6.0, 1.0), "lambda2": 0.5,
                               "tau": 0.1, "async": True, "epochs_per_module": 2, "cache_rows": 100}
    c = parse("--regime contsup --context R1E --contsup-loss contrast")
    assert c.regime_kwargs == {"context": "R1E", "contsup_loss": "contrast"}
    for ctx in ("E", "R1", "R1E", "RnE", "R2", "R16"):
        assert parse(f"--regime contsup --context {ctx}").regime_kwargs["context"] == ctx
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--context", "X2", "--out", "x"])
    c = parse("--regime forward-forward --ff-label prototype --ff-mode sequential --ff-loss reference "
              "--ff-norm l2 --ff-threshold 1.5")
    assert c.regime_kwargs == {"ff_label": "prototype", "ff_mode": "sequential", "ff_loss": "reference",
                               "ff_norm": "l2", "threshold": 1.5}
    assert parse("--regime forward-gradient --directions 3").regime_kwargs == {"directions": 3}
    c = parse("--regime greedy --async --epochs-per-layer 2")
    assert c.regime_kwargs == {"async": True} and c.epochs_per_layer == 2


def test_modules_and_lambdas_reach_the_regime():
    cfg = parse("--regime infopro --modules 3 --infopro-loss softmax --lambda1 2 1 --lambda2 0.5 --dataset digits")
    net = build_model("lenet5", input_shape=(1, 8, 8), num_classes=10, channels=[2, 3], hidden=[8, 6])
    reg = get_regime("infopro")(net, cfg, torch.device("cpu"))
    d = reg.describe()
    assert d["K"] == 3 and d["infopro_loss"] == "softmax" and "tau" not in d
    assert d["lambda1"] == [2.0, 1.0] and d["lambda2"] == [0.5, 0.5]


def test_infopro_reference_lambdas_by_k():
    net = build_model("lenet5", input_shape=(1, 8, 8), num_classes=10, channels=[2, 3], hidden=[8, 6])
    reg = get_regime("infopro")(net, TrainConfig(regime="infopro", regime_kwargs={"modules": 4}), torch.device("cpu"))
    assert reg.lambda1 == [6.0, 3.5, 1.0] and reg.lambda2 == [0.0, 1.0, 2.0]  # the authors' K = 4 command
    assert reg.describe()["contrast_normalisation"].startswith("per anchor")


def test_optimizer_flags_reach_torch():
    cfg = parse("--optimizer sgd --nesterov --momentum 0.8 --weight-decay 1e-3 --weight-decay-params conv1")
    net = build_model("lenet5", input_shape=(1, 8, 8), num_classes=10, channels=[2, 3], hidden=[8, 6])
    reg = get_regime("e2e")(net, cfg, torch.device("cpu"))
    opt = reg.optimizers[0]
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in opt.param_groups)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in net.conv1.parameters()}
    with pytest.raises(ValueError, match="match no parameter"):
        get_regime("e2e")(net, parse("--weight-decay 1e-3 --weight-decay-params nope"), torch.device("cpu"))


def test_cosine_warmup_lr_per_epoch_in_metrics(tmp_path):
    out = tmp_path / "cos"
    argv = SMALL + ["--epochs", "4", "--optimizer", "sgd", "--lr", "0.1", "--lr-schedule", "cosine",
                    "--warmup", "1", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    lr = [float(r["lr"]) for r in rows]
    cos = [0.5 * (1 + math.cos(math.pi * (e - 1) / 4)) for e in range(1, 5)]
    expected = [0.1 * cos[0] / 2, 0.1 * cos[1], 0.1 * cos[2], 0.1 * cos[3]]  # warm-up: epoch 1 at 1/2
    assert lr[1:] == pytest.approx(expected) and lr[0] == pytest.approx(expected[0])
    conf = json.loads((out / "config.json").read_text())
    assert conf["resolved"]["lr"]["lr_per_epoch"] == pytest.approx(expected)
    assert conf["config"]["nesterov"] is False and "milestones" not in conf["config"]


def test_step_schedule_matches_multistep():
    cfg = TrainConfig(epochs=8, lr=1.0, milestones=(2, 5), gamma=0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.5)
    for e in range(1, 9):
        assert cfg.lr_factor(e, 8) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert TrainConfig(warmup=3).lr_factor(2, 10) == pytest.approx(0.5)


def test_staged_regime_restarts_the_schedule(tmp_path):
    out = tmp_path / "seq"
    assert main(SMALL + ["--regime", "layerwise-sequential", "--epochs-per-layer", "2", "--lr-schedule",
                         "cosine", "--out", str(out)]) == 0
    lr = [float(r["lr"]) for r in csv.DictReader(open(out / "metrics.csv"))][1:]
    assert lr[0::2] == pytest.approx([5e-4] * 5) and lr[1::2] == pytest.approx([2.5e-4] * 5)


def test_config_json_records_only_used_options(tmp_path):
    out = tmp_path / "g"
    assert main(SMALL + ["--regime", "greedy", "--modules", "2", "--out", str(out)]) == 0
    conf = json.loads((out / "config.json").read_text())["config"]
    for unused in ("loss", "local_loss", "aux", "temperature", "nhsic_lambda", "epochs_per_layer", "momentum",
                   "nesterov", "num_checkpoints", "train_crop_pad", "preset"):
        assert unused not in conf, unused
    assert conf["regime_kwargs"] == {"modules": 2} and conf["lr_schedule"] == "step"
    assert load_checkpoint(out / "epoch_0001.pt").regime["K"] == 2
    assert TrainConfig.from_dict(conf).regime_kwargs == {"modules": 2}
    assert "temperature" in used_config(TrainConfig(regime="layerwise", local_loss="supcon"))


def test_help_lists_flags_with_one_default_each():
    parser = build_parser()
    text = parser.format_help()
    for flag in ("--modules", "--context", "--infopro-loss", "--lambda1", "--lambda2", "--ff-label", "--ff-mode",
                 "--ff-loss", "--ff-norm", "--directions", "--async", "--preset", "--nesterov", "--lr-schedule",
                 "--warmup", "--tau", "--contsup-loss"):
        assert flag in text, flag
    for action in parser._actions:
        assert (action.help or "").count("(default") <= 1, action.option_strings
    test_subset = next(a for a in parser._actions if "--test-subset" in a.option_strings)
    assert test_subset.help.count("default") == 1
    for group in ("e2e", "layer-wise", "K local modules", "infopro", "contsup", "forward-forward",
                  "forward-gradient"):
        assert group in text


# -- reference pieces: views, InfoPro's contrastive loss, head widths ---------------------------

def test_crop_color_views_match_per_image_v2_kernels():
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    x = torch.rand(12, 3, 16, 16)
    boxes = random_resized_boxes(12, 16, 16)
    assert ((boxes[:, 2] >= 1) & (boxes[:, 0] + boxes[:, 2] <= 16) & (boxes[:, 1] + boxes[:, 3] <= 16)).all()
    flip = torch.rand(12) < 0.5
    ref = []
    for i in range(12):
        r = TF.resized_crop(x[i], *[int(v) for v in boxes[i]], [16, 16], antialias=True)
        ref.append(r.flip(-1) if flip[i] else r)
    assert torch.allclose(resized_crop(x, boxes, flip), torch.stack(ref), atol=1e-5)
    f = torch.empty(12, 4).uniform_(0.6, 1.4)
    hue = torch.empty(12).uniform_(-0.1, 0.1)
    order = torch.argsort(torch.rand(12, 4), dim=1)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    ref = []
    for i in range(12):
        img = x[i]
        for k in order[i].tolist():
            img = ops[k](img, float(hue[i] if k == 3 else f[i, k]))
        ref.append(img)
    got = color_jitter(x, f[:, 0], f[:, 1], f[:, 2], hue, order)
    assert torch.allclose(got, torch.stack(ref), atol=1e-5)


def test_contrastive_views_recipes():
    assert resolve_views("auto", (3, 32, 32)) == "crop-color"
    assert resolve_views("auto", (1, 28, 28)) == "noise-shift" and resolve_views("auto", (2,)) == "noise-shift"
    with pytest.raises(ValueError, match="RGB"):
        resolve_views("crop-color", (1, 8, 8))
    torch.manual_seed(0)
    v = ContrastiveViews("crop-color", mean=[0.5] * 3, std=[0.25] * 3)
    x = (torch.rand(6, 3, 16, 16) - 0.5) / 0.25
    out = v(x)
    assert out.shape == (12, 3, 16, 16) and torch.isfinite(out).all()
    assert out.min() >= -2 - 1e-5 and out.max() <= 2 + 1e-5  # stays inside the normalised [0, 1] range
    assert not torch.allclose(out[:6], out[6:])
    assert ContrastiveViews("noise-shift")(torch.randn(4, 5)).shape == (8, 5)


def test_crop_flip_translates_and_flips():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = crop_flip(x, pad=2)
    assert out.shape == x.shape
    assert crop_flip(torch.randn(3, 4), pad=2).shape == (3, 4)  # vectors: unchanged
    torch.manual_seed(1)
    same = crop_flip(x, pad=0, flip=True)
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(2))


def _reference_supcon_one_view(z, y, tau):
    """The authors' SupConLoss with one view, written as loops."""
    z = torch.nn.functional.normalize(z, dim=1)
    n, total = z.shape[0], 0.0
    for i in range(n):
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k != i)
        pos = [j for j in range(n) if j != i and y[j] == y[i]]
        if pos:
            total += sum(float(z[i] @ z[j]) / tau - math.log(den) for j in pos) / len(pos)
    return -total / n


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 10), d=st.integers(2, 5), c=st.integers(1, 4), seed=st.integers(0, 1000))
def test_infopro_contrast_per_anchor_matches_reference(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    expected = _reference_supcon_one_view(z, y, 0.5)
    got = float(infopro_contrast_loss(z, y, 0.5, normalisation="anchor"))
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("shape,width", [((16, 32, 32), (32, 2)), ((16, 96, 96), (32, 2)), ((32, 16, 16), (64, 2)),
                                         ((32, 48, 48), (64, 2)), ((64, 8, 8), (64, 1)), ((64, 24, 24), (64, 1)),
                                         ((6, 4, 4), (32, 2)), ((128, 4, 4), (64, 1))])
def test_convfc_head_width_by_channels_not_size(shape, width):
    assert convfc_width(shape[0]) == width
    head = ConvFCHead(shape, 10)
    assert head.conv[0].out_channels == width[0] and head.conv[0].stride == (width[1], width[1])
    assert head(torch.randn(2, *shape)).shape == (2, 10)
