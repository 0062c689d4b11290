"""A markdown report comparing training regimes from estimates, stores and checkpoints.

``build_report(inputs, out)`` reads estimate tables (CSV of ARCHITECTURE.md), activation stores
(HDF5; accuracy from the checkpoint ``metrics`` attrs) and run directories (every ``*.csv``,
``*.h5`` inside), then writes ``out/report.md``, figures and the summary tables behind every number
(``dynamics.csv``, ``differentiation.csv``, ``ib_signature.csv``, ``metrics.csv``, ``probes.csv``).

Definitions (also in docs/report.md). For a trajectory v_t (value of one estimator for one layer
and target over checkpoints t, sorted by epoch) with minibatch sd s_t and shuffled baseline b_t:

* peak = max_t v_t, last = v_T, rise = peak - v_1, drop = peak - last.
* noise = sqrt((s_peak^2 + s_last^2) / 2), the minibatch sd of the estimate at the peak and last
  checkpoints (seed 000 F.1.2 averages minibatches; this is the spread its error bars would show).
  When there is no minibatch sd (one batch, neural estimators) the baseline's minibatch sd is used,
  then the sd over checkpoints of the baseline; ``noise_source`` says which.
* compression = drop / noise (seed 000 sec. 4.1: "increase at first and subsequently decrease");
  a layer *compresses* when compression >= threshold (default 2).
* margin = (last - b_last) / noise: how far the final value sits above the shuffled (null) level.
* layer-role differentiation (per run, estimator, target): the spread (sd) across layers of the
  compression statistic, the number of compressing layers, and the mean pairwise Pearson
  correlation of the layers' trajectories over the common epochs. Layers *differentiate* when some
  but not all compress, or when the mean correlation is below 0.5.
* IB signature of the last stored layer (seed 000 title and sec. 5): compression of the X target
  >= threshold while the Y target holds (its compression < threshold).
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

PathLike = Union[str, Path]

REQUIRED_COLUMNS = ("estimator", "target", "value", "layer", "epoch")
STORE_SUFFIXES = (".h5", ".hdf5")
NEURAL = ("decoder", "classifier", "linear-probe")

__all__ = ["ReportConfig", "build_report", "collect_inputs", "trajectory_statistics", "add_cli", "run_cli",
           "differentiation_statistics", "ib_signature", "read_estimates"]


@dataclass
class ReportConfig:
    """Options of :func:`build_report`.

    threshold: noise units that make a drop "significant". estimator: which estimator defines the
    information planes and dynamics (None: "nhsic" if present, else the first non-neural one).
    reconstruct: held-out reconstruction examples per layer from each store's last checkpoint
    (seed 003 Fig. 7; 0 = off). probe: run linear probes per layer on each store's last checkpoint
    when the tables hold none. decoder_epochs / probe_epochs / max_samples: budgets of those runs.
    """
    threshold: float = 2.0
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

    def validate(self) -> None:
        if not float(self.threshold) > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if int(self.reconstruct) < 0:
            raise ValueError(f"reconstruct must be >= 0, got {self.reconstruct}")
        if int(self.max_samples) < 10:
            raise ValueError(f"max_samples must be >= 10, got {self.max_samples}")


# ----------------------------------------------------------------------------- inputs
def read_estimates(path: PathLike) -> pd.DataFrame:
    """Read one estimates CSV and check it has the columns of ARCHITECTURE.md."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"estimates table {str(path)!r} does not exist")
    df = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{str(path)!r} is not an estimates table: columns {missing} are missing "
                         "(write one with `infoplane estimate`)")
    return df


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
    return _normalise_estimates(df), list(dict.fromkeys(stores)), metric_csvs


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
    df = df.copy()
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
def _noise(sub: pd.DataFrame, i_peak: int, i_last: int) -> Tuple[float, str]:
    def pooled(col: str) -> float:
        a, b = sub[col].iloc[i_peak], sub[col].iloc[i_last]
        if pd.isna(a) or pd.isna(b):
            return math.nan
        return math.sqrt((float(a) ** 2 + float(b) ** 2) / 2.0)

    s = pooled("std")
    if math.isfinite(s) and s > 0:
        return s, "minibatch sd"
    s = pooled("baseline_std")
    if math.isfinite(s) and s > 0:
        return s, "baseline minibatch sd"
    base = sub["baseline"].dropna()
    if len(base) >= 2 and float(base.std(ddof=1)) > 0:
        return float(base.std(ddof=1)), "baseline sd over checkpoints"
    return math.nan, "none"


def trajectory_statistics(df: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Per (run, regime, estimator, layer, target): the rise and fall statistics of the module doc."""
    df = _normalise_estimates(df)
    keys = ["run", "regime", "estimator", "layer", "target"]
    out = []
    for key, sub in df.groupby(keys, sort=False):
        sub = sub.sort_values("epoch").reset_index(drop=True)
        v = sub["value"].astype(float).to_numpy()
        i_peak, i_last = int(np.nanargmax(v)), len(v) - 1
        noise, src = _noise(sub, i_peak, i_last)
        peak, last, first = float(v[i_peak]), float(v[i_last]), float(v[0])
        b_last = float(sub["baseline"].iloc[i_last]) if not pd.isna(sub["baseline"].iloc[i_last]) else math.nan
        comp = (peak - last) / noise if math.isfinite(noise) else math.nan
        out.append(dict(zip(keys, key)) | {
            "layer_index": int(sub["layer_index"].iloc[0]), "n_checkpoints": len(v),
            "first_epoch": int(sub["epoch"].iloc[0]), "peak_epoch": int(sub["epoch"].iloc[i_peak]),
            "last_epoch": int(sub["epoch"].iloc[i_last]), "first": first, "peak": peak, "last": last,
            "rise": peak - first, "drop": peak - last, "baseline_last": b_last, "noise": noise,
            "noise_source": src, "compression": comp,
            "margin": (last - b_last) / noise if math.isfinite(noise) and math.isfinite(b_last) else math.nan,
            "compresses": bool(math.isfinite(comp) and comp >= threshold)})
    res = pd.DataFrame(out)
    if len(res):
        res = res.sort_values(["estimator", "run", "target", "layer_index"]).reset_index(drop=True)
    return res


def differentiation_statistics(df: pd.DataFrame, dyn: pd.DataFrame) -> pd.DataFrame:
    """Per (run, regime, estimator, target): do the layers differ in their dynamics?"""
    df = _normalise_estimates(df)
    out = []
    for key, sub in dyn.groupby(["run", "regime", "estimator", "target"], sort=False):
        comp = sub["compression"].astype(float)
        traj = (df[(df["run"] == key[0]) & (df["regime"] == key[1]) & (df["estimator"] == key[2])
                   & (df["target"] == key[3])].pivot_table(index="epoch", columns="layer", values="value")
                .dropna())
        corrs = []
        for a, b in itertools.combinations(traj.columns, 2):
            x, y = traj[a].to_numpy(float), traj[b].to_numpy(float)
            if len(x) >= 3 and x.std() > 0 and y.std() > 0:
                corrs.append(float(np.corrcoef(x, y)[0, 1]))
        n_comp = int(sub["compresses"].sum())
        mean_corr = float(np.mean(corrs)) if corrs else math.nan
        out.append({"run": key[0], "regime": key[1], "estimator": key[2], "target": key[3],
                    "n_layers": len(sub), "n_compressing": n_comp,
                    "compression_sd": float(comp.std(ddof=1)) if comp.notna().sum() >= 2 else math.nan,
                    "compression_range": float(comp.max() - comp.min()) if comp.notna().any() else math.nan,
                    "mean_trajectory_corr": mean_corr,
                    "differentiated": bool((0 < n_comp < len(sub)) or (math.isfinite(mean_corr) and mean_corr < 0.5))})
    return pd.DataFrame(out)


def ib_signature(dyn: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Per (run, regime, estimator): does the last stored layer compress X while Y holds?"""
    out = []
    for key, sub in dyn.groupby(["run", "regime", "estimator"], sort=False):
        last_idx = sub["layer_index"].max()
        last = sub[sub["layer_index"] == last_idx]
        row = {"run": key[0], "regime": key[1], "estimator": key[2], "layer": str(last["layer"].iloc[0])}
        for t in ("x", "y"):
            r = last[last["target"] == t]
            row[f"compression_{t}"] = float(r["compression"].iloc[0]) if len(r) else math.nan
        cx, cy = row["compression_x"], row["compression_y"]
        row["x_falls"] = bool(math.isfinite(cx) and cx >= threshold)
        row["y_holds"] = bool(math.isfinite(cy) and cy < threshold)
        row["ib_signature"] = row["x_falls"] and row["y_holds"]
        comp_x = sub[(sub["target"] == "x") & sub["compresses"]]
        row["layers_compressing_x"] = ", ".join(comp_x.sort_values("layer_index")["layer"]) or "-"
        out.append(row)
    return pd.DataFrame(out)


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
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
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
        ax.legend(fontsize=7)
    return _save(fig, out / "accuracy.png")


def _fig_plane(df: pd.DataFrame, estimator: str, out: Path) -> Optional[str]:
    sub = df[df["estimator"] == estimator]
    wide = sub.pivot_table(index=["run", "layer", "layer_index", "epoch"], columns="target",
                           values="value").reset_index()
    if not {"x", "y"} <= set(wide.columns):
        return None
    try:  # the project's plotting module (infoplane.plot), else the built-in figure below
        from infoplane.plot import plot_information_plane
        return plot_information_plane(sub, out / f"plane_{estimator}.png", estimator=estimator).name
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


def _fig_dynamics(df: pd.DataFrame, estimator: str, out: Path) -> Optional[str]:
    sub = df[df["estimator"] == estimator]
    if sub.empty:
        return None
    plt = _plt()
    layers = sub[["layer", "layer_index"]].drop_duplicates().sort_values("layer_index")["layer"].tolist()
    targets = [t for t in ("x", "y") if t in set(sub["target"])]
    fig, axes = plt.subplots(len(targets), len(layers), figsize=(3.0 * len(layers), 2.6 * len(targets)),
                             squeeze=False)
    for i, t in enumerate(targets):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for run, s in sub[(sub["target"] == t) & (sub["layer"] == layer)].groupby("run"):
                s = s.sort_values("epoch")
                line, = ax.plot(s["epoch"], s["value"], marker="o", ms=2.5, label=run)
                if s["std"].notna().any():
                    ax.fill_between(s["epoch"], s["value"] - s["std"], s["value"] + s["std"],
                                    color=line.get_color(), alpha=0.2)
                if s["baseline"].notna().any():
                    ax.plot(s["epoch"], s["baseline"], ls="--", color=line.get_color(), lw=0.8)
            ax.set_title(f"{layer}: {t.upper()}", fontsize=9)
            if i == len(targets) - 1:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
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


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


DEFINITIONS = """\
## Definitions

For one estimator, layer and target (x or y), v_t is the value at checkpoint t (sorted by epoch),
s_t its minibatch standard deviation (the `std` column) and b_t the shuffled-pairs baseline.

- **peak** = max_t v_t; **last** = v at the last checkpoint; **rise** = peak − v_first;
  **drop** = peak − last.
- **noise** = sqrt((s_peak² + s_last²)/2), the minibatch sd at the peak and last checkpoints
  (fallbacks, named in `noise_source`: the baseline's minibatch sd, then the sd of the baseline
  over checkpoints).
- **compression** = drop / noise: how far the layer fell from its peak in units of the run's own
  estimation noise. A layer **compresses** when compression ≥ {thr:g}. The peak is the maximum
  of a noisy trajectory, so a flat trajectory whose values scatter between checkpoints by about
  the minibatch sd still has a compression of order 1; the threshold is chosen with that in mind.
- **margin** = (last − b_last) / noise: distance of the final value above the null level.
- **Layer-role differentiation** (per run and target): sd and range across layers of the
  compression, the number of compressing layers, and the mean pairwise Pearson correlation of the
  layers' trajectories over common epochs. **differentiated** = some but not all layers compress,
  or mean correlation < 0.5.
- **IB signature** of the last stored layer: compression of X ≥ {thr:g} (X falls significantly)
  while compression of Y < {thr:g} (Y holds within noise).
- **linear-probe**: held-out accuracy of a softmax-regression probe on the standardised layer
  (seed 000 Fig. 1); train accuracy beside it. **decoder**: 1 − held-out per-pixel BCE of a decoder
  reconstructing the [0,1]-scaled input (seed 003 app. G; a shifted lower bound on I(Z;X)).
  **classifier**: H(Y) − held-out cross-entropy in nats (a lower bound on I(Z;Y), seed 003 sec. 3.3).
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
    thr = float(cfg.threshold)

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
        dyn = trajectory_statistics(sub, thr)
        _write_csv(dyn, out / "dynamics.csv")
        md.append(f"## Information planes ({est})")
        fig = _fig_plane(df, est, out)
        if fig:
            md.append(f"![plane]({fig})")
        fig = _fig_dynamics(df, est, out)
        if fig:
            md += ["", "Per layer over training (band: ± minibatch sd; dashed: shuffled baseline):", "",
                   f"![dynamics]({fig})"]
        md.append("")
        md.append(f"## Rise and fall per layer ({est})")
        md.append("")
        md.append(_md_table(dyn, ["run", "layer", "target", "first", "peak", "peak_epoch", "last", "last_epoch",
                                  "baseline_last", "noise", "compression", "margin", "compresses"]))
        md.append("")
        diff = differentiation_statistics(sub, dyn)
        _write_csv(diff, out / "differentiation.csv")
        md.append("## Layer-role differentiation")
        md.append("")
        md.append(_md_table(diff, ["run", "target", "n_layers", "n_compressing", "compression_sd",
                                   "compression_range", "mean_trajectory_corr", "differentiated"]))
        md.append("")
        ib = ib_signature(dyn, thr)
        _write_csv(ib, out / "ib_signature.csv")
        md.append("## IB signature of the last layer")
        md.append("")
        md.append(_md_table(ib, ["run", "layer", "compression_x", "compression_y", "x_falls", "y_holds",
                                 "ib_signature", "layers_compressing_x"]))
        md.append("")
        for _, r in ib.iterrows():
            verdict = "shows" if r["ib_signature"] else "does not show"
            md.append(f"- `{r['run']}`: the last layer `{r['layer']}` {verdict} the IB signature "
                      f"(X compression {_fmt(r['compression_x'])}, Y compression {_fmt(r['compression_y'])}).")
        md.append("")
    else:
        md += ["## Information planes", "", "No kernel-estimator rows in the tables.", ""]

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
        md += ["", f"Held-out reconstructions from each layer of `{run}` (epoch {rec['epoch']}; seed 003 Fig. 7 "
               "style; top row: input):", "", f"![reconstructions]({name})"]
    md.append("")
    md.append(DEFINITIONS.format(thr=thr))

    path = out / "report.md"
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(md), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- command line
def add_cli(subparsers: Any) -> Any:
    """Add the ``report`` subcommand to an argparse subparsers object (used by ``infoplane.cli``)."""
    p = subparsers.add_parser("report", help="markdown report + figures comparing runs/regimes",
                              description="Write OUT/report.md, figures and summary tables from run "
                                          "directories, activation stores (.h5) and estimates CSVs.")
    p.add_argument("inputs", nargs="+", help="run directories, .h5 stores and/or estimates .csv files")
    p.add_argument("--out", default="report", help="output directory (default: report)")
    p.add_argument("--estimator", default=None, help="estimator of the planes (default: nhsic if present)")
    p.add_argument("--threshold", type=float, default=2.0, help="noise units for a significant drop (2)")
    p.add_argument("--reconstruct", type=int, default=6, help="reconstruction examples per layer (0 = off)")
    p.add_argument("--no-probe", action="store_true", help="do not run linear probes on the stores")
    p.add_argument("--decoder-epochs", type=int, default=10)
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--max-samples", type=int, default=2000, help="stored samples used by probes/decoders")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="infoplane report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: Any) -> int:
    """Run the ``report`` subcommand from parsed arguments; prints the report path."""
    cfg = ReportConfig(threshold=args.threshold, estimator=args.estimator, reconstruct=args.reconstruct,
                       probe=not args.no_probe, decoder_epochs=args.decoder_epochs, probe_epochs=args.probe_epochs,
                       max_samples=args.max_samples, device=args.device, seed=args.seed,
                       progress=not args.no_progress, title=args.title)
    path = build_report(args.inputs, args.out, cfg)
    print(path)
    return 0
