"""Training regimes on Fashion-MNIST under one short fixed budget: accuracy, step time, memory.

Every configuration runs in its own subprocess (so peak memory is per regime), trains on the same
seeded stratified subset for the same number of epochs and batch size, and reports

* ``test_acc``  accuracy of ``regime.predict`` on a fixed test subset,
* ``step_ms``   mean wall time of ``regime.training_step`` (after one warm-up step),
* ``step_ratio`` step_ms / step_ms of E2E on the same model (the ratio is the portable number),
* ``peak_mb``   on CUDA ``torch.cuda.max_memory_allocated`` during training; on CPU the increase of the
  process's peak resident set size (``resource.getrusage(...).ru_maxrss``) from after setup to the
  end of training (``memory_kind`` says which).

Part A: every regime on a small LeNet5 (K = 2 for the module regimes). Part B: greedy / infopro /
contsup with K in {1, 2, 4, 8} on a small ResNet-32 (K = 1 is E2E). The budget is small on purpose
(CPU, < 15 min on 2 cores): accuracies are those of a short run, not of the papers' 160-400 epochs.

    python benchmarks/regimes.py [--quick] [--device cpu] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]

LENET = {"model": "lenet5", "model_kwargs": {"channels": [6, 16], "hidden": [64, 32]}}
RESNET = {"model": "resnet32", "model_kwargs": {"width": 4}}

PART_A = [
    ("e2e", {}, {}),
    ("layerwise", {"local_loss": "ce", "aux": "linear"}, {}),
    ("forward-gradient", {}, {}),
    ("forward-forward", {}, {"ff_label": "onehot"}),
    ("forward-forward", {}, {"ff_label": "prototype"}),
    ("greedy", {}, {"modules": 2}),
    ("dgl", {}, {"modules": 2}),
    ("infopro", {}, {"modules": 2, "infopro_loss": "softmax"}),
    ("infopro", {}, {"modules": 2, "infopro_loss": "contrast"}),
    ("infopro", {}, {"modules": 2, "infopro_loss": "contrast", "async": 1}),
    ("contsup", {}, {"modules": 2, "context": "R1E"}),
]


def part_b() -> List[tuple]:
    out: List[tuple] = [("e2e", {}, {})]
    for K in (1, 2, 4, 8):
        out.append(("greedy", {}, {"modules": K}))
        out.append(("infopro", {}, {"modules": K, "infopro_loss": "contrast"}))
        out.append(("contsup", {}, {"modules": K, "context": "R1E"}))
    return out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def current_rss_kb() -> int:
    return _status_kb("VmRSS")


def peak_rss_kb() -> int:
    return _status_kb("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return peak_rss_kb() <= current_rss_kb() + 1024
    except OSError:
        return False


def run_one(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Train one configuration in this process and return its measurements."""
    import torch

    from infoplane.models import build_model
    from trainers.config import TrainConfig
    from trainers.loop import seed_everything
    from trainers.regimes import get_regime

    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    seed_everything(0)
    # the parent wrote the subsets: loading the full dataset here would dominate the peak RSS
    data = torch.load(spec["data"], weights_only=True)
    xtr, ytr, xte, yte = (data[k].to(device) for k in ("xtr", "ytr", "xte", "yte"))
    net = build_model(spec["model"], input_shape=tuple(xtr.shape[1:]), num_classes=10,
                      **spec["model_kwargs"]).to(device)
    cfg = TrainConfig(model=spec["model"], dataset="fashion-mnist", regime=spec["regime"],
                      regime_kwargs=spec["regime_kwargs"], epochs=spec["epochs"], lr=spec["lr"],
                      batch_size=spec["batch_size"], device=spec["device"], progress=False,
                      **spec["config"])
    regime = get_regime(spec["regime"])(net, cfg, device)
    total = regime.total_epochs()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.max_memory_allocated()
    # one-time lazy imports of the first optimiser step (~150 MB of modules) are not the regime's
    dummy = torch.zeros(1, requires_grad=True)
    for opt_cls in (torch.optim.Adam, torch.optim.SGD):
        o = opt_cls([dummy], lr=1e-3)
        dummy.grad = torch.ones(1)
        o.step()
    hwm = reset_peak_rss()
    rss0 = current_rss_kb() if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times: List[float] = []
    g = torch.Generator().manual_seed(0)
    bs = int(spec["batch_size"])
    last_loss = float("nan")
    for epoch in range(1, total + 1):
        regime.on_epoch_start(epoch)
        perm = torch.randperm(len(xtr), generator=g).to(device)
        for i in range(0, len(xtr) - bs + 1, bs):
            idx = perm[i:i + bs]
            t0 = time.perf_counter()
            stats = regime.training_step(xtr[idx], ytr[idx])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            last_loss = stats["loss"]
        regime.on_epoch_end(epoch)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base_mem) / 2 ** 20
        kind = "cuda max_memory_allocated"
    else:
        peak = peak_rss_kb() if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = (peak - rss0) / 1024.0
        kind = "cpu peak RSS increase (VmHWM reset)" if hwm else "cpu ru_maxrss increase"
    regime.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 500):
            correct += int((regime.predict(xte[i:i + 500]).argmax(1) == yte[i:i + 500]).sum())
    steady = times[1:] if len(times) > 1 else times
    return {"test_acc": correct / len(xte), "step_ms": 1000.0 * sum(steady) / len(steady),
            "steps": len(times), "epochs": total, "peak_mb": peak_mb, "memory_kind": kind,
            "final_loss": last_loss}


def write_subset(folder: Path, n: int, n_test: int) -> Path:
    """Seeded stratified Fashion-MNIST subsets (train n, test n_test) saved for the subprocesses."""
    import torch

    from infoplane.data import dataset_tensors, load_dataset

    xtr, ytr = dataset_tensors(load_dataset("fashion-mnist", "train", subset=n, seed=0))
    xte, yte = dataset_tensors(load_dataset("fashion-mnist", "test", subset=n_test, seed=0))
    path = folder / f"fashion_{n}_{n_test}.pt"
    torch.save({"xtr": xtr.contiguous(), "ytr": ytr, "xte": xte.contiguous(), "yte": yte}, path)
    return path


def label(regime: str, kw: Dict[str, Any], config: Dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted({**config, **kw}.items())]
    return regime + (" " + " ".join(parts) if parts else "")


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resnet-subset", type=int, default=2560)
    p.add_argument("--parts", default="A,B", help="which parts to run (A: all regimes; B: K sweep)")
    p.add_argument("--quick", action="store_true", help="tiny budget (smoke test of the script)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))))
        return 0
    if args.quick:
        args.subset, args.test_subset, args.resnet_subset, args.epochs = 320, 200, 192, 1
    jobs = []
    parts = {q.strip().upper() for q in args.parts.split(",") if q.strip()}
    if not parts or parts - {"A", "B"}:
        raise ValueError(f"--parts takes A, B or A,B, got {args.parts!r}")
    for regime, config, kw in (PART_A if "A" in parts else []):
        jobs.append(("A", LENET, regime, config, kw, args.subset, args.epochs))
    for regime, config, kw in (part_b() if "B" in parts else []):
        jobs.append(("B", RESNET, regime, config, kw, args.resnet_subset, 1))
    rows: List[Dict[str, Any]] = []
    start = time.time()
    tmpdir = tempfile.TemporaryDirectory(prefix="infoplane_bench_")
    data_files = {n: write_subset(Path(tmpdir.name), n, args.test_subset) for n in {j[5] for j in jobs}}
    for part, model, regime, config, kw, subset, epochs in jobs:
        lr = 2e-3
        spec = {"part": part, "model": model["model"], "model_kwargs": model["model_kwargs"], "regime": regime,
                "config": config, "regime_kwargs": kw, "subset": subset, "test_subset": args.test_subset,
                "epochs": epochs * (kw.get("modules", 1) if kw.get("async") else 1), "lr": lr,
                "batch_size": args.batch_size, "device": args.device, "threads": args.threads,
                "data": str(data_files[subset])}
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                              text=True, cwd=ROOT, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{label(regime, kw, config)} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(lines[-1][7:])
        row = {"part": part, "model": model["model"], "regime": regime, "setting": label(regime, kw, config),
               "K": kw.get("modules", ""), "train_samples": subset, "test_samples": args.test_subset, **res}
        rows.append(row)
        print(f"[{time.time() - start:6.1f}s] {part} {row['setting']:<60} acc={res['test_acc']:.3f} "
              f"step={res['step_ms']:.1f}ms mem={res['peak_mb']:.1f}MB", flush=True)
    for part in sorted(parts):
        base = [r for r in rows if r["part"] == part and r["regime"] == "e2e"][0]["step_ms"]
        for r in rows:
            if r["part"] == part:
                r["step_ratio"] = r["step_ms"] / base
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["part", "model", "regime", "setting", "K", "train_samples", "test_samples", "epochs", "steps",
            "test_acc", "step_ms", "step_ratio", "peak_mb", "memory_kind", "final_loss"]
    tmp = out / "regimes.csv.partial"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "regimes.csv")
    import torch
    lines = ["# Training regimes on Fashion-MNIST (short fixed budget)", "",
             f"Produced by `python benchmarks/regimes.py` on {args.device} ({args.threads} threads, torch "
             f"{torch.__version__}); total {time.time() - start:.0f} s. Memory: {rows[0]['memory_kind']} "
             "(per subprocess; on CPU it is coarse: allocator caching and page granularity blur small "
             "differences). Step time is per mini-batch of "
             f"{args.batch_size}; `ratio` is relative to E2E on the same model. Async InfoPro trains each "
             "module for the full budget in turn (K times the epochs).", "",
             f"Part A: LeNet5 (channels 6/16, hidden 64/32), {args.subset} training samples, "
             f"{args.epochs} epoch(s). Part B: ResNet-32 (width 4), {args.resnet_subset} training samples, "
             "1 epoch; K = 1 is E2E through the module machinery.", "",
             "Every regime here runs one short budget with the same optimiser (Adam, lr 5e-4, the "
             "`sakamoto2024` preset's setting) so that step time and memory compare like with like; the "
             "accuracies are those of a short run, not of the papers. To repeat a paper's table use its "
             "preset (`python -m trainers --preset NAME`, see docs/regimes.md): `sakamoto2024` (E2E vs "
             "layer-wise; Sakamoto & Sato 2024, app. F.1.1), `wang2021-cifar` (greedy / DGL / InfoPro, ResNet-32 "
             "on CIFAR-10, 160 epochs; Wang et al. 2021, app. F), `yu2023-cifar` (ContSup; Yu et al. 2023, app. "
             "C), `sakamoto2024-toy` (the toy example of sec. 4.2). Forward-forward uses the reference loss and "
             "L2 normalisation (Hinton 2022) and trains layers sequentially by default.", "",
             "| part | setting | test acc | step ms | ratio to E2E | peak MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['setting']} | {r['test_acc']:.3f} | {r['step_ms']:.1f} | "
                     f"{r['step_ratio']:.2f} | {r['peak_mb']:.1f} |")
    tmp = out / "regimes.md.partial"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "regimes.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
