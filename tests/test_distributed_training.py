"""Training on several processes (torchrun) does the arithmetic of one process on the same global
batch, writes the same files once, and refuses what it cannot do; plus the --precision option.

The two-process runs use the gloo backend on CPU (``python -m torch.distributed.run --standalone``);
this file doubles as the script such a run executes for the library path (``__main__`` below).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from infoplane.checkpoint import load_checkpoint
from infoplane.models import build_model
from trainers import TrainConfig, train
from trainers.distributed import Shard, ShardSampler, World, check_batch_size, split_sizes, world_from_env
from trainers.loop import Batches
from trainers.precision import Precision

REPO = Path(__file__).resolve().parents[1]
LENET_SMALL = {"channels": [4, 8], "hidden": [16, 12]}
MLP_SMALL = {"width": 16, "depth": 3}
#: 199 training samples in batches of 32: the last batch (7) splits 4 / 3, so the weighting is exercised
BASE = dict(model="lenet5", model_kwargs=LENET_SMALL, dataset="digits", subset=199, test_subset=101, epochs=2,
            batch_size=32, lr=3e-3, progress=False, device="cpu", train_augment="crop-flip", train_crop_pad=1)
#: regimes the library-path launch trains on two processes (no BatchNorm anywhere: exact match expected)
SCRIPT_CASES: Dict[str, dict] = {
    "layerwise": dict(regime="layerwise", aux="linear"),
    "greedy": dict(regime="greedy", regime_kwargs={"modules": 2}),
    "ff-prototype": dict(regime="forward-forward", regime_kwargs={"ff_label": "prototype", "ff_mode": "simultaneous"}),
    "forward-gradient": dict(regime="forward-gradient"),
    "infopro-contrast": dict(regime="infopro", model="mlp", model_kwargs=MLP_SMALL, regime_kwargs={"modules": 3}),
}
CLI_E2E = ["--model", "lenet5", "--model-kwargs", "channels=[4,8]", "hidden=[16,12]", "--dataset", "digits",
           "--subset", "199", "--test-subset", "101", "--epochs", "2", "--batch-size", "32", "--lr", "3e-3",
           "--device", "cpu", "--train-augment", "crop-flip", "--train-crop-pad", "1", "--no-progress",
           "--regime", "e2e"]


def _torchrun(args: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS`` with one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)


def _rows(run: Path) -> List[Dict[str, str]]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def _assert_same_run(one: Path, two: Path, weights_tol: float = 1e-5) -> float:
    """The two runs wrote the same checkpoints (weights, heads, metrics) and metrics.csv; returns the
    largest weight difference."""
    names = sorted(p.name for p in one.glob("epoch_*.pt"))
    assert names == sorted(p.name for p in two.glob("epoch_*.pt")) and names
    assert not list(two.glob("*.partial"))
    worst = 0.0
    for name in names:
        a, b = load_checkpoint(one / name), load_checkpoint(two / name)
        assert list(a.state_dict) == list(b.state_dict)  # the plain backbone: no "module." prefixes
        for k in a.state_dict:
            worst = max(worst, float((a.state_dict[k].float() - b.state_dict[k].float()).abs().max()))
        for k, v in (a.aux_state or {}).get("heads", {}).items():
            scale = 1.0 + float(v.float().abs().max())  # prototype sums grow with the data
            assert torch.allclose(v.float(), b.aux_state["heads"][k].float(), atol=weights_tol * scale), k
        assert a.metrics["test_acc"] == b.metrics["test_acc"] and a.metrics.get("train_acc") == b.metrics.get("train_acc")
        assert a.step == b.step
    assert worst < weights_tol, worst
    ra, rb = _rows(one), _rows(two)
    assert list(ra[0]) == list(rb[0]) and len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for key in x:
            if key in ("seconds",) or x[key] == "":
                continue
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-5, abs=1e-6), (one.name, key)
    return worst


# -- two processes against one -------------------------------------------------------------------

@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory):
    """E2E on two processes through the CLI (``-m trainers``) and the same run on one process."""
    root = tmp_path_factory.mktemp("dist_e2e")
    res = _torchrun(["-m", "trainers", *CLI_E2E, "--out", str(root / "two")])
    assert res.returncode == 0, res.stderr[-3000:]
    train(TrainConfig(**dict(BASE, regime="e2e", out=str(root / "one"))))
    return root, res


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    """The regimes of SCRIPT_CASES on two processes (this file run as a script by torchrun: the
    library path, several runs in one launch) and on one process."""
    root = tmp_path_factory.mktemp("dist_regimes")
    res = _torchrun([__file__, str(root / "two")], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    for name, kw in SCRIPT_CASES.items():
        train(TrainConfig(**dict(BASE, **kw, out=str(root / "one" / name))))
    return root


def test_e2e_two_processes_match_one(e2e_runs):
    root, res = e2e_runs
    worst = _assert_same_run(root / "one", root / "two")
    print(f"e2e: largest weight difference 1 vs 2 processes {worst:.2e}")
    assert res.stdout.count("wrote 3 checkpoints") == 1  # rank 0 alone reports
    conf = json.loads((root / "two" / "config.json").read_text())
    one = json.loads((root / "one" / "config.json").read_text())
    assert dict(conf["config"], out=None) == dict(one["config"], out=None) and conf["config"]["batch_size"] == 32
    assert conf["config"]["precision"] == "fp32"
    assert conf["resolved"]["distributed"] == {"world_size": 2, "backend": "gloo", "batch_size_per_process": 16}
    assert {k: v for k, v in conf["resolved"].items() if k != "distributed"} == one["resolved"]


def test_checkpoints_of_two_processes_load_and_extract(e2e_runs, tmp_path):
    from infoplane.cli import main as infoplane_main
    from infoplane.store import ActivationStore

    root, _ = e2e_runs
    paths = sorted((root / "two").glob("epoch_*.pt"))
    ck = load_checkpoint(paths[-1])
    plain = build_model("lenet5", input_shape=(1, 8, 8), num_classes=10, **LENET_SMALL)
    assert list(ck.state_dict) == list(plain.state_dict())
    plain.load_state_dict(ck.state_dict)
    assert infoplane_main(["extract", *map(str, paths), "--out", str(tmp_path / "acts.h5")]) == 0
    store = ActivationStore(tmp_path / "acts.h5")
    assert len(store.checkpoints()) == len(paths) and "conv1" in store.layers(store.checkpoints()[-1])
    store.close()


def test_local_regimes_two_processes_match_one(script_runs):
    for name in SCRIPT_CASES:
        worst = _assert_same_run(script_runs / "one" / name, script_runs / "two" / name)
        print(f"{name}: largest weight difference 1 vs 2 processes {worst:.2e}")


# -- refusals ------------------------------------------------------------------------------------

def test_indivisible_batch_size_is_refused_under_torchrun(tmp_path):
    res = _torchrun(["-m", "infoplane", "train", *CLI_E2E[:-2], "--batch-size", "31", "--regime", "e2e",
                     "--out", str(tmp_path / "r")], timeout=90)
    assert res.returncode != 0
    assert "--batch-size 31 is the global batch, split across the 2 processes, and must be divisible by 2" \
        in res.stderr
    assert res.stderr.count("must be divisible") == 1  # rank 0 tells it once
    assert not (tmp_path / "r").exists()


@pytest.fixture
def two_process_env(monkeypatch):
    """The environment torchrun gives rank 0 of 2 (refusals happen before any process waits)."""
    for key, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="29511").items():
        monkeypatch.setenv(key, value)


UNSUPPORTED = [
    (dict(regime="e2e", loss="supcon"), "--loss supcon compares every sample"),
    (dict(regime="layerwise", local_loss="sim"), "--local-loss sim compares the samples"),
    (dict(regime="layerwise-sequential", local_loss="sp-hard"), "--local-loss sp-hard compares the samples"),
    (dict(regime="layerwise", nhsic_lambda=0.1), "--nhsic-lambda > 0 adds nHSIC"),
]


@pytest.mark.parametrize("settings, needle", UNSUPPORTED)
def test_unsupported_regimes_are_refused_naming_regime_and_option(two_process_env, tmp_path, settings, needle):
    cfg = dict(BASE, out=str(tmp_path / "r"), **settings)
    with pytest.raises(ValueError) as err:
        train(TrainConfig(**cfg))
    msg = str(err.value)
    assert msg.startswith(f"regime {cfg['regime']!r} cannot train data-parallel on 2 processes (torchrun): ")
    assert needle in msg and "or train on one process" in msg
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("settings, needle", [
    (dict(batch_size=33), "--batch-size 33 is the global batch, split across the 2 processes"),
    (dict(subset=193), "the last batch of each epoch holds 1 of the 193 training samples (--batch-size 32)"),
])
def test_batches_the_processes_cannot_share_are_refused(two_process_env, tmp_path, settings, needle):
    with pytest.raises(ValueError) as err:
        train(TrainConfig(**dict(BASE, regime="e2e", out=str(tmp_path / "r"), **settings)))
    assert needle in str(err.value)
    assert not (tmp_path / "r").exists()


def test_device_and_environment_errors(monkeypatch):
    assert world_from_env({}) == World() and world_from_env({"WORLD_SIZE": "1"}) == World()
    env = dict(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="1")
    assert world_from_env(env) == World(1, 4, 1)
    with pytest.raises(ValueError, match="start the run with torchrun"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(ValueError, match="must be integers"):
        world_from_env({"WORLD_SIZE": "two"})
    from trainers.distributed import process_device

    with pytest.raises(ValueError, match="--device cuda:1 names one GPU for all 2 processes"):
        process_device(torch.device("cuda", 1), World(0, 2, 0), "cuda:1")
    assert process_device(torch.device("cpu"), World(1, 2, 1)) == torch.device("cpu")


# -- the pieces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch, world", [(199, 32, 2), (64, 16, 4), (10, 4, 2), (7, 6, 3)])
def test_shards_make_up_the_single_process_batches(n, batch, world):
    """The processes' k-th batches, in rank order, are the k-th batch of one process, every epoch."""
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.arange(n).float()[:, None], torch.arange(n) % 3)
    one = Batches(ds, batch, True, seed=5)
    parts = [Batches(ds, batch, True, seed=5, world=World(r, world, r)) for r in range(world)]
    for epoch in (1, 2, 3):
        for b in [one, *parts]:
            b.set_epoch(epoch)
        whole = [x[:, 0].long().tolist() for x, _ in one]
        pieces = [[x[:, 0].long().tolist() for x, _ in p] for p in parts]
        assert [sum((pieces[r][k] for r in range(world)), []) for k in range(len(whole))] == whole
        for r, p in enumerate(parts):
            shards = p.shards()
            assert [len(piece) for piece in pieces[r]] == [s.size for s in shards]
            assert all(s.total == len(w) for s, w in zip(shards, whole))
    # the order of one process is the one it has always been: the e-th randperm of a seeded generator
    gen = torch.Generator().manual_seed(5)
    first = torch.randperm(n, generator=gen)
    one.set_epoch(1)
    assert torch.cat([x[:, 0].long() for x, _ in one]).tolist() == first.tolist()


def test_sampler_is_a_distributed_sampler_for_dataloaders():
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

    class Plain(Dataset):
        def __len__(self):
            return 23

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i % 2

    samplers = [ShardSampler(Plain(), 8, num_replicas=2, rank=r, seed=1) for r in range(2)]
    assert all(isinstance(s, DistributedSampler) for s in samplers)
    seen = []
    for s in samplers:
        s.set_epoch(2)
        seen += [int(v) for x, _ in DataLoader(Plain(), batch_size=4, sampler=s) for v in x[:, 0]]
    assert sorted(seen) == list(range(23))  # nothing repeated, nothing dropped
    assert split_sizes(7, 2) == [4, 3] and split_sizes(2, 3) == [1, 1, 0]
    shard = Shard(4, 3, 7)
    assert shard.rows(torch.arange(7)).tolist() == [4, 5, 6] and shard.weight == pytest.approx(3 / 7)
    assert check_batch_size(32, World(0, 4, 0)) == 8 and check_batch_size(30, World()) == 30
    with pytest.raises(ValueError, match="use e.g. --batch-size 28 or 32"):
        check_batch_size(30, World(0, 4, 0))


# -- precision -----------------------------------------------------------------------------------

def test_precision_option(tmp_path):
    from trainers.__main__ import build_parser, config_from_args, main

    assert config_from_args(build_parser().parse_args(["--out", "x", "--precision", "bf16"])).precision == "bf16"
    assert TrainConfig().precision == "fp32"
    with pytest.raises(ValueError, match="precision='fp8' is not one of fp32, bf16, fp16"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="--precision fp16 needs a CUDA device"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="use --precision bf16 or fp32"):
        Precision("fp16", torch.device("cpu"))
    assert main([*CLI_E2E, "--precision", "fp16", "--out", str(tmp_path / "h")]) == 2
    # bf16 on CPU: the training forward runs in bfloat16, evaluation in float32; config.json records it
    p = Precision("bf16", torch.device("cpu"))
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision("fp32").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    train(TrainConfig(**dict(BASE, regime="e2e", epochs=1, precision="bf16", out=str(tmp_path / "b"))))
    conf = json.loads((tmp_path / "b" / "config.json").read_text())
    assert conf["config"]["precision"] == "bf16"
    row = _rows(tmp_path / "b")[-1]
    assert 0 <= float(row["test_acc"]) <= 1 and float(row["step_loss"]) == pytest.approx(2.3, abs=0.5)
    ck = load_checkpoint(tmp_path / "b" / "epoch_0001.pt")
    assert all(v.dtype == torch.float32 for v in ck.state_dict.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_trains(tmp_path):
    cfg = dict(BASE, regime="layerwise", epochs=1, device="cuda", precision="fp16", out=str(tmp_path / "h"))
    train(TrainConfig(**cfg))
    row = _rows(tmp_path / "h")[-1]
    assert math.isfinite(float(row["step_loss"])) and 0 <= float(row["test_acc"]) <= 1
    assert json.loads((tmp_path / "h" / "config.json").read_text())["config"]["precision"] == "fp16"


def test_exit_without_a_process_group_returns_the_status():
    from trainers.distributed import exit_if_distributed

    assert not torch.distributed.is_initialized()
    assert exit_if_distributed(0) == 0 and exit_if_distributed(2) == 2


if __name__ == "__main__":  # run by torchrun from script_runs: several runs in one launch
    from trainers.distributed import exit_if_distributed

    torch.set_num_threads(1)
    for case, kw in SCRIPT_CASES.items():
        train(TrainConfig(**dict(BASE, **kw, out=str(Path(sys.argv[1]) / case))))
    exit_if_distributed(0)
