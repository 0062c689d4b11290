"""Which protocol lets nHSIC *see* dependence on image data? Raw and chance-adjusted values on a real store.

For a store of LeNet5 activations on the Fashion-MNIST test set (10,000 samples), at the first and
the last checkpoint, for every layer Z and both targets (X: RBF; Y: one-hot, linear), this script
computes nHSIC under the minibatch protocol with m in {100, 500, 2000} and full-sample m = 10,000,
eps in {1e-5, ..., 1e-1}, bandwidth rules 'paper' (5 sqrt(d)) and 'median', together with the exact
permutation-null mean and sd (``infoplane.estimators.chance``), z, the chance-adjusted value and the
sd of the adjusted value over minibatches. Every eps comes from one eigendecomposition per batch and
side: with ``K~ = U diag(lam) U^T``, ``R = U diag(lam / (lam + eps m)) U^T``.

Output: ``calibration_real.csv`` (one row per setting x checkpoint x layer x target; appended as it
goes, so an interrupted run resumes where it stopped) and ``calibration_real.md`` (the tables).

    python -m benchmarks.calibration --store fm_lenet5.h5        # full run (m = 10,000 is the slow part)
    python -m benchmarks.calibration --store fm_lenet5.h5 --ms 100 500 --quick
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from infoplane import kernels as K
from infoplane.estimators.chance import SpectralSummary, chance_level
from infoplane.store import ActivationStore

RESULTS = Path(__file__).resolve().parent / "results"
EPS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _spectrum(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-pairs (descending, clamped >= 0) of the centred Gram."""
    lam, U = torch.linalg.eigh(0.5 * (K.center(G) + K.center(G).T))
    return lam.flip(0).clamp_min(0.0), U.flip(1)


def _side(data: np.ndarray, kind: str, sigma: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "label":
        Y = K.one_hot(torch.as_tensor(data), num_classes)
        Yc = Y - Y.mean(0, keepdim=True)
        U, s, _ = torch.linalg.svd(Yc, full_matrices=False)
        keep = s > 1e-10 * s[0]
        return (s[keep] ** 2), U[:, keep]
    return _spectrum(K.rbf_gram(data, sigma=sigma))


def _summary(lam: torch.Tensor, U: torch.Tensor, eps: float) -> SpectralSummary:
    m = U.shape[0]
    w = lam / (lam + eps * m)
    diag = (U * U) @ w
    return SpectralSummary(trace=w.sum()[None], trace_sq=(w * w).sum()[None], diag_sq=(diag * diag).sum()[None],
                           eigenvalues=torch.sort(w, descending=True).values[None], m=m)


def batch_stats(za, ta, eps_list: Sequence[float]) -> List[Dict[str, float]]:
    """Value, chance moments and bound of one batch for every eps, from the two spectra."""
    (lz, Uz), (lt, Ut) = za, ta
    M2 = (Uz.T @ Ut) ** 2
    m = Uz.shape[0]
    out = []
    for eps in eps_list:
        wz, wt = lz / (lz + eps * m), lt / (lt + eps * m)
        value = float(wz @ M2 @ wt)
        ch = chance_level(np.asarray([value]), _summary(lz, Uz, eps), _summary(lt, Ut, eps))
        out.append({"eps": eps, "value": value, "null_mean": ch.null_mean, "null_var": ch.null_sd ** 2,
                    "max_value": ch.max_value})
    return out


def run_setting(z: np.ndarray, target: np.ndarray, kind: str, m: int, sigma: str, num_classes: int,
                cache: Dict, key: tuple) -> List[Dict[str, float]]:
    """All batches of one (layer, target, m, sigma): per-eps aggregated statistics."""
    B = len(z) // m
    per_eps: Dict[float, List[Dict[str, float]]] = {e: [] for e in EPS}
    for b in range(B):
        sl = slice(b * m, (b + 1) * m)
        tkey = key + (b,)
        if tkey not in cache:
            for k in [k for k in cache if k[:len(key)] != key]:
                del cache[k]  # keep one (m, sigma, target)'s batches in memory (m = 10,000: 800 MB)
            cache[tkey] = _side(target[sl], kind, sigma, num_classes)
        zs = _side(z[sl], "rbf", sigma, num_classes)
        for r in batch_stats(zs, cache[tkey], EPS):
            per_eps[r["eps"]].append(r)
    rows = []
    for eps, rs in per_eps.items():
        v = np.array([r["value"] for r in rs])
        nm = np.array([r["null_mean"] for r in rs])
        nv = np.array([r["null_var"] for r in rs])
        mx = np.array([r["max_value"] for r in rs])
        adj_b = (v - nm) / (mx - nm)
        null_sd = math.sqrt(nv.sum()) / B
        value, null_mean, max_value = float(v.mean()), float(nm.mean()), float(mx.mean())
        rows.append({"eps": eps, "value": value, "std": float(v.std(ddof=1)) if B > 1 else math.nan,
                     "null_mean": null_mean, "null_sd": null_sd,
                     "z": (value - null_mean) / null_sd if null_sd > 0 else math.nan,
                     "max_value": max_value, "adjusted": (value - null_mean) / (max_value - null_mean),
                     "adjusted_std": float(adj_b.std(ddof=1)) if B > 1 else math.nan,
                     # the noise a reader of a raw curve sees: minibatch sd relative to the gap above chance
                     "value_over_chance_in_sd": (value - null_mean) / float(v.std(ddof=1)) if B > 1 else math.nan,
                     "n_batches": B})
    return rows


def run(store: Path, out: Path, ms: Sequence[int], sigmas: Sequence[str], checkpoints: Optional[Sequence[str]],
        threads: int) -> pd.DataFrame:
    torch.set_num_threads(threads)
    csv = out / "calibration_real.csv"
    done = set()
    if csv.exists():
        prev = pd.read_csv(csv)
        done = set(zip(prev.m, prev.sigma, prev.checkpoint, prev.layer, prev.target))
    with ActivationStore(store) as st:
        ckpts = st.checkpoints()
        ckpts = list(checkpoints) if checkpoints else [ckpts[0], ckpts[-1]]
        x, y = st.inputs(), st.labels()
        nc = int((st.dataset or {}).get("num_classes") or y.max() + 1)
        dataset, model = (st.dataset or {}).get("name", ""), (st.model or {}).get("name", "")
        cache: Dict = {}
        for m in ms:
            for sigma in sigmas:
                for target in ("y", "x"):
                    for c in ckpts:
                        attrs = st.checkpoint_attrs(c)
                        for layer in st.layers(c):
                            if (m, sigma, c, layer, target) in done:
                                continue
                            t0 = time.perf_counter()
                            z = st.read(c, layer)
                            rows = run_setting(z, x if target == "x" else y, "rbf" if target == "x" else "label",
                                               m, sigma, nc, cache, (m, sigma, target))
                            sec = time.perf_counter() - t0
                            df = pd.DataFrame([{"dataset": dataset, "model": model, "checkpoint": c,
                                                "epoch": int(attrs.get("epoch", -1)),
                                                "test_acc": (attrs.get("metrics") or {}).get("test_acc", math.nan),
                                                "layer": layer, "target": target, "m": m, "sigma": sigma, **r,
                                                "seconds": sec} for r in rows])
                            df.to_csv(csv, mode="a", header=not csv.exists(), index=False)
                            print(f"m={m} sigma={sigma} {c} {layer} {target}: {sec:.1f} s", flush=True)
    return pd.read_csv(csv)


def write_markdown(df: pd.DataFrame, path: Path, note: str = "") -> None:
    lines = ["# Can nHSIC see dependence on image data? (real store)", "",
             "Generated by `python -m benchmarks.calibration`. " + note, "",
             f"Store: {df.model.iloc[0]} on {df.dataset.iloc[0]}, test split, "
             f"checkpoints {', '.join(sorted(set(df.checkpoint)))} "
             f"(test accuracy {', '.join(f'{a:.3f}' for a in sorted(set(df.test_acc)))}). "
             "m = minibatch size (10,000 = all samples); values are means over the N // m batches.",
             "",
             "Columns: `value` raw nHSIC; `chance` = exact permutation-null mean; `z` = (value - chance) / null sd "
             "of the mean; `adjusted` = (value - chance) / (max - chance); `adj sd` = sd of the per-batch adjusted "
             "values; `gap/sd` = (value - chance) / (minibatch sd of the raw value), i.e. how far above chance a "
             "raw curve with its usual error bars looks.", ""]
    for target in ("x", "y"):
        lines += [f"## Target {target.upper()}: nHSIC({target.upper()}; Z)", ""]
        for sigma in sorted(set(df.sigma)):
            d = df[(df.target == target) & (df.sigma == sigma)]
            if d.empty:
                continue
            lines += [f"### sigma = {sigma}", "",
                      "| m | eps | checkpoint | " + " | ".join(
                          f"{lay}: value / chance / z / adjusted ± adj sd / gap/sd" for lay in
                          dict.fromkeys(d.layer)) + " |",
                      "|---|---|---|" + "---|" * d.layer.nunique()]
            for (m, eps, c), g in d.groupby(["m", "eps", "checkpoint"], sort=True):
                cells = []
                for lay in dict.fromkeys(d.layer):
                    r = g[g.layer == lay]
                    if r.empty:
                        cells.append("-")
                        continue
                    r = r.iloc[0]
                    sd = "" if math.isnan(r.adjusted_std) else f" ± {r.adjusted_std:.3f}"
                    gs = "-" if math.isnan(r.value_over_chance_in_sd) else f"{r.value_over_chance_in_sd:.1f}"
                    cells.append(f"{r.value:.3g} / {r.null_mean:.3g} / {r.z:.0f} / {r.adjusted:.3f}{sd} / {gs}")
                lines.append(f"| {m} | {eps:g} | {c} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += _summary_lines(df)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _summary_lines(df: pd.DataFrame) -> List[str]:
    """Per protocol: the smallest z over layers (is everything above chance?), the change of the
    adjusted value from the first to the last checkpoint in units of its minibatch sd."""
    ck = sorted(set(df.checkpoint))
    if len(ck) < 2:
        return []
    first, last = ck[0], ck[-1]
    out = ["## Summary per protocol", "",
           "min z: the smallest z over layers and both checkpoints. |change|/sd: median over layers of "
           "|adjusted(last) - adjusted(first)| / (adjusted sd over minibatches), i.e. how well a change of the "
           "chance-adjusted value over training stands out of the minibatch noise (full-sample rows have no "
           "minibatch sd). raw gap/sd: median over layers of (value - chance) / minibatch sd of the raw value.", "",
           "| target | sigma | m | eps | min z | median adjusted (first -> last) | |change|/sd | raw gap/sd |",
           "|---|---|---|---|---|---|---|---|"]
    for (t, s, m, e), g in df.groupby(["target", "sigma", "m", "eps"], sort=True):
        a = g[g.checkpoint == first].set_index("layer")
        b = g[g.checkpoint == last].set_index("layer")
        common = a.index.intersection(b.index)
        ch = ((b.loc[common, "adjusted"] - a.loc[common, "adjusted"]).abs()
              / np.sqrt((a.loc[common, "adjusted_std"] ** 2 + b.loc[common, "adjusted_std"] ** 2) / 2))
        chs = "-" if ch.isna().all() else f"{float(ch.median()):.1f}"
        gap = g.value_over_chance_in_sd
        gaps = "-" if gap.isna().all() else f"{float(gap.median()):.1f}"
        out.append(f"| {t} | {s} | {m} | {e:g} | {g.z.min():.0f} | {a.adjusted.median():.3f} -> "
                   f"{b.adjusted.median():.3f} | {chs} | {gaps} |")
    return out + [""]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, required=True, help="activation store (infoplane extract)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--ms", type=int, nargs="+", default=[100, 500, 2000, 10000], help="batch sizes m")
    p.add_argument("--sigmas", nargs="+", default=["paper", "median"], help="bandwidth rules")
    p.add_argument("--checkpoints", nargs="+", default=None, help="checkpoint ids (default: first and last)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="provenance text for the report header")
    p.add_argument("--report-only", action="store_true", help="rebuild the markdown from the CSV")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        df = pd.read_csv(a.out / "calibration_real.csv")
    else:
        df = run(a.store, a.out, a.ms, a.sigmas, a.checkpoints, a.threads)
    write_markdown(df, a.out / "calibration_real.md", a.note)
    print(f"wrote {a.out / 'calibration_real.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
