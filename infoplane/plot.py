"""Information-plane figures from an estimates table (seed 000 Figures 3 and 6).

``plot_information_plane``: one panel per layer; x = estimator(X;Z), y = estimator(Y;Z); each
checkpoint is a marker coloured by epoch (one colour map and marker per regime, as in the paper:
circles with a red colour map for E2E, inverted triangles with a blue-yellow one for layer-wise),
joined in epoch order; the shuffled-pairs baseline (same estimator, Z's rows shuffled) is drawn per epoch as grey markers on dashed lines.
``plot_layer_curves``: value against epoch per layer (one row per target), baseline dotted.
Axis labels use the estimator's name (``nHSIC(X;Z)``), not I(.;.), because nHSIC is not a
mutual information (ESTIMATORS.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

PathLike = Union[str, Path]

_DISPLAY = {"nhsic": "nHSIC", "hsic-biased": "HSIC", "hsic-unbiased": "HSIC$_u$", "hsic": "HSIC"}
_REGIME_STYLE = {"e2e": ("Reds", "o"), "layerwise": ("viridis", "v")}
_OTHER_STYLES = [("cool", "X"), ("Greens", "s"), ("plasma", "D"), ("Blues", "P"), ("autumn", "^")]
REQUIRED = ("layer", "layer_index", "epoch", "target", "value", "estimator")


def estimator_label(name: str) -> str:
    """Display name of an estimator: ``nhsic -> nHSIC``."""
    return _DISPLAY.get(str(name), str(name))


def load_estimates(paths: Union[PathLike, Sequence[PathLike]]) -> pd.DataFrame:
    """Read and concatenate estimate CSVs (clear errors for missing files or wrong columns)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"estimates file {str(p)!r} does not exist; write one with `infoplane estimate`")
        try:
            df = pd.read_csv(p)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{str(p)!r} is not an estimates CSV: {exc}") from None
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    check_columns(df)
    return df


def check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"estimates table lacks columns {missing}; it should come from `infoplane estimate`")
    if df.empty:
        raise ValueError("estimates table is empty; nothing to plot")


def _series_key(df: pd.DataFrame) -> pd.Series:
    regime = df["regime"].astype(str) if "regime" in df else pd.Series("run", index=df.index)
    run = df["run"].astype(str) if "run" in df else pd.Series("", index=df.index)
    runs_per_regime = pd.DataFrame({"r": regime, "u": run}).groupby("r")["u"].nunique()
    if (runs_per_regime > 1).any():
        return regime + " (" + run + ")"
    return regime


def _styles(keys: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    styles, others = {}, iter(_OTHER_STYLES * 4)
    for k in keys:
        base = k.split(" (")[0]
        styles[k] = _REGIME_STYLE[base] if base in _REGIME_STYLE and _REGIME_STYLE[base] not in styles.values() \
            else next(others)
    return styles


def _truncated(name: str):
    """A colour map without its palest 30% (so epoch 0 stays visible on white)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    return ListedColormap(plt.get_cmap(name)(np.linspace(0.3, 1.0, 256)), name=f"{name}_trunc")


def _wide(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Rows (series, layer, epoch) with columns x and y of ``col``."""
    w = df.pivot_table(index=["series", "layer", "layer_index", "epoch"], columns="target", values=col,
                       aggfunc="mean").reset_index()
    for t in ("x", "y"):
        if t not in w:
            w[t] = np.nan
    return w.sort_values(["series", "layer_index", "epoch"])


def _save(fig, out: PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, out)
    return out


def _prepare(df: pd.DataFrame, estimator: Optional[str], layers: Optional[Sequence[str]]):
    check_columns(df)
    ests = list(dict.fromkeys(df["estimator"].astype(str)))
    if estimator is None:
        if len(ests) > 1:
            raise ValueError(f"the table holds several estimators ({', '.join(ests)}); choose one with --estimator")
        estimator = ests[0]
    elif estimator not in ests:
        raise ValueError(f"estimator {estimator!r} is not in the table; it holds: {', '.join(ests)}")
    df = df[df["estimator"].astype(str) == estimator].copy()
    if layers is not None:
        unknown = sorted(set(layers) - set(df["layer"]))
        if unknown:
            raise ValueError(f"layers {unknown} are not in the table; it holds: {', '.join(sorted(set(df['layer'])))}")
        df = df[df["layer"].isin(list(layers))]
    df["series"] = _series_key(df)
    order = df.groupby("layer")["layer_index"].min().sort_values()
    return df, estimator, list(order.index)


def plot_information_plane(df: pd.DataFrame, out: PathLike, *, estimator: Optional[str] = None,
                           layers: Optional[Sequence[str]] = None, baseline: bool = True,
                           ncols: int = 3, title: Optional[str] = None) -> Path:
    """Information plane per layer (seed 000 Fig. 3/6): x = est(X;Z), y = est(Y;Z), colour = epoch.

    df: the table of ``infoplane estimate`` (one or several runs/regimes). Returns ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    df, estimator, layer_order = _prepare(df, estimator, layers)
    lab = estimator_label(estimator)
    vals = _wide(df, "value")
    base = _wide(df, "baseline") if baseline and "baseline" in df and df["baseline"].notna().any() else None
    series = list(dict.fromkeys(vals["series"]))
    styles = _styles(series)
    emin, emax = float(df["epoch"].min()), float(df["epoch"].max())
    norm = Normalize(vmin=emin, vmax=emax if emax > emin else emin + 1)

    n = len(layer_order)
    ncols = max(1, min(int(ncols), n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.2 * len(series), 3.7 * nrows + 0.5),
                             squeeze=False, constrained_layout=True)
    mappables = {}
    for k, layer in enumerate(layer_order):
        ax = axes[k // ncols][k % ncols]
        for s in series:
            cmap, marker = _truncated(styles[s][0]), styles[s][1]
            d = vals[(vals["series"] == s) & (vals["layer"] == layer)]
            if d.empty:
                continue
            ax.plot(d["x"], d["y"], "-", color="0.6", lw=0.7, zorder=1)
            sc = ax.scatter(d["x"], d["y"], c=d["epoch"], cmap=cmap, norm=norm, marker=marker, s=36,
                            edgecolors="k", linewidths=0.3, zorder=3, label=s)
            mappables[s] = sc
        if base is not None:
            for s in series:
                b = base[(base["series"] == s) & (base["layer"] == layer)]
                if b.empty:
                    continue
                ax.plot(b["x"], b["y"], "--", color="0.6", lw=0.8, marker=styles[s][1], ms=3.5,
                        mfc="0.8", mec="0.6", zorder=2,
                        label=f"shuffled baseline ({s})" if k == 0 else None)
        idx = int(df.loc[df["layer"] == layer, "layer_index"].min())
        ax.set_title(f"layer {idx}: {layer}", fontsize=10)
        ax.set_xlabel(f"{lab}(X;Z)")
        ax.set_ylabel(f"{lab}(Y;Z)")
        ax.grid(alpha=0.3)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), frameon=False)
    for s, sc in mappables.items():
        cb = fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02)
        cb.set_label(f"epoch ({s})")
        cb.locator = MaxNLocator(integer=True)
        cb.update_ticks()
    if title:
        fig.suptitle(title)
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_layer_curves(df: pd.DataFrame, out: PathLike, *, estimator: Optional[str] = None,
                      layers: Optional[Sequence[str]] = None, baseline: bool = True) -> Path:
    """Value against epoch for every layer: one row per target (X, Y), one column per series
    (regime/run); shaded +-1 sd over minibatches; the baseline dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df, estimator, layer_order = _prepare(df, estimator, layers)
    lab = estimator_label(estimator)
    series = list(dict.fromkeys(df["series"]))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(layer_order), 1)))
    fig, axes = plt.subplots(2, len(series), figsize=(4.5 * len(series) + 2.0, 6.5), squeeze=False,
                             sharex=True, constrained_layout=True)
    for j, s in enumerate(series):
        for i, target in enumerate(("x", "y")):
            ax = axes[i][j]
            for li, layer in enumerate(layer_order):
                d = df[(df["series"] == s) & (df["layer"] == layer) & (df["target"] == target)]
                d = d.groupby("epoch", as_index=False).mean(numeric_only=True).sort_values("epoch")
                if d.empty:
                    continue
                ax.plot(d["epoch"], d["value"], "-o", ms=3, color=colors[li], label=layer)
                if "std" in d and d["std"].notna().any():
                    ax.fill_between(d["epoch"], d["value"] - d["std"], d["value"] + d["std"],
                                    color=colors[li], alpha=0.15, lw=0)
                if baseline and "baseline" in d and d["baseline"].notna().any():
                    ax.plot(d["epoch"], d["baseline"], ":", color=colors[li], lw=1)
            ax.set_ylabel(f"{lab}({target.upper()};Z)")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(s)
            else:
                ax.set_xlabel("epoch")
    h, l = axes[0][0].get_legend_handles_labels()
    if h:
        fig.legend(h, l, loc="outside right center", title="layer\n(dotted: shuffled\nbaseline)",
                   frameon=False)
    path = _save(fig, out)
    plt.close(fig)
    return path


def curves_path(out: PathLike) -> Path:
    """Where the per-layer curves go next to a plane figure: ``plane.png -> plane_curves.png``."""
    out = Path(out)
    return out.with_name(out.stem + "_curves" + (out.suffix or ".png"))


__all__ = ["plot_information_plane", "plot_layer_curves", "load_estimates", "estimator_label", "curves_path"]
