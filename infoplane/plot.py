"""Information-plane figures from an estimates table (Sakamoto & Sato 2024 Figures 3 and 6).

``plot_information_plane``: one panel per layer; x = estimator(X;Z), y = estimator(Y;Z); each
checkpoint is a marker coloured by epoch (one colour map and marker per regime, as in the paper:
circles with a red colour map for E2E, inverted triangles with a blue-yellow one for layer-wise),
joined in epoch order; the shuffled-pairs baseline (same estimator, Z's rows shuffled) is drawn per
epoch as grey markers on dashed lines.
``plot_layer_curves``: value against epoch per layer (one row per target), baseline dotted.
Axis labels use the estimator's name (``nHSIC(X;Z)``), not I(.;.), because nHSIC is not a
mutual information (docs/estimators.md).

Chance level. Where the table has the permutation-null columns ``null_mean`` and ``null_sd``
(kernel estimators, current ``infoplane estimate``), the chance band null_mean ± 2 null_sd is
shaded: on the plane a light grey vertical (X) and horizontal (Y) strip spanning the band's range
over the epochs of each series; on the curves a hatched band per layer over epochs. Values inside
the band are not distinguishable from independence. Older tables and estimators without an
analytic null have no band (only the shuffled baseline, an empirical check of null_mean).
``adjusted=True`` plots the CSV column ``adjusted`` = (value - null_mean) / (max_value - null_mean)
instead (0 = chance, 1 = perfect alignment; comparable across layers, m and eps), with a
reference line at 0 and the band ± 2 null_sd / (max_value - null_mean).

Where the figure goes. Both functions return the matplotlib ``Figure`` and save it only when
``out`` is given (validated before any work; written atomically at ``dpi``, default
:data:`FIGURE_DPI`, the resolution of every saved infoplane figure). Without ``ax``/``fig`` they
draw into a new ``Figure`` made without pyplot (it never pops up, and figures made in a loop are
not kept alive by pyplot); ``fig=`` lays the panels out in a Figure or SubFigure of yours (e.g.
``plt.figure(layout="constrained")``); ``ax=`` draws into Axes of yours: one ``Axes`` when the
figure has one panel, else an array (any shape, read row by row) with one Axes per panel. With
``ax=`` the legend goes on the last panel; otherwise, under constrained layout, outside the panels.
In a notebook a returned Figure shows when it is the last expression of a cell (with matplotlib's
inline backend: ``import matplotlib.pyplot`` or ``%matplotlib inline`` once).
"""
from __future__ import annotations

import logging

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: matplotlib is imported when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Resolution (dots per inch) of every figure infoplane saves (these plots and the report's).
FIGURE_DPI = 130

_DISPLAY = {"nhsic": "nHSIC", "hsic-biased": "HSIC", "hsic-unbiased": "HSIC$_u$", "hsic": "HSIC"}
_REGIME_STYLE = {"e2e": ("Reds", "o"), "layerwise": ("viridis", "v")}
_OTHER_STYLES = [("cool", "X"), ("Greens", "s"), ("plasma", "D"), ("Blues", "P"), ("autumn", "^")]
REQUIRED = ("layer", "layer_index", "epoch", "target", "value", "estimator")
CHANCE_Z = 2.0  # half-width of the shaded chance band, in null sd
_BAND_GID = "chance-band"  # gid of every chance-band artist (tests look them up)


def estimator_label(name: str) -> str:
    """Display name of an estimator: ``nhsic -> nHSIC``."""
    return _DISPLAY.get(str(name), str(name))


#: Columns of an estimates CSV that must hold numbers (empty cells allowed: they read as NaN).
NUMERIC_COLUMNS = ("epoch", "layer_index", "value", "std", "null_mean", "null_sd", "z", "p_value", "adjusted",
                   "max_value", "baseline", "baseline_std", "error_bound", "n_samples", "batch_size")


def read_estimates(path: PathLike, required: Sequence[str] = REQUIRED) -> pd.DataFrame:
    """Read one estimates CSV written by ``infoplane estimate``; every problem is a ``ValueError`` (or
    ``FileNotFoundError``) naming the file, and the column and row where one is at fault."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"estimates file {str(p)!r} does not exist; write one with `infoplane estimate`")
    if p.is_dir():
        raise ValueError(f"estimates file {str(p)!r} is a directory; pass the CSV written by `infoplane estimate`")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(p)!r} is not an estimates CSV: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{str(p)!r} is not an estimates CSV: columns {missing} are missing "
                         "(write one with `infoplane estimate`)")
    for col in NUMERIC_COLUMNS:
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]):
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna() & (df[col].astype(str).str.strip() != "")
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{str(p)!r}: column {col!r} must hold numbers, but {int(bad.sum())} row(s) do not "
                             f"(first: data row {i + 1}, {str(df[col].iloc[i])[:40]!r}); fix or regenerate the file "
                             "with `infoplane estimate`")
        df[col] = num
    return df


def load_estimates(paths: Union[PathLike, Sequence[PathLike]]) -> pd.DataFrame:
    """Read and concatenate estimate CSVs (:func:`read_estimates` checks each one)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [read_estimates(p) for p in paths]
    if not frames:
        raise ValueError("give at least one estimates CSV")
    df = pd.concat(frames, ignore_index=True)
    check_columns(df)
    return df


def check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"estimates table lacks columns {missing}; it should come from `infoplane estimate`")
    if df.empty:
        raise ValueError("estimates table is empty; nothing to plot")


def rows_with_values(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a finite value and ``status`` "ok" (tables without the column: status ok).

    Every row left out is logged as a warning with its reason, naming the checkpoint and layer, so
    a missing point in a figure or report never goes unnoticed.
    """
    ok, notes = _rows_ok(df)
    for note in notes:
        log.warning("%s", note)
    return df[ok]


def left_out_rows(df: pd.DataFrame) -> List[str]:
    """One line per reason for the rows :func:`rows_with_values` leaves out (empty: none)."""
    return _rows_ok(df)[1]


def _rows_ok(df: pd.DataFrame) -> Tuple[np.ndarray, List[str]]:
    status = df["status"].fillna("ok").astype(str) if "status" in df.columns else pd.Series("ok", index=df.index)
    value = pd.to_numeric(df["value"], errors="coerce") if "value" in df.columns else pd.Series(np.nan, index=df.index)
    ok = (status == "ok").to_numpy() & np.isfinite(value.to_numpy(dtype=float))
    notes = []
    if not ok.all():
        reason = status.where(status != "ok", "non-finite value")
        for why, idx in df.index[~ok].groupby(reason[~ok].to_numpy()).items():
            where = ", ".join(_where(df.loc[i]) for i in list(idx)[:5]) + (", ..." if len(idx) > 5 else "")
            notes.append(f"{len(idx)} row(s) without a value left out ({why}): {where}")
    return ok, notes


def _where(row: pd.Series) -> str:
    parts = [f"{k} {row[k]}" for k in ("checkpoint", "layer", "target") if k in row.index and pd.notna(row[k])]
    if "checkpoint" not in row.index and "epoch" in row.index:
        parts.insert(0, f"epoch {row['epoch']}")
    return " / ".join(parts) or "row"


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
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps[name](np.linspace(0.3, 1.0, 256)), name=f"{name}_trunc")


def _wide(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Rows (series, layer, epoch) with columns x and y of ``col``."""
    w = df.pivot_table(index=["series", "layer", "layer_index", "epoch"], columns="target", values=col,
                       aggfunc="mean").reset_index()
    for t in ("x", "y"):
        if t not in w:
            w[t] = np.nan
    return w.sort_values(["series", "layer_index", "epoch"])


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _require_adjusted(df: pd.DataFrame, estimator: str) -> None:
    """Clear errors when a chance-adjusted plot is asked of a table that cannot give one."""
    if "adjusted" not in df.columns:
        raise ValueError("the chance-adjusted plot needs the CSV column 'adjusted', which this table lacks "
                         "(written by an older `infoplane estimate`); re-run `infoplane estimate` on the "
                         "store to add it, or plot the raw values without --adjusted")
    a = _num(df, "adjusted")
    if a.isna().all():
        raise ValueError(f"the CSV column 'adjusted' is empty for estimator {estimator!r}: only kernel "
                         "estimators (nhsic, hsic) have an analytic null; re-run `infoplane estimate` with one, "
                         "or plot the raw values without --adjusted")
    empty = [s for s, g in a.groupby(df["series"]) if g.isna().all()]
    if empty:
        raise ValueError(f"the CSV column 'adjusted' is empty for {', '.join(map(str, empty))} (older tables?); "
                         "re-run `infoplane estimate` for those runs or plot without --adjusted")


def _plot_columns(df: pd.DataFrame, adjusted: bool) -> pd.DataFrame:
    """Add the plotted quantities: _v (value), _sd (minibatch sd), _b (shuffled baseline) and the
    chance band _lo/_hi, all on the raw or on the chance-adjusted scale."""
    d = df.copy()
    nm, ns, std, base = _num(d, "null_mean"), _num(d, "null_sd"), _num(d, "std"), _num(d, "baseline")
    ns = ns.where(ns >= 0)
    if adjusted:
        span = _num(d, "max_value") - nm
        span = span.where(span > 0)
        d["_v"], d["_sd"], d["_b"] = _num(d, "adjusted"), std / span, (base - nm) / span
        d["_lo"], d["_hi"] = -CHANCE_Z * ns / span, CHANCE_Z * ns / span
    else:
        d["_v"], d["_sd"], d["_b"] = _num(d, "value"), std, base
        d["_lo"], d["_hi"] = nm - CHANCE_Z * ns, nm + CHANCE_Z * ns
    return d


def _axis_label(lab: str, target: str, adjusted: bool) -> str:
    return f"{'adjusted ' if adjusted else ''}{lab}({target.upper()};Z)"


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def check_figure_path(out: PathLike, what: str = "--out") -> Path:
    """A figure path with an image extension that is not a directory; raises ``ValueError`` otherwise."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{what} {str(out)!r} is a directory; pass a figure file, e.g. {str(out / 'plane.png')!r}")
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{what} {str(out)!r} has no figure extension; use one of "
                         f"{', '.join(FIGURE_SUFFIXES)} (e.g. {str(out.with_suffix('.png'))!r})")
    return out


def _check_dpi(dpi: float) -> float:
    try:
        value = float(dpi)
    except (TypeError, ValueError):
        raise ValueError(f"dpi must be a positive number, not {dpi!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"dpi must be a positive number, not {dpi!r}")
    return value


def _save(fig, out: PathLike, dpi: float = FIGURE_DPI) -> Path:
    """Write ``fig`` to ``out`` (via ``<stem>.partial<suffix>`` and ``os.replace``: never half a file)."""
    out = check_figure_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, out)
    return out


def _root(fig):
    """The top-level Figure of a Figure or SubFigure (a SubFigure's ``.figure`` is its root)."""
    return getattr(fig, "figure", None) or fig


def _constrained(fig) -> bool:
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    return isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)


def _panels(ax, fig, nrows: int, ncols: int, n: int, figsize: Tuple[float, float], panels: str,
            sharex: bool = False):
    """The Axes to draw ``n`` panels into, laid out ``nrows`` x ``ncols`` (row by row).

    Returns ``(canvas, axes, spare, outside)``: the Figure/SubFigure holding the panels (legend,
    colour bars and title go there), the ``n`` Axes in panel order, Axes of the grid left over (to
    hide), and whether legends may go outside the panels (constrained layout that we lay out).
    ``panels`` describes the panels for error messages (e.g. "3 layers (conv1, fc1, out)").
    """
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, FigureBase

    if ax is not None and fig is not None:
        raise ValueError("pass ax= (Axes to draw into) or fig= (a Figure to lay the panels out in), not both")
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        bad = [type(a).__name__ for a in axes if not isinstance(a, Axes)]
        if bad or not axes:
            got = bad[0] if bad else "an empty array"
            raise TypeError(f"ax must be a matplotlib Axes or an array of Axes, got {got}")
        if len(axes) < n:
            raise ValueError(f"ax has {len(axes)} Axes but the figure has {n} panels ({panels}); pass an array of "
                             f"{n} Axes (e.g. plt.subplots({nrows}, {ncols})[1]), fig= a Figure to lay them out "
                             "in, or select fewer panels (layers=...)")
        canvas = axes[0].figure
        if any(_root(a.figure) is not _root(canvas) for a in axes):
            raise ValueError("the Axes given as ax= belong to different figures; pass Axes of one figure")
        return canvas, axes[:n], axes[n:], False
    if fig is not None:
        if not isinstance(fig, FigureBase):
            raise TypeError(f"fig must be a matplotlib Figure or SubFigure, got {type(fig).__name__}")
        canvas = fig
    else:
        canvas = Figure(figsize=figsize, layout="constrained")
    grid = np.asarray(canvas.subplots(nrows, ncols, squeeze=False, sharex=sharex)).ravel().tolist()
    return canvas, grid[:n], grid[n:], _constrained(canvas)


def _prepare(df: pd.DataFrame, estimator: Optional[str], layers: Optional[Sequence[str]]):
    check_columns(df)
    df = rows_with_values(df)
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


def _legend(canvas, axes: Sequence, handles: list, labels: list, outside: bool, loc: str, **kw) -> None:
    """Legend outside the panels (constrained layout) or, with the caller's Axes, on the last panel."""
    if not handles:
        return
    if outside:
        canvas.legend(handles, labels, loc=f"outside {loc}", frameon=False, **kw)
    else:
        axes[-1].legend(handles, labels, fontsize="small", **kw)


def plot_information_plane(df: pd.DataFrame, out: Optional[PathLike] = None, *,
                           ax: Union["Axes", Sequence["Axes"], Any, None] = None,
                           fig: Union["Figure", "SubFigure", None] = None,
                           estimator: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                           baseline: bool = True, ncols: int = 3, title: Optional[str] = None,
                           adjusted: bool = False, chance: bool = True, dpi: float = FIGURE_DPI) -> "Figure":
    """Information plane per layer (Sakamoto & Sato 2024 Fig. 3/6): x = est(X;Z), y = est(Y;Z), colour = epoch.

    df: the table of ``infoplane estimate`` / ``ip.estimate`` (one or several runs/regimes); one
    panel per layer, in network order. out: also save the figure there (an image path, checked
    before any work; ``dpi`` dots per inch). ax: draw into these Axes instead of a new figure: one
    ``Axes`` when one layer is plotted (``layers=["fc1"]``), else an array of Axes, one per layer
    (extra Axes are hidden). fig: a Figure or SubFigure to lay the panels out in (``ncols`` per
    row). estimator: which estimator of the table (needed when it holds several). adjusted: plot
    the chance-adjusted column ``adjusted`` (0 = chance; ValueError if the table lacks it). chance:
    shade the chance band null_mean ± 2 null_sd where the table has those columns. baseline: draw
    the shuffled-Z baseline (an empirical check of the null). title: the figure's title.

    Returns the matplotlib Figure (the top-level one when drawing into a SubFigure's Axes).
    """
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    if out is not None:
        out = check_figure_path(out, "out")
    dpi = _check_dpi(dpi)
    df, estimator, layer_order = _prepare(df, estimator, layers)
    if adjusted:
        _require_adjusted(df, estimator)
    df = _plot_columns(df, adjusted)
    lab = estimator_label(estimator)
    vals = _wide(df, "_v")
    base = _wide(df, "_b") if baseline and df["_b"].notna().any() else None
    band = chance and df["_lo"].notna().any() and df["_hi"].notna().any()
    lo, hi = (_wide(df, "_lo"), _wide(df, "_hi")) if band else (None, None)
    band_labelled = False
    series = list(dict.fromkeys(vals["series"]))
    styles = _styles(series)
    emin, emax = float(df["epoch"].min()), float(df["epoch"].max())
    norm = Normalize(vmin=emin, vmax=emax if emax > emin else emin + 1)

    n = len(layer_order)
    ncols = max(1, min(int(ncols), n))
    nrows = int(np.ceil(n / ncols))
    shown = ", ".join(layer_order[:6]) + (", ..." if n > 6 else "")
    canvas, axes, spare, outside = _panels(
        ax, fig, nrows, ncols, n, (4.2 * ncols + 1.2 * len(series), 3.7 * nrows + 0.5),
        f"{n} layer{'s' if n != 1 else ''}: {shown}")
    mappables = {}
    for k, layer in enumerate(layer_order):
        pax = axes[k]
        if band:  # chance band of each series: the range over epochs of null_mean +- 2 null_sd
            for s in series:
                lo_s = lo.loc[(lo["series"] == s) & (lo["layer"] == layer)]
                hi_s = hi.loc[(hi["series"] == s) & (hi["layer"] == layer)]
                for t, span in (("x", pax.axvspan), ("y", pax.axhspan)):
                    a, b = np.nanmin(lo_s[t], initial=np.inf), np.nanmax(hi_s[t], initial=-np.inf)
                    if np.isfinite(a) and np.isfinite(b):
                        lbl = None if band_labelled else f"chance: null mean ± {CHANCE_Z:g} null sd"
                        span(a, b, color="0.55", alpha=0.13, lw=0, zorder=0, label=lbl).set_gid(_BAND_GID)
                        band_labelled = True
        if adjusted:
            pax.axvline(0, color="0.3", lw=0.8, zorder=0.5)
            pax.axhline(0, color="0.3", lw=0.8, zorder=0.5)
        for s in series:
            cmap, marker = _truncated(styles[s][0]), styles[s][1]
            d = vals[(vals["series"] == s) & (vals["layer"] == layer)]
            if d.empty:
                continue
            pax.plot(d["x"], d["y"], "-", color="0.6", lw=0.7, zorder=1)
            sc = pax.scatter(d["x"], d["y"], c=d["epoch"], cmap=cmap, norm=norm, marker=marker, s=36,
                             edgecolors="k", linewidths=0.3, zorder=3, label=s)
            mappables[s] = sc
        if base is not None:
            for s in series:
                b = base[(base["series"] == s) & (base["layer"] == layer)]
                if b.empty:
                    continue
                pax.plot(b["x"], b["y"], "--", color="0.6", lw=0.8, marker=styles[s][1], ms=3.5,
                         mfc="0.8", mec="0.6", zorder=2,
                         label=f"shuffled baseline ({s})" if k == 0 else None)
        idx = int(df.loc[df["layer"] == layer, "layer_index"].min())
        pax.set_title(f"layer {idx}: {layer}", fontsize=10)
        pax.set_xlabel(_axis_label(lab, "x", adjusted))
        pax.set_ylabel(_axis_label(lab, "y", adjusted))
        pax.grid(alpha=0.3)
    for a in spare:
        a.set_visible(False)
    handles, labels = [], []
    for a in axes:  # the band's label may sit on any panel
        for h, lb in zip(*a.get_legend_handles_labels()):
            if lb not in labels:
                handles.append(h)
                labels.append(lb)
    _legend(canvas, axes, handles, labels, outside, "lower center", ncol=len(handles) if outside else 1)
    for s, sc in mappables.items():
        cb = canvas.colorbar(sc, ax=list(axes), fraction=0.025, pad=0.02)
        cb.set_label(f"epoch ({s})")
        cb.locator = MaxNLocator(integer=True)
        cb.update_ticks()
    canvas.suptitle("\n".join(t for t in (title, protocol_note(df)) if t), fontsize=9)
    figure = _root(canvas)
    if out is not None:
        _save(figure, out, dpi)
    return figure


def plot_layer_curves(df: pd.DataFrame, out: Optional[PathLike] = None, *,
                      ax: Union["Axes", Sequence["Axes"], Any, None] = None,
                      fig: Union["Figure", "SubFigure", None] = None,
                      estimator: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                      targets: Sequence[str] = ("x", "y"), baseline: bool = True, adjusted: bool = False,
                      chance: bool = True, dpi: float = FIGURE_DPI) -> "Figure":
    """Value against epoch for every layer: one row of panels per target (X, Y), one column per
    series (regime/run); shaded ±1 sd over minibatches; the shuffled baseline dotted; hatched: the
    chance band null_mean ± 2 null_sd (where the table has it).

    df: the table of ``infoplane estimate`` / ``ip.estimate``. targets: the rows of panels, a
    subset of ``("x", "y")``. out: also save the figure there (checked before any work; ``dpi``).
    ax: draw into these Axes: one ``Axes`` when there is one panel (one target, one series), else
    an array of ``len(targets) x n_series`` Axes (any shape, read row by row: target-major). fig:
    a Figure or SubFigure to lay the panels out in. adjusted: the chance-adjusted value (0 =
    chance, reference line at 0; ValueError if the table lacks the column).

    Returns the matplotlib Figure (the top-level one when drawing into a SubFigure's Axes).
    """
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    if out is not None:
        out = check_figure_path(out, "out")
    dpi = _check_dpi(dpi)
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets or any(t not in ("x", "y") for t in targets) or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be 'x', 'y' or both (distinct), got {targets!r}")
    df, estimator, layer_order = _prepare(df, estimator, layers)
    if adjusted:
        _require_adjusted(df, estimator)
    df = _plot_columns(df, adjusted)
    lab = estimator_label(estimator)
    has_band = bool(chance and df["_lo"].notna().any())
    series = list(dict.fromkeys(df["series"]))
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(layer_order), 1)))
    nt, ns = len(targets), len(series)
    canvas, flat, spare, outside = _panels(
        ax, fig, nt, ns, nt * ns, (4.5 * ns + 2.0, 3.25 * nt), f"{nt} target(s) x {ns} series "
        f"({', '.join(map(str, series))})", sharex=True)
    for a in spare:
        a.set_visible(False)
    for j, s in enumerate(series):
        for i, target in enumerate(targets):
            pax = flat[i * ns + j]
            for li, layer in enumerate(layer_order):
                d = df[(df["series"] == s) & (df["layer"] == layer) & (df["target"] == target)]
                d = d.groupby("epoch", as_index=False).mean(numeric_only=True).sort_values("epoch")
                if d.empty:
                    continue
                pax.plot(d["epoch"], d["_v"], "-o", ms=3, color=colors[li], label=layer)
                if d["_sd"].notna().any():
                    pax.fill_between(d["epoch"], d["_v"] - d["_sd"], d["_v"] + d["_sd"],
                                     color=colors[li], alpha=0.15, lw=0)
                if has_band and d["_lo"].notna().any():
                    pax.fill_between(d["epoch"], d["_lo"], d["_hi"], facecolor="none", edgecolor=colors[li],
                                     hatch="////", lw=0, alpha=0.45).set_gid(_BAND_GID)
                if baseline and d["_b"].notna().any():
                    pax.plot(d["epoch"], d["_b"], ":", color=colors[li], lw=1)
            if adjusted:
                pax.axhline(0, color="0.3", lw=0.8, zorder=0.5)
            pax.set_ylabel(_axis_label(lab, target, adjusted))
            pax.grid(alpha=0.3)
            if i == 0:
                pax.set_title(s)
            if i == nt - 1:
                pax.set_xlabel("epoch")
            pax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    h, l = flat[0].get_legend_handles_labels()
    if h:
        notes = (["band: ± minibatch sd"] if df["_sd"].notna().any() else []) \
            + (["dotted: shuffled\nbaseline"] if baseline and df["_b"].notna().any() else []) \
            + ([f"hatched: chance,\nnull mean ± {CHANCE_Z:g} null sd"] if has_band else [])
        note = "layer" + ("\n(" + ";\n".join(notes) + ")" if notes else "")
        _legend(canvas, flat, h, l, outside, "right center", title=note)
    canvas.suptitle(protocol_note(df), fontsize=9)
    figure = _root(canvas)
    if out is not None:
        _save(figure, out, dpi)
    return figure


def protocol_note(df: pd.DataFrame) -> str:
    """How the values were estimated, for a figure: 'minibatch protocol, m = 100, eps = 1e-05,
    sigma paper' (every distinct value of each setting column listed; '' without those columns)."""
    def vals(col: str) -> str:
        if col not in df.columns:
            return ""
        v = list(dict.fromkeys(df[col].dropna().tolist()))
        return "/".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)

    parts = [f"{vals('protocol')} protocol" if vals("protocol") else "",
             f"m = {vals('batch_size')}" if vals("batch_size") else "",
             f"eps = {vals('eps')}" if vals("eps") and vals("eps") != "nan" else "",
             f"sigma {vals('sigma_rule')}" if vals("sigma_rule") else ""]
    return ", ".join(p for p in parts if p)


def curves_path(out: PathLike) -> Path:
    """Where the per-layer curves go next to a plane figure: ``plane.png -> plane_curves.png``."""
    out = Path(out)
    return out.with_name(out.stem + "_curves" + (out.suffix or ".png"))


__all__ = ["plot_information_plane", "plot_layer_curves", "load_estimates", "estimator_label", "curves_path",
           "FIGURE_DPI"]
