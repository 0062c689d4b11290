"""Reproduce the E2E-vs-layer-wise claims of Sakamoto & Sato (2024) as pre-registered, falsifiable tests.

One command trains every configuration for several seeds, extracts activations of a fixed set of
test samples on a log-spaced checkpoint grid, estimates nHSIC(X;Z) and nHSIC(Y;Z) under two
protocols, and decides each claim HOLDS / FAILS / CANNOT TELL per setting:

    python benchmarks/reproduce_paper.py                     # full run: 62 min measured on 2 shared CPU cores
    python benchmarks/reproduce_paper.py --analyse-only      # re-decide / redraw from finished runs
    python benchmarks/reproduce_paper.py --quick --out /tmp/q --work /tmp/q/runs   # ~1 min (tests)

Resumable: each run writes ``WORK/<run>/done.json`` when trained, extracted and estimated; a
second call skips finished runs (a run whose settings changed is redone). Runs live in ``WORK``
(default ``runs/reproduce``, not under version control); activation stores and checkpoints are
deleted once measured (``--keep-checkpoints`` keeps the checkpoints, about 2 GB for the full run).
Results go to ``OUT`` (default ``benchmarks/results/reproduce``): ``verdicts.json``, ``findings.md``,
``runs.csv``, ``layer_stats.csv``, ``trajectories.csv``, ``toy_weights.csv`` and the figures.

Claims (the statistics are defined in ``benchmarks/_repro_analysis.py``):
  (a) E2E test accuracy > layer-wise with linear heads; the gap shrinks with MLP heads (Table 1, Fig. 5);
  (b) Fashion-MNIST, LeNet5: layer-wise conv1's nHSIC(X;Z) rises then falls, E2E's does not (Fig. 3b);
  (c) E2E compresses middle layers while the last hidden layer keeps nHSIC(Y;Z); layer-wise
      compresses every layer (Figs. 6, 15-16), on a reduced-width VGG11-BN (and on LeNet5);
  (d) layer-role differentiation: E2E layers split into compressing / non-compressing, layer-wise not;
  (e) the nHSIC augmenting term (eq. 11, lambda = 0.05) removes layer-wise compression without
      raising accuracy; E2E SupCon and SimCLR compress every layer (Fig. 10);
  (f) the toy example: layer-wise training collapses the second singular value of W (sec. 4.2, Fig. 4).

Sizes of the full run (chosen so that it finishes in about an hour on 2 CPU cores shared with other
work, two runs at a time with one torch thread each; measured: 62 minutes for the 48 runs, plus
about 15 s of analysis): Fashion-MNIST training subset of 10,000 images (the
paper: full CIFAR-10 / MNIST), the whole 10,000-image test set for accuracy, 2,000 stratified test
images for nHSIC; LeNet5 and the Toy-MLP (5 x 512) 30 epochs, VGG11-BN at width 1/4 (channels
16..128) 20 epochs, digits LeNet5 60 epochs, the toy 30 epochs; Adam, lr 5e-4, batch 128, the
paper's step schedule (x0.2 at 1/2, 3/4, 7/8, 15/16 of the run); 3 seeds; 12 log-spaced
checkpoints plus the initialisation. nHSIC: RBF kernel, sigma = 5 sqrt(d), eps = 1e-5 (app. F.1.2);
the paper's protocol = minibatches of m = 100, value minus its exact chance level; the recommended
protocol = minibatches of m = 500 and the chance-adjusted value ``adjusted``. The digits test split
(360 images) is too small for 2,000 evaluation samples, so digits serves the accuracy claims only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("reproduce_paper")

#: The two nHSIC protocols: name -> (minibatch size m, column used as the chance-corrected value).
PROTOCOLS = ("paper", "recommended")


@dataclass
class ReproConfig:
    """Scale of the reproduction. The defaults are the full run; :meth:`quick` is the test-sized one."""

    seeds: Tuple[int, ...] = (0, 1, 2)
    hard_dataset: str = "fashion-mnist"     # the harder task available offline (the paper: CIFAR-10)
    easy_dataset: str = "digits"            # the easier task (the paper: MNIST)
    subset: Optional[int] = 10000           # training images of the hard dataset (None = all)
    test_subset: Optional[int] = 10000      # test images for accuracy (None = the trainer's default)
    eval_samples: int = 2000                # stratified test images whose activations are estimated
    epochs: Dict[str, int] = field(default_factory=lambda: {"lenet5": 30, "mlp": 30, "vgg11_bn": 20,
                                                            "easy": 60, "toy": 30})
    vgg_width: float = 0.25                 # VGG11-BN channel multiplier (16..128 channels)
    mlp_width: int = 512                    # Toy-MLP of app. F.4.4: five layers of 512
    mlp_depth: int = 5
    lenet_kwargs: Dict[str, Any] = field(default_factory=dict)
    num_checkpoints: int = 12               # log-spaced, plus epoch 0
    m_paper: int = 100                      # the paper's minibatch size (app. F.1.2)
    m_recommended: int = 500                # the recommended one (see calibration_real.md)
    nhsic_lambda: float = 0.05              # eq. 11 strength of the augmenting term
    lr: float = 5e-4
    batch_size: int = 128
    threshold: float = 2.0                  # "beyond 2 null-sd"
    converged_fraction: float = 0.95        # final / plateau accuracy needed for late-training claims
    min_seeds: int = 3
    workers: int = 2
    threads: int = 1
    device: str = "cpu"
    data_root: str = "data"
    with_vgg: bool = True
    with_contrastive: bool = True
    mode: str = "full"

    @classmethod
    def quick(cls) -> "ReproConfig":
        """Test-sized: digits stands in for both datasets, tiny models, 2 seeds, a few epochs."""
        return cls(seeds=(0, 1), hard_dataset="digits", subset=600, test_subset=360, eval_samples=200,
                   epochs={"lenet5": 3, "mlp": 3, "vgg11_bn": 2, "easy": 3, "toy": 3}, vgg_width=0.125,
                   mlp_width=32, mlp_depth=3, lenet_kwargs={"channels": (4, 8), "hidden": (32, 16)},
                   num_checkpoints=3, m_paper=50, m_recommended=100, min_seeds=2, workers=1, lr=5e-3,
                   mode="quick")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable view (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ReproConfig":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["seeds"] = tuple(d["seeds"])
        return cls(**d)


@dataclass
class RunSpec:
    """One training run and what is measured on it.

    group: the configuration without the seed (``fashion-mnist/lenet5/lw-linear``); variant: the
    training variant (e2e, lw-linear, lw-mlp, lw-nhsic, e2e-supcon, e2e-simclr, toy-lw, toy-e2e);
    train: keyword arguments of ``trainers.TrainConfig`` (``preset`` goes to ``from_preset``);
    measure: "nhsic" (extract + estimate), "accuracy" (metrics only) or "weights" (W's spectrum)."""

    name: str
    group: str
    dataset: str
    model: str
    variant: str
    seed: int
    train: Dict[str, Any]
    measure: str
    eval_samples: int = 0
    m: Tuple[int, int] = (100, 500)
    cost: float = 1.0

    def key(self) -> Dict[str, Any]:
        """What decides whether a finished run can be reused."""
        return json.loads(json.dumps({"train": self.train, "measure": self.measure,
                                      "eval_samples": self.eval_samples, "m": list(self.m)}, default=list))


VARIANTS: Dict[str, Dict[str, Any]] = {
    "e2e": dict(regime="e2e"),
    "lw-linear": dict(regime="layerwise", local_loss="ce", aux="linear"),
    "lw-mlp": dict(regime="layerwise", local_loss="ce", aux="mlp"),
    "lw-nhsic": dict(regime="layerwise", local_loss="ce", aux="linear"),   # + nhsic_lambda
    "e2e-supcon": dict(regime="e2e", loss="supcon"),
    "e2e-simclr": dict(regime="e2e", loss="simclr"),
}


def plan(cfg: ReproConfig) -> List[RunSpec]:
    """Every run of the reproduction, most expensive first (for load balancing)."""
    specs: List[RunSpec] = []
    hard, easy = cfg.hard_dataset, cfg.easy_dataset
    lenet_kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.lenet_kwargs.items()}
    mlp_kw = {"width": cfg.mlp_width, "depth": cfg.mlp_depth}
    base = dict(optimizer="adam", lr=cfg.lr, batch_size=cfg.batch_size, schedule="log",
                num_checkpoints=cfg.num_checkpoints, data_root=cfg.data_root, device=cfg.device)

    def add(dataset: str, model: str, mkw: Dict[str, Any], variant: str, epochs: int, measure: str,
            cost: float, subset: Optional[int], test_subset: Optional[int]) -> None:
        tr = dict(base, model=model, dataset=dataset, model_kwargs=mkw, epochs=int(epochs), **VARIANTS[variant])
        if variant == "lw-nhsic":
            tr["nhsic_lambda"] = cfg.nhsic_lambda
        if subset is not None:
            tr["subset"] = int(subset)
        if test_subset is not None:
            tr["test_subset"] = int(test_subset)
        for seed in cfg.seeds:
            group = f"{dataset}/{model}/{variant}"
            specs.append(RunSpec(name=f"{dataset}_{model}_{variant}_s{seed}", group=group, dataset=dataset,
                                 model=model, variant=variant, seed=int(seed), train=dict(tr, seed=int(seed)),
                                 measure=measure, eval_samples=cfg.eval_samples if measure == "nhsic" else 0,
                                 m=(cfg.m_paper, cfg.m_recommended), cost=cost * epochs))

    ep = cfg.epochs
    lenet_variants = ["e2e", "lw-linear", "lw-mlp", "lw-nhsic"]
    if cfg.with_contrastive:
        lenet_variants += ["e2e-supcon", "e2e-simclr"]
    cost = {"e2e": 2.5, "lw-linear": 2.0, "lw-mlp": 2.2, "lw-nhsic": 6.7, "e2e-supcon": 4.3, "e2e-simclr": 4.7}
    for v in lenet_variants:
        add(hard, "lenet5", lenet_kw, v, ep["lenet5"], "nhsic", cost[v], cfg.subset, cfg.test_subset)
    for v in ("e2e", "lw-linear", "lw-mlp"):
        add(hard, "mlp", mlp_kw, v, ep["mlp"], "nhsic", 2.0, cfg.subset, cfg.test_subset)
    if cfg.with_vgg:
        for v in ("e2e", "lw-linear"):
            add(hard, "vgg11_bn", {"width": cfg.vgg_width}, v, ep["vgg11_bn"], "nhsic", 12.0, cfg.subset,
                cfg.test_subset)
    if easy and easy != hard:
        for v in ("e2e", "lw-linear", "lw-mlp"):
            add(easy, "lenet5", lenet_kw, v, ep["easy"], "accuracy", 0.2, None, None)
    for reg in ("layerwise", "e2e"):
        for seed in cfg.seeds:
            tr = dict(preset="sakamoto2024-toy", regime=reg, seed=int(seed), epochs=int(ep["toy"]),
                      device=cfg.device, data_root=cfg.data_root)
            variant = "toy-lw" if reg == "layerwise" else "toy-e2e"
            specs.append(RunSpec(name=f"toy-rings_toy-linear_{variant}_s{seed}",
                                 group=f"toy-rings/toy-linear/{variant}",
                                 dataset="toy-rings", model="toy-linear", variant=variant, seed=int(seed), train=tr,
                                 measure="weights", cost=0.3 * ep["toy"]))
    return sorted(specs, key=lambda s: -s.cost)


# ----------------------------------------------------------------------------- one run
def _done(run_dir: Path, spec: RunSpec) -> bool:
    p = run_dir / "done.json"
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text())["key"] == spec.key()
    except (ValueError, KeyError):
        return False


def run_one(spec: RunSpec, work: str, threads: int = 1, progress: bool = False,
            keep_checkpoints: bool = False) -> Dict[str, Any]:
    """Train, then measure one run in ``work/<name>``; skipped when ``done.json`` matches. Returns its record.

    The checkpoints are deleted once measured unless ``keep_checkpoints`` (the analysis reads only
    ``metrics.csv``, ``estimates_*.csv``, ``weights.csv`` and ``done.json``)."""
    import torch

    torch.set_num_threads(int(threads))
    run_dir = Path(work) / spec.name
    if _done(run_dir, spec):
        return json.loads((run_dir / "done.json").read_text())
    import trainers
    from infoplane.checkpoint import list_checkpoints

    t0 = time.perf_counter()
    tr = dict(spec.train)
    preset = tr.pop("preset", None)
    common = dict(out=str(run_dir), overwrite=True, progress=progress)
    tc = (trainers.TrainConfig.from_preset(preset, **tr, **common) if preset
          else trainers.TrainConfig(**tr, **common))
    trainers.train(tc)
    ckpts = list_checkpoints(run_dir)
    t1 = time.perf_counter()
    timings = {"train_s": t1 - t0}
    if spec.measure == "nhsic":
        from infoplane.estimate import EstimateConfig, estimate_to_csv
        from infoplane.extract import extract

        store = run_dir / "activations.h5"
        if store.exists():
            store.unlink()
        extract(ckpts, layers="all", out=store, split="test", samples=spec.eval_samples,
                data_root=tr.get("data_root", "data"), device=tr.get("device", "cpu"), progress=progress)
        t2 = time.perf_counter()
        for proto, m in zip(PROTOCOLS, spec.m):
            estimate_to_csv(store, run_dir / f"estimates_{proto}.csv",
                            EstimateConfig(estimator="nhsic", batch_size=int(m), protocol="minibatch",
                                           sigma="paper", eps=1e-5, seed=spec.seed, device="cpu",
                                           progress=progress, threads=int(threads)))
        store.unlink()
        timings.update(extract_s=t2 - t1, estimate_s=time.perf_counter() - t2)
    elif spec.measure == "weights":
        from infoplane.weights import weight_spectra

        df = weight_spectra(ckpts, ["w.weight"])
        df.drop(columns=["checkpoint"]).to_csv(run_dir / "weights.csv", index=False)
    if not keep_checkpoints:
        for p in ckpts:
            Path(p).unlink(missing_ok=True)
    record = {"name": spec.name, "key": spec.key(), "spec": dataclasses.asdict(spec), **timings,
              "seconds": time.perf_counter() - t0}
    tmp = run_dir / "done.json.partial"
    tmp.write_text(json.dumps(record, indent=1, default=list))
    os.replace(tmp, run_dir / "done.json")
    return record


def run_all(specs: Sequence[RunSpec], work: Path, workers: int, threads: int, progress: bool,
            keep_checkpoints: bool = False) -> List[Dict[str, Any]]:
    """Run every spec (``workers`` processes, ``threads`` torch threads each); finished runs are skipped."""
    work.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not _done(work / s.name, s)]
    log.info("%d runs planned, %d finished earlier, %d to do", len(specs), len(specs) - len(todo), len(todo))
    records: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    if workers <= 1:
        for i, s in enumerate(todo, 1):
            records.append(run_one(s, str(work), threads, progress, keep_checkpoints))
            log.info("[%d/%d] %s done (%.0f s, %.0f s elapsed)", i, len(todo), s.name, records[-1]["seconds"],
                     time.perf_counter() - t0)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(run_one, s, str(work), threads, False, keep_checkpoints): s for s in todo}
            for i, f in enumerate(as_completed(futs), 1):
                s = futs[f]
                records.append(f.result())
                log.info("[%d/%d] %s done (%.0f s, %.0f s elapsed)", i, len(todo), s.name, records[-1]["seconds"],
                         time.perf_counter() - t0)
    return records


# ----------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="test-sized run (digits only, tiny models, 2 seeds)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reproduce"), help="results folder")
    ap.add_argument("--work", default=None, help="run folder (checkpoints; default runs/reproduce[-quick])")
    ap.add_argument("--workers", type=int, default=None, help="runs trained at a time (default 2; quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--analyse-only", action="store_true", help="decide and draw from the finished runs only")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep WORK/<run>/epoch_*.pt after measuring")
    ap.add_argument("--progress", action="store_true", help="progress bars (one worker only)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    work = Path(args.work) if args.work else ROOT / "runs" / ("reproduce-quick" if args.quick else "reproduce")
    cfg_path = out / "config.json"
    if args.analyse_only and cfg_path.exists():
        cfg = ReproConfig.from_dict(json.loads(cfg_path.read_text())["config"])
    else:
        cfg = ReproConfig.quick() if args.quick else ReproConfig()
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    if args.workers is not None:
        cfg.workers = int(args.workers)
    if args.threads is not None:
        cfg.threads = int(args.threads)
    specs = plan(cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prev_seconds = 0.0
    if cfg_path.exists():
        try:
            prev_seconds = float(json.loads(cfg_path.read_text()).get("train_wall_s", 0.0))
        except ValueError:
            prev_seconds = 0.0
    wall = prev_seconds
    if not args.analyse_only:
        records = run_all(specs, work, cfg.workers, cfg.threads, args.progress, args.keep_checkpoints)
        if records:  # count only calls that trained something
            wall = prev_seconds + (time.perf_counter() - t0)
        (cfg_path.with_suffix(".partial")).write_text(json.dumps(
            {"config": cfg.to_dict(), "work": str(work), "train_wall_s": wall,
             "runs": [s.name for s in specs]}, indent=1))
        os.replace(cfg_path.with_suffix(".partial"), cfg_path)
    from benchmarks import _repro_analysis as analysis

    result = analysis.analyse(cfg, specs, work, out, wall_s=wall, figures=not args.no_figures)
    print(analysis.verdict_table(result["verdicts"]))
    log.info("wrote %s", out / "verdicts.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
