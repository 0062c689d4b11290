"""Speed of the whole measurement, in one run on the same real data: published vs ours.

Sections (``--sections``, default all):

``jobs``  Job level on a real store (Fashion-MNIST LeNet5, 21 checkpoints x 5 layers x 2,000 test
    samples; minibatch protocol m = 100, eps = 1e-5, sigma = 5 sqrt(d), the published non-squared
    distance, targets X and Y, no shuffled baseline): (1) the published computation as published
    and (2) the same formula written well (``benchmarks/published_nhsic.py``), the floor (every
    batch's Z-side Gram in float32, which any method must form), ours in-process
    (``estimate_store``, 1 and 2 jobs) and whole processes (``infoplane estimate``). Values of
    ours (float64) against (1) and (2). Per-layer marginal cost: ours = (time for all checkpoints -
    time for one) / the extra layers (the X and Y sides are prepared once per store); (1) and (2)
    recompute everything per layer.
``full``  Full sample on real layers (the last checkpoint's conv2, 400 dims, and the inputs X, 784
    dims, of up to 20,000 Fashion-MNIST training images): exact float64 by Cholesky resolvents
    (``infoplane.estimators.exact``; the X side once, then per layer), the eigenvector route
    (``fast.factorize``, eigh) up to ``--eigh-max``, and the low-rank path at ``--tolerance`` up to
    ``--lowrank-max`` with its relative error against exact, the factors it ended with (a side that
    needs more than m/2 pivots falls back to its exact Cholesky resolvent; the input side's is kept
    for later layers, so the low-rank "X side" column includes it and "per layer" is a later layer)
    and the fitted time exponent. Flop floor of a layer: its Gram (2 m^2 d) plus one Cholesky
    (m^3 / 3) at the GEMM rate measured in the same run.
``extraction``  ``benchmarks/extraction_speed.py`` at 1 and 2 torch threads (extract vs a bare forward
    pass, LeNet5 on Fashion-MNIST and ResNet18 at width 16), and how much an h5py writer thread
    overlaps Python work (``extraction_speed.writer_overlap``).

The data are made on first use under ``--work`` (train LeNet5 20 epochs on 10,000 images,
``infoplane extract``) and reused. Results: ``results/speed.md`` and ``results/speed.csv``.

    python benchmarks/speed.py                       # everything (~40 min on 2 CPU cores)
    python benchmarks/speed.py --sections jobs       # one section
    python benchmarks/speed.py --quick --out-dir D   # smoke run on digits (tests)
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import job_speed as J  # noqa: E402

EPS = 1e-5
SECTIONS = ("jobs", "full", "extraction")


# --------------------------------------------------------------------------- data
def _run(cmd: List[str]) -> None:
    print("  $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def ensure_data(work: Path, quick: bool, full_max: int, epoch: Optional[int] = None) -> Dict[str, Path]:
    """Train the run and extract the two stores once (skipped when present)."""
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    run = work / "run"
    if quick:
        train = ["--model", "lenet5", "--dataset", "digits", "--epochs", "3"]
    else:
        train = ["--model", "lenet5", "--dataset", "fashion-mnist", "--subset", "10000", "--epochs", "20"]
    if not (run / "metrics.csv").exists() or not sorted(run.glob("epoch_*.pt")):
        _run([py, "-m", "trainers", *train, "--out", str(run), "--overwrite", "--no-progress"])
    ckpts = sorted(run.glob("epoch_*.pt"))
    jobs = work / "jobs.h5"
    if not jobs.exists():
        _run([py, "-m", "infoplane", "extract", *map(str, ckpts), "--layers", "all", "--samples",
              "200" if quick else "2000", "--out", str(jobs), "--no-progress"])
    source = ckpts[-1] if epoch is None else run / f"epoch_{epoch:04d}.pt"
    if not source.exists():
        raise SystemExit(f"--epoch {epoch}: {source} does not exist; pass an epoch the run saved")
    full = work / (f"full{full_max}.h5" if epoch is None else f"full{full_max}_epoch{epoch}.h5")
    if not full.exists():
        _run([py, "-m", "infoplane", "extract", str(source), "--layers", "conv2", "--split", "train",
              "--samples", str(full_max), "--out", str(full), "--no-progress"])
    return {"jobs": jobs, "full": full}


# --------------------------------------------------------------------------- measurement helpers
class PeakRSS:
    """Peak resident memory above the level at entry (MB), sampled every 2 ms by a thread."""

    def __init__(self) -> None:
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self._base = self._peak = self._rss()
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                time.sleep(0.002)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak_mb = (max(self._peak, self._rss()) - self._base) / 2 ** 20


def timed(fn: Callable[[], Any], repeats: int = 1) -> Tuple[Any, float, float]:
    """(result, best wall seconds of ``repeats``, peak RSS growth MB of the first call)."""
    best, out, mem = math.inf, None, math.nan
    for i in range(repeats):
        with PeakRSS() as pr:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        if i == 0:
            mem = pr.peak_mb
        best = min(best, dt)
    return out, best, mem


def fit_exponent(ms: List[float], ts: List[float]) -> float:
    ms, ts = np.asarray(ms, float), np.asarray(ts, float)
    ok = (ms > 0) & (ts > 0) & np.isfinite(ts)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(ms[ok]), np.log(ts[ok]), 1)[0])


def gemm_rate(n: int = 2048, repeats: int = 3) -> float:
    """float64 GEMM flops per second at the current thread count (n x n times n x n)."""
    a = torch.randn(n, n, dtype=torch.float64)
    b = torch.randn(n, n, dtype=torch.float64)
    a @ b
    _, t, _ = timed(lambda: a @ b, repeats)
    return 2.0 * n ** 3 / t


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# --------------------------------------------------------------------------- sections
def _describe(store: Path) -> str:
    from infoplane.store import ActivationStore

    with ActivationStore(store) as s:
        return f"{(s.dataset or {}).get('name', '?')} {(s.model or {}).get('name', '?')}"


def section_jobs(store: Path, repeats: int, whole: bool) -> List[Dict[str, Any]]:
    """Job-level rows (see the module docstring)."""
    from infoplane.estimate import EstimateConfig, estimate_store

    rows: List[Dict[str, Any]] = []
    threads = torch.get_num_threads()
    (x, y, zs, nc), t_read, _ = timed(lambda: J.load_store(str(store)))
    n_ck, n_ly = len({c for c, _ in zs}), len(zs)
    first = sorted({c for c, _ in zs})[0]
    print(f"jobs: {store} {n_ck} checkpoints, {n_ly} layer jobs, {len(x)} samples; threads {threads}", flush=True)
    few = dict(list(zs.items())[:1])
    J.run_baseline("written_well", x[:200], y[:200], {k: v[:200] for k, v in few.items()}, nc)   # warm-up

    def ours(jobs: int, checkpoints: Optional[List[str]] = None):
        cfg = EstimateConfig(distance="euclidean", baseline=False, progress=False, jobs=jobs, threads=1,
                             checkpoints=checkpoints)
        return estimate_store(store, cfg)

    ours(1, [first])                                                                           # warm-up
    t: Dict[str, float] = {}
    pub, t["(1) published, in-process"], _ = timed(lambda: J.run_baseline("published", x, y, zs, nc))
    well, t["(2) written well, in-process"], _ = timed(lambda: J.run_baseline("written_well", x, y, zs, nc), repeats)
    _, t["floor: Z Grams f32, 2 threads"], _ = timed(lambda: J.run_floor(zs), repeats)
    torch.set_num_threads(1)
    try:
        _, t["floor: Z Grams f32, 1 thread"], _ = timed(lambda: J.run_floor(zs), repeats)
        _, t["(2) written well, in-process, 1 thread"], _ = timed(
            lambda: J.run_baseline("written_well", x, y, zs, nc), repeats)
        for stage, label in (("gram", "exact floor, 1 thread: Z Grams f64"),
                             ("resolvent", "exact floor, 1 thread: + Cholesky resolvents"),
                             ("spectrum", "exact floor, 1 thread: + resolvent eigenvalues")):
            _, t[label], _ = timed(lambda: J.run_exact_floor(zs, stage), repeats)
    finally:
        torch.set_num_threads(threads)
    df, t["ours in-process, 1 job"], _ = timed(lambda: ours(1), repeats)
    df2, t["ours in-process, --jobs 2"], _ = timed(lambda: ours(2), repeats)
    _, t_one, _ = timed(lambda: ours(1, [first]), repeats)
    print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()), flush=True)
    if whole:
        csv = str(store.with_suffix(".speed.csv"))
        for jobs in (1, 2):
            for suffix in ("", ".partial.jsonl"):
                if os.path.exists(csv + suffix):
                    os.remove(csv + suffix)
            t[f"ours `infoplane estimate --jobs {jobs}`, whole process"] = J.whole_process(
                [sys.executable, "-m", "infoplane", "estimate", str(store), "--distance", "euclidean",
                 "--no-baseline", "--no-progress", "--jobs", str(jobs), "--out", csv])
        t["(1) published, whole process"] = J.whole_process(
            [sys.executable, str(HERE / "job_speed.py"), str(store), "--worker", "published"])
        t["(2) written well, whole process"] = J.whole_process(
            [sys.executable, str(HERE / "job_speed.py"), str(store), "--worker", "written_well"])
    ok = df[df["status"] == "ok"]
    rel1 = [abs(r.value / pub[(r.checkpoint, r.layer)][0 if r.target == "x" else 1] - 1) for r in ok.itertuples()]
    rel2 = [abs(r.value / well[(r.checkpoint, r.layer)][0 if r.target == "x" else 1] - 1) for r in ok.itertuples()]
    same = bool(np.array_equal(df["value"].to_numpy(), df2["value"].to_numpy()))
    t1, t2 = t["(1) published, in-process"], t["(2) written well, in-process"]
    tf = t["floor: Z Grams f32, 2 threads"]
    w1, w2 = t.get("(1) published, whole process"), t.get("(2) written well, whole process")
    for k, v in t.items():
        whole_row = "whole process" in k
        rows.append(dict(section="jobs", what=k, seconds=v,
                         vs_published=(w1 / v if whole_row else t1 / v) if (w1 or not whole_row) else math.nan,
                         vs_written_well=(w2 / v if whole_row else t2 / v) if (w2 or not whole_row) else math.nan,
                         floors=v / tf))
    per_layer_ours = (t["ours in-process, 1 job"] - t_one) / max(1, n_ly - n_ly // n_ck)
    rows.append(dict(section="jobs", what="per extra layer: ours (X, Y sides cached), 1 job",
                     seconds=per_layer_ours, vs_published=t1 / n_ly / per_layer_ours,
                     vs_written_well=t2 / n_ly / per_layer_ours, floors=per_layer_ours / (tf / n_ly)))
    rows.append(dict(section="jobs", what="per layer: (1) published", seconds=t1 / n_ly, vs_published=1.0,
                     vs_written_well=t2 / t1, floors=t1 / tf))
    rows.append(dict(section="jobs", what="per layer: (2) written well", seconds=t2 / n_ly, vs_published=t1 / t2,
                     vs_written_well=1.0, floors=t2 / tf))
    rows.append(dict(section="jobs", what="read (store -> memory)", seconds=t_read, vs_published=t1 / t_read,
                     vs_written_well=t2 / t_read, floors=t_read / tf))
    for r in rows:
        r.update(store=str(store), data=_describe(store), n_checkpoints=n_ck, n_layer_jobs=n_ly, n_samples=len(x),
                 max_rel_diff_vs_published=max(rel1), max_rel_diff_vs_written_well=max(rel2),
                 jobs2_identical=same)
    return rows


def section_full(store: Path, sizes: List[int], tolerance: float, eigh_max: int, exact_max: int,
                 lowrank_max: int) -> List[Dict[str, Any]]:
    """Full-sample rows (see the module docstring)."""
    from infoplane.estimators import exact, fast, protocol
    from infoplane.store import ActivationStore

    with ActivationStore(store) as s:
        ck = s.checkpoints()[-1]
        X_all = s.inputs().reshape(s.n_samples, -1)
        Y_all = np.asarray(s.labels())
        Z_all = s.read(ck, "conv2").reshape(s.n_samples, -1)
    rate = gemm_rate()
    print(f"full: {store} conv2 {Z_all.shape}, X {X_all.shape}; float64 GEMM {rate / 1e9:.1f} GFLOP/s at "
          f"{torch.get_num_threads()} threads", flush=True)
    rows: List[Dict[str, Any]] = []
    dz = Z_all.shape[1]
    w = min(200, len(X_all))                                   # warm-up: kernels, allocator
    protocol.nhsic_resolvent_result(exact.prepare_resolvent(Z_all[:w]), exact.prepare_resolvent(X_all[:w]))
    fast.refine_nhsic(fast.factorize(Z_all[:w], tolerance=tolerance), fast.factorize(X_all[:w], tolerance=tolerance),
                      eps=EPS, tolerance=tolerance)
    for m in sizes:
        if m > len(X_all):
            print(f"  m = {m}: the store has {len(X_all)} samples; skipped", flush=True)
            continue
        x, y, z = X_all[:m], Y_all[:m], Z_all[:m]
        fy = fast.factorize(y, kernel="label")
        floor_s = (2.0 * m * m * dz + m ** 3 / 3.0) / rate
        base = dict(section="full", m=m, layer="conv2", checkpoint=ck, d_z=dz, d_x=X_all.shape[1], gflops_s=rate / 1e9,
                    floor_seconds=floor_s)
        ref = None
        if m <= exact_max:
            rx, t_x, mem_x = timed(lambda: exact.prepare_resolvent(x, eps=EPS))

            def layer() -> Tuple[Any, Any]:
                rz = exact.prepare_resolvent(z, eps=EPS)
                return protocol.nhsic_resolvent_result(rz, rx), protocol.nhsic_resolvent_result(rz, fy)

            (ex, ey), t_l, mem_l = timed(layer)
            ref = (ex.value, ey.value)
            flops = 2.0 * m * m * dz + (4.0 / 3 + 1.0 / 3 + 2.0 / 3) * m ** 3
            rows.append({**base, "method": "exact (Cholesky resolvents)", "seconds_x_side": t_x,
                         "seconds_per_layer": t_l, "peak_mem_mb": max(mem_x, mem_l), "value_xz": ex.value,
                         "value_yz": ey.value, "rel_err_xz": 0.0, "rel_err_yz": 0.0, "error_bound_xz": 0.0,
                         "floors": t_l / floor_s, "flops_per_layer": flops, "rank_z": ex.rank_z})
            del rx
            gc.collect()
            print(f"  m = {m}: exact X side {t_x:.1f} s, per layer {t_l:.1f} s ({t_l / floor_s:.1f} floors)",
                  flush=True)
        if m <= eigh_max:
            fx, t_x, mem_x = timed(lambda: fast.factorize(x))

            def layer_eigh() -> Tuple[Any, Any]:
                fz = fast.factorize(z)
                return protocol.nhsic_factor_result(fz, fx, EPS), protocol.nhsic_factor_result(fz, fy, EPS)

            (gx, gy), t_l, mem_l = timed(layer_eigh)
            rows.append({**base, "method": "exact (eigh factors)", "seconds_x_side": t_x, "seconds_per_layer": t_l,
                         "peak_mem_mb": max(mem_x, mem_l), "value_xz": gx.value, "value_yz": gy.value,
                         "rel_err_xz": abs(gx.value / ref[0] - 1) if ref else math.nan,
                         "rel_err_yz": abs(gy.value / ref[1] - 1) if ref else math.nan,
                         "floors": t_l / floor_s})
            del fx
            gc.collect()
            print(f"  m = {m}: eigh X side {t_x:.1f} s, per layer {t_l:.1f} s", flush=True)
        if m > lowrank_max:
            continue
        fxl, t_x, mem_x = timed(lambda: fast.factorize(x, tolerance=tolerance))
        x_exact = fast.ExactSideCache()        # as `infoplane estimate`: X's exact fallback once per store

        def layer_lr() -> Tuple[Any, Any]:
            fz = fast.factorize(z, tolerance=tolerance)
            rxz = fast.refine_nhsic(fz, fxl, eps=EPS, tolerance=tolerance, other_exact=x_exact)
            ryz = fast.refine_nhsic(rxz.z_factor, fy, eps=EPS, tolerance=tolerance)
            return rxz, ryz

        _, t_first, mem_first = timed(layer_lr)          # the first layer of a store: X may fall back here
        (lx, ly), t_l, mem_l = timed(layer_lr)           # every later layer
        rows.append({**base, "method": f"low rank (tolerance {tolerance:g})", "seconds_x_side": t_x + t_first - t_l,
                     "seconds_per_layer": t_l, "peak_mem_mb": max(mem_x, mem_first, mem_l), "value_xz": lx.value,
                     "value_yz": ly.value, "error_bound_xz": lx.error_bound, "error_bound_yz": ly.error_bound,
                     "rel_err_xz": abs(lx.value / ref[0] - 1) if ref else math.nan,
                     "rel_err_yz": abs(ly.value / ref[1] - 1) if ref else math.nan,
                     "rank_x": lx.rank_other, "rank_z": lx.rank_z, "floors": t_l / floor_s,
                     "factors": f"Z {lx.z_factor.method}, X {lx.other_factor.method}"})
        print(f"  m = {m}: low rank X side {t_x:.1f} s, per layer {t_l:.1f} s, rel err "
              f"{rows[-1]['rel_err_xz']:.2e} / {rows[-1]['rel_err_yz']:.2e} (bound {lx.error_bound / lx.value:.1e})",
              flush=True)
        gc.collect()
    return rows


def section_extraction(quick: bool) -> List[Dict[str, Any]]:
    import extraction_speed as E

    rows: List[Dict[str, Any]] = []
    saved = torch.get_num_threads()
    try:
        for threads in ((1,) if quick else (1, 2)):   # torch intra-op threads of both the bare pass and extract
            with tempfile.TemporaryDirectory() as tmp:
                out = E.main((["--quick"] if quick else []) + ["--threads", str(threads), "--out-dir", tmp])
            rows += [{"section": "extraction", "threads": threads, **r} for r in out]
        if not quick:
            rows.append({"section": "writer_overlap", **E.writer_overlap()})
    finally:
        torch.set_num_threads(saved)
    return rows


# --------------------------------------------------------------------------- report
def _md_table(rows: List[Dict[str, Any]], cols: List[Tuple[str, str, str]]) -> List[str]:
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---:" if f else "---" for _, _, f in cols)
             + "|"]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key, "")
            if fmt and isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append("" if (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_results(rows: List[Dict[str, Any]], out_dir: Path, quick: bool, cmd: str, load_before: str,
                  suffix: str = "") -> Path:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    name = ("speed_quick" if quick else "speed") + suffix
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    pd.DataFrame(rows).to_csv(csv.with_name(csv.name + ".partial"), index=False)
    os.replace(csv.with_name(csv.name + ".partial"), csv)
    lines = ["# Speed: the whole measurement, published vs ours", "",
             f"Command: `{cmd}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python "
             f"{platform.python_version()}; load average (1, 5, 15 min) before {load_before}, after {loadavg()}.", ""]
    jobs = [r for r in rows if r["section"] == "jobs"]
    if jobs:
        j = jobs[0]
        lines += ["## Job level (minibatch protocol over a whole store)", "",
                  f"Store: {j['n_checkpoints']} checkpoints x {j['n_layer_jobs'] // j['n_checkpoints']} layers x "
                  f"{j['n_samples']} samples ({j['data']}), m = 100, eps = 1e-5, sigma = 5 sqrt(d), "
                  "non-squared distance, targets X and Y, no baseline. (1) = published as published, (2) = written "
                  "well; in-process rows get the activations in memory, except ours, which reads the store itself. "
                  "Ratios of whole-process rows are against the whole-process (1) and (2). floors = this row / "
                  "the float32 Z-Gram floor at 2 threads.", ""]
        lines += _md_table(jobs, [("what", "what", ""), ("seconds", "seconds", ".2f"),
                                  ("vs_published", "(1) / this", ".1f"), ("vs_written_well", "(2) / this", ".2f"),
                                  ("floors", "floors", ".1f")])
        lines += ["", f"Values: ours (float64) vs (1) max relative difference {j['max_rel_diff_vs_published']:.1e}, "
                      f"vs (2) {j['max_rel_diff_vs_written_well']:.1e} over every (checkpoint, layer, target); "
                      f"`--jobs 2` table identical to 1 job: {j['jobs2_identical']}.", ""]
        sec = {r["what"]: r["seconds"] for r in jobs}
        ex = [sec.get(k) for k in ("floor: Z Grams f32, 1 thread", "exact floor, 1 thread: Z Grams f64",
                                   "exact floor, 1 thread: + Cholesky resolvents",
                                   "exact floor, 1 thread: + resolvent eigenvalues", "ours in-process, 1 job")]
        if all(v is not None for v in ex):
            f32, g64, res, spec, ours1 = ex
            lines += [f"Where the time goes beyond the float32 floor (1 thread, activations in memory): the float64 "
                      f"Gram {g64:.2f} s ({g64 / f32:.1f}x the float32 one), + the Cholesky resolvents "
                      f"{res - g64:.2f} s, + the resolvent eigenvalues for the exact chance-adjusted bound "
                      f"{spec - res:.2f} s: an exact float64 result with its chance level needs {spec:.2f} s = "
                      f"{spec / f32:.1f}x the float32 floor. Ours (1 job) is {ours1 / spec:.2f}x that exact floor; "
                      f"the rest ({ours1 - spec:.2f} s) is reading and checking the store, the values against X and Y, "
                      "the null moments and the table rows.", ""]
    full = [r for r in rows if r["section"] == "full"]
    if full:
        lr = [r for r in full if str(r["method"]).startswith("low rank")]
        ex = [r for r in full if str(r["method"]).startswith("exact (Cholesky")]
        lines += [f"## Full sample (one layer: {full[0]['layer']} of {full[0]['checkpoint']}, {full[0]['d_z']} dims; "
                  f"X: {full[0]['d_x']} dims)", "",
                  f"float64; GEMM rate {full[0]['gflops_s']:.1f} GFLOP/s measured in this run; floor = (2 m^2 d + "
                  "m^3 / 3) / rate, the Gram and one Cholesky of a layer. Fitted time exponent per layer: exact "
                  f"{fit_exponent([r['m'] for r in ex], [r['seconds_per_layer'] for r in ex]):.2f}, low rank "
                  f"{fit_exponent([r['m'] for r in lr], [r['seconds_per_layer'] for r in lr]):.2f}.", ""]
        lines += _md_table(full, [("m", "m", "d"), ("method", "method", ""), ("seconds_x_side", "X side s", ".1f"),
                                  ("seconds_per_layer", "per layer s", ".2f"), ("floors", "floors", ".1f"),
                                  ("peak_mem_mb", "peak MB", ".0f"), ("value_xz", "nHSIC(X;Z)", ".4f"),
                                  ("value_yz", "nHSIC(Y;Z)", ".4f"), ("rel_err_xz", "rel err X", ".1e"),
                                  ("rel_err_yz", "rel err Y", ".1e"), ("error_bound_xz", "bound X", ".2e"),
                                  ("rank_x", "rank X", ".0f"), ("rank_z", "rank Z", ".0f"),
                                  ("factors", "factors used", "")])
        lines.append("")
    ext = [r for r in rows if r["section"] == "extraction"]
    if ext:
        lines += ["## Extraction (`benchmarks/extraction_speed.py`)", ""]
        keys = [k for k in ext[0] if k != "section" and not isinstance(ext[0][k], (list, dict))]
        lines += _md_table(ext, [(k, k, ".3g") for k in keys])
        lines.append("")
    ov = [r for r in rows if r["section"] == "writer_overlap"]
    if ov:
        o = ov[0]
        lines += [f"Writer overlap (`extraction_speed.writer_overlap`): a pure-Python loop takes {o['loop_alone_s']:.3f} s "
                  f"alone and {o['loop_beside_writer_s']:.3f} s beside a thread writing Fletcher-32 chunks with h5py "
                  f"(writer alone {o['writer_alone_s']:.3f} s); both together {o['both_s']:.3f} s against "
                  f"{o['serial_s']:.3f} s one after the other: overlap "
                  f"{(o['serial_s'] - o['both_s']) / min(o['loop_alone_s'], o['writer_alone_s']):.2f} "
                  "(1 = the writer runs entirely beside Python work, 0 = not at all).", ""]
    md.write_text("\n".join(lines))
    print(f"wrote {csv} and {md}")
    return md


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--quick", action="store_true", help="smoke run on digits, small sizes (tests)")
    p.add_argument("--work", default=str(ROOT / "runs" / "speed"), help="where the run and stores are made")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="full-sample m (default 2k 5k 10k 20k)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="low-rank relative error bound (default 1e-3)")
    p.add_argument("--eigh-max", type=int, default=2000, help="largest m for the eigenvector route")
    p.add_argument("--lowrank-max", type=int, default=2000,
                   help="largest m for the low-rank path (on trained layers it needs more than m/2 pivots and "
                        "falls back to the exact resolvent, after pivots that cost more than the exact path)")
    p.add_argument("--exact-max", type=int, default=20000, help="largest m for the exact route")
    p.add_argument("--epoch", type=int, default=None,
                   help="full section: the checkpoint's epoch (default: the last; 0 = the initialisation, whose "
                        "layers have faster-decaying spectra)")
    p.add_argument("--repeats", type=int, default=3, help="best of N for the short job-level rows")
    p.add_argument("--no-whole", action="store_true", help="skip the whole-process rows")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the baselines and the full section")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([100, 200] if args.quick else [2000, 5000, 10000, 20000])
    if args.quick:
        args.work = args.work if args.work != str(ROOT / "runs" / "speed") else str(Path(args.out_dir) / "work")
    load_before = loadavg()
    data = ensure_data(Path(args.work), args.quick, max(sizes), args.epoch)
    rows: List[Dict[str, Any]] = []
    if "jobs" in args.sections:
        rows += section_jobs(data["jobs"], 1 if args.quick else args.repeats, whole=not args.no_whole)
    if "full" in args.sections:
        rows += section_full(data["full"], sizes, args.tolerance, args.eigh_max, args.exact_max, args.lowrank_max)
    if "extraction" in args.sections and not args.quick:
        rows += section_extraction(args.quick)
    cmd = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    suffix = "" if args.epoch is None else f"_epoch{args.epoch}"
    write_results(rows, Path(args.out_dir), args.quick, cmd, load_before, suffix)
    return rows


if __name__ == "__main__":
    main()
