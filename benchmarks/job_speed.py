"""Job-level speed of the minibatch nHSIC protocol on a real activation store.

One run, same store, every (checkpoint, layer, target) with the minibatch protocol (m = 100,
eps = 1e-5, sigma = 5 sqrt(d), non-squared "euclidean" distance, labels one-hot/linear, no
shuffled baseline):

* ``(1) published``: ``published_nhsic.minibatch_as_published`` (broadcast distance, K H, explicit
  inverses, float32, one call per batch per target), in-process and as a whole process;
* ``(2) written well``: ``published_nhsic.minibatch_written_well`` (cdist, same formula and
  precision), in-process and as a whole process;
* ``ours in-process``: ``infoplane.estimate.estimate_store(EstimateConfig(distance="euclidean",
  baseline=False))`` (float64, reads the store itself);
* ``ours whole process``: ``infoplane estimate STORE --distance euclidean --no-baseline``;
* ``floor``: forming every batch's Z-side Gram in float32 (``cdist`` + ``exp``, batched per layer),
  which any method must do;
* ``exact floor``: what an exact float64 result with its chance level must compute per batch
  (``run_exact_floor``: the float64 Gram, + the Cholesky resolvent, + the resolvent's eigenvalues),
  batched per layer, at 1 thread: where the time goes beyond the float32 floor.

The baselines (1), (2) and the floor get the activations already in memory (reading the store is
timed separately, ``read``); ``ours in-process`` includes its own reads. Whole-process rows include
interpreter start-up, imports and reading.

    python benchmarks/job_speed.py /tmp/js/acts.h5                  # table + results/job_speed.md
    python benchmarks/job_speed.py STORE --worker published         # one whole-process baseline
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import published_nhsic as P  # noqa: E402

B_SIZE = 100
EPS = 1e-5


def load_store(path: str) -> Tuple[np.ndarray, np.ndarray, Dict[Tuple[str, str], np.ndarray], int]:
    """X (N, ...), labels (N,), {(checkpoint, layer): Z} from an activation store, and the class count."""
    from infoplane.store import ActivationStore

    with ActivationStore(path) as s:
        x = s.inputs()
        y = np.asarray(s.labels())
        zs = {(c, l): s.read(c, l) for c in s.checkpoints() for l in s.layers(c)}
        ds = s.dataset or {}
    nc = int(ds.get("num_classes") or (int(y.max()) + 1))
    return x, y, zs, nc


def run_baseline(which: str, x, y, zs, nc) -> Dict[Tuple[str, str], Tuple[float, float]]:
    """Mean (nHSIC(X;Z), nHSIC(Y;Z)) per (checkpoint, layer) with form (1) or (2)."""
    fn = P.minibatch_as_published if which == "published" else P.minibatch_written_well
    out = {}
    for key, z in zs.items():
        vx, vy = fn(x, z, y, num_classes=nc, batch_size=B_SIZE, eps=EPS)
        out[key] = (float(vx.mean()), float(vy.mean()))
    return out


def run_floor(zs) -> float:
    """Every batch's Z-side Gram in float32 (cdist + exp), batched per layer; returns a checksum."""
    acc = 0.0
    for z in zs.values():
        Z = torch.as_tensor(z, dtype=torch.float32).reshape(len(z), -1)
        nb = Z.shape[0] // B_SIZE
        Zb = Z[: nb * B_SIZE].reshape(nb, B_SIZE, -1)
        K = torch.exp(torch.cdist(Zb, Zb) * (-1.0 / (2 * 25.0 * Zb.shape[-1])))
        acc += float(K[:, 0, 1].sum())
    return acc


#: stages of the exact float64 floor, each including the ones before it
EXACT_STAGES = ("gram", "resolvent", "spectrum")


def run_exact_floor(zs, stage: str) -> float:
    """What an exact float64 result must compute per batch, batched per layer, activations in memory.

    ``gram``: the Z-side Gram in float64 (distances by one GEMM, non-squared, exp) and its centring;
    ``resolvent``: + the Cholesky factor of ``K~ + eps m I`` and its inverse (the resolvent);
    ``spectrum``: + the eigenvalues of the resolvent (the exact von Neumann bound of the chance level).
    Returns a checksum."""
    if stage not in EXACT_STAGES:
        raise ValueError(f"stage must be one of {EXACT_STAGES}, got {stage!r}")
    level = EXACT_STAGES.index(stage)
    acc = 0.0
    for z in zs.values():
        Z = torch.as_tensor(z, dtype=torch.float64).reshape(len(z), -1)
        nb = Z.shape[0] // B_SIZE
        Zb = Z[: nb * B_SIZE].reshape(nb, B_SIZE, -1)
        sq = (Zb * Zb).sum(-1)
        D = (sq[:, :, None] + sq[:, None, :]).baddbmm_(Zb, Zb.transpose(1, 2), alpha=-2.0).clamp_min_(0.0).sqrt_()
        K = D.mul_(-1.0 / (2 * 25.0 * Zb.shape[-1])).exp_()
        K = K - K.mean(-1, keepdim=True) - K.mean(-2, keepdim=True) + K.mean((-1, -2), keepdim=True)
        out = K
        if level >= 1:
            K.diagonal(dim1=-2, dim2=-1).add_(EPS * B_SIZE)
            C = torch.linalg.cholesky(K)
            out = torch.cholesky_inverse(C).mul_(-EPS * B_SIZE)
            out.diagonal(dim1=-2, dim2=-1).add_(1.0)
        if level >= 2:
            out = torch.linalg.eigvalsh(out)
        acc += float(out[:, 0, ...].sum())
    return acc


def run_ours(store: str, threads: Optional[int] = None):
    from infoplane.estimate import EstimateConfig, estimate_store

    cfg = EstimateConfig(distance="euclidean", baseline=False, progress=False, threads=threads, jobs=1)
    return estimate_store(store, cfg)


def timed(fn: Callable[[], object], repeats: int = 1) -> Tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def whole_process(cmd: List[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def worker(args: argparse.Namespace) -> None:
    x, y, zs, nc = load_store(args.store)
    run_baseline(args.worker, x, y, zs, nc)


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def wait_quiet(limit: float, max_wait: float) -> str:
    t0 = time.time()
    while os.getloadavg()[0] >= limit and time.time() - t0 < max_wait:
        time.sleep(10)
    return loadavg()


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--worker", choices=["published", "written_well"], help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help="best of N for the short in-process rows (default 3)")
    p.add_argument("--no-whole", action="store_true", help="skip the whole-process rows")
    p.add_argument("--wait-load", type=float, default=1.0, help="wait (<= 5 min) for 1-min load below this")
    p.add_argument("--out", default=str(HERE / "results" / "job_speed.md"))
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    load_before = wait_quiet(args.wait_load, 300)
    threads = torch.get_num_threads()
    (x, y, zs, nc), t_read = timed(lambda: load_store(args.store))
    shapes = sorted({tuple(z.shape[1:]) for z in zs.values()}, key=lambda s: -int(np.prod(s)))
    n_ck = len({c for c, _ in zs})
    n_ly = len({l for _, l in zs})
    print(f"store {args.store}: {n_ck} checkpoints x {n_ly} layers x {len(x)} samples; X {x.shape[1:]}; "
          f"layer shapes {shapes}; torch threads {threads}; load {load_before}", flush=True)
    # warm-up (imports, allocator)
    few = dict(list(zs.items())[:1])
    run_baseline("written_well", x[:200], y[:200], {k: v[:200] for k, v in few.items()}, nc)

    t: Dict[str, float] = {"read (store -> memory)": t_read}
    pub, t["(1) published, in-process"] = timed(lambda: run_baseline("published", x, y, zs, nc))
    print(f"  (1) published in-process {t['(1) published, in-process']:.2f} s", flush=True)
    well, t["(2) written well, in-process"] = timed(lambda: run_baseline("written_well", x, y, zs, nc), args.repeats)
    print(f"  (2) written well in-process {t['(2) written well, in-process']:.2f} s", flush=True)
    _, t["floor: Z Grams f32 (cdist+exp)"] = timed(lambda: run_floor(zs), args.repeats)
    print(f"  floor {t['floor: Z Grams f32 (cdist+exp)']:.2f} s", flush=True)
    torch.set_num_threads(1)
    try:
        _, t["floor, 1 thread"] = timed(lambda: run_floor(zs), args.repeats)
        _, t["(2) written well, in-process, 1 thread"] = timed(
            lambda: run_baseline("written_well", x, y, zs, nc), args.repeats)
    finally:
        torch.set_num_threads(threads)
    df, t["ours estimate_store, in-process"] = timed(lambda: run_ours(args.store), args.repeats)
    print(f"  ours in-process {t['ours estimate_store, in-process']:.2f} s", flush=True)
    _, t["ours estimate_store, in-process, 2 threads"] = timed(lambda: run_ours(args.store, threads), args.repeats)
    if not args.no_whole:
        csv = "/tmp/js_job_speed_estimates.csv"
        for suffix in ("", ".partial.jsonl"):
            if os.path.exists(csv + suffix):
                os.remove(csv + suffix)
        t["ours `infoplane estimate`, whole process"] = whole_process(
            [sys.executable, "-m", "infoplane", "estimate", args.store, "--distance", "euclidean", "--no-baseline",
             "--no-progress", "--out", csv])
        t["(1) published, whole process"] = whole_process(
            [sys.executable, __file__, args.store, "--worker", "published"])
        t["(2) written well, whole process"] = whole_process(
            [sys.executable, __file__, args.store, "--worker", "written_well"])
    load_after = loadavg()

    # agreement of values: ours (float64) vs (1) and (2) (float32), per (checkpoint, layer, target)
    ok = df[df["status"] == "ok"]
    rel1, rel2, rel12 = [], [], []
    for r in ok.itertuples():
        i = 0 if str(r.target).lower() == "x" else 1
        rel1.append(abs(r.value / pub[(r.checkpoint, r.layer)][i] - 1))
        rel2.append(abs(r.value / well[(r.checkpoint, r.layer)][i] - 1))
    for k in pub:
        rel12 += [abs(pub[k][i] / well[k][i] - 1) for i in (0, 1)]
    agree = dict(n_values=len(rel1), ours_vs_1=max(rel1), ours_vs_2=max(rel2), one_vs_2=max(rel12))

    t1, t2 = t["(1) published, in-process"], t["(2) written well, in-process"]
    tf = t["floor: Z Grams f32 (cdist+exp)"]
    lines = ["| what | seconds | (1)/this | (2)/this | this/floor |", "|---|---:|---:|---:|---:|"]
    w1 = t.get("(1) published, whole process")
    w2 = t.get("(2) written well, whole process")
    for k, v in t.items():
        if "whole process" in k and w1:
            lines.append(f"| {k} | {v:.2f} | {w1 / v:.2f} (whole) | {w2 / v:.2f} (whole) | {v / tf:.2f} |")
        else:
            lines.append(f"| {k} | {v:.2f} | {t1 / v:.2f} | {t2 / v:.2f} | {v / tf:.2f} |")
    table = "\n".join(lines)
    print(table)
    print(f"agreement (max relative difference over {agree['n_values']} values): ours vs (1) {agree['ours_vs_1']:.2e}, "
          f"ours vs (2) {agree['ours_vs_2']:.2e}, (1) vs (2) {agree['one_vs_2']:.2e}")

    cmd = "python benchmarks/job_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # the load after includes this benchmark's own 1-2 threads; only the load before says "shared"
    shared = float(load_before.split()[0]) >= args.wait_load
    md = [
        "# Job-level speed: minibatch nHSIC over a whole store", "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({threads} threads for the baselines and the floor; "
        "`infoplane estimate` uses 1 thread for the minibatch protocol by default), Python "
        f"{platform.python_version()}  ",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after} (includes this run's own threads)"
        + (" - the machine was SHARED with another job during part of this run; treat ratios as approximate."
           if shared else " (quiet)."), "",
        f"Store: `{args.store}`: {n_ck} checkpoints x {n_ly} layers x {len(x)} samples, X {tuple(x.shape[1:])}, "
        f"layer shapes {shapes}; minibatch protocol m = {B_SIZE}, eps = {EPS:g}, sigma = 5 sqrt(d), "
        "non-squared distance, targets X (RBF) and Y (one-hot, linear), no baseline. In-process rows: "
        f"(1), (2) and the floor run on activations already in memory; short rows are best of {args.repeats}.", "",
        "(1) = `benchmarks/published_nhsic.py:minibatch_as_published` (broadcast distance, K H, explicit "
        "inverses, float32, one call per batch per target); (2) = `minibatch_written_well` (cdist, same formula, "
        "precision and inverses); floor = every batch's Z-side Gram in float32 (cdist + exp); ours = "
        "`infoplane.estimate.estimate_store` / `infoplane estimate --distance euclidean --no-baseline` (float64). "
        "Ratio columns: (1)/this and (2)/this are speed-ups of this row over (1) and (2) (whole-process rows "
        "against the whole-process (1) and (2)); this/floor is how many floors this row costs.", "",
        table, "",
        f"Values: max relative difference over {agree['n_values']} (checkpoint, layer, target) means: "
        "ours (float64) vs "
        f"(1) {agree['ours_vs_1']:.2e}, ours vs (2) {agree['ours_vs_2']:.2e}, (1) vs (2) {agree['one_vs_2']:.2e}.", "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md))
    print(f"wrote {args.out}")
    return t


if __name__ == "__main__":
    main()
