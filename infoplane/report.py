"""A markdown report comparing training regimes from estimates, stores and checkpoints.

``build_report(inputs, out)`` reads estimate tables (CSV of docs/formats_store.md), activation stores
(HDF5; accuracy from the checkpoint ``metrics`` attrs) and run directories (every ``*.csv``,
``*.h5`` inside), then writes ``out/report.md``, figures and the summary tables behind every number
(``dynamics.csv``, ``differentiation.csv``, ``ib_signature.csv``, ``metrics.csv``, ``probes.csv``).

Definitions (also in docs/report.md). A trajectory is one estimator, run, layer and target (x or y)
over checkpoints t sorted by epoch: raw value v_t, minibatch sd s_t (``std``), and, where the table
has them, the exact permutation null null_mean_t, null_sd_t and the bound max_value_t (kernel
estimators; else the shuffled-Z baseline b_t is the only chance reference).

* scale: "adjusted" when every checkpoint has ``adjusted``, ``null_mean`` and ``max_value``:
  a_t = adjusted_t = (v_t - null_mean_t) / (max_value_t - null_mean_t) (0 = chance), noise terms
  divided by (max_value_t - null_mean_t); else "raw": a_t = v_t (older tables, no analytic null).
* peak = max_t a_t, last = a_T, rise = peak - a_1, drop = peak - last, range = max - min.
* noise = sqrt((s_peak^2 + s_last^2) / 2) on the scale (minibatch sd, Sakamoto & Sato 2024, app. F.1.2; fallbacks,
  ``noise_source``: the baseline's minibatch sd, then its sd over checkpoints).
* compression = drop / noise (Sakamoto & Sato 2024 sec. 4.1: "increase at first and subsequently decrease");
  margin = compression - threshold (> 0: past the boundary).
* z_t = (v_t - null_mean_t) / null_sd_t (``chance_source`` "permutation null"); without null
  columns z_t = (a_t - b_t) / noise ("shuffled baseline"). z_peak, z_last at the peak and last
  checkpoints; chance_margin = z_last.
* verdict: "cannot tell" when fewer than 3 checkpoints, the noise or the chance level is unknown,
  or z_peak < chance_z (the peak is not above chance: nothing to compress); else "compresses"
  when compression >= threshold (also when it falls to chance), else "does not compress".
  ``reason`` says why.
* differentiation (per run, estimator, target), three-valued ("yes", "no", "cannot tell"): yes
  when some layers compress and some do not, or when the mean pairwise Pearson correlation of the
  trajectories (on their scale, common epochs, only layers with a verdict whose range >= threshold
  noise) is < 0.5; no when neither holds and every layer has a verdict; else (or with one layer)
  cannot tell.
* IB signature of the last stored layer (Sakamoto & Sato 2024, title and sec. 5): x_falls = X compresses,
  y_holds = Y does not compress (each "cannot tell" when that verdict is); ib_signature =
  x_falls AND y_holds (a "no" in either decides "no").
* I(X; T) of binning and kde depends on T alone (``PAIRING_FREE_X``): its chance level is 0, z_t =
  v_t / noise, and a trajectory at the estimator's ceiling log m (peak and last within chance_z
  noise) is "cannot tell" (saturated).
* robustness (``estimators``): each claim under several estimators side by side; robust = the
  verdict holds under every estimator trusted at the layer's dimension and the sample size
  (``robustness_statistics``, ``infoplane.estimators.trust``).
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from infoplane.plot import FIGURE_DPI

PathLike = Union[str, Path]

REQUIRED_COLUMNS = ("estimator", "target", "value", "layer", "epoch")
STORE_SUFFIXES = (".h5", ".hdf5")
NEURAL = ("decoder", "classifier", "linear-probe")

__all__ = ["ReportConfig", "build_report", "collect_inputs", "trajectory_statistics",
           "differentiation_statistics", "ib_signature", "read_estimates", "robustness_statistics"]


@dataclass
class ReportConfig:
    """Options of :func:`build_report`.

    threshold: noise units that make a drop "significant". chance_z: a peak less than this many
    null sd above chance (z_peak < chance_z) gives no verdict ("cannot tell"). estimator: which estimator defines the
    information planes and dynamics (None: "nhsic" if present, else the first non-neural one).
    reconstruct: held-out reconstruction examples per layer from each store's last checkpoint
    (Wang et al. 2021 Fig. 7; 0 = off). probe: run linear probes per layer on each store's last checkpoint
    when the tables hold none. decoder_epochs / probe_epochs / max_samples: budgets of those runs.
    estimators: names (a list or one comma-separated string) whose verdicts are set side by side
    per claim, with a "robust" column (the verdict holds under every estimator the benchmark with
    known truth trusts at the layer's dimension and the sample size; ``robustness_statistics``);
    None = no such section.
    """
    threshold: float = 2.0
    chance_z: float = 2.0
    estimator: Optional[str] = None
    reconstruct: int = 6
    probe: bool = True
    decoder_epochs: int = 10
    probe_epochs: int = 30
    max_samples: int = 2000
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    title: str = "infoplane report"
    estimators: Optional[Sequence[str]] = None

    def validate(self) -> None:
        if self.estimators is not None:
            names = self.estimators.split(",") if isinstance(self.estimators, str) else list(self.estimators)
            names = [str(e).strip().lower().replace("_", "-") for e in names if str(e).strip()]
            if not names:
                raise ValueError("estimators selects nothing; name at least one (e.g. --estimators "
                                 "nhsic,renyi,binning), or leave the option out")
            self.estimators = list(dict.fromkeys(names))
        if not float(self.threshold) > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not float(self.chance_z) >= 0:
            raise ValueError(f"chance_z must be >= 0, got {self.chance_z}")
        if int(self.reconstruct) < 0:
            raise ValueError(f"reconstruct must be >= 0, got {self.reconstruct}")
        if int(self.max_samples) < 10:
            raise ValueError(f"max_samples must be >= 10, got {self.max_samples}")


# ----------------------------------------------------------------------------- inputs
def read_estimates(path: PathLike) -> pd.DataFrame:
    """Read one estimates CSV and check its columns (docs/formats_store.md); see ``plot.read_estimates``."""
    from infoplane.plot import read_estimates as _read

    return _read(path, REQUIRED_COLUMNS)


def _is_estimates_csv(path: Path) -> bool:
    try:
        cols = pd.read_csv(path, nrows=0).columns
    except Exception:
        return False
    return all(c in cols for c in REQUIRED_COLUMNS)


def collect_inputs(inputs: Sequence[PathLike]) -> Tuple[pd.DataFrame, List[Path], List[Path]]:
    """Resolve run directories, stores and CSVs into (estimate rows, store paths, run metrics.csv paths)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("give at least one run directory, activation store (.h5) or estimates CSV")
    csvs: List[Path] = []
    stores: List[Path] = []
    metric_csvs: List[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist (expected a run directory, a store or a CSV)")
        if p.is_dir():
            for c in sorted(p.rglob("*.csv")):
                if _is_estimates_csv(c):
                    csvs.append(c)
                elif c.name == "metrics.csv" and any(q.suffix == ".pt" for q in c.parent.iterdir()):
                    metric_csvs.append(c)  # a trainers run directory's per-epoch metrics
            stores += sorted(q for q in p.rglob("*") if q.suffix in STORE_SUFFIXES)
        elif p.suffix == ".csv":
            csvs.append(p)
        elif p.suffix in STORE_SUFFIXES:
            stores.append(p)
        else:
            raise ValueError(f"{str(p)!r}: expected a directory, a .csv estimates table or a .h5 store")
    frames = [read_estimates(c) for c in dict.fromkeys(csvs)]
    if not frames and not stores:
        raise ValueError(f"no estimates table or activation store found in {[str(p) for p in inputs]}")
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    from infoplane.plot import left_out_rows

    left_out = left_out_rows(df)
    df = _normalise_estimates(df)
    df.attrs["left_out"] = left_out
    return df, list(dict.fromkeys(stores)), metric_csvs


def _run_metrics(paths: Sequence[Path]) -> pd.DataFrame:
    """Long metrics table from trainers' ``metrics.csv`` files (run = the directory name)."""
    rows = []
    for p in paths:
        m = pd.read_csv(p)
        if "epoch" not in m.columns:
            continue
        for col in m.columns:
            if col in ("epoch", "step") or not pd.api.types.is_numeric_dtype(m[col]):
                continue
            for e, v in zip(m["epoch"], m[col]):
                if pd.notna(v) and math.isfinite(float(v)):
                    rows.append({"run": p.parent.name, "regime": "", "epoch": int(e), "metric": str(col),
                                 "value": float(v), "source": str(p)})
    return pd.DataFrame(rows, columns=["run", "regime", "epoch", "metric", "value", "source"])


def _normalise_estimates(df: pd.DataFrame) -> pd.DataFrame:
    from infoplane.plot import rows_with_values

    df = rows_with_values(df).copy()
    for col in ("run", "regime", "std", "baseline", "baseline_std", "layer_index"):
        if col not in df.columns:
            df[col] = np.nan
    df["regime"] = df["regime"].astype(object).where(df["regime"].notna(), "").astype(str)
    run = df["run"].astype(object).where(df["run"].notna(), "").astype(str)
    df["run"] = np.where(run == "", df["regime"].where(df["regime"] != "", "run"), run)
    if df["layer_index"].isna().any():
        order = {n: i for i, n in enumerate(dict.fromkeys(df["layer"].astype(str)), start=1)}
        df["layer_index"] = df["layer_index"].fillna(df["layer"].astype(str).map(order))
    df["layer"] = df["layer"].astype(str)
    return df


def _store_metrics(stores: Sequence[Path]) -> pd.DataFrame:
    """Long table (run, regime, epoch, metric, value, source) of every numeric checkpoint metric."""
    from infoplane.store import ActivationStore

    rows = []
    for sp in stores:
        with ActivationStore(sp) as st:
            for c in st.checkpoints():
                a = st.checkpoint_attrs(c)
                regime = _regime_name(a.get("regime", ""))
                run = str(a.get("run") or regime or sp.stem)
                for k, v in (a.get("metrics") or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                        rows.append({"run": run, "regime": regime, "epoch": int(a.get("epoch", -1)),
                                     "metric": str(k), "value": float(v), "source": str(sp)})
    return pd.DataFrame(rows, columns=["run", "regime", "epoch", "metric", "value", "source"])


def _regime_name(regime: Any) -> str:
    if isinstance(regime, dict):
        return str(regime.get("name") or regime.get("regime") or json.dumps(regime, sort_keys=True))
    return "" if regime is None else str(regime)


# ----------------------------------------------------------------------------- statistics
YES, NO, UNKNOWN = "yes", "no", "cannot tell"
#: Estimators whose I(X; T) depends on T alone (kept equal to ``infoplane.estimators.trust.PAIRING_FREE_X``,
#: not imported from there so that importing the report does not load torch).
PAIRING_FREE_X = ("binning", "binning-adaptive", "kde")
PAIRING_FREE_CHANCE = "zero (depends on T alone)"
COMPRESSES, KEEPS, CANNOT_TELL = "compresses", "does not compress", "cannot tell"


def _col(sub: pd.DataFrame, col: str) -> np.ndarray:
    if col not in sub.columns:
        return np.full(len(sub), np.nan)
    return pd.to_numeric(sub[col], errors="coerce").to_numpy(float)


def _finite(*xs: float) -> bool:
    return all(isinstance(x, (int, float, np.floating)) and math.isfinite(float(x)) for x in xs)


def _noise(s: np.ndarray, bs: np.ndarray, b: np.ndarray, i_peak: int, i_last: int) -> Tuple[float, str]:
    """Noise of the peak-to-last drop (arrays already on the scale of the trajectory)."""
    def pooled(a: np.ndarray) -> float:
        if not _finite(a[i_peak], a[i_last]):
            return math.nan
        return math.sqrt((float(a[i_peak]) ** 2 + float(a[i_last]) ** 2) / 2.0)

    n = pooled(s)
    if math.isfinite(n) and n > 0:
        return n, "minibatch sd"
    n = pooled(bs)
    if math.isfinite(n) and n > 0:
        return n, "baseline minibatch sd"
    base = b[np.isfinite(b)]
    if len(base) >= 2 and float(np.std(base, ddof=1)) > 0:
        return float(np.std(base, ddof=1)), "baseline sd over checkpoints"
    return math.nan, "none"


def _scaled(sub: pd.DataFrame) -> Tuple[str, Dict[str, np.ndarray]]:
    """The trajectory on the adjusted scale when every checkpoint has it, else on the raw one."""
    v, nm, mx, adj = _col(sub, "value"), _col(sub, "null_mean"), _col(sub, "max_value"), _col(sub, "adjusted")
    std, bstd, base = _col(sub, "std"), _col(sub, "baseline_std"), _col(sub, "baseline")
    span = mx - nm
    if len(v) and np.isfinite(adj).all() and np.isfinite(span).all() and (span > 0).all():
        return "adjusted", {"a": adj, "s": std / span, "bs": bstd / span, "b": (base - nm) / span}
    return "raw", {"a": v, "s": std, "bs": bstd, "b": base}


def _samples_per_estimate(sub: pd.DataFrame) -> float:
    """Samples behind each value: the minibatch size, or all samples of the full protocol (min over rows)."""
    bs, ns = _col(sub, "batch_size"), _col(sub, "n_samples")
    proto = sub["protocol"].astype(str).to_numpy() if "protocol" in sub.columns else np.full(len(sub), "")
    m = np.where(proto == "full", ns, np.where(np.isfinite(bs), bs, ns))
    m = m[np.isfinite(m)]
    return float(m.min()) if len(m) else math.nan


def _verdict_row(sub: pd.DataFrame, threshold: float, chance_z: float, pairing_free: bool = False) -> Dict[str, Any]:
    """Statistics and verdict of one trajectory. ``pairing_free``: I(X; T) of an estimator that depends on
    T alone (binning, kde; ``infoplane.estimators.trust.PAIRING_FREE_X``): its chance level is 0 (a
    constant layer), not the shuffled baseline (which equals the value), and a value at the
    estimator's ceiling log m is saturated."""
    sub = sub.sort_values("epoch", kind="stable")
    sub = sub[np.isfinite(_col(sub, "value"))].reset_index(drop=True)
    n = len(sub)
    if n == 0:
        return {"n_checkpoints": 0, "scale": "raw", "verdict": CANNOT_TELL, "reason": "no finite values",
                "compresses": False, "chance_source": "none", "noise_source": "none"}
    scale, t = _scaled(sub)
    a, v = t["a"], _col(sub, "value")
    i_peak, i_last = int(np.argmax(a)), n - 1
    noise, src = _noise(t["s"], t["bs"], t["b"], i_peak, i_last)
    peak, last, first = float(a[i_peak]), float(a[i_last]), float(a[0])
    comp = (peak - last) / noise if math.isfinite(noise) else math.nan
    # chance level: the exact permutation null, else the shuffled baseline, else none
    nm, ns = _col(sub, "null_mean"), _col(sub, "null_sd")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(ns > 0, (v - nm) / ns, np.nan)
    z = np.where(np.isfinite(z), z, _col(sub, "z"))
    b = t["b"]
    if _finite(z[i_peak], z[i_last]):
        chance_src, z_peak, z_last = "permutation null", float(z[i_peak]), float(z[i_last])
        chance_last, chance_sd_last = float(nm[i_last]), float(ns[i_last])
    elif _finite(b[i_peak], b[i_last], noise):
        chance_src = "shuffled baseline"
        z_peak, z_last = (peak - float(b[i_peak])) / noise, (last - float(b[i_last])) / noise
        chance_last, chance_sd_last = float(_col(sub, "baseline")[i_last]), math.nan
    else:
        chance_src, z_peak, z_last, chance_last, chance_sd_last = "none", math.nan, math.nan, math.nan, math.nan
    saturated, ceiling = False, math.nan
    if pairing_free:
        chance_src, chance_last, chance_sd_last = PAIRING_FREE_CHANCE, 0.0, math.nan
        ok = math.isfinite(noise) and noise > 0
        z_peak, z_last = (peak / noise, last / noise) if ok else (math.nan, math.nan)
        m_est = _samples_per_estimate(sub)
        if math.isfinite(m_est) and m_est >= 2:
            ceiling = math.log(m_est)
            tol = chance_z * noise if ok else 1e-9 * ceiling
            saturated = scale == "raw" and ceiling - peak <= tol and ceiling - last <= tol
    unit = "null sd" if chance_src == "permutation null" else "noise units"
    if n < 3:
        verdict, reason = CANNOT_TELL, f"{n} checkpoint{'s' if n != 1 else ''}: a rise and a fall need at least 3"
    elif saturated:
        verdict, reason = CANNOT_TELL, (f"saturated: the peak and the last value are within {chance_z:g} noise units "
                                        f"of the estimator's ceiling log m = {ceiling:.4g} (every sample its own "
                                        "pattern), so a fall cannot show")
    elif not math.isfinite(noise):
        verdict, reason = CANNOT_TELL, ("estimation noise unknown: no minibatch sd (one batch, e.g. the full "
                                        "protocol) and no shuffled baseline")
    elif chance_src == "none":
        verdict, reason = CANNOT_TELL, "no chance level (no null columns and no shuffled baseline)"
    elif z_peak < chance_z:
        verdict = CANNOT_TELL
        reason = (f"peak within {chance_z:g} {unit} of chance (z_peak {z_peak:.3g}): nothing above chance "
                  "to compress")
    elif comp >= threshold:
        verdict = COMPRESSES
        reason = f"drop of {comp:.3g} noise units >= {threshold:g}"
        if z_last < chance_z:
            reason += f"; falls to chance (z_last {z_last:.3g})"
    else:
        verdict, reason = KEEPS, f"drop of {comp:.3g} noise units < {threshold:g}"
    return {
        "n_checkpoints": n, "scale": scale,
        "first_epoch": int(sub["epoch"].iloc[0]), "peak_epoch": int(sub["epoch"].iloc[i_peak]),
        "last_epoch": int(sub["epoch"].iloc[i_last]), "first": first, "peak": peak, "last": last,
        "rise": peak - first, "drop": peak - last, "range": float(a.max() - a.min()),
        "raw_peak": float(v[i_peak]), "raw_last": float(v[i_last]),
        "chance_source": chance_src, "chance_last": chance_last, "chance_sd_last": chance_sd_last,
        "baseline_last": float(_col(sub, "baseline")[i_last]),
        "z_peak": z_peak, "z_last": z_last, "noise": noise, "noise_source": src, "compression": comp,
        "margin": comp - threshold if math.isfinite(comp) else math.nan, "chance_margin": z_last,
        "verdict": verdict, "reason": reason, "compresses": verdict == COMPRESSES}


def trajectory_statistics(df: pd.DataFrame, threshold: float = 2.0, chance_z: float = 2.0) -> pd.DataFrame:
    """Per (run, regime, estimator, layer, target): rise-and-fall statistics and a verdict (module doc)."""
    df = _normalise_estimates(df)
    keys = ["run", "regime", "estimator", "layer", "target"]
    out = []
    for key, sub in df.groupby(keys, sort=False):
        pairing_free = str(key[2]) in PAIRING_FREE_X and str(key[4]) == "x"
        out.append(dict(zip(keys, key)) | {"layer_index": int(sub["layer_index"].min())}
                   | _verdict_row(sub, float(threshold), float(chance_z), pairing_free))
    res = pd.DataFrame(out)
    if len(res):
        res = res.sort_values(["estimator", "run", "target", "layer_index"]).reset_index(drop=True)
    return res


def _and(*xs: str) -> str:
    return NO if NO in xs else (YES if all(x == YES for x in xs) else UNKNOWN)


def _or(*xs: str) -> str:
    return YES if YES in xs else (NO if all(x == NO for x in xs) else UNKNOWN)


def _trajectories(df: pd.DataFrame, key: Tuple[str, str, str, str], dyn_rows: pd.DataFrame) -> pd.DataFrame:
    """epoch x layer table of the trajectories, each on the scale its verdict used."""
    sub = df[(df["run"] == key[0]) & (df["regime"] == key[1]) & (df["estimator"] == key[2])
             & (df["target"] == key[3])]
    cols = {}
    for _, r in dyn_rows.iterrows():
        s = sub[sub["layer"] == r["layer"]]
        col = "adjusted" if r.get("scale") == "adjusted" else "value"
        cols[r["layer"]] = pd.Series(_col(s, col), index=s["epoch"].to_numpy()).groupby(level=0).mean()
    return pd.DataFrame(cols).dropna()


def differentiation_statistics(df: pd.DataFrame, dyn: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Per (run, regime, estimator, target): do the layers differ in their dynamics? (module doc)"""
    df = _normalise_estimates(df)
    out = []
    for key, sub in dyn.groupby(["run", "regime", "estimator", "target"], sort=False):
        verdicts = sub["verdict"]
        known = sub[verdicts != CANNOT_TELL]
        n_comp, n_keep = int((verdicts == COMPRESSES).sum()), int((verdicts == KEEPS).sum())
        n_unk = len(sub) - n_comp - n_keep
        comp = known["compression"].astype(float)
        # trajectory correlation, only between layers with a verdict whose trajectory moves beyond noise
        moving = known[(known["range"] / known["noise"]) >= threshold] if len(known) else known
        traj = _trajectories(df, key, moving)
        corrs = []
        for a, b in itertools.combinations(traj.columns, 2):
            x, y = traj[a].to_numpy(float), traj[b].to_numpy(float)
            if len(x) >= 3 and x.std() > 0 and y.std() > 0:
                corrs.append(float(np.corrcoef(x, y)[0, 1]))
        mean_corr = float(np.mean(corrs)) if corrs else math.nan
        some_comp = YES if n_comp else (NO if n_unk == 0 else UNKNOWN)
        some_keep = YES if n_keep else (NO if n_unk == 0 else UNKNOWN)
        by_verdicts = _and(some_comp, some_keep)
        by_corr = YES if math.isfinite(mean_corr) and mean_corr < 0.5 else NO
        result = _or(by_verdicts, by_corr) if len(sub) >= 2 else UNKNOWN
        if len(sub) < 2:
            reason = "one layer"
        elif result == YES:
            reason = (f"{n_comp} of {len(sub)} layers compress" if by_verdicts == YES
                      else f"mean trajectory correlation {mean_corr:.3g} < 0.5")
        elif result == NO:
            reason = ("all layers compress" if n_comp == len(sub) else "no layer compresses")
            reason += (f"; mean trajectory correlation {mean_corr:.3g} >= 0.5" if math.isfinite(mean_corr)
                       else f"; fewer than 2 layers move by >= {threshold:g} noise units (no correlation)")
        else:
            unk = sub[verdicts == CANNOT_TELL]
            reason = "cannot tell for " + "; ".join(f"{r['layer']} ({r['reason']})" for _, r in unk.iterrows())
        out.append({"run": key[0], "regime": key[1], "estimator": key[2], "target": key[3],
                    "n_layers": len(sub), "n_compressing": n_comp, "n_not_compressing": n_keep,
                    "n_cannot_tell": n_unk,
                    "compression_sd": float(comp.std(ddof=1)) if comp.notna().sum() >= 2 else math.nan,
                    "compression_range": float(comp.max() - comp.min()) if comp.notna().any() else math.nan,
                    "n_layers_corr": int(traj.shape[1]), "mean_trajectory_corr": mean_corr,
                    "differentiated": result, "reason": reason})
    return pd.DataFrame(out)


def ib_signature(dyn: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Per (run, regime, estimator): does the last stored layer compress X while Y holds? (module doc)

    ``threshold`` is kept for the call signature; the verdicts in ``dyn`` already carry it."""
    out = []
    for key, sub in dyn.groupby(["run", "regime", "estimator"], sort=False):
        last_idx = sub["layer_index"].max()
        last = sub[sub["layer_index"] == last_idx]
        row: Dict[str, Any] = {"run": key[0], "regime": key[1], "estimator": key[2],
                               "layer": str(last["layer"].iloc[0])}
        reasons = {}
        for t in ("x", "y"):
            r = last[last["target"] == t]
            row[f"scale_{t}"] = str(r["scale"].iloc[0]) if len(r) else "-"
            row[f"compression_{t}"] = float(r["compression"].iloc[0]) if len(r) else math.nan
            row[f"margin_{t}"] = float(r["margin"].iloc[0]) if len(r) else math.nan
            row[f"verdict_{t}"] = str(r["verdict"].iloc[0]) if len(r) else CANNOT_TELL
            reasons[t] = str(r["reason"].iloc[0]) if len(r) else f"no {t.upper()} target in the table"
        vx, vy = row["verdict_x"], row["verdict_y"]
        row["x_falls"] = YES if vx == COMPRESSES else (NO if vx == KEEPS else UNKNOWN)
        row["y_holds"] = YES if vy == KEEPS else (NO if vy == COMPRESSES else UNKNOWN)
        row["ib_signature"] = _and(row["x_falls"], row["y_holds"])
        parts = []
        for t, flag in (("x", "x_falls"), ("y", "y_holds")):
            if row["ib_signature"] == YES or row[flag] != YES:
                parts.append(f"{t.upper()} {row['verdict_' + t]}: {reasons[t]}")
        row["reason"] = "; ".join(parts)
        comp_x = sub[(sub["target"] == "x") & (sub["verdict"] == COMPRESSES)]
        row["layers_compressing_x"] = ", ".join(comp_x.sort_values("layer_index")["layer"]) or "-"
        out.append(row)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- robustness across estimators
ROBUST_CLAIMS = ("compression", "differentiation", "ib_signature")
_TAIL = ("n_trusted", "robust", "robust_verdict", "agreement", "reason")


def _layer_dims(df: pd.DataFrame, stores: Sequence[Path] = ()) -> Dict[Tuple[str, str], Tuple[float, float]]:
    """(run, layer) -> (dimension of the layer, dimension of the inputs), from the table's ``dim_z`` /
    ``dim_x`` columns when it has them, else from the stores (given, or named in the ``store`` column)."""
    dims: Dict[Tuple[str, str], Tuple[float, float]] = {}
    if "dim_z" in df.columns:
        for (run, layer), g in df.groupby(["run", "layer"], sort=False):
            dz = _col(g, "dim_z")
            dx = _col(g, "dim_x")
            dz, dx = dz[np.isfinite(dz)], dx[np.isfinite(dx)]
            if len(dz):
                dims[(str(run), str(layer))] = (float(dz[0]), float(dx[0]) if len(dx) else math.nan)
    paths = [Path(p) for p in stores]
    if "store" in df.columns:
        paths += [Path(str(p)) for p in df["store"].dropna().unique() if str(p) and Path(str(p)).is_file()]
    from infoplane.store import ActivationStore

    by_path: Dict[str, Dict[str, Tuple[float, float]]] = {}
    by_run: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for sp in dict.fromkeys(paths):
        try:
            with ActivationStore(sp) as st:
                ckpts = st.checkpoints()
                if not ckpts:
                    continue
                dx = float(np.prod(st.inputs(np.arange(1)).shape[1:]))
                layer_dims = {layer: (float(np.prod(st._layer_ds(ckpts[-1], layer).shape[1:])), dx)
                              for layer in st.layers(ckpts[-1])}
                a = st.checkpoint_attrs(ckpts[-1])
                run = str(a.get("run") or _regime_name(a.get("regime", "")) or sp.stem)
        except (OSError, ValueError, KeyError):
            continue
        by_path[str(sp)] = layer_dims
        by_run.setdefault(run, layer_dims)
    for (run, layer), g in df.groupby(["run", "layer"], sort=False):
        key = (str(run), str(layer))
        if key in dims:
            continue
        hit = None
        if "store" in g.columns:
            for p in g["store"].dropna().unique():
                hit = by_path.get(str(Path(str(p)))) or hit
        hit = hit or by_run.get(str(run))
        if hit and str(layer) in hit:
            dims[key] = hit[str(layer)]
    return dims


def _trust(estimator: str, target: str, dims: Tuple[float, float], n: float) -> Tuple[bool, float]:
    from infoplane.estimators.trust import trust_dimension, trustworthy

    dz, dx = dims
    dim = trust_dimension(estimator, target, dz if math.isfinite(dz) else None,
                          dx if math.isfinite(dx) else None)
    if dim is None or not math.isfinite(n):
        return False, math.nan
    return trustworthy(estimator, dim, int(n), target), float(dim)


def _robust(verdicts: Dict[str, str], trusted: Dict[str, bool], definite: Sequence[str]) -> Tuple[str, str, str]:
    """(robust, robust_verdict, reason) from one claim's verdicts under each estimator."""
    tv = {e: v for e, v in verdicts.items() if trusted.get(e)}
    known = {v for v in tv.values() if v in definite}
    if len(known) > 1:
        parts = "; ".join(f"{e}: {v}" for e, v in tv.items())
        return NO, "-", f"the trustworthy estimators disagree ({parts})"
    if len(tv) < 2:
        names = ", ".join(tv) or "none"
        return UNKNOWN, "-", f"{len(tv)} trustworthy estimator{'s' if len(tv) != 1 else ''} ({names}); robustness needs 2"
    unk = [e for e, v in tv.items() if v not in definite]
    if unk:
        return UNKNOWN, "-", "cannot tell under " + ", ".join(unk)
    v = next(iter(known))
    return YES, v, f"{v} under all {len(tv)} trustworthy estimators ({', '.join(tv)})"


def _agreement(verdicts: Dict[str, str], order: Sequence[str]) -> str:
    counts = {v: sum(1 for x in verdicts.values() if x == v) for v in order}
    return ", ".join(f"{v} {c}" for v, c in counts.items() if c)


def robustness_statistics(df: pd.DataFrame, estimators: Sequence[str], threshold: float = 2.0,
                          chance_z: float = 2.0,
                          dims: Optional[Dict[Tuple[str, str], Tuple[float, float]]] = None
                          ) -> Dict[str, pd.DataFrame]:
    """Each claim's verdict under every estimator, side by side, and whether it is robust.

    Claims: ``compression`` (per run, layer, target: the verdict of :func:`trajectory_statistics`),
    ``differentiation`` (per run, target: :func:`differentiation_statistics`) and ``ib_signature``
    (per run: :func:`ib_signature`). Each estimator's verdict is read against chance as everywhere in
    the report. ``dims``: (run, layer) -> (layer dimension, input dimension) (:func:`_layer_dims`);
    trust comes from ``infoplane.estimators.trust.trustworthy`` at that dimension and the samples per
    estimate (minibatch size, or all samples with the full protocol); a claim over several layers
    needs trust at each, the IB signature on both targets. robust: "yes" when at least two trustworthy
    estimators give the same definite verdict and none differs; "no" when two trustworthy estimators
    give different definite verdicts; else "cannot tell". Returns {claim: DataFrame} with one column
    per estimator (its verdict), ``trusted_<estimator>`` flags, ``n_trusted``, ``robust``,
    ``robust_verdict``, ``agreement`` (counts over all estimators) and ``reason``.
    """
    dims = dims or {}
    ests = list(dict.fromkeys(estimators))
    sub = df[df["estimator"].isin(ests)]
    dyn = trajectory_statistics(sub, threshold, chance_z)
    n_of = {k: _samples_per_estimate(g) for k, g in _normalise_estimates(sub).groupby(
        ["run", "regime", "estimator", "layer", "target"], sort=False)}
    if len(dyn):
        trust = [_trust(r.estimator, r.target, dims.get((str(r.run), str(r.layer)), (math.nan, math.nan)),
                        n_of.get((r.run, r.regime, r.estimator, r.layer, r.target), math.nan))
                 for r in dyn.itertuples()]
        dyn["trusted"] = [t[0] for t in trust]
        dyn["trust_dim"] = [t[1] for t in trust]
        dyn["n_per_estimate"] = [n_of.get((r.run, r.regime, r.estimator, r.layer, r.target), math.nan)
                                 for r in dyn.itertuples()]
    out: Dict[str, pd.DataFrame] = {}

    def finish(rows: List[Dict[str, Any]], definite: Sequence[str], order: Sequence[str]) -> pd.DataFrame:
        for row in rows:
            v = {e: row[e] for e in ests if e in row}
            tr = {e: bool(row.get(f"trusted_{e}", False)) for e in ests}
            row["n_trusted"] = int(sum(tr[e] for e in v))
            row["robust"], row["robust_verdict"], row["reason"] = _robust(v, tr, definite)
            row["agreement"] = _agreement(v, order)
        frame = pd.DataFrame(rows)
        per_est = [c for e in ests for c in (e, f"trusted_{e}", f"margin_{e}", f"dim_{e}", f"n_{e}")
                   if c in frame.columns]
        head = [c for c in frame.columns if c not in per_est and c not in _TAIL]
        return frame[head + per_est + [c for c in _TAIL if c in frame.columns]]

    rows = []
    if len(dyn):
        for (run, regime, layer, target), g in dyn.groupby(["run", "regime", "layer", "target"], sort=False):
            row: Dict[str, Any] = {"claim": "compression", "run": run, "regime": regime, "layer": layer,
                                   "layer_index": int(g["layer_index"].min()), "target": target}
            for _, r in g.iterrows():
                row[r["estimator"]] = r["verdict"]
                row[f"trusted_{r['estimator']}"] = bool(r["trusted"])
                row[f"margin_{r['estimator']}"] = r["margin"]
                row[f"dim_{r['estimator']}"] = r["trust_dim"]
                row[f"n_{r['estimator']}"] = r["n_per_estimate"]
            rows.append(row)
    comp = finish(rows, (COMPRESSES, KEEPS), (COMPRESSES, KEEPS, CANNOT_TELL))
    if len(comp):
        comp = comp.sort_values(["run", "target", "layer_index"], kind="stable").reset_index(drop=True)
    out["compression"] = comp

    rows = []
    if len(dyn):
        diffs = differentiation_statistics(sub, dyn, threshold)
        for (run, regime, target), g in diffs.groupby(["run", "regime", "target"], sort=False):
            row = {"claim": "differentiation", "run": run, "regime": regime, "layer": "all", "target": target}
            for _, r in g.iterrows():
                e = r["estimator"]
                layers = dyn[(dyn["run"] == run) & (dyn["regime"] == regime) & (dyn["estimator"] == e)
                             & (dyn["target"] == target)]
                row[e] = r["differentiated"]
                row[f"trusted_{e}"] = bool(len(layers) and layers["trusted"].all())
            rows.append(row)
    out["differentiation"] = finish(rows, (YES, NO), (YES, NO, UNKNOWN))

    rows = []
    if len(dyn):
        ibs = ib_signature(dyn, threshold)
        for (run, regime), g in ibs.groupby(["run", "regime"], sort=False):
            row = {"claim": "ib_signature", "run": run, "regime": regime, "layer": str(g["layer"].iloc[0]),
                   "target": "x, y"}
            for _, r in g.iterrows():
                e = r["estimator"]
                last = dyn[(dyn["run"] == run) & (dyn["regime"] == regime) & (dyn["estimator"] == e)
                           & (dyn["layer"] == r["layer"])]
                row[e] = r["ib_signature"]
                row[f"trusted_{e}"] = bool(set(last["target"]) >= {"x", "y"} and last["trusted"].all())
            rows.append(row)
    out["ib_signature"] = finish(rows, (YES, NO), (YES, NO, UNKNOWN))
    return out


def _robustness_markdown(rob: Dict[str, pd.DataFrame], estimators: Sequence[str], thr: float,
                         cz: float) -> List[str]:
    md = ["## Robustness across estimators", "",
          f"Each claim's verdict under each estimator ({', '.join(f'`{e}`' for e in estimators)}), every verdict "
          f"read against chance as above (a peak within {cz:g} noise units or null sd of chance, or an estimator "
          "at its ceiling, is *cannot tell*). A verdict in parentheses comes from an estimator that the benchmark "
          "with known truth does not trust at this dimension and sample size "
          "(`infoplane.estimators.trust.trustworthy`; docs/estimators.md). **robust** = *yes* when at least two "
          "trustworthy estimators give the same verdict and none differs, *no* when trustworthy estimators "
          "disagree, else *cannot tell*; `agreement` counts the verdicts of all estimators, trusted or not.", ""]
    titles = {"compression": "Compression per layer", "differentiation": "Layer-role differentiation",
              "ib_signature": "IB signature of the last layer"}
    for claim in ROBUST_CLAIMS:
        df = rob.get(claim, pd.DataFrame())
        md += [f"### {titles[claim]}", ""]
        if not len(df):
            md += ["No rows.", ""]
            continue
        shown = df.copy()
        for e in estimators:
            if e in shown.columns:
                shown[e] = [("–" if not isinstance(v, str) else (v if t else f"({v})"))
                            for v, t in zip(shown[e], shown.get(f"trusted_{e}", [False] * len(shown)))]
        cols = ["run", "layer", "target"] + [e for e in estimators if e in shown.columns] + [
            "n_trusted", "robust", "robust_verdict", "agreement"]
        md += [_md_table(shown, cols), ""]
        n_yes = int((df["robust"] == YES).sum())
        n_no = int((df["robust"] == NO).sum())
        md += [f"Robust: {n_yes} of {len(df)}; trustworthy estimators disagree: {n_no}; cannot tell: "
               f"{len(df) - n_yes - n_no}.", ""]
    return md


# ----------------------------------------------------------------------------- store-based runs
def _image_like(x: np.ndarray) -> bool:
    return x.ndim == 4 and x.shape[1] in (1, 3)


def _store_neural(stores: Sequence[Path], cfg: ReportConfig, probe: bool
                  ) -> Tuple[pd.DataFrame, Dict[str, Dict[str, Any]]]:
    """Linear probes (optional) and decoder reconstructions per layer at each store's last checkpoint."""
    from tqdm.auto import tqdm

    from infoplane.estimators import neural
    from infoplane.store import ActivationStore

    rows, recs = [], {}
    for sp in stores:
        with ActivationStore(sp) as st:
            ckpts = st.checkpoints()
            if not ckpts:
                continue
            c = ckpts[-1]
            a = st.checkpoint_attrs(c)
            regime = _regime_name(a.get("regime", ""))
            run = str(a.get("run") or regime or sp.stem)
            n = min(st.n_samples, int(cfg.max_samples))
            rows_idx = np.arange(n)
            y = st.labels()[:n]
            nc = (st.dataset or {}).get("num_classes")
            x = st.inputs(rows_idx) if cfg.reconstruct else None
            layer_recs = {}
            for i, layer in enumerate(tqdm(st.layers(c), desc=f"report {sp.name}",
                                           disable=None if cfg.progress else True, leave=False), start=1):
                z = st.read(c, layer, rows=rows_idx)
                if probe:
                    r = neural.linear_probe(z, y, num_classes=int(nc) if nc else None, epochs=cfg.probe_epochs,
                                            seed=cfg.seed, device=cfg.device)
                    rows.append({"run": run, "regime": regime, "epoch": int(a.get("epoch", -1)), "layer": layer,
                                 "layer_index": i, "estimator": "linear-probe", "value": r["value"],
                                 "accuracy_train": r["accuracy_train"], "accuracy_test": r["accuracy_test"]})
                if cfg.reconstruct and x is not None and _image_like(x):
                    r = neural.decoder_reconstructions(z, x, n_examples=cfg.reconstruct, epochs=cfg.decoder_epochs,
                                                       seed=cfg.seed, device=cfg.device)
                    rows.append({"run": run, "regime": regime, "epoch": int(a.get("epoch", -1)), "layer": layer,
                                 "layer_index": i, "estimator": "decoder", "value": r["value"],
                                 "bce_test": r["bce_test"]})
                    layer_recs[layer] = r
            if layer_recs:
                recs[f"{run}"] = {"epoch": int(a.get("epoch", -1)), "layers": layer_recs}
    return pd.DataFrame(rows), recs


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> str:
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    fig.savefig(tmp, dpi=FIGURE_DPI, bbox_inches="tight")
    os.replace(tmp, path)
    _plt().close(fig)
    return path.name


def _fig_metrics(metrics: pd.DataFrame, out: Path) -> Optional[str]:
    acc = metrics[metrics["metric"].str.contains("acc", case=False)]
    if acc.empty:
        return None
    plt = _plt()
    names = sorted(acc["metric"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, m in zip(axes[0], names):
        for run, sub in acc[acc["metric"] == m].groupby("run"):
            sub = sub.sort_values("epoch")
            ax.plot(sub["epoch"], sub["value"], marker="o", ms=3, label=run)
        ax.set_title(m)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        _integer_epochs(ax)
        ax.legend(fontsize=7)
    return _save(fig, out / "accuracy.png")


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _protocol_note(df: pd.DataFrame) -> str:
    from infoplane.plot import protocol_note

    return f"{protocol_note(df)}; hatched: chance level ± 2 null sd"


def _fig_plane(df: pd.DataFrame, estimator: str, out: Path, adjusted: bool = False) -> Optional[str]:
    sub = df[df["estimator"] == estimator]
    if adjusted:  # only through infoplane.plot; no figure when the table cannot give one
        try:
            from infoplane.plot import plot_information_plane
            plot_information_plane(sub, out / f"plane_adjusted_{estimator}.png", estimator=estimator, adjusted=True)
            return f"plane_adjusted_{estimator}.png"
        except (ImportError, ValueError, KeyError):
            return None
    wide = sub.pivot_table(index=["run", "layer", "layer_index", "epoch"], columns="target",
                           values="value").reset_index()
    if not {"x", "y"} <= set(wide.columns):
        return None
    try:  # the project's plotting module (infoplane.plot), else the built-in figure below
        from infoplane.plot import plot_information_plane
        plot_information_plane(sub, out / f"plane_{estimator}.png", estimator=estimator)
        return f"plane_{estimator}.png"
    except (ImportError, ValueError, KeyError):
        pass
    plt = _plt()
    layers = wide[["layer", "layer_index"]].drop_duplicates().sort_values("layer_index")["layer"].tolist()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.2), squeeze=False)
    markers = itertools.cycle("ov^sDP*X")
    runs = sorted(wide["run"].unique())
    mk = {r: next(markers) for r in runs}
    cmaps = itertools.cycle(["Reds", "Blues", "Greens", "Purples", "Oranges", "Greys"])
    cm = {r: next(cmaps) for r in runs}
    for ax, layer in zip(axes[0], layers):
        for run in runs:
            w = wide[(wide["layer"] == layer) & (wide["run"] == run)].sort_values("epoch")
            if w.empty:
                continue
            ax.plot(w["x"], w["y"], color="0.7", lw=0.8, zorder=1)
            ax.scatter(w["x"], w["y"], c=w["epoch"], cmap=cm[run], marker=mk[run], s=22, zorder=2,
                       edgecolors="k", linewidths=0.3, label=run)
        ax.set_title(layer)
        ax.set_xlabel(f"{estimator}(X;Z)")
    axes[0][0].set_ylabel(f"{estimator}(Y;Z)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / f"plane_{estimator}.png")


def _fig_dynamics(df: pd.DataFrame, estimator: str, out: Path, chance_z: float = 2.0) -> Optional[str]:
    sub = df[df["estimator"] == estimator]
    if sub.empty:
        return None
    plt = _plt()
    layers = sub[["layer", "layer_index"]].drop_duplicates().sort_values("layer_index")["layer"].tolist()
    targets = [t for t in ("x", "y") if t in set(sub["target"])]
    # the chance-adjusted scale (0 = chance, 1 = the maximum) is comparable across layers: shared axes
    adjusted = "adjusted" in sub.columns and np.isfinite(_col(sub, "adjusted")).any()
    fig, axes = plt.subplots(len(targets), len(layers), figsize=(3.0 * len(layers), 2.6 * len(targets)),
                             squeeze=False, layout="constrained", sharex=True, sharey="row" if adjusted else False)
    label = {"nhsic": "nHSIC", "hsic": "HSIC"}.get(estimator, estimator)
    if adjusted:
        label = f"adjusted {label}"
    for i, t in enumerate(targets):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for run, s in sub[(sub["target"] == t) & (sub["layer"] == layer)].groupby("run"):
                s = s.sort_values("epoch")
                scale = (_col(s, "max_value") - _col(s, "null_mean")) if adjusted else np.ones(len(s))
                y = _col(s, "adjusted") if adjusted else _col(s, "value")
                line, = ax.plot(s["epoch"], y, marker="o", ms=2.5, label=run)
                if s["std"].notna().any():
                    sd = _col(s, "std") / scale
                    ax.fill_between(s["epoch"], y - sd, y + sd, color=line.get_color(), alpha=0.2)
                nm, ns = _col(s, "null_mean"), _col(s, "null_sd") / scale
                if adjusted:
                    nm = np.zeros(len(s))
                if np.isfinite(nm).any() and np.isfinite(ns).any():
                    ax.fill_between(s["epoch"], nm - chance_z * ns, nm + chance_z * ns, facecolor="0.6",
                                    edgecolor=line.get_color(), hatch="////", lw=0, alpha=0.35
                                    ).set_gid("chance-band")
                if s["baseline"].notna().any() and not adjusted:
                    ax.plot(s["epoch"], s["baseline"], ls="--", color=line.get_color(), lw=0.8)
            ax.set_title(f"{layer}: {t.upper()}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{label}({t.upper()};Z)")
            if i == len(targets) - 1:
                ax.set_xlabel("epoch")
            _integer_epochs(ax)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(_protocol_note(sub), fontsize=8)
    return _save(fig, out / f"dynamics_{estimator}.png")


def _fig_probes(probes: pd.DataFrame, out: Path) -> Optional[str]:
    if probes.empty:
        return None
    plt = _plt()
    ests = sorted(probes["estimator"].unique())
    fig, axes = plt.subplots(1, len(ests), figsize=(4.2 * len(ests), 3.2), squeeze=False)
    for ax, est in zip(axes[0], ests):
        sub = probes[probes["estimator"] == est]
        key = sub["run"] + np.where(sub["source"] == "estimates table", "", " (report)") if "source" in sub else sub["run"]
        for run, s in sub.groupby(key):
            s = s.sort_values("layer_index")
            line, = ax.plot(s["layer"], s["value"], marker="o", label=f"{run} (test)" if est == "linear-probe" else run)
            if est == "linear-probe" and "accuracy_train" in s and s["accuracy_train"].notna().any():
                ax.plot(s["layer"], s["accuracy_train"], marker="x", ls="--", color=line.get_color(),
                        label=f"{run} (train)")
        ax.set_title(est)
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7)
    return _save(fig, out / "probes.png")


def _fig_reconstructions(run: str, rec: Dict[str, Any], out: Path) -> str:
    plt = _plt()
    layers = list(rec["layers"])
    first = rec["layers"][layers[0]]
    k = first["originals"].shape[0]
    fig, axes = plt.subplots(len(layers) + 1, k, figsize=(1.1 * k, 1.15 * (len(layers) + 1)), squeeze=False)

    def show(ax, img):
        img = np.asarray(img)
        ax.imshow(img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0)),
                  cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])

    for j in range(k):
        show(axes[0][j], first["originals"][j])
    axes[0][0].set_ylabel("input", fontsize=7)
    for i, layer in enumerate(layers, start=1):
        for j in range(k):
            show(axes[i][j], rec["layers"][layer]["reconstructions"][j])
        axes[i][0].set_ylabel(layer, fontsize=7)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in run)
    return _save(fig, out / f"reconstructions_{safe}.png")


# ----------------------------------------------------------------------------- markdown
def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    return str(v)


def _md_table(df: pd.DataFrame, cols: Sequence[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _signed(v: Any) -> str:
    return "–" if not _finite(v) else f"{float(v):+.3g}"


def _scale_note(dyn: pd.DataFrame, thr: float, cz: float) -> List[str]:
    """Which scale and chance level the verdicts of ``dyn`` used, in words."""
    n = len(dyn)
    n_adj = int((dyn["scale"] == "adjusted").sum())
    n_null = int((dyn["chance_source"] == "permutation null").sum())
    n_base = int((dyn["chance_source"] == "shuffled baseline").sum())
    n_free = int((dyn["chance_source"] == PAIRING_FREE_CHANCE).sum())
    n_none = n - n_null - n_base - n_free
    lines = []
    if n_adj:
        lines.append(f"Scale: {n_adj} of {n} trajectories are judged on the chance-adjusted value `adjusted` = "
                     "(value − null_mean)/(max_value − null_mean) (0 = chance, 1 = perfect alignment); for them "
                     "`first`, `peak`, `last` and `noise` are in adjusted units.")
    if n - n_adj:
        lines.append(f"Scale: {n - n_adj} of {n} trajectories are judged on the raw value: the table lacks the "
                     "null columns (`null_mean`, `null_sd`, `max_value`, `adjusted`), because it comes from an "
                     "older `infoplane estimate` or the estimator has no analytic null. Re-run "
                     "`infoplane estimate` for the chance-corrected analysis.")
    if n_null:
        lines.append(f"Chance level for {n_null} trajectories: the exact permutation null; `chance_last` ± "
                     f"`chance_sd_last` is null_mean ± null_sd at the last checkpoint (raw units), z = "
                     f"(value − null_mean)/null_sd, and a peak with z_peak < {cz:g} gets no verdict.")
    if n_base:
        lines.append(f"Chance level for {n_base} trajectories: the shuffled-Z baseline b (fallback); `chance_last` "
                     f"is b at the last checkpoint (raw units), z = (v − b)/noise on the trajectory's scale, and "
                     f"a peak with z_peak < {cz:g} gets no verdict.")
    if n_free:
        lines.append(f"Chance level for {n_free} trajectories: 0. They are I(X; T) of an estimator that depends on T "
                     "alone (binning: H(T) of the binned layer for distinct inputs; kde: H(T) minus the noise "
                     "entropy), so a shuffled baseline equals the value; I(X; T) = 0 only for a constant layer. "
                     "z = value/noise, and a trajectory whose peak and last value sit within "
                     f"{cz:g} noise units of the estimator's ceiling log m is saturated (*cannot tell*).")
    if n_none:
        lines.append(f"{n_none} trajectories have no chance level at all (no null columns, no baseline): no verdict.")
    lines.append(f"Verdicts: compresses when compression ≥ {thr:g}; margin = compression − {thr:g} (noise units "
                 "from the decision boundary).")
    return lines + [""]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


DEFINITIONS = """\
## Definitions

A trajectory: one estimator, run, layer and target (x or y) over checkpoints t (sorted by epoch);
v_t the value, s_t its minibatch sd (`std`), null_mean_t ± null_sd_t the exact permutation null
of the value and max_value_t its upper bound (kernel estimators, current `infoplane estimate`),
b_t the shuffled-Z baseline (an empirical check of null_mean; the only chance reference of older
tables).

- **scale** = `adjusted` when every checkpoint has the null columns: a_t = (v_t − null_mean_t) /
  (max_value_t − null_mean_t), 0 at chance and 1 at perfect alignment, comparable across layers,
  m and eps; sds are divided by the same (max_value_t − null_mean_t). Else `raw`: a_t = v_t.
- **peak** = max_t a_t; **last** = a at the last checkpoint; **rise** = peak − a_first;
  **drop** = peak − last.
- **noise** = sqrt((s_peak² + s_last²)/2) on the scale (fallbacks, named in `noise_source`: the
  baseline's minibatch sd, then the sd of the baseline over checkpoints).
- **compression** = drop / noise. The peak is the maximum of a noisy trajectory, so a flat one
  scattering by about the minibatch sd still has a compression of order 1; hence the threshold.
  **margin** = compression − {thr:g}: distance from the decision boundary in noise units.
- **z** = (v − null_mean) / null_sd (chance source `permutation null`); without null columns
  z = (a − b) / noise (`shuffled baseline`). **z_peak**, **z_last** at the peak and the last
  checkpoint; **chance_margin** = z_last. **chance_last** ± **chance_sd_last**: the chance level
  (null_mean ± null_sd, or b) at the last checkpoint, raw units.
- **verdict**: *cannot tell* with fewer than 3 checkpoints, without a noise estimate or chance
  level, or when z_peak < {cz:g} (the peak is within {cz:g} null sd of chance: nothing above chance
  to compress); else *compresses* when compression ≥ {thr:g} (a significant drop to chance counts),
  else *does not compress*. `reason` says which rule decided.
- **Layer-role differentiation** (per run and target), yes / no / cannot tell: *yes* when some
  layers compress and some do not, or when the mean pairwise Pearson correlation of the
  trajectories (their scale, common epochs; only layers with a verdict whose range exceeds
  {thr:g} noise units: `n_layers_corr`) is < 0.5; *no* when neither holds and every layer has a
  verdict; else (or with one layer) *cannot tell*. `compression_sd`/`compression_range` are over
  layers with a verdict.
- **IB signature** of the last stored layer: `x_falls` = X compresses, `y_holds` = Y does not
  compress (each *cannot tell* when its verdict is); `ib_signature` = both (*no* if either is no).
- **binning / kde on X**: I(X; T) depends on T alone (a shuffled baseline equals it); its chance
  level is 0 (a constant layer), z = value / noise, and a trajectory at the ceiling log m (peak and
  last within {cz:g} noise units) is *cannot tell* (saturated).
- **linear-probe**: held-out accuracy of a softmax-regression probe on the standardised layer
  (Sakamoto & Sato 2024 Fig. 1); train accuracy beside it. **decoder**: 1 − held-out per-pixel BCE of a decoder
  reconstructing the [0,1]-scaled input (Wang et al. 2021 app. G; a shifted lower bound on I(Z;X)).
  **classifier**: H(Y) − held-out cross-entropy in nats (a lower bound on I(Z;Y), Wang et al. 2021 sec. 3.3).
"""


def build_report(inputs: Sequence[PathLike], out: PathLike, config: Optional[ReportConfig] = None,
                 **overrides: Any) -> Path:
    """Write ``out/report.md`` (+ figures and summary CSVs) from run dirs, stores and CSVs.

    ``overrides`` set :class:`ReportConfig` fields. Returns the path of report.md.
    """
    cfg = config or ReportConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"unknown report option {k!r}; valid: {sorted(vars(ReportConfig()))}")
        setattr(cfg, k, v)
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df, stores, metric_csvs = collect_inputs(inputs)
    left_out = list(df.attrs.get("left_out", []))
    thr, cz = float(cfg.threshold), float(cfg.chance_z)

    metrics = _store_metrics(stores) if stores else pd.DataFrame(
        columns=["run", "regime", "epoch", "metric", "value", "source"])
    if metric_csvs:  # runs without a store: their trainers metrics.csv
        extra = _run_metrics(metric_csvs)
        extra = extra[~extra["run"].isin(set(metrics["run"]))]
        metrics = pd.concat([metrics, extra], ignore_index=True) if len(metrics) else extra
    kernel_ests = [e for e in dict.fromkeys(df["estimator"]) if e not in NEURAL]
    est = cfg.estimator or ("nhsic" if "nhsic" in kernel_ests else (kernel_ests[0] if kernel_ests else None))
    if cfg.estimator is not None and cfg.estimator not in set(df["estimator"]):
        raise ValueError(f"estimator {cfg.estimator!r} is not in the tables; present: {sorted(set(df['estimator']))}")

    # neural rows from the tables (last checkpoint per run) + from stores when asked
    nn_rows = df[df["estimator"].isin(NEURAL)]
    probes = pd.DataFrame()
    if len(nn_rows):
        last = nn_rows.groupby(["run", "estimator"])["epoch"].transform("max")
        probes = nn_rows[nn_rows["epoch"] == last].copy()
        probes = probes[probes["target"].isin(["x", "y"]) & probes["value"].notna()]  # NaN: not applicable
        probes["source"] = "estimates table"
    recs: Dict[str, Dict[str, Any]] = {}
    if stores and (cfg.reconstruct or cfg.probe):
        run_probe = cfg.probe and not (len(probes) and (probes["estimator"] == "linear-probe").any())
        extra, recs = _store_neural(stores, cfg, run_probe)
        if len(extra):
            extra["source"] = "report run on store"
            probes = pd.concat([probes, extra], ignore_index=True)

    md: List[str] = [f"# {cfg.title}", ""]
    md.append("Inputs: " + ", ".join(f"`{p}`" for p in map(str, inputs)) + ".")
    md.append(f"Stores: {len(stores)}; estimate rows: {len(df)}; runs: "
              + ", ".join(sorted(set(df['run']) | set(metrics['run']))) + ".")
    for note in left_out:
        md.append(f"**Left out:** {note}")
    md.append("")

    # accuracy
    md.append("## Accuracy")
    if len(metrics):
        _write_csv(metrics, out / "metrics.csv")
        fig = _fig_metrics(metrics, out)
        last_ep = metrics.groupby("run")["epoch"].transform("max")
        fin = metrics[metrics["epoch"] == last_ep].pivot_table(index=["run", "regime", "epoch"], columns="metric",
                                                             values="value").reset_index()
        md.append("Metrics stored with each checkpoint (store checkpoint attrs, else the run's metrics.csv), "
                  "at the last epoch:")
        md.append("")
        md.append(_md_table(fin, list(fin.columns)))
        if fig:
            md += ["", f"![accuracy]({fig})"]
    else:
        md.append("No checkpoint metrics (give the activation stores to include them).")
    md.append("")

    dyn = pd.DataFrame()
    if est is not None:
        sub = df[df["estimator"] == est]
        dyn = trajectory_statistics(sub, thr, cz)
        _write_csv(dyn, out / "dynamics.csv")
        md.append(f"## Information planes ({est})")
        fig = _fig_plane(df, est, out)
        if fig:
            md.append(f"![plane]({fig})")
        fig = _fig_plane(df, est, out, adjusted=True) if (dyn["scale"] == "adjusted").any() else None
        if fig:
            md += ["", "Chance-adjusted (0 = chance; grey: ± 2 null sd):", "", f"![plane adjusted]({fig})"]
        fig = _fig_dynamics(df, est, out, cz)
        if fig:
            md += ["", f"Per layer over training (band: ± minibatch sd; hatched: chance, null mean ± {cz:g} "
                   "null sd, where the table has the null columns; dashed: shuffled baseline):", "",
                   f"![dynamics]({fig})"]
        md.append("")
        md.append(f"## Rise and fall per layer ({est})")
        md.append("")
        md += _scale_note(dyn, thr, cz)
        md.append(_md_table(dyn, ["run", "layer", "target", "scale", "first", "peak", "peak_epoch", "last",
                                  "last_epoch", "chance_last", "chance_sd_last", "z_peak", "z_last", "noise",
                                  "compression", "margin", "verdict", "reason"]))
        md.append("")
        for (run, t), g in dyn.groupby(["run", "target"], sort=False):
            parts = []
            for v in (COMPRESSES, KEEPS, CANNOT_TELL):
                gg = g[g["verdict"] == v]
                if len(gg):
                    parts.append(f"{v}: " + ", ".join(f"{r['layer']} (margin {_signed(r['margin'])})"
                                                       for _, r in gg.iterrows()))
            md.append(f"- `{run}` {t.upper()}: " + "; ".join(parts) + ".")
        md.append("")
        diff = differentiation_statistics(sub, dyn, thr)
        _write_csv(diff, out / "differentiation.csv")
        md.append("## Layer-role differentiation")
        md.append("")
        md.append(_md_table(diff, ["run", "target", "n_layers", "n_compressing", "n_not_compressing",
                                   "n_cannot_tell", "compression_sd", "compression_range", "n_layers_corr",
                                   "mean_trajectory_corr", "differentiated", "reason"]))
        md.append("")
        ib = ib_signature(dyn, thr)
        _write_csv(ib, out / "ib_signature.csv")
        md.append("## IB signature of the last layer")
        md.append("")
        md.append(_md_table(ib, ["run", "layer", "compression_x", "margin_x", "compression_y", "margin_y",
                                 "x_falls", "y_holds", "ib_signature", "layers_compressing_x"]))
        md.append("")
        for _, r in ib.iterrows():
            head = {YES: "shows", NO: "does not show"}.get(r["ib_signature"], "cannot tell whether it shows")
            md.append(f"- `{r['run']}`: the last layer `{r['layer']}` {head} the IB signature "
                      f"(X: {r['verdict_x']}, margin {_signed(r['margin_x'])}; Y: {r['verdict_y']}, margin "
                      f"{_signed(r['margin_y'])}; {r['scale_x']} scale). {r['reason']}.")
        md.append("")
    else:
        md += ["## Information planes", "", "No kernel-estimator rows in the tables.", ""]

    if cfg.estimators:
        missing = [e for e in cfg.estimators if e not in set(df["estimator"])]
        if missing:
            raise ValueError(f"--estimators names {', '.join(missing)}, not in the tables (present: "
                             f"{', '.join(sorted(set(df['estimator'])))}); run `infoplane estimate --estimator NAME` "
                             "on the stores and pass its CSV too, or drop the name")
        rob = robustness_statistics(df, cfg.estimators, thr, cz, dims=_layer_dims(df, stores))
        _write_csv(pd.concat(list(rob.values()), ignore_index=True), out / "robustness.csv")
        md += _robustness_markdown(rob, cfg.estimators, thr, cz)

    md.append("## Probes and reconstructions per layer")
    md.append("")
    if len(probes):
        _write_csv(probes, out / "probes.csv")
        cols = ["run", "epoch", "layer", "estimator", "value", "accuracy_train", "accuracy_test", "bce_test",
                "source"]
        md.append(_md_table(probes.sort_values(["estimator", "run", "layer_index"]), cols))
        fig = _fig_probes(probes, out)
        if fig:
            md += ["", f"![probes]({fig})"]
    else:
        md.append("No probe or decoder results (run `infoplane estimate --estimator linear-probe|decoder|classifier`"
                  " or pass stores).")
    for run, rec in recs.items():
        name = _fig_reconstructions(run, rec, out)
        md += ["", f"Held-out reconstructions from each layer of `{run}` (epoch {rec['epoch']}; Wang et al. 2021 Fig. 7 "
               "style; top row: input):", "", f"![reconstructions]({name})"]
    md.append("")
    md.append(DEFINITIONS.format(thr=thr, cz=cz))

    path = out / "report.md"
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(md), encoding="utf-8")
    os.replace(tmp, path)
    return path


