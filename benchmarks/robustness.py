"""Do the information-plane verdicts survive a change of estimator? (E2E vs layer-wise LeNet5)

Trains reproduction-like runs (LeNet5 on a Fashion-MNIST training subset, Adam 5e-4, batch 128,
the step schedule, a log-spaced checkpoint schedule; E2E and layer-wise with linear auxiliary
classifiers), extracts every layer on a class-stratified subset of the test split, estimates
I(X; Z) and I(Y; Z) with each estimator (nHSIC and the classic ones: Rényi, KSG, KDE, binning,
adaptive binning) under the same minibatch protocol, and writes the report's robustness section:
per claim (compression per layer, layer-role differentiation, IB signature) the verdict under each
estimator, read against chance, and whether it holds under every estimator the benchmark with
known truth trusts at that dimension and sample size (``infoplane.estimators.trust``).

Every step is a CLI call (``python -m trainers``, ``infoplane extract``, ``infoplane estimate``)
on one CPU thread; finished steps are kept in ``--work`` (default runs/robustness, git-ignored), so
an interrupted run resumes. Outputs: ``benchmarks/results/robustness/robustness.{md,csv}``.

    python -m benchmarks.robustness                 # about 25 min of CPU
    python -m benchmarks.robustness --quick --out /tmp/rob   # smoke test (digits, tiny)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "robustness"

REGIMES = {"e2e": ["--regime", "e2e"],
           "layerwise": ["--regime", "layerwise", "--local-loss", "ce", "--aux", "linear"]}


@dataclass
class RobustnessConfig:
    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    subset: int = 5000              # training images
    test_subset: int = 2000         # test images for accuracy
    epochs: int = 20
    num_checkpoints: int = 8        # log-spaced, epoch 0 included
    lr: float = 5e-4
    regimes: Sequence[str] = ("e2e", "layerwise")
    seeds: Sequence[int] = (0,)
    samples: int = 2000             # stored test samples (class-stratified)
    batch_size: int = 500           # minibatch m of every estimator
    estimators: Sequence[str] = ("nhsic", "renyi", "knn", "kde", "binning", "binning-adaptive")
    threshold: float = 2.0
    chance_z: float = 2.0
    work: Path = ROOT / "runs" / "robustness"
    out: Path = RESULTS
    data_root: str = "data"
    quick: bool = False
    seconds: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, out: Optional[Path]) -> "RobustnessConfig":
        return cls(dataset="digits", subset=300, test_subset=200, epochs=3, num_checkpoints=3, samples=120,
                   batch_size=60, regimes=("e2e", "layerwise"), estimators=("nhsic", "renyi", "kde"),
                   work=(out or Path("/tmp/robustness_quick")) / "work", out=out or Path("/tmp/robustness_quick"),
                   quick=True)


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(cmd: List[str], cfg: RobustnessConfig, what: str) -> None:
    t0 = time.perf_counter()
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    cfg.seconds[what] = cfg.seconds.get(what, 0.0) + time.perf_counter() - t0


def run_name(regime: str, seed: int) -> str:
    return f"{regime}_s{seed}"


def train(cfg: RobustnessConfig, regime: str, seed: int) -> Path:
    out = cfg.work / "train" / run_name(regime, seed)
    metrics = out / "metrics.csv"
    if metrics.exists() and (out / f"epoch_{cfg.epochs:04d}.pt").exists():
        m = pd.read_csv(metrics)
        if len(m) and int(m["epoch"].max()) == cfg.epochs:
            return out
    cmd = [sys.executable, "-m", "trainers", "--model", cfg.model, "--dataset", cfg.dataset, "--subset",
           str(cfg.subset), "--test-subset", str(cfg.test_subset), "--epochs", str(cfg.epochs),
           "--optimizer", "adam", "--lr", str(cfg.lr), "--batch-size", "128", "--schedule", "log",
           "--num-checkpoints", str(cfg.num_checkpoints), "--seed", str(seed), "--device", "cpu",
           "--data-root", cfg.data_root, "--out", str(out), "--overwrite", "--no-progress", *REGIMES[regime]]
    _run(cmd, cfg, "train")
    return out


def extract(cfg: RobustnessConfig, run_dir: Path, name: str) -> Path:
    store = cfg.work / "stores" / f"{name}.h5"
    done = cfg.work / "stores" / f"{name}.done"
    if store.exists() and done.exists():
        return store
    ckpts = sorted(str(p) for p in run_dir.glob("epoch_*.pt"))
    cmd = [sys.executable, "-m", "infoplane", "extract", *ckpts, "--out", str(store), "--samples",
           str(cfg.samples), "--data-root", cfg.data_root, "--no-progress"]
    _run(cmd, cfg, "extract")
    done.write_text(json.dumps(ckpts))
    return store


def estimate(cfg: RobustnessConfig, store: Path, name: str, estimator: str) -> Path:
    out = cfg.work / "estimates" / f"{name}_{estimator}.csv"
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "infoplane", "estimate", str(store), "--estimator", estimator, "--batch-size",
           str(cfg.batch_size), "--threads", "1", "--out", str(out), "--no-progress"]
    _run(cmd, cfg, f"estimate {estimator}")
    return out


def accuracy_table(cfg: RobustnessConfig) -> pd.DataFrame:
    rows = []
    for regime in cfg.regimes:
        for seed in cfg.seeds:
            m = pd.read_csv(cfg.work / "train" / run_name(regime, seed) / "metrics.csv")
            last = m[m["epoch"] == m["epoch"].max()].iloc[-1]
            rows.append({"run": run_name(regime, seed), "epochs": int(last["epoch"]),
                         "train_acc": float(last["train_acc"]), "test_acc": float(last["test_acc"])})
    return pd.DataFrame(rows)


def layer_table(cfg: RobustnessConfig, stores: Dict[str, Path], csvs: List[Path]) -> pd.DataFrame:
    """Per layer: dimension and, per estimator and target, whether the trust rule trusts it."""
    from infoplane.estimators.trust import trust_dimension, trusted_up_to, trustworthy
    from infoplane.store import ActivationStore

    store = next(iter(stores.values()))
    with ActivationStore(store) as st:
        c = st.checkpoints()[-1]
        dx = int(math.prod(st.inputs(slice(0, 1)).shape[1:]))
        dims = {layer: int(math.prod(st._layer_ds(c, layer).shape[1:])) for layer in st.layers(c)}
    rows = []
    for layer, dz in dims.items():
        row = {"layer": layer, "dim": dz}
        for e in cfg.estimators:
            for t in ("x", "y"):
                d = trust_dimension(e, t, dz, dx)
                row[f"{e} {t}"] = "trusted" if trustworthy(e, d, cfg.batch_size, t) else (
                    f"no (<= {trusted_up_to(e, cfg.batch_size, t)})")
        rows.append(row)
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame) -> str:
    from infoplane.report import _md_table

    return _md_table(df, list(df.columns))


def summarise(rob: Dict[str, pd.DataFrame], estimators: Sequence[str], dyn: Optional[pd.DataFrame] = None) -> List[str]:
    """Which verdicts survive a change of estimator, in words (counts over the tables below)."""
    from infoplane.report import COMPRESSES, KEEPS, NO, UNKNOWN, YES

    lines = []
    for claim, df in rob.items():
        n = len(df)
        if not n:
            continue
        yes, no = int((df["robust"] == YES).sum()), int((df["robust"] == NO).sum())
        held = "; ".join(f"{r['run']} {r['layer']} {str(r['target']).upper()}: {r['robust_verdict']}"
                         for _, r in df[df["robust"] == YES].iterrows())
        lines.append(f"- **{claim}**: robust in {yes} of {n} rows{' (' + held + ')' if held else ''}; the "
                     f"trustworthy estimators disagree in {no}; cannot tell in {n - yes - no}.")
    comp = rob["compression"]
    ests = [e for e in estimators if e in comp.columns]
    for target, g in comp.groupby("target", sort=True):
        agree, split = 0, []
        for _, r in g.iterrows():
            by = {v: [e for e in ests if r[e] == v] for v in (COMPRESSES, KEEPS)}
            if by[COMPRESSES] and by[KEEPS]:
                split.append(f"{r['run']} {r['layer']} ({', '.join(by[COMPRESSES])} vs {', '.join(by[KEEPS])})")
            elif len(by[COMPRESSES]) + len(by[KEEPS]) >= 2:
                agree += 1
        lines.append(f"- Compression of {str(target).upper()}, every estimator counted (trusted or not): all definite "
                     f"verdicts agree in {agree} of {len(g)} layers; 'compresses' against 'does not compress' in "
                     f"{len(split)}" + (": " + "; ".join(split) if split else "") + ".")
    if dyn is not None and len(dyn):
        c = dyn[dyn["verdict"] == COMPRESSES]
        at0 = c[c["peak_epoch"] == c["first_epoch"]]
        lines.append(f"- Of the {len(c)} 'compresses' verdicts (all estimators, both targets), {len(at0)} have their peak "
                     "at the first checkpoint (epoch 0): a fall from the random initialisation, with no rise before it ("
                     + ", ".join(f"{e} {int((at0['estimator'] == e).sum())} of {int((c['estimator'] == e).sum())}"
                                 for e in ests if (c["estimator"] == e).any()) + ").")
    per_est = {e: int((comp[e] == UNKNOWN).sum()) for e in ests}
    lines.append(f"- *cannot tell* per estimator (of {len(comp)} compression rows): "
                 + ", ".join(f"{e} {v}" for e, v in per_est.items()) + ".")
    return lines


def cost_lines(cfg: RobustnessConfig, csvs: List[Path]) -> str:
    """Seconds spent, from the files themselves (so that a resumed run reports the whole cost)."""
    est: Dict[str, float] = {}
    for p in csvs:
        d = pd.read_csv(p)
        e = str(d["estimator"].iloc[0]) if len(d) else p.stem
        est[e] = est.get(e, 0.0) + float(pd.to_numeric(d["seconds"], errors="coerce").sum())
    train = 0.0
    for regime in cfg.regimes:
        for seed in cfg.seeds:
            m = pd.read_csv(cfg.work / "train" / run_name(regime, seed) / "metrics.csv")
            train += float(pd.to_numeric(m.get("seconds", pd.Series(dtype=float)), errors="coerce").sum())
    return ("training (sum of the epochs' seconds) " + f"{train:.0f} s; estimation (sum of the rows' seconds, value "
            "and baseline): " + ", ".join(f"{e} {v:.0f} s" for e, v in est.items()) + f"; total {sum(est.values()):.0f} s")


def run(cfg: RobustnessConfig) -> Path:
    from infoplane.report import _robustness_markdown, build_report, robustness_statistics, _layer_dims, collect_inputs

    t0, c0 = time.perf_counter(), time.process_time()
    cfg.work.mkdir(parents=True, exist_ok=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    stores: Dict[str, Path] = {}
    csvs: List[Path] = []
    for regime in cfg.regimes:
        for seed in cfg.seeds:
            name = run_name(regime, seed)
            run_dir = train(cfg, regime, seed)
            stores[name] = extract(cfg, run_dir, name)
            for e in cfg.estimators:
                csvs.append(estimate(cfg, stores[name], name, e))
    report_dir = cfg.work / "report"
    build_report([*csvs, *stores.values()], report_dir, reconstruct=0, probe=False, progress=False,
                 estimators=list(cfg.estimators), threshold=cfg.threshold, chance_z=cfg.chance_z,
                 title="E2E vs layer-wise LeNet5: robustness across estimators")
    df, store_paths, _ = collect_inputs([*csvs, *stores.values()])
    rob = robustness_statistics(df, cfg.estimators, cfg.threshold, cfg.chance_z, dims=_layer_dims(df, store_paths))
    long = pd.concat(list(rob.values()), ignore_index=True)
    tmp = cfg.out / "robustness.csv.partial"
    long.to_csv(tmp, index=False)
    os.replace(tmp, cfg.out / "robustness.csv")

    acc = accuracy_table(cfg)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                if k not in ("work", "out", "seconds", "quick", "data_root")}
    md = ["# Robustness of the information-plane verdicts across estimators", "",
          f"Generated by `python -m benchmarks.robustness{' --quick' if cfg.quick else ''}` "
          f"({platform.machine()}, one CPU thread per step, 2 cores shared with other jobs; "
          + cost_lines(cfg, csvs) + ").", "",
          "Settings: `" + json.dumps(settings) + "`. Every estimate uses the minibatch protocol with m = "
          f"{cfg.batch_size} on the {cfg.samples} stored test images ({cfg.samples // cfg.batch_size} batches): the "
          "value is the mean over batches, the noise their sd, and the estimators without an exact null carry the "
          "shuffled-Z baseline. The verdict rules are those of `infoplane report` (docs/report.md).", "",
          "## Accuracy at the last epoch", "", _md(acc), "",
          f"## Which estimators the benchmark trusts here (m = {cfg.batch_size})", "",
          "`trusted`: `infoplane.estimators.trust.trustworthy` at the layer's dimension (target x: the larger of "
          "the layer's and the 784-d input's, except binning and kde, whose I(X; T) depends on the layer alone); "
          "`no (<= D)`: the benchmark resolves 0.5-nat steps only up to dimension D at this m.", "",
          _md(layer_table(cfg, stores, csvs)), ""]
    from infoplane.report import trajectory_statistics

    dyn = trajectory_statistics(df[df["estimator"].isin(list(cfg.estimators))], cfg.threshold, cfg.chance_z)
    md += ["## What survives a change of estimator", ""] + summarise(rob, cfg.estimators, dyn) + [""]
    md += _robustness_markdown(rob, cfg.estimators, cfg.threshold, cfg.chance_z)
    md += ["The whole report (planes, every estimator's margins in `dynamics.csv`) is rebuilt from the work folder "
           "with `infoplane report runs/robustness/estimates/*.csv runs/robustness/stores/*.h5 --estimators "
           + ",".join(cfg.estimators) + " --reconstruct 0 --no-probe`.", ""]
    path = cfg.out / "robustness.md"
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(md))
    os.replace(tmp, path)
    print("\n".join(md))
    print(f"wrote {path} and {cfg.out / 'robustness.csv'} (CPU {time.process_time() - c0:.0f} s in this process)",
          file=sys.stderr)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: digits, 3 epochs, 3 estimators")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/robustness)")
    p.add_argument("--work", type=Path, default=None, help="resumable work folder (default runs/robustness)")
    p.add_argument("--seeds", default=None, help="comma list of training seeds (default 0)")
    p.add_argument("--data-root", default="data", help="folder of the datasets")
    a = p.parse_args(argv)
    cfg = RobustnessConfig.quick_config(a.out) if a.quick else RobustnessConfig(out=a.out or RESULTS)
    if a.work is not None:
        cfg.work = a.work
    if a.seeds:
        cfg.seeds = tuple(int(s) for s in a.seeds.split(","))
    cfg.data_root = a.data_root
    import torch

    torch.set_num_threads(1)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
