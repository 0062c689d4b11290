"""Accuracy of nHSIC / HSIC on tasks with known truth (docs/estimators.md "Benchmark design").

Tasks: jointly Gaussian (Czyz et al. 2023 parameters: bivariate rho=0.75; "dense" d x d, every
off-diagonal correlation 0.5; "2-pair", two canonical correlations 0.8; d in {2, 5, 25}) and label
tasks (balanced Gaussian class clusters, c classes, linear kernel on one-hot labels). For each task,
bandwidth rule, m and seed: nHSIC for every eps from one eigendecomposition per Gram
(``nhsic_eps_path`` algebra), biased/unbiased HSIC, and the same estimators on one shuffled pairing
(the null level). Truth: chi2-MI (closed form / Monte Carlo for labels) for nHSIC, population HSIC
(closed form) for HSIC. Writes ``gaussian_accuracy.csv`` (one row per estimate), ``.md`` (summary)
and ``.png`` into ``--out``.

    python -m benchmarks.gaussian_accuracy              # full run (<= 15 min on 2 cores)
    python -m benchmarks.gaussian_accuracy --quick --out /tmp/ga   # smoke mode (seconds)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmarks.groundtruth import (GaussianTask, LabelTask, bivariate_task, dense_task,
                                    two_pair_task)
from infoplane.estimators import hsic_unbiased
from infoplane.estimators.chance import SpectralSummary, chance_level, summarize
from infoplane.kernels import center, label_gram, rbf_gram

Task = Union[GaussianTask, LabelTask]
RESULTS = Path(__file__).resolve().parent / "results"
SIGMA_RULES = {"sqrt-d": 1.0, "paper": 5.0}  # sigma = factor * sqrt(d): 'paper' = 5 sqrt(d) (Sakamoto & Sato 2024 app. F)


@dataclass
class BenchConfig:
    ms: Sequence[int] = (128, 256, 512, 1024, 2048)
    eps: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    seeds: int = 5
    sigma_rules: Sequence[str] = ("sqrt-d", "paper")
    threads: int = 2
    out: Path = RESULTS
    quick: bool = False
    progress: bool = True
    tasks: List[Task] = field(default_factory=list)


def default_tasks(quick: bool) -> List[Task]:
    if quick:
        return [bivariate_task(0.75), LabelTask(c=2, d=2, delta=2.0)]
    return [bivariate_task(0.75), dense_task(2), dense_task(5), dense_task(25), two_pair_task(2),
            two_pair_task(5), two_pair_task(25), LabelTask(c=2, d=2, delta=2.0),
            LabelTask(c=10, d=10, delta=3.0)]


def _eig(G: torch.Tensor):
    lam, U = torch.linalg.eigh(center(G))
    return lam.clamp_min(0.0), U


_TRUTH_CACHE: Dict[tuple, tuple] = {}


def truths(task: Task, sx: float, sy) -> tuple:
    """(chi2-MI, Shannon MI, population HSIC), cached (the label tasks' chi2-MI is Monte Carlo)."""
    key = (task.name, sx, sy)
    if key not in _TRUTH_CACHE:
        if isinstance(task, LabelTask):
            _TRUTH_CACHE[key] = (task.chi2_mi(), task.mi(), task.hsic(sx))
        else:
            _TRUTH_CACHE[key] = (task.chi2_mi(), task.mi(), task.hsic(sx, sy))
    return _TRUTH_CACHE[key]


def run_unit(task: Task, m: int, seed: int, rule: str, eps: Sequence[float]) -> List[Dict]:
    """All estimates for one (task, m, seed, bandwidth rule)."""
    rng = np.random.default_rng([seed, m, zlib.crc32(task.name.encode())])
    t0 = time.perf_counter()
    x, y = task.sample(m, rng)
    d = x.shape[1]
    sx = SIGMA_RULES[rule] * np.sqrt(d)
    K = rbf_gram(x, sx)
    if isinstance(task, LabelTask):
        L, sy = label_gram(y, num_classes=task.c), None
    else:
        sy = SIGMA_RULES[rule] * np.sqrt(y.shape[1])
        L = rbf_gram(y, sy)
    perm = torch.from_numpy(rng.permutation(m))
    Lp = L[perm][:, perm]
    lam, U = _eig(K)
    mu, V = _eig(L)
    W = (U.T @ V) ** 2
    Wp = (U.T @ V[perm]) ** 2  # eigenvectors of P L~ P^T are P V: the null costs one matmul
    e = torch.tensor(list(eps), dtype=torch.float64)[:, None] * m
    A, B = lam / (lam + e), mu / (mu + e)
    nh = ((A @ W) * B).sum(1).tolist()
    nh0 = ((A @ Wp) * B).sum(1).tolist()
    # exact permutation-null moments and the von Neumann bound, per eps (infoplane.estimators.chance)
    chances = [chance_level(np.asarray([v]), _summary(lam, U, a), _summary(mu, V, b))
               for v, a, b in zip(nh, A, B)]
    Kc = center(K)
    hb = float((Kc * L).sum()) / (m - 1) ** 2
    hch = chance_level(np.asarray([hb]), summarize(Kc), summarize(center(L)), 1.0 / (m - 1) ** 2)
    hb0 = float((Kc * Lp).sum()) / (m - 1) ** 2
    hu, hu0 = float(hsic_unbiased(K, L)), float(hsic_unbiased(K, Lp))
    secs = time.perf_counter() - t0
    chi2, mi, hsic_true = truths(task, sx, sy)
    base = {"task": task.name, "kind": "labels" if isinstance(task, LabelTask) else "gaussian", "d": d,
            "m": m, "seed": seed, "sigma_rule": rule, "sigma": sx, "truth_mi": mi, "seconds": secs}
    rows = [{**base, "estimator": "nhsic", "eps": ev, "value": v, "baseline": b, "truth": chi2, **_chance_cols(c)}
            for ev, v, b, c in zip(eps, nh, nh0, chances)]
    rows.append({**base, "estimator": "hsic", "eps": np.nan, "value": hb, "baseline": hb0, "truth": hsic_true,
                 **_chance_cols(hch)})
    rows.append({**base, "estimator": "hsic-unbiased", "eps": np.nan, "value": hu, "baseline": hu0,
                 "truth": hsic_true})
    return rows


def _summary(lam: torch.Tensor, U: torch.Tensor, w: torch.Tensor) -> SpectralSummary:
    """Summary of ``R = U diag(w) U^T`` (w = lam / (lam + eps m)) for the null moments."""
    diag = (U * U) @ w
    return SpectralSummary(trace=w.sum()[None], trace_sq=(w * w).sum()[None], diag_sq=(diag * diag).sum()[None],
                           eigenvalues=torch.sort(w, descending=True).values[None], m=int(U.shape[0]))


def _chance_cols(c) -> Dict[str, float]:
    return {"null_mean": c.null_mean, "null_sd": c.null_sd, "z": c.z, "adjusted": c.adjusted}


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "kind", "d", "sigma_rule", "estimator", "eps", "m"]
    g = df.groupby(keys, dropna=False)
    extra = {}
    if "null_mean" in df:
        extra = dict(null_mean=("null_mean", "mean"), null_sd=("null_sd", "mean"), z=("z", "mean"),
                     adjusted=("adjusted", "mean"), adjusted_sd=("adjusted", "std"))
    s = g.agg(mean=("value", "mean"), sd=("value", "std"), baseline=("baseline", "mean"),
              truth=("truth", "first"), seconds=("seconds", "mean"), n=("value", "size"), **extra).reset_index()
    if "null_mean" in s:
        s["excess_over_chance_ratio"] = (s["mean"] - s["null_mean"]) / s["truth"]
    s["ratio"] = s["mean"] / s["truth"]
    s["log_ratio"] = np.log(s["ratio"].where(s["ratio"] > 0))
    s["excess_over_null"] = s["mean"] - s["baseline"]
    return s


def _first_m_within(sub: pd.DataFrame, tol_ratio: float) -> float:
    """Smallest m from which the mean stays within a relative error ``tol_ratio`` of the truth (NaN if never)."""
    sub = sub.sort_values("m")
    ok = ((sub["ratio"] - 1).abs() <= tol_ratio).to_numpy()
    for i in range(len(ok)):
        if ok[i:].all():
            return float(sub["m"].iloc[i])
    return float("nan")


def headline(s: pd.DataFrame) -> List[str]:
    """Per task and bandwidth rule at the largest m: the eps whose mean is closest to the chi2-MI,
    its estimate/truth, its estimate/null, and (estimate - null)/truth at that eps."""
    nh = s[s.estimator == "nhsic"]
    mmax = int(nh["m"].max())
    out = [f"## Headline (m = {mmax})", "",
           "| sigma rule | task | chi2-MI | best eps | estimate / truth | estimate / null | (estimate - null) / truth |",
           "|---|---|---|---|---|---|---|"]
    for (rule, task), t in nh[nh.m == mmax].groupby(["sigma_rule", "task"], sort=True):
        r = t.loc[(np.log(t["ratio"].clip(lower=1e-12))).abs().idxmin()]
        null_ratio = r["mean"] / r["baseline"] if r["baseline"] > 0 else float("inf")
        out.append(f"| {rule} | {task} | {r['truth']:.3f} | {r['eps']:g} | {r['ratio']:.2f} | {null_ratio:.1f} | "
                   f"{r['excess_over_null'] / r['truth']:.2f} |")
    return out + [""]


def write_markdown(s: pd.DataFrame, cfg: BenchConfig, total_s: float, path: Path,
                   timing: Optional[str] = None) -> None:
    nh = s[s.estimator == "nhsic"]
    mmax = int(nh["m"].max())
    if timing is None:
        timing = f"{cfg.threads} thread(s); {total_s:.0f} s wall, {time.process_time():.0f} s CPU in total"
    lines = [
        "# nHSIC / HSIC accuracy on tasks with known truth",
        "",
        f"Generated by `python -m benchmarks.gaussian_accuracy{' --quick' if cfg.quick else ''}` "
        f"({len(cfg.tasks)} tasks, m in {sorted(int(v) for v in s['m'].unique())}, eps in {list(cfg.eps)}, {cfg.seeds} seeds, "
        f"bandwidth rules {list(cfg.sigma_rules)}: sigma = 1*sqrt(d) ('sqrt-d') or 5*sqrt(d) ('paper'); "
        f"{timing}). Truth for nHSIC: chi2-MI; for HSIC: the "
        "population HSIC for the same kernels. Null = the same estimator on one shuffled pairing per seed.",
        "",
        *headline(s),
        "## Where is nHSIC within 10% of the chi2-MI?",
        "",
        "Smallest m from which the mean estimate (over seeds) stays within 10% of the truth, per eps "
        "('-' = not reached at the largest m), and the estimate / truth at the largest m.",
        "",
    ]
    for rule in cfg.sigma_rules:
        sub = nh[nh.sigma_rule == rule]
        lines += [f"### sigma rule `{rule}`", "",
                  "| task | chi2-MI | " + " | ".join(f"eps={e:g}: m10% | ratio@{mmax}" for e in cfg.eps) + " |",
                  "|---|---|" + "---|---|" * len(cfg.eps)]
        for task, t in sub.groupby("task", sort=False):
            cells = []
            for e in cfg.eps:
                te = t[np.isclose(t["eps"], e)]
                fm = _first_m_within(te, 0.10)
                r = float(te[te.m == mmax]["ratio"].iloc[0])
                cells.append(f"{'-' if np.isnan(fm) else int(fm)} | {r:.2f}")
            lines.append(f"| {task} | {t['truth'].iloc[0]:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## How far above its null is nHSIC? (largest m)", "",
              "| sigma rule | task | eps | estimate | null (shuffled) | estimate - null | chi2-MI |",
              "|---|---|---|---|---|---|---|"]
    for (rule, task), t in nh[nh.m == mmax].groupby(["sigma_rule", "task"], sort=False):
        for _, r in t.iterrows():
            lines.append(f"| {rule} | {task} | {r['eps']:g} | {r['mean']:.3f} ± {r['sd']:.3f} | "
                         f"{r['baseline']:.3f} | {r['excess_over_null']:.3f} | {r['truth']:.3f} |")
    if "z" in nh:
        lines += ["", f"## Read against its exact chance level (m = {mmax}, means over seeds)", "",
                  "`chance` = exact permutation-null mean, `z` = (estimate - chance) / null sd, `adjusted` = "
                  "(estimate - chance) / (max - chance), `(est - chance) / truth`: the part of the estimate above "
                  "chance, as a fraction of the chi2-MI.", "",
                  "| sigma rule | task | eps | estimate / truth | chance | z | adjusted (sd) | (est - chance) / truth |",
                  "|---|---|---|---|---|---|---|---|"]
        for (rule, task), t in nh[nh.m == mmax].groupby(["sigma_rule", "task"], sort=False):
            for _, r in t.iterrows():
                lines.append(f"| {rule} | {task} | {r['eps']:g} | {r['ratio']:.2f} | {r['null_mean']:.3g} | "
                             f"{r['z']:.1f} | {r['adjusted']:.3f} ({r['adjusted_sd']:.3f}) | "
                             f"{r['excess_over_chance_ratio']:.2f} |")
        lines += ["", "### z by m (paper bandwidth, eps = 1e-5): does the value leave chance as m grows?", "",
                  "| task | " + " | ".join(f"m={int(v)}" for v in sorted(nh.m.unique())) + " |",
                  "|---|" + "---|" * nh.m.nunique()]
        sub = nh[(nh.sigma_rule == "paper") & np.isclose(nh.eps, 1e-5)]
        for task, t in sub.groupby("task", sort=False):
            t = t.sort_values("m")
            lines.append(f"| {task} | " + " | ".join(f"{z:.1f} / {a:.2f}" for z, a in zip(t.z, t.adjusted)) + " |")
        lines.append("")
        lines.append("(cells: z / adjusted)")
    hs = s[(s.estimator != "nhsic") & (s.m == mmax)]
    lines += ["", f"## HSIC vs its closed form (m = {mmax})", "",
              "| sigma rule | task | estimator | estimate | sd | truth | rel. error | null |", "|---|---|---|---|---|---|---|---|"]
    for _, r in hs.iterrows():
        lines.append(f"| {r['sigma_rule']} | {r['task']} | {r['estimator']} | {r['mean']:.3g} | {r['sd']:.2g} | "
                     f"{r['truth']:.3g} | {r['ratio'] - 1:+.1%} | {r['baseline']:.2g} |")
    secs = s.groupby("m")["seconds"].mean()
    lines += ["", "## Seconds per estimate (all eps + HSIC + null, one Gram pair)", "",
              "| m | " + " | ".join(str(int(m)) for m in secs.index) + " |",
              "|---|" + "---|" * len(secs), "| s | " + " | ".join(f"{v:.3f}" for v in secs.values) + " |", ""]
    _atomic_write_text(path, "\n".join(lines) + "\n")


def plot(s: pd.DataFrame, cfg: BenchConfig, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nh = s[s.estimator == "nhsic"]
    tasks = list(dict.fromkeys(nh["task"]))
    rules = list(cfg.sigma_rules)
    fig, axes = plt.subplots(len(rules), len(tasks), figsize=(2.6 * len(tasks), 2.6 * len(rules)),
                             squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    for i, rule in enumerate(rules):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            t = nh[(nh.task == task) & (nh.sigma_rule == rule)]
            for k, e in enumerate(cfg.eps):
                te = t[np.isclose(t["eps"], e)].sort_values("m")
                col = cmap(k / max(1, len(cfg.eps) - 1))
                ax.errorbar(te["m"], te["mean"], yerr=te["sd"], color=col, marker="o", ms=3, lw=1,
                            label=f"eps={e:g}")
                ax.plot(te["m"], te["baseline"], color=col, ls=":", lw=1)
            ax.axhline(t["truth"].iloc[0], color="k", ls="--", lw=1, label="chi2-MI")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{task}\n[{rule}]", fontsize=8)
            if i == len(rules) - 1:
                ax.set_xlabel("m")
            if j == 0:
                ax.set_ylabel("nHSIC (dotted: null)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_all(rows: List[Dict], cfg: BenchConfig, total: float) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    csv = cfg.out / "gaussian_accuracy.csv"
    tmp = csv.with_name(csv.name + ".partial")
    df.to_csv(tmp, index=False)
    os.replace(tmp, csv)
    s = summarise(df)
    write_markdown(s, cfg, total, cfg.out / "gaussian_accuracy.md")
    plot(s, cfg, cfg.out / "gaussian_accuracy.png")
    return df


def run(cfg: BenchConfig) -> pd.DataFrame:
    """Run every (m, task, rule, seed), m ascending; outputs are rewritten (atomically) after each m,
    so an interrupted run leaves complete results for the sizes it finished."""
    torch.set_num_threads(cfg.threads)
    if not cfg.tasks:
        cfg.tasks = default_tasks(cfg.quick)
    cfg.out = Path(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: List[Dict] = []
    df = pd.DataFrame()
    bar = tqdm(total=len(cfg.ms) * len(cfg.tasks) * len(cfg.sigma_rules) * cfg.seeds, desc="gaussian accuracy",
               disable=None if cfg.progress else True)
    for m in sorted(cfg.ms):
        for task in cfg.tasks:
            for rule in cfg.sigma_rules:
                for sd in range(cfg.seeds):
                    rows.extend(run_unit(task, m, sd, rule, cfg.eps))
                    bar.update(1)
        df = _write_all(rows, cfg, time.perf_counter() - t0)
        print(f"[gaussian_accuracy] m={m} done, {time.perf_counter() - t0:.0f} s, "
              f"cpu {time.process_time():.0f} s", file=sys.stderr, flush=True)
    bar.close()
    return df


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: 2 tasks, small m, 2 seeds")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the .md and .png from an existing gaussian_accuracy.csv in --out (no estimation)")
    p.add_argument("--note", default="", help="with --report-only: provenance text added to the report header")
    a = p.parse_args(argv)
    if a.quick:
        cfg = BenchConfig(ms=(64, 128), eps=(1e-5, 1e-3, 1e-1), seeds=2, quick=True,
                          out=a.out or RESULTS / "quick")
    else:
        cfg = BenchConfig(out=a.out or RESULTS)
    if a.seeds is not None:
        if a.seeds < 1:
            p.error("--seeds must be >= 1")
        cfg.seeds = a.seeds
    cfg.threads, cfg.progress = a.threads, not a.no_progress
    if a.report_only:
        csv = Path(cfg.out) / "gaussian_accuracy.csv"
        if not csv.exists():
            p.error(f"--report-only: {csv} not found; run the benchmark first.")
        df = pd.read_csv(csv)
        cfg.ms = sorted(int(v) for v in df["m"].unique())
        cfg.eps = sorted(float(v) for v in df["eps"].dropna().unique())
        cfg.seeds = int(df["seed"].nunique())
        cfg.sigma_rules = list(dict.fromkeys(df["sigma_rule"]))
        cfg.tasks = list(dict.fromkeys(df["task"]))
        units = df.drop_duplicates(["task", "m", "seed", "sigma_rule"])
        s = summarise(df)
        note = f"report rebuilt from the CSV; sum of per-estimate wall seconds {units['seconds'].sum():.0f} s"
        if a.note:
            note += f"; {a.note}"
        write_markdown(s, cfg, float("nan"), Path(cfg.out) / "gaussian_accuracy.md", timing=note)
        plot(s, cfg, Path(cfg.out) / "gaussian_accuracy.png")
        print(f"rebuilt report from {csv}", file=sys.stderr)
        return 0
    run(cfg)
    print(f"wrote {cfg.out}/gaussian_accuracy.{{csv,md,png}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
