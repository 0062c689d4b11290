"""``infoplane demo``: the main paper's LeNet5 comparison (Sakamoto & Sato 2024 sec. 4.1, Figure 3) in miniature.

Trains LeNet5 on the embedded ``digits`` data twice — end to end (E2E, cross-entropy) and
layer-wise (each layer with its own linear auxiliary classifier, Sakamoto & Sato 2024 sec. 2.1) — keeping a
checkpoint per epoch; extracts every top-level layer on the test split; estimates nHSIC(X;Z) and
nHSIC(Y;Z) with the paper's minibatch protocol (m = 100, eps = 1e-5, sigma = 5 sqrt(d)) and the
shuffled baseline; and draws the information plane. A few minutes on 2 CPU cores.
Imports ``trainers`` lazily (``trainers -> infoplane`` is the only package dependency).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd


@dataclass
class DemoConfig:
    """out: output directory; epochs: training epochs per regime; regimes: trainer regimes to
    compare; model/dataset: registered names; batch_size: the estimate minibatch size (paper 100);
    lr / train_batch_size: Adam step and training batch (larger lr and smaller batch than the
    paper's 5e-4 / 128 so that the 1437 digits training images give a trained net in few epochs)."""

    out: str = "demo"
    epochs: int = 15
    regimes: tuple = ("e2e", "layerwise")
    model: str = "lenet5"
    dataset: str = "digits"
    subset: Optional[int] = None
    batch_size: int = 100
    lr: float = 2e-3
    train_batch_size: int = 64
    seed: int = 0
    progress: bool = True


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """First / peak / last value per (regime, layer, target), with the exact chance level and the
    chance-adjusted value at the last epoch, from an estimates table."""
    rows = []
    for (regime, idx, layer, target), d in df.groupby(["regime", "layer_index", "layer", "target"]):
        d = d.sort_values("epoch")
        peak = d.loc[d["value"].idxmax()]
        last = d.iloc[-1]
        rows.append({"regime": regime, "layer": f"{idx}:{layer}", "target": target,
                     "first": d["value"].iloc[0], "peak": peak["value"], "peak_epoch": int(peak["epoch"]),
                     "last": last["value"], "chance_last": last.get("null_mean", float("nan")),
                     "z_last": last.get("z", float("nan")), "adjusted_first": d["adjusted"].iloc[0]
                     if "adjusted" in d else float("nan"),
                     "adjusted_last": last.get("adjusted", float("nan"))})
    return pd.DataFrame(rows)


def run_demo(config: Optional[DemoConfig] = None, verbose: bool = True) -> Dict[str, Path]:
    """Run train -> extract -> estimate -> plot; returns the paths written (and prints a summary)."""
    from trainers import train
    from trainers.config import TrainConfig

    from infoplane.checkpoint import load_checkpoint
    from infoplane.estimate import EstimateConfig, estimate_store, write_csv_atomic
    from infoplane.extract import extract
    from infoplane.plot import curves_path, plot_information_plane, plot_layer_curves

    cfg = config or DemoConfig()
    if int(cfg.epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    frames: List[pd.DataFrame] = []
    acc: Dict[str, float] = {}
    paths: Dict[str, Path] = {}
    for regime in cfg.regimes:
        run_dir = out / "runs" / regime
        aux = {} if regime == "e2e" else {"aux": "linear"}  # e2e has no auxiliary heads: --aux is refused there
        ckpts = train(TrainConfig(model=cfg.model, dataset=cfg.dataset, regime=regime, **aux,
                                  lr=cfg.lr, batch_size=cfg.train_batch_size,
                                  epochs=int(cfg.epochs), subset=cfg.subset, out=str(run_dir), seed=cfg.seed,
                                  overwrite=True, device="cpu", progress=cfg.progress))
        acc[regime] = float(load_checkpoint(ckpts[-1]).metrics.get("test_acc", float("nan")))
        store = out / f"acts_{regime}.h5"
        if store.exists():
            store.unlink()
        extract(ckpts, layers="all", out=store, split="test", progress=cfg.progress,
                command=f"infoplane demo --out {cfg.out}")
        frames.append(estimate_store(store, EstimateConfig(batch_size=cfg.batch_size, seed=cfg.seed,
                                                           progress=cfg.progress)))
        paths[f"store_{regime}"] = store
    df = pd.concat(frames, ignore_index=True)
    paths["estimates"] = write_csv_atomic(df, out / "estimates.csv")
    paths["plane"], paths["curves"] = out / "plane.png", curves_path(out / "plane.png")
    plot_information_plane(df, paths["plane"], title=f"{cfg.model} on {cfg.dataset}: E2E vs layer-wise")
    plot_layer_curves(df, paths["curves"])
    if verbose:
        print("\ntest accuracy (last epoch): " + ", ".join(f"{r} {a:.3f}" for r, a in acc.items()))
        with pd.option_context("display.width", 120, "display.max_rows", 200, "display.precision", 3):
            print("\nnHSIC per layer (first / peak / last epoch; chance = exact null mean at the last epoch, "
                  "z = (last - chance) / null sd, adjusted = (value - chance) / (max - chance)):")
            print(summary_table(df).to_string(index=False))
        print()
        for k, p in paths.items():
            print(f"{k:<18} {p}")
    return paths


__all__ = ["DemoConfig", "run_demo", "summary_table"]
