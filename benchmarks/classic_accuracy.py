"""Classic information-plane estimators against known truth, and where each can be trusted.

Estimators (``infoplane.estimators``, registered defaults unless stated): ``binning`` (30
equal-width bins; both sides binned on continuous tasks), ``binning-adaptive`` (30 equal-mass
bins), ``kde`` (Kolchinsky & Tracey upper bound, noise variance 0.1), ``renyi`` (alpha = 1.01,
median bandwidth), ``knn`` (KSG, k = 3; Ross 2014 with labels) and, as the reference, ``nhsic``
(eps = 1e-5, sigma = 5 sqrt(d)). Tasks (d = dimension of each variable, truth spread evenly over
all d coordinates, levels of the truth in nats):

* ``gaussian`` (target "x"): X ~ N(0, I_d), Z = rho X + sqrt(1 - rho^2) E, d independent pairs of
  correlation rho = sqrt(1 - exp(-2 I / d)); Shannon MI I = -1/2 sum log(1 - rho^2) (closed form).
  Levels 0, 0.5, 1, 2. Every estimator except kde (whose I(T; X) assumes Z is a function of X).
* ``channel`` (target "x", kde only): Z ~ N(0, c^2 I_d) is the layer, T = Z + N(0, var I) its noisy
  version: I(T; Z) = d/2 log(1 + c^2 / var) (closed form), the quantity the KDE bounds estimate.
* ``labels`` (target "y"): 10 balanced classes, Z | y ~ N(s mu_y, I_d) with fixed random class
  means; I(Y; Z) = log 10 + E[log p(y | z)] by Monte Carlo (200,000 draws, bounded integrand),
  s set by bisection for levels 0, 0.5, 1, 1.5. For kde the truth is I(Y; Z + N(0, 0.1 I)).

For every (task, estimator, d, n, level) the estimate over ``--seeds`` independent samples: mean,
sd, estimate / truth. **Resolution**: the smallest, over consecutive levels, of (mean step) / (sd
of the step), sd pooled over seeds; an estimator *resolves* at (d, n) when every step of the truth
(0 -> 0.5 -> 1 -> 2 nats; labels 0 -> 0.5 -> 1 -> 1.5) raises its mean by more than 2 sd.
**Trust rule** (``infoplane.estimators.trust``): for each estimator, target and n, the largest d
such that it resolves at every benchmarked d' <= d. Extra sweeps: bins and scheme of binning (d =
1), noise variance of kde (the same layers read with another variance), bandwidth of renyi. Writes ``classic_accuracy.csv`` (one row per
estimate), ``classic_accuracy.md`` and prints the tables.

    python -m benchmarks.classic_accuracy                    # full run (resumable; --work)
    python -m benchmarks.classic_accuracy --quick --out /tmp/ca
    python -m benchmarks.classic_accuracy --report-only      # tables from the committed CSV
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

DIMS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
NS = (100, 300, 1000)
LEVELS = {"gaussian": (0.0, 0.5, 1.0, 2.0), "channel": (0.0, 0.5, 1.0, 2.0), "labels": (0.0, 0.5, 1.0, 1.5)}
TARGET = {"gaussian": "x", "channel": "x", "labels": "y"}
ESTIMATORS = {"gaussian": ("binning", "binning-adaptive", "knn", "renyi", "nhsic"),
              "channel": ("kde",),
              "labels": ("binning", "binning-adaptive", "kde", "knn", "renyi", "nhsic")}
CLASSES = 10
KDE_VAR = 0.1
RESOLVE_SD = 2.0
MC_DRAWS = 200_000


# ----------------------------------------------------------------------------- truth
def gaussian_rho(level: float, d: int) -> float:
    """Per-pair correlation giving a total Shannon MI of ``level`` nats over d pairs."""
    return math.sqrt(-math.expm1(-2.0 * level / d))


def channel_scale(level: float, d: int, var: float = KDE_VAR) -> float:
    """sd c of Z with d/2 log(1 + c^2/var) = level."""
    return math.sqrt(var * math.expm1(2.0 * level / d))


def class_means(d: int) -> np.ndarray:
    """Fixed random class means (c, d), scaled so the mean squared distance between two is 2."""
    mu = np.random.default_rng(10_000 + d).normal(size=(CLASSES, d))
    return mu / math.sqrt(d)


def label_mi(s: float, d: int, noise_sd: float = 1.0, draws: int = MC_DRAWS, seed: int = 99) -> float:
    """I(Y; Z) for Z | y ~ N(s mu_y, noise_sd^2 I), balanced classes, by Monte Carlo (nats)."""
    from scipy.special import logsumexp

    if s == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    mu = s * class_means(d)
    total, done = 0.0, 0
    while done < draws:
        b = min(20_000, draws - done)
        y = rng.integers(0, CLASSES, b)
        z = mu[y] + noise_sd * rng.normal(size=(b, d))
        d2 = ((z ** 2).sum(1)[:, None] - 2.0 * z @ mu.T + (mu ** 2).sum(1)[None, :]) / (2 * noise_sd ** 2)
        logp = -d2[np.arange(b), y] - logsumexp(-d2, axis=1)
        total += float(logp.sum())
        done += b
    return math.log(CLASSES) + total / draws


def label_scale(level: float, d: int) -> float:
    """Cluster scale s with I(Y; Z) = level (bisection on a 20,000-draw Monte Carlo)."""
    if level == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while label_mi(hi, d, draws=20_000) < level:
        hi *= 2.0
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if label_mi(mid, d, draws=20_000) < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


_SCALES: Dict[Tuple[int, float], Tuple[float, float, float]] = {}


def label_setting(d: int, level: float) -> Tuple[float, float, float]:
    """(s, truth, truth of kde: I(Y; Z + N(0, 0.1 I))), cached."""
    key = (d, level)
    if key not in _SCALES:
        s = label_scale(level, d)
        _SCALES[key] = (s, label_mi(s, d), label_mi(s, d, noise_sd=math.sqrt(1.0 + KDE_VAR)))
    return _SCALES[key]


# ----------------------------------------------------------------------------- samples
def sample(task: str, d: int, n: int, level: float, seed: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, float]]:
    """(z, target, truth per estimator kind) for one task, dimension, size, level and seed."""
    rng = np.random.default_rng([seed, d, n, int(level * 1000), len(task)])
    if task == "gaussian":
        rho = gaussian_rho(level, d)
        x = rng.normal(size=(n, d))
        z = rho * x + math.sqrt(1.0 - rho ** 2) * rng.normal(size=(n, d))
        return z, x, {"truth": level}
    if task == "channel":
        z = channel_scale(level, d) * rng.normal(size=(n, d))
        return z, z, {"truth": level}
    s, truth, truth_kde = label_setting(d, level)
    y = rng.permutation(np.arange(n) % CLASSES)
    z = s * class_means(d)[y] + rng.normal(size=(n, d))
    return z, y.astype(np.int64), {"truth": truth, "truth_kde": truth_kde}


def estimator_fn(name: str, task: str, **override: Any) -> Callable[[np.ndarray, np.ndarray], Dict[str, float]]:
    """The registered estimator as called by `infoplane estimate` (continuous tasks: binning bins both sides)."""
    from infoplane.estimators import assess, get_estimator

    if name == "nhsic":
        return lambda z, t: {"value": assess(z, t, "nhsic", **override).value}
    spec = get_estimator(name)
    kw = {**spec.defaults, **override}
    if name.startswith("binning") and task != "labels":
        kw["bin_target"] = True
    return lambda z, t: spec.fn(z, t, **kw)


# ----------------------------------------------------------------------------- runs
@dataclass
class Unit:
    sweep: str
    task: str
    estimator: str
    d: int
    n: int
    params: Dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps([self.sweep, self.task, self.estimator, self.d, self.n, self.params], sort_keys=True)


def plan(quick: bool) -> List[Unit]:
    dims, ns = ((1, 5, 50), (100, 300)) if quick else (DIMS, NS)
    units = [Unit("main", task, est, d, n, {}) for task, ests in ESTIMATORS.items() for est in ests
             for d in dims for n in ns]
    if not quick:
        for bins in (5, 10, 30, 100):
            for est in ("binning", "binning-adaptive"):
                units.append(Unit("bins", "gaussian", est, 1, 1000, {"bins": bins}))
        for var in (0.01, 0.1, 1.0):
            units.append(Unit("kde-variance", "channel", "kde", 10, 1000, {"noise_variance": var}))
        for d in (1, 10, 100):
            for rule in ("median", "paper"):
                units.append(Unit("renyi-bandwidth", "gaussian", "renyi", d, 300, {"sigma_z": rule}))
    return units


def run_unit(u: Unit, seeds: int) -> List[Dict[str, Any]]:
    rows = []
    fn = estimator_fn(u.estimator, u.task, **u.params)
    var = float(u.params.get("noise_variance", KDE_VAR))
    for level in LEVELS[u.task]:
        for seed in range(seeds):
            z, t, truth = sample(u.task, u.d, u.n, level, seed)
            if u.task == "channel" and var != KDE_VAR:  # the same layer read with another noise variance
                truth = {"truth": u.d / 2 * math.log1p(channel_scale(level, u.d) ** 2 / var)}
            t0 = time.perf_counter()
            out = fn(z, t)
            sec = time.perf_counter() - t0
            tr = truth["truth_kde"] if u.estimator == "kde" and "truth_kde" in truth else truth["truth"]
            rows.append({"sweep": u.sweep, "task": u.task, "target": TARGET[u.task], "estimator": u.estimator,
                         "params": json.dumps(u.params, sort_keys=True), "d": u.d, "n": u.n, "level": level,
                         "truth": tr, "seed": seed, "value": float(out["value"]),
                         "lower_bound": float(out.get("lower_bound", math.nan)), "seconds": sec})
    return rows


def run(units: Sequence[Unit], seeds: int, work: Path, progress: bool = True) -> pd.DataFrame:
    """Every unit, resumably: finished units are kept in ``work/units.jsonl``."""
    from tqdm.auto import tqdm

    work.mkdir(parents=True, exist_ok=True)
    done_path = work / "units.jsonl"
    done: Dict[str, List[Dict[str, Any]]] = {}
    if done_path.exists():
        for line in done_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if rec.get("seeds") == seeds:
                done[rec["key"]] = rec["rows"]
    rows: List[Dict[str, Any]] = []
    with open(done_path, "a") as fh:
        for u in tqdm(units, desc="classic accuracy", disable=None if progress else True):
            if u.key not in done:
                done[u.key] = run_unit(u, seeds)
                fh.write(json.dumps({"key": u.key, "seeds": seeds, "rows": done[u.key]}) + "\n")
                fh.flush()
            rows += done[u.key]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- analysis
def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd over seeds and estimate / truth per (sweep, task, estimator, params, d, n, level)."""
    keys = ["sweep", "task", "target", "estimator", "params", "d", "n", "level"]
    g = df.groupby(keys, sort=False)
    s = g.agg(truth=("truth", "mean"), mean=("value", "mean"), sd=("value", "std"),
              lower=("lower_bound", "mean"), seconds=("seconds", "mean"), seeds=("seed", "count")).reset_index()
    s["ratio"] = np.where(s["truth"] > 0, s["mean"] / s["truth"].where(s["truth"] > 0), np.nan)
    return s


def resolution(s: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep, task, estimator, params, d, n): min over consecutive levels of step / pooled sd."""
    out = []
    for key, g in s.groupby(["sweep", "task", "target", "estimator", "params", "d", "n"], sort=False):
        g = g.sort_values("level")
        m, sd = g["mean"].to_numpy(), g["sd"].fillna(0).to_numpy()
        steps = []
        for i in range(len(m) - 1):
            pooled = math.sqrt((sd[i] ** 2 + sd[i + 1] ** 2) / 2.0)
            diff = m[i + 1] - m[i]
            steps.append(diff / pooled if pooled > 0 else (math.inf if diff > 0 else 0.0))
        r = float(min(steps))
        out.append(dict(zip(["sweep", "task", "target", "estimator", "params", "d", "n"], key))
                   | {"resolution": r, "resolves": r > RESOLVE_SD,
                      "values": " / ".join(f"{v:.3g}" for v in m), "truths": " / ".join(f"{v:.3g}" for v in
                                                                                       g["truth"])})
    return pd.DataFrame(out)


def trust_table(res: pd.DataFrame) -> Dict[Tuple[str, str], Dict[int, int]]:
    """(estimator, target) -> {n: largest d with every benchmarked d' <= d resolved} (0: none)."""
    main = res[res["sweep"] == "main"]
    table: Dict[Tuple[str, str], Dict[int, int]] = {}
    for (est, target), g in main.groupby(["estimator", "target"], sort=True):
        per_n = {}
        for n, h in g.groupby("n"):
            dmax = 0
            for _, r in h.sort_values("d").iterrows():
                if not r["resolves"]:
                    break
                dmax = int(r["d"])
            per_n[int(n)] = dmax
        table[(str(est), str(target))] = per_n
    return table


def trust_source(table: Dict[Tuple[str, str], Dict[int, int]]) -> str:
    """The table as the Python literal kept in ``infoplane/estimators/trust.py``."""
    lines = ["TRUST: Dict[Tuple[str, str], Dict[int, int]] = {"]
    for (est, target), per_n in sorted(table.items()):
        lines.append(f"    ({est!r}, {target!r}): {{{', '.join(f'{n}: {d}' for n, d in sorted(per_n.items()))}}},")
    lines.append("}")
    return "\n".join(lines)


def _md_table(df: pd.DataFrame, cols: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "–" if not math.isfinite(float(v)) else (f"{float(v):.3g}" if abs(float(v)) < 1e4 else "inf")
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def markdown(df: pd.DataFrame, note: str) -> str:
    s = summarise(df)
    res = resolution(s)
    table = trust_table(res)
    main = s[s["sweep"] == "main"]
    md = ["# Classic information-plane estimators against known truth", "",
          f"Generated by `python -m benchmarks.classic_accuracy` ({note}). Tasks, estimators and the rule: "
          "the script's docstring and [docs/estimators.md](../../docs/estimators.md#classic-estimators). "
          "All values in nats; mean over seeds.", ""]
    md += ["## Trust rule: the largest dimension d at which each estimator resolves every 0.5-nat step", "",
           f"`trustworthy(estimator, dim, n, target)` in `infoplane/estimators/trust.py` is True when dim <= the "
           f"entry for the largest benchmarked n' <= n (n < {NS[0]}: False). A step resolves when the mean rises "
           f"by more than {RESOLVE_SD:g} sd (over seeds) from one truth level to the next, at every benchmarked "
           "d' <= d. 0 = at no dimension.", ""]
    rows = [{"estimator": e, "target": t, **{f"n = {n}": table[(e, t)].get(n, 0) for n in sorted({
        n for v in table.values() for n in v})}} for (e, t) in sorted(table)]
    tt = pd.DataFrame(rows)
    md += [_md_table(tt, list(tt.columns)), ""]
    md += ["## Estimate at each truth level, and the resolution", "",
           "`values`: mean estimate at the truth levels (`truths`, nats); `resolution`: smallest step between "
           f"consecutive levels in sd units (> {RESOLVE_SD:g}: resolves); `ratio@1`: estimate / truth at the level "
           "nearest 1 nat.", ""]
    r_main = res[res["sweep"] == "main"].copy()
    at1 = main[np.isclose(main["level"], 1.0)].set_index(["task", "estimator", "d", "n"])["ratio"]
    r_main["ratio@1"] = [at1.get((r.task, r.estimator, r.d, r.n), np.nan) for r in r_main.itertuples()]
    sec = main.groupby(["task", "estimator", "d", "n"])["seconds"].mean()
    r_main["seconds"] = [sec.get((r.task, r.estimator, r.d, r.n), np.nan) for r in r_main.itertuples()]
    for task in LEVELS:
        sub = r_main[r_main["task"] == task]
        if not len(sub):
            continue
        md += [f"### {task} (target {TARGET[task]})", ""]
        md += [_md_table(sub.sort_values(["estimator", "n", "d"]),
                         ["estimator", "d", "n", "values", "truths", "ratio@1", "resolution", "resolves",
                          "seconds"]), ""]
    for sweep, title in (("bins", "Binning: number of bins and scheme (gaussian, d = 1, n = 1000)"),
                         ("kde-variance", "KDE: noise variance (the channel layers of d = 10, n = 1000 read with another "
                                          "variance; truth I(Z + N(0, var I); Z) for that variance)"),
                         ("renyi-bandwidth", "Rényi: bandwidth rule (gaussian, n = 300)")):
        sub = res[res["sweep"] == sweep]
        if len(sub):
            md += [f"## {title}", "", _md_table(sub, ["estimator", "params", "d", "n", "values", "truths",
                                                      "resolution"]), ""]
    md += ["## Trust table as code", "", "```python", trust_source(table), "```", ""]
    return "\n".join(md)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: 3 dimensions, n <= 300, 2 seeds")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "classic_accuracy",
                   help="folder of the resumable per-unit results (default runs/classic_accuracy)")
    p.add_argument("--seeds", type=int, default=None, help="samples per setting (default 4; quick 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rebuild the .md from classic_accuracy.csv in --out")
    a = p.parse_args(argv)
    out = a.out or (RESULTS / "quick" if a.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "classic_accuracy.csv"
    if a.report_only:
        if not csv.exists():
            p.error(f"--report-only: {csv} not found; run the benchmark first")
        df = pd.read_csv(csv, keep_default_na=True)
        note = f"report rebuilt from the CSV; {df['seed'].nunique()} seeds"
    else:
        seeds = a.seeds or (2 if a.quick else 4)
        if seeds < 2:
            p.error("--seeds must be >= 2 (the resolution needs an sd over seeds)")
        torch.set_num_threads(a.threads)
        t0, c0 = time.perf_counter(), time.process_time()
        work = a.work / ("quick" if a.quick else "full")
        df = run(plan(a.quick), seeds, work, progress=not a.no_progress)
        spent = work / "runtime.json"   # wall and CPU seconds summed over the invocations that computed units
        tot = json.loads(spent.read_text()) if spent.exists() else {"wall": 0.0, "cpu": 0.0, "invocations": 0}
        tot = {"wall": tot["wall"] + time.perf_counter() - t0, "cpu": tot["cpu"] + time.process_time() - c0,
               "invocations": tot["invocations"] + 1}
        spent.write_text(json.dumps(tot))
        note = (f"{seeds} seeds, dimensions {sorted(df['d'].unique().tolist())}, n {sorted(df['n'].unique().tolist())}; "
                f"{platform.processor() or platform.machine()}, {a.threads} torch thread(s), on 2 cores shared with "
                f"other jobs; {tot['wall']:.0f} s wall, {tot['cpu']:.0f} s CPU over {tot['invocations']} resumed "
                f"invocation(s); sum of per-estimate seconds {df['seconds'].sum():.0f} s")
        tmp = csv.with_name(csv.name + ".partial")
        df.to_csv(tmp, index=False)
        os.replace(tmp, csv)
    md = markdown(df, note)
    _atomic(out / "classic_accuracy.md", md)
    print(md)
    print(f"wrote {csv} and {out / 'classic_accuracy.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
