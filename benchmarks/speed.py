"""Speed and accuracy of nHSIC at evaluation-set scale.

In one run, on the same data, for m in {1k, 2k, 5k, 10k, 20k}:
- ``published-minibatch-f32``: (1) the published computation as published
  (``benchmarks/published_nhsic.py``: E2E-info ``NormalizedHSIC``, broadcast **non-squared**
  distance in the exponent, ``K H`` centring, explicit ``torch.inverse``, float32, a Python loop over
  batches of b = 100 and two independent calls per batch for nHSIC(X;Z) and nHSIC(Y;Z));
- ``published-wellwritten-minibatch-f32``: (2) the same formula written well (``cdist``, same
  precision and inverses, still one call per batch per target);
- ``ours-minibatch``: the same protocol and formula (non-squared distance) vectorised
  (``nhsic_minibatches_many``, float64), timed for one layer from scratch and per additional
  layer/checkpoint with the X and Y sides cached;
The full-sample rows below use the standard (squared-distance) RBF kernel, not the published formula.

- ``reference``: full-sample exact float64 by Cholesky (``I - eps m (K~ + eps m I)^-1``), the
  yardstick for relative errors;
- ``ours-exact``: ``factorize(tolerance=None)`` (eigh) + ``nhsic_factored``;
- ``ours-lowrank``: pivoted-Cholesky factors refined until the rigorous error bound is at most ``--tolerance`` times the value, + label factor.

Data: Gaussian clusters (c = 10) in a ``--latent``-dim space pushed through random smooth features
to d = 784 (X) and a random tanh layer to d = 400 (Z) (a LeNet5-like layer width); labels Y.
Peak memory is the process's peak RSS above its level before the call (sampled every 2 ms).

    python benchmarks/speed.py                # full run (< 10 min on 2 CPU cores)
    python benchmarks/speed.py --quick        # seconds; smoke mode used by tests
    python benchmarks/speed.py --device cuda  # the same on a GPU
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from infoplane.estimators.batched import nhsic_minibatches_many, prepare_minibatch_side
from infoplane.estimators.fast import factorize, nhsic_factored, refine_nhsic


# --------------------------------------------------------------------------- data
def make_data(m: int, *, d: int = 784, dz: int = 400, c: int = 10, latent: int = 4, zscale: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X (m, d), Z (m, dz) float32 and labels (m,) with low intrinsic dimension (see module doc)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, c, size=m)
    mu = 1.5 * g.normal(size=(c, latent))
    u = mu[y] + g.normal(size=(m, latent))
    x = np.tanh(u @ g.normal(size=(latent, d)) / np.sqrt(latent))
    z = np.tanh(x @ (zscale * g.normal(size=(d, dz)) / np.sqrt(d)))
    return x.astype(np.float32), z.astype(np.float32), y.astype(np.int64)


# --------------------------------------------------------------------------- published algorithm
# The published computation lives in benchmarks/published_nhsic.py: (1) "as published"
# (E2E-info NormalizedHSIC: broadcast non-squared distance, K H, explicit inverses, float32, one call
# per batch per target) and (2) the same formula "written well" (cdist). An earlier version of this
# file timed a squared-distance re-implementation under the name "published": a different number.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_nhsic as _pub  # noqa: E402

#: the published code's distance in the RBF exponent; the minibatch rows of ours use it too
PUBLISHED_SQUARED = False


def published_minibatch(x: np.ndarray, z: np.ndarray, y: np.ndarray, *, b: int = 100, eps: float = 1e-5,
                        dtype: torch.dtype = torch.float32, device: str = "cpu",
                        form: str = "as_published") -> tuple[np.ndarray, np.ndarray]:
    """Per-batch (nHSIC(X;Z), nHSIC(Y;Z)) by the published computation: ``form`` "as_published" = (1),
    "written_well" = (2) (see ``benchmarks/published_nhsic.py``); float32 is the published setting."""
    fn = _pub.minibatch_as_published if form == "as_published" else _pub.minibatch_written_well
    return fn(x, z, y, num_classes=int(np.max(y)) + 1, batch_size=b, eps=eps, dtype=dtype, device=device)


# --------------------------------------------------------------------------- full-sample reference
def reference_full(x: np.ndarray, z: np.ndarray, y: np.ndarray, *, eps: float = 1e-5,
                   device: str = "cpu") -> tuple[float, float]:
    """Exact float64 full-sample nHSIC(X;Z), nHSIC(Y;Z) by Cholesky solves (no eigh, no inverse of KH)."""
    from infoplane import kernels as K

    m = len(x)
    shift = eps * m
    eye = torch.eye(m, dtype=torch.float64, device=device)

    def resolvent(G: torch.Tensor) -> torch.Tensor:
        Gc = K.center(G)
        del G
        C = torch.linalg.cholesky(0.5 * (Gc + Gc.T) + shift * eye)
        del Gc
        A = torch.cholesky_inverse(C)
        del C
        A.mul_(-shift).add_(eye)
        return A

    Az = resolvent(K.rbf_gram(z, "paper", device=device))
    Ax = resolvent(K.rbf_gram(x, "paper", device=device))
    vx = float((Az * Ax).sum())
    del Ax
    Y = K.one_hot(y, device=device)
    Yc = Y - Y.mean(0, keepdim=True)
    S = Yc.T @ (Az @ Yc)
    vy = float(torch.trace(torch.linalg.solve(Yc.T @ Yc + shift * torch.eye(Y.shape[1], dtype=torch.float64,
                                                                             device=device), S)))
    return vx, vy


# --------------------------------------------------------------------------- measurement
class PeakRSS:
    """Peak resident memory above the level at entry (MB), sampled by a thread (CPU), or CUDA peak."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                time.sleep(0.002)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2 ** 20
            return
        self._stop.set()
        self._t.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mb = (self._peak - self._base) / 2 ** 20


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float, float]:
    with PeakRSS(device) as mem:
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
    return out, sec, mem.peak_mb


def fit_exponent(ms: list[float], ts: list[float]) -> float:
    if len(ms) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ms), np.log(ts), 1)[0])


# --------------------------------------------------------------------------- extraction throughput
def measure_extraction(model_name: str = "lenet5", dataset: str = "digits", batch_size: int = 256,
                       repeats: int = 3) -> dict:
    """Hooked forward + HDF5 write (``infoplane.extract.extract``, all layers) vs a bare forward pass
    over the same evaluation split (eval, no_grad, same batch size); best of ``repeats``."""
    import tempfile

    from torch.utils.data import DataLoader

    from infoplane.checkpoint import save_checkpoint
    from infoplane.data import dataset_info, load_dataset
    from infoplane.extract import extract
    from infoplane.models import build_model

    info = dataset_info(dataset)
    kwargs = {"input_shape": tuple(info.input_shape), "num_classes": info.num_classes}
    model = build_model(model_name, **kwargs).eval()
    ds = load_dataset(dataset, split="test")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)

    def bare() -> None:
        with torch.no_grad():
            for xb, _ in loader:
                model(xb)

    with tempfile.TemporaryDirectory() as tmp:
        ck = save_checkpoint(Path(tmp) / "ck.pt", model, model_name=model_name, model_kwargs=kwargs, epoch=0,
                             step=0, regime={"name": "e2e"},
                             dataset={"name": dataset, "num_classes": info.num_classes,
                                      "input_shape": list(info.input_shape)}, seed=0)
        t_bare, t_ext, t_skip = [], [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            bare()
            t_bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            extract([ck], layers="all", out=Path(tmp) / f"acts{i}.h5", split="test", batch_size=batch_size,
                    progress=False)
            t_ext.append(time.perf_counter() - t0)
            # same call again: the checkpoint is already complete and is skipped -> fixed overhead only
            t0 = time.perf_counter()
            extract([ck], layers="all", out=Path(tmp) / f"acts{i}.h5", split="test", batch_size=batch_size,
                    progress=False)
            t_skip.append(time.perf_counter() - t0)
    marginal = max(min(t_ext) - min(t_skip), 0.0)
    return {"fixed_overhead_s": min(t_skip), "streaming_s": marginal, "streaming_ratio": marginal / min(t_bare),
            "model": model_name, "dataset": dataset, "n_samples": len(ds), "bare_forward_s": min(t_bare),
            "extract_s": min(t_ext), "ratio": min(t_ext) / min(t_bare)}


# --------------------------------------------------------------------------- per-layer cost vs width
def measure_layer_widths(m: int = 10000, widths: tuple = (10, 84, 120, 400, 1600), b: int = 100,
                         eps: float = 1e-5, device: str = "cpu", d: int = 784, latent: int = 4) -> list[dict]:
    """Minibatch protocol, cost of one more (layer, checkpoint) at several layer widths: the published
    loop recomputes K_X every time; ours reuses the prepared X and Y sides (once per store)."""
    rows = []
    x, _, y = make_data(m, d=d, dz=8, latent=latent)
    sx = prepare_minibatch_side(x, kernel="rbf", batch_size=b, eps=eps, device=device, squared=PUBLISHED_SQUARED)
    sy = prepare_minibatch_side(y, kernel="label", batch_size=b, eps=eps, device=device)
    g = np.random.default_rng(1)
    for w in widths:
        z = np.tanh(x @ (g.normal(size=(x.shape[1], w)) / np.sqrt(x.shape[1]))).astype(np.float32)
        (pvx, pvy), t_pub, _ = timed(lambda: published_minibatch(x, z, y, b=b, eps=eps, device=device), device)
        (ovx, ovy), t_ours, _ = timed(lambda: nhsic_minibatches_many(z, [sx, sy], device=device,
                                                                     squared=PUBLISHED_SQUARED), device)
        rows.append(dict(m=m, method="per-layer-minibatch", dz=w, published_f32_s=t_pub, ours_f64_cached_x_s=t_ours,
                         speedup=t_pub / t_ours, max_rel_diff_vs_published_f32=float(
                             max(np.abs(ovx / pvx - 1).max(), np.abs(ovy / pvy - 1).max()))))
        print("  ", rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> list[dict]:
    dev = args.device
    rows: list[dict] = []
    # warm-up (library loading, CUDA context, kernels) so the first size is not charged for it
    xw, zw, yw = make_data(300, d=args.d, dz=args.dz, latent=args.latent, seed=args.seed + 1)
    published_minibatch(xw, zw, yw, b=min(args.batch_size, 100), device=dev)
    nhsic_minibatches_many(zw, [prepare_minibatch_side(yw, kernel="label", batch_size=min(args.batch_size, 100),
                                                       device=dev)], device=dev)
    reference_full(xw, zw, yw, device=dev)
    nhsic_factored(factorize(xw, tolerance=args.tolerance, device=dev), factorize(zw, device=dev))

    def add(**kw: Any) -> None:
        rows.append(kw)
        keys = ("m", "method", "seconds", "peak_mem_mb", "value_xz", "value_yz", "rel_err_xz", "rel_err_yz")
        print("  " + "  ".join(f"{k}={kw.get(k)!s:.12}" for k in keys if k in kw), flush=True)

    for m in args.sizes:
        print(f"m = {m}", flush=True)
        x, z, y = make_data(m, d=args.d, dz=args.dz, latent=args.latent, seed=args.seed)
        b, eps = args.batch_size, args.eps
        nb = m // b
        # published algorithm at its own protocol (float32 loop, explicit inverses)
        if m <= args.published_max:
            (pvx, pvy), t_pub, mem_pub = timed(lambda: published_minibatch(x, z, y, b=b, eps=eps, device=dev), dev)
            add(m=m, method="published-minibatch-f32", protocol=f"minibatch b={b}", seconds=t_pub,
                peak_mem_mb=mem_pub, value_xz=float(pvx.mean()), value_yz=float(pvy.mean()), n_batches=nb)
            (wvx, wvy), t_well, mem_well = timed(
                lambda: published_minibatch(x, z, y, b=b, eps=eps, device=dev, form="written_well"), dev)
            add(m=m, method="published-wellwritten-minibatch-f32", protocol=f"minibatch b={b}", seconds=t_well,
                peak_mem_mb=mem_well, value_xz=float(wvx.mean()), value_yz=float(wvy.mean()), n_batches=nb)
        else:
            t_pub = t_well = float("nan")
        # ours: the same protocol vectorised, float64
        def ours_mb() -> tuple[np.ndarray, np.ndarray]:
            sx = prepare_minibatch_side(x, kernel="rbf", batch_size=b, eps=eps, device=dev,
                                        squared=PUBLISHED_SQUARED)
            sy = prepare_minibatch_side(y, kernel="label", batch_size=b, eps=eps, device=dev)
            return tuple(nhsic_minibatches_many(z, [sx, sy], device=dev, squared=PUBLISHED_SQUARED))

        (ovx, ovy), t_mb, mem_mb = timed(ours_mb, dev)
        sx = prepare_minibatch_side(x, kernel="rbf", batch_size=b, eps=eps, device=dev, squared=PUBLISHED_SQUARED)
        sy = prepare_minibatch_side(y, kernel="label", batch_size=b, eps=eps, device=dev)
        _, t_layer, mem_layer = timed(lambda: nhsic_minibatches_many(z, [sx, sy], device=dev,
                                                                     squared=PUBLISHED_SQUARED), dev)
        row = dict(m=m, method="ours-minibatch-f64", protocol=f"minibatch b={b}", seconds=t_mb,
                   peak_mem_mb=mem_mb, value_xz=float(ovx.mean()), value_yz=float(ovy.mean()), n_batches=nb,
                   seconds_per_extra_layer=t_layer, speedup_vs_published=t_pub / t_mb,
                   speedup_vs_published_written_well=t_well / t_mb,
                   speedup_per_layer_cached_x=t_pub / t_layer)
        if m <= args.published_max:
            row["max_rel_diff_vs_published_f32"] = float(max(np.max(np.abs(ovx / pvx - 1)), np.max(np.abs(ovy / pvy - 1))))
            if m <= args.published_f64_max:
                qvx, qvy = published_minibatch(x, z, y, b=b, eps=eps, dtype=torch.float64, device=dev)
                row["max_rel_diff_vs_published_f64"] = float(max(np.max(np.abs(ovx / qvx - 1)),
                                                                 np.max(np.abs(ovy / qvy - 1))))
        add(**row)
        # full-sample reference (exact, float64, Cholesky)
        ref: Optional[tuple[float, float]] = None
        if m <= args.reference_max:
            ref, t_ref, mem_ref = timed(lambda: reference_full(x, z, y, eps=eps, device=dev), dev)
            add(m=m, method="reference-full-cholesky-f64", protocol="full", seconds=t_ref, peak_mem_mb=mem_ref,
                value_xz=ref[0], value_yz=ref[1])

        def rel(v: float, i: int) -> float:
            return abs(v - ref[i]) / abs(ref[i]) if ref is not None else float("nan")

        # ours exact (eigh factors)
        if m <= args.exact_max:
            def ours_exact() -> tuple:
                fx = factorize(x, device=dev)
                fz = factorize(z, device=dev)
                fy = factorize(y, kernel="label", device=dev)
                return nhsic_factored(fx, fz, eps)[0], nhsic_factored(fy, fz, eps)[0]

            (evx, evy), t_ex, mem_ex = timed(ours_exact, dev)
            add(m=m, method="ours-exact-eigh-f64", protocol="full", seconds=t_ex, peak_mem_mb=mem_ex,
                value_xz=evx, value_yz=evy, rel_err_xz=rel(evx, 0), rel_err_yz=rel(evy, 1))
        # ours low rank
        def ours_lr() -> tuple:
            fx = factorize(x, tolerance=args.tolerance, device=dev)
            fz = factorize(z, tolerance=args.tolerance, device=dev)
            fy = factorize(y, kernel="label", device=dev)
            rxz = refine_nhsic(fz, fx, eps=eps, tolerance=args.tolerance)     # bound <= tolerance * value
            ryz = refine_nhsic(rxz.z_factor, fy, eps=eps, tolerance=args.tolerance)
            return (rxz.value, rxz.error_bound), (ryz.value, ryz.error_bound), rxz.rank_other, ryz.rank_z

        ((lvx, lex), (lvy, ley), rx, rz), t_lr, mem_lr = timed(ours_lr, dev)
        add(m=m, method="ours-lowrank-f64", protocol="full", seconds=t_lr, peak_mem_mb=mem_lr, value_xz=lvx,
            value_yz=lvy, error_bound_xz=lex, error_bound_yz=ley, rel_err_xz=rel(lvx, 0), rel_err_yz=rel(lvy, 1),
            rank_x=rx, rank_z=rz, tolerance=args.tolerance)
    return rows


def write_results(rows: list[dict], args: argparse.Namespace, out_dir: Path) -> None:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.insert(0, "device", args.device)
    lr = df[df.method == "ours-lowrank-f64"]
    exp_t = fit_exponent(lr.m.tolist(), lr.seconds.tolist())
    exp_mr2 = fit_exponent(lr.m.tolist(), (lr.m * (lr.rank_x ** 2 + lr.rank_z ** 2)).tolist())
    suffix = "" if args.device == "cpu" else "_" + args.device.split(":")[0]
    if args.quick:
        suffix += "_quick"
    csv = out_dir / f"speed{suffix}.csv"
    md = out_dir / f"speed{suffix}.md"
    tmp = csv.with_name(csv.name + ".partial")
    df.to_csv(tmp, index=False)
    os.replace(tmp, csv)
    cols = [c for c in ["m", "method", "seconds", "peak_mem_mb", "value_xz", "value_yz", "rel_err_xz", "rel_err_yz",
                        "error_bound_xz", "error_bound_yz", "rank_x", "rank_z", "speedup_vs_published",
                        "speedup_vs_published_written_well",
                        "seconds_per_extra_layer", "speedup_per_layer_cached_x", "max_rel_diff_vs_published_f32",
                        "max_rel_diff_vs_published_f64"] if c in df.columns]
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    lines = [
        f"# nHSIC speed benchmark ({args.device})", "",
        f"Command: `python benchmarks/speed.py {' '.join(sys.argv[1:])}`  ",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
        f"load average at end {load[0]:.1f} (other jobs shared the CPU: timings are upper bounds).  ",
        f"Data: m samples, X d={args.d}, Z d={args.dz}, c=10, latent dim {args.latent}; eps={args.eps}, "
        f"sigma=5 sqrt(d), batch {args.batch_size}, low-rank tolerance {args.tolerance}.", "",
        f"Low rank: fitted exponent of time vs m = **{exp_t:.2f}**; of m (r_x^2 + r_z^2) vs m = {exp_mr2:.2f} "
        "(time follows O(m r^2) when the two agree).", "",
        df[cols].to_markdown(index=False, floatfmt=".4g") if _has_tabulate() else df[cols].to_string(index=False),
        "",
    ]
    tmp = md.with_name(md.name + ".partial")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, md)
    print(f"time exponent (low rank) {exp_t:.2f}; m r^2 exponent {exp_mr2:.2f}")
    print(f"wrote {csv} and {md}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--tolerance", type=float, default=1e-3, help="relative error bound of the low-rank values (default: 1e-3)")
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--latent", type=int, default=4)
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--dz", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster when the cores are shared)")
    p.add_argument("--exact-max", type=int, default=None, help="largest m for ours-exact (eigh)")
    p.add_argument("--reference-max", type=int, default=None, help="largest m for the Cholesky reference")
    p.add_argument("--published-max", type=int, default=10 ** 9)
    p.add_argument("--published-f64-max", type=int, default=2000)
    p.add_argument("--extraction", action="store_true",
                   help="only measure extraction throughput (hooked forward + HDF5 vs bare forward)")
    p.add_argument("--layer-widths", action="store_true",
                   help="only measure the per-(layer, checkpoint) minibatch cost at several layer widths")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.sizes_given = a.sizes is not None
    if a.quick:
        a.sizes = a.sizes or [200, 400]
        a.d, a.dz, a.batch_size = min(a.d, 40), min(a.dz, 20), min(a.batch_size, 50)
    a.sizes = a.sizes or [1000, 2000, 5000, 10000, 20000]
    # CPU: exact eigh beyond 5k and the dense reference beyond 10k do not fit the 10-minute budget on
    # 2 cores (eigh is O(m^3) with a poor constant; at 20k each dense matrix is 3.2 GB).
    a.exact_max = a.exact_max or (10000 if cuda else 5000)
    a.reference_max = a.reference_max or (20000 if cuda else 10000)
    return a


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = parse_args(argv)
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    if args.extraction:
        res = measure_extraction()
        print(res)
        out = Path(args.out_dir) / "extraction.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        import json
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, out)
        return [res]
    if args.layer_widths:
        rows = measure_layer_widths(device=args.device, m=args.sizes[0] if args.sizes_given else 10000)
        import pandas as pd
        out = Path(args.out_dir) / ("speed_layers.csv" if args.device == "cpu" else "speed_layers_cuda.csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        pd.DataFrame(rows).to_csv(tmp, index=False)
        os.replace(tmp, out)
        return rows
    rows = run(args)
    write_results(rows, args, Path(args.out_dir))
    return rows


if __name__ == "__main__":
    main()
