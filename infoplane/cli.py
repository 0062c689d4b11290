"""``infoplane`` command line (thin: parse arguments, call the library, print a short summary).

Subcommands: extract, estimate, merge, plot, info, estimators, models, train, demo (see docs/cli.md).
Library errors (bad input, missing or foreign files) become one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, IsADirectoryError, PermissionError,
           OSError, ImportError)


def _sigma(value: str):
    if value in ("paper", "median"):
        return value
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sigma must be 'paper', 'median' or a positive number, not {value!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"--sigma must be positive, not {value!r}")
    return v


def int_at_least(low: int):
    """argparse type: an integer >= ``low`` (argparse prefixes the option name to the message)."""
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {value!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {v}")
        return v
    return parse


def finite_float(positive: bool = False):
    """argparse type: a finite float, > 0 if ``positive`` (argparse prefixes the option name)."""
    import math

    def parse(value: str) -> float:
        try:
            v = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
        if not math.isfinite(v) or (positive and not v > 0):
            raise argparse.ArgumentTypeError(f"must be a finite {'positive ' if positive else ''}number, not {value!r}")
        return v
    return parse


def _params(items: Optional[List[str]]) -> Optional[dict]:
    """``["bins=10", "scheme=equal-mass"]`` -> ``{"bins": 10, "scheme": "equal-mass"}`` (numbers,
    true/false and null as JSON; anything else as text)."""
    import json

    if not items:
        return None
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: write KEY=VALUE, e.g. --param bins=10")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    return out


def _names(value: Optional[str]) -> Optional[List[str]]:
    return None if value is None else [t.strip() for t in value.split(",") if t.strip()]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (exit 2) pointing at ``--help``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the text already states one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def _parser(sub: Any, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          formatter_class=_HelpFormatter, **kw)


PROGRESS_HELP = "no progress bars (they are off anyway when stderr is not a terminal)"
DEVICE_HELP = "torch device: cpu, cuda, cuda:N or auto"


def build_parser() -> argparse.ArgumentParser:
    """The ``infoplane`` argument parser; builds without importing torch, h5py, pandas or matplotlib."""
    from infoplane import __version__

    p = OneLineErrorParser(prog="infoplane", description="Information-plane analysis of neural "
                           "networks: checkpoints -> activations -> estimates -> figures.",
                           formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"infoplane {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more messages (-v: what each step adapts or leaves out, -vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only (no warnings)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    e = _parser(sub, "extract", "run checkpoints and store layer activations (HDF5)")
    e.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (infoplane.checkpoint/1)")
    e.add_argument("--layers", default="all",
                   help="'all' (top-level layers), NAME,NAME, glob patterns ('features.*'), or 'list' to "
                        "print the layer names and exit")
    e.add_argument("--out", default="acts.h5", help="activation store to create or append to")
    e.add_argument("--split", default="test",
                   help="dataset split to run: train or test (with --image-folder: the subfolder ROOT/SPLIT when "
                        "it exists)")
    e.add_argument("--samples", type=int_at_least(4), default=None,
                   help="class-stratified, seeded subset of N samples (default: the whole split)")
    e.add_argument("--batch-size", type=int_at_least(1), default=256, help="samples per forward pass")
    e.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="storage precision")
    e.add_argument("--reduce", default="none", metavar="none|avgpool|flatten-max:D|random-projection:D",
                   help="what is stored of each layer: everything (none); the channel means of conv maps "
                        "(avgpool); layers of at most D values as they are, larger maps average-pooled to at most "
                        "D values (flatten-max:D); layers of more than D values projected to D by a seeded "
                        "Gaussian matrix (random-projection:D). One reduction per store (docs/formats_store.md)")
    e.add_argument("--reduce-seed", type=int_at_least(0), default=0,
                   help="seed of the random-projection matrix (the same matrix for every checkpoint of a store)")
    e.add_argument("--compression", default="none", choices=("none", "lzf", "gzip"),
                   help="HDF5 compression of new layers (gzip at level 4; both with byte shuffling)")
    e.add_argument("--force", action="store_true",
                   help="extract even when the size estimate exceeds the free disk space at --out")
    e.add_argument("--allow-nonfinite", action="store_true",
                   help="store NaN/inf activations (estimate marks those layers) instead of stopping with an "
                        "error naming the checkpoint and layer")
    e.add_argument("--data-root", default="data", help="folder of downloaded datasets (digits needs none)")
    e.add_argument("--model-factory", default=None, metavar="PKG.MOD:FN",
                   help="rebuild a model not in the registry with this function (your own code)")
    data = e.add_mutually_exclusive_group()
    data.add_argument("--image-folder", default=None, metavar="ROOT",
                      help="run over your images instead of the dataset the checkpoints name: ROOT/<class>/<image> "
                           "(ROOT/SPLIT/<class>/<image> when ROOT/SPLIT exists; default: the checkpoints' dataset)")
    data.add_argument("--dataset-factory", default=None, metavar="PKG.MOD:FN",
                      help="run over the Dataset (or DataLoader) of (x, y) this function of yours returns; it gets "
                           "split= and root= (--data-root) where it accepts them (default: the checkpoints' dataset)")
    e.add_argument("--device", default="cpu", help=DEVICE_HELP)
    e.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)

    s = _parser(sub, "estimate", "estimate the dependence of each layer on X and Y -> CSV")
    s.add_argument("store", help="activation store written by `infoplane extract`")
    s.add_argument("--estimator", default="nhsic", help="a name from `infoplane estimators`")
    s.add_argument("--protocol", default="minibatch", choices=("minibatch", "full"),
                   help="minibatch: mean over consecutive batches of --batch-size (the paper's protocol); "
                        "full: all samples at once")
    s.add_argument("--full", dest="protocol", action="store_const", const="full",
                   help="shorthand for --protocol full")
    s.add_argument("--batch-size", type=int_at_least(4), default=100,
                   help="minibatch size m (default: 100, the paper's protocol; on 28x28 images 500-2000 with the "
                        "adjusted column shows X-dependence far better, see docs/estimators.md)")
    s.add_argument("--eps", type=finite_float(positive=True), default=1e-5, help="nHSIC regulariser (the paper's)")
    s.add_argument("--sigma", type=_sigma, default="paper",
                   help="RBF bandwidth: paper (5 sqrt(d)), median, or a number")
    s.add_argument("--distance", default="squared", choices=("squared", "euclidean"),
                   help="distance in the RBF exponent: squared (standard) or euclidean (the published "
                        "E2E-info code)")
    s.add_argument("--baseline", dest="baseline", action="store_true", default=None,
                   help="also estimate on shuffled Z (empirical null; default: only for estimators without an "
                        "exact null)")
    s.add_argument("--no-baseline", dest="baseline", action="store_false", help="never estimate the shuffled baseline")
    s.add_argument("--tolerance", type=finite_float(positive=True), default=None,
                   help="full-sample nHSIC: low-rank factorisation whose error bound is at most this fraction of "
                        "the value, e.g. 1e-3 (default: exact)")
    s.add_argument("--allow-incomplete", action="store_true",
                   help="estimate the complete checkpoints of a store that also holds incomplete ones (they get a "
                        "'skipped' status row); default: an error naming them")
    s.add_argument("--layers", default=None, help="comma list of stored layers or glob patterns (default: all)")
    s.add_argument("--checkpoints", default=None,
                   help="comma list of checkpoint ids or glob patterns, e.g. 'epoch_00*' (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the baseline shuffle")
    s.add_argument("--device", default="cpu", help=DEVICE_HELP)
    s.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads per job (default: 1 for minibatches or several jobs, torch's default for "
                        "--full)")
    s.add_argument("--param", action="append", default=None, metavar="KEY=VALUE",
                   help="a parameter of the estimator over its default, e.g. --param bins=10 (repeatable; "
                        "`infoplane estimators` lists each estimator's parameters)")
    s.add_argument("--jobs", type=int_at_least(1), default=None,
                   help="(checkpoint, layer) jobs run at once on this machine (default: one per CPU core for "
                        "kernel estimators under the minibatch protocol, else 1); values do not depend on it")
    s.add_argument("--backend", default="auto", choices=("auto", "threads", "processes"),
                   help="where --jobs run: threads of this process (kernel estimators: their time is spent in "
                        "LAPACK, which releases the GIL) or worker processes; auto: threads for kernel "
                        "estimators, processes for the others")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run every job on a Dask distributed cluster, e.g. tcp://10.0.0.1:8786; the workers "
                        "read the store from the same path (docs/scaling.md)")
    s.add_argument("--shard", default=None, metavar="I/N",
                   help="estimate only the I-th of N interleaved parts of the jobs (0-based), for array jobs; "
                        "pass the N CSVs together to `infoplane report` or `plot`")
    s.add_argument("--out", default="estimates.csv",
                   help="CSV to write (finished layers are kept in OUT.partial.jsonl until the end, so an "
                        "interrupted run resumes)")
    s.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)

    pl = _parser(sub, "plot", "information planes and per-layer curves from estimate CSVs")
    pl.add_argument("csv", nargs="+", help="one or more CSVs of `infoplane estimate` (e.g. one per regime)")
    pl.add_argument("--out", default="plane.png", help="information-plane figure (.png, .pdf, .svg, ...)")
    pl.add_argument("--curves", default=None, help="per-layer curves figure (default: <out>_curves.png)")
    pl.add_argument("--estimator", default=None, help="which estimator, if the tables hold several")
    pl.add_argument("--layers", default=None, help="comma list of layers (default: all)")
    pl.add_argument("--no-baseline", action="store_true", help="do not draw the shuffled baseline")
    pl.add_argument("--adjusted", action="store_true",
                    help="plot the chance-adjusted value (CSV column 'adjusted': 0 = chance, 1 = perfect "
                         "alignment) instead of the raw one")
    pl.add_argument("--title", default=None, help="figure title")

    mg = _parser(sub, "merge", "join the CSVs of a run cut into shards (estimate --shard I/N) into one table")
    mg.add_argument("parts", nargs="+", help="the N CSVs, one per shard (every shard exactly once)")
    mg.add_argument("--out", required=True, help="the merged CSV (written atomically; not one of the parts)")

    i = _parser(sub, "info", "summarise a checkpoint, a run directory, a store or an estimates CSV")
    i.add_argument("file", nargs="+", help="a checkpoint (.pt), a run directory, an activation store (.h5), an "
                                           "estimates CSV, or with --weights several checkpoints")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--verify", action="store_true",
                   help="stores: read every block and check its checksum (exit 2 naming each damaged layer)")
    i.add_argument("--weights", nargs="?", const="*", default=None, metavar="PARAM",
                   help="singular values of weight matrices per checkpoint (e.g. --weights w.weight; "
                        "globs allowed; default: every weight matrix)")

    _parser(sub, "estimators", "list the registered estimators")
    _parser(sub, "models", "list the registered architectures")

    t = _parser(sub, "train", "train a model with a regime (`infoplane train --help` lists the options)",
                add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER)

    d = _parser(sub, "demo", "E2E vs layer-wise LeNet5 on digits, end to end (a few minutes)")
    d.add_argument("--out", default="demo", help="output directory")
    d.add_argument("--epochs", type=int_at_least(1), default=None, help="training epochs (default: DemoConfig)")
    d.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)

    r = _parser(sub, "report", "markdown report, figures and verdicts comparing runs and regimes")
    r.add_argument("inputs", nargs="+", help="run directories, .h5 stores and/or estimates .csv files")
    r.add_argument("--out", default="report", help="output directory")
    r.add_argument("--estimator", default=None, help="estimator of the planes (default: nhsic if present)")
    r.add_argument("--estimators", default=None, metavar="NAME,NAME",
                   help="set each claim's verdict under these estimators side by side, with a 'robust' column "
                        "(the verdict holds under every estimator trusted at the layer's dimension and sample "
                        "size), e.g. nhsic,renyi,knn,kde,binning; the tables must hold their rows")
    r.add_argument("--threshold", type=finite_float(positive=True), default=2.0,
                   help="noise units for a significant drop")
    r.add_argument("--chance-z", type=finite_float(positive=True), default=2.0,
                   help="a peak less than this many null sd above chance gets no verdict")
    r.add_argument("--reconstruct", type=int_at_least(0), default=6, help="reconstruction examples per layer (0: off)")
    r.add_argument("--no-probe", action="store_true", help="do not run linear probes on the stores")
    r.add_argument("--decoder-epochs", type=int_at_least(1), default=10, help="epochs of the reconstruction decoders")
    r.add_argument("--probe-epochs", type=int_at_least(1), default=30, help="epochs of the linear probes")
    r.add_argument("--max-samples", type=int_at_least(10), default=2000, help="stored samples used by probes/decoders")
    r.add_argument("--device", default="cpu", help=DEVICE_HELP)
    r.add_argument("--seed", type=int, default=0, help="seed of probes and decoders")
    r.add_argument("--title", default="infoplane report", help="report title")
    r.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    return p


def _cmd_extract(a) -> int:
    if a.layers.strip() == "list":
        from infoplane.checkpoint import load_checkpoint
        from infoplane.hooks import default_layers, list_layers

        model = load_checkpoint(a.checkpoints[0]).build_inference_model(a.model_factory)
        chosen = set(default_layers(model))
        for name, kind in list_layers(model):
            print(f"{name:<40} {kind}{'   (all)' if name in chosen else ''}")
        return 0
    from infoplane.extract import extract

    def notice(line: str) -> None:  # the size estimate, one line on stderr before the first row
        if not getattr(a, "quiet", False):
            print(f"infoplane extract: {line}", file=sys.stderr, flush=True)

    out = extract(a.checkpoints, layers=a.layers, out=a.out, split=a.split, samples=a.samples,
                  batch_size=a.batch_size, dtype=a.dtype, data_root=a.data_root, device=a.device,
                  model_factory=a.model_factory, progress=not a.no_progress, allow_nonfinite=a.allow_nonfinite,
                  image_folder=a.image_folder, dataset_factory=a.dataset_factory, reduce=a.reduce,
                  reduce_seed=a.reduce_seed, compression=a.compression, force=a.force, notify=notice,
                  command="infoplane " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    from infoplane.store import ActivationStore

    with ActivationStore(out) as st:
        ck = st.checkpoints()
        print(f"wrote {out}: {st.n_samples} samples, {len(ck)} checkpoints, layers "
              f"{', '.join(st.layers(ck[-1])) if ck else '-'}")
    return 0


def _cmd_estimate(a) -> int:
    import pandas as pd

    from infoplane.estimate import EstimateConfig, check_csv_path, estimate_to_csv

    check_csv_path(a.out)

    cfg = EstimateConfig(estimator=a.estimator, protocol=a.protocol, batch_size=a.batch_size, eps=a.eps,
                         sigma=a.sigma, tolerance=a.tolerance, baseline=a.baseline, seed=a.seed,
                         device=a.device, layers=_names(a.layers), checkpoints=_names(a.checkpoints),
                         distance=a.distance, progress=not a.no_progress, threads=a.threads,
                         allow_incomplete=a.allow_incomplete, params=_params(a.param), jobs=a.jobs, backend=a.backend,
                         scheduler=a.scheduler, shard=a.shard)
    out = estimate_to_csv(a.store, a.out, cfg)
    df = pd.read_csv(out)
    print(f"wrote {out}: {len(df)} rows ({df['checkpoint'].nunique()} checkpoints x "
          f"{df['layer'].nunique()} layers x {df['target'].nunique()} targets)")
    return 0


def _cmd_plot(a) -> int:
    from infoplane.plot import (check_figure_path, curves_path, load_estimates, plot_information_plane,
                                plot_layer_curves)

    check_figure_path(a.out)
    if a.curves:
        check_figure_path(a.curves, "--curves")
    df = load_estimates(a.csv)
    layers = _names(a.layers)
    curves = a.curves or curves_path(a.out)
    plot_information_plane(df, a.out, estimator=a.estimator, layers=layers, baseline=not a.no_baseline,
                           title=a.title, adjusted=a.adjusted)
    plot_layer_curves(df, curves, estimator=a.estimator, layers=layers, baseline=not a.no_baseline,
                      adjusted=a.adjusted)
    print(f"wrote {a.out}\nwrote {curves}")
    return 0


def _cmd_info(a) -> int:
    if a.weights is not None:
        return _info_weights(a)
    if len(a.file) != 1:
        raise ValueError(f"info takes one file ({len(a.file)} given); several checkpoints only with --weights")
    path = Path(a.file[0])
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if path.is_dir():
        from infoplane.checkpoint import format_run_summary, list_checkpoints, summarize_run

        if not list_checkpoints(path):
            raise ValueError(f"{str(path)!r} is a directory without checkpoints (epoch_*.pt); pass a checkpoint, a "
                             "run directory, a store (.h5) or an estimates CSV")
        rows = summarize_run(path)
        if a.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"run {path}: {len(list_checkpoints(path))} checkpoints")
            print(format_run_summary(rows))
        return 0
    if path.suffix.lower() == ".csv":
        return _info_estimates(path)
    import h5py

    if path.suffix.lower() in (".h5", ".hdf5") or h5py.is_hdf5(path):
        from infoplane.store import ActivationStore

        with ActivationStore(path) as st:
            info = st.info
            damaged = st.verify() if a.verify else []
        if damaged:
            raise ValueError(f"{str(path)!r}: {len(damaged)} damaged dataset(s): " + "; ".join(damaged)
                             + ". Re-extract those checkpoints into a new store")
        if a.json:
            print(json.dumps(info, indent=2, default=str))
            return 0
        print(f"activation store {path} ({info['format']})")
        print(f"  model   {info['model'].get('name')} {json.dumps(info['model'].get('kwargs', {}))}")
        print(f"  dataset {info['dataset'].get('name')} split={info['split']} samples={info['n_samples']} "
              f"input={tuple(info['input_shape'])}")
        for c in info["checkpoints"]:
            state = "" if c["complete"] else "  [INCOMPLETE: re-run extract to finish]"
            regime = c["regime"].get("name") if isinstance(c["regime"], dict) else c["regime"]
            layers = ", ".join(f"{n}{tuple(s)}" for n, s in c["layers"].items())
            print(f"  {c['id']:<16} epoch={c['epoch']:<4} regime={regime} {layers}{state}")
        if a.verify:
            print("  every block read back intact (checksums verified)")
        return 0
    from infoplane.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    summ = ck.summary()
    if a.json:
        print(json.dumps(summ, indent=2, default=str))
    else:
        print(f"checkpoint {path}")
        for k, v in summ.items():
            print(f"  {k:<18} {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    return 0


def _info_estimates(path: Path) -> int:
    from infoplane.plot import left_out_rows, read_estimates

    df = read_estimates(path)
    print(f"estimates table {path}: {len(df)} rows")
    for col in ("run", "estimator", "protocol", "checkpoint", "layer", "target"):
        if col in df.columns:
            vals = [str(v) for v in dict.fromkeys(df[col].dropna())]
            print(f"  {col:<11} {len(vals):>4}: {', '.join(vals[:8])}{' ...' if len(vals) > 8 else ''}")
    for note in left_out_rows(df):
        print(f"  {note}")
    return 0


def _info_weights(a) -> int:
    from infoplane.checkpoint import list_checkpoints
    from infoplane.weights import weight_spectra

    files: List[Path] = []
    for f in a.file:
        p = Path(f)
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist")
        files += list(list_checkpoints(p)) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"no checkpoints (epoch_*.pt) in {', '.join(a.file)}")
    df = weight_spectra(files, None if a.weights == "*" else [a.weights])
    if a.json:
        print(df.to_json(orient="records", indent=2))
        return 0
    svals = [c for c in df.columns if c[:1] == "s" and c[1:].isdigit()]
    with pd_options():
        print(df[["epoch", "regime", "parameter", "shape", *svals, "s2_over_s1", "effective_rank"]]
              .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def pd_options():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_rows", 1000, "display.max_columns", 30)


def _cmd_estimators(_a) -> int:
    from infoplane.estimators import get_estimator, list_estimators

    for name in list_estimators():
        spec = get_estimator(name)
        print(f"{name:<15} {spec.kind:<8} {spec.description}")
        extra = []
        if spec.defaults:
            extra.append("parameters (--param KEY=VALUE): "
                         + ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items() if k != "eps"))
        if tuple(spec.targets) != ("x", "y"):
            extra.append(f"targets: {', '.join(spec.targets)} only")
        for line in extra:
            if not line.endswith(": "):
                print(f"{'':<24} {line}")
    return 0


def _cmd_models(_a) -> int:
    from infoplane.models import list_models

    print("\n".join(list_models()))
    return 0


def _cmd_train(a) -> int:
    from trainers.__main__ import main as train_main  # lazy: trainers depends on infoplane, not reverse
    from trainers.distributed import exit_if_distributed

    # under torchrun this process ends here (see exit_if_distributed); otherwise it returns the status
    return exit_if_distributed(int(train_main(list(a.args), prog="infoplane train") or 0))


def _cmd_demo(a) -> int:
    from infoplane.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=a.out, progress=not a.no_progress)
    if a.epochs is not None:
        cfg.epochs = a.epochs
    run_demo(cfg)
    return 0


def _cmd_merge(a) -> int:
    from infoplane.estimate import merge_estimates

    out = merge_estimates(a.parts, a.out)
    print(f"wrote {out}: {len(a.parts)} shards merged")
    return 0


_COMMANDS = {"extract": _cmd_extract, "estimate": _cmd_estimate, "merge": _cmd_merge, "plot": _cmd_plot,
             "info": _cmd_info,
             "estimators": _cmd_estimators, "models": _cmd_models, "train": _cmd_train, "demo": _cmd_demo}


def _cmd_report(a) -> int:
    from infoplane.report import ReportConfig, build_report

    cfg = ReportConfig(threshold=a.threshold, chance_z=a.chance_z, estimator=a.estimator, reconstruct=a.reconstruct,
                       probe=not a.no_probe, decoder_epochs=a.decoder_epochs, probe_epochs=a.probe_epochs,
                       max_samples=a.max_samples, device=a.device, seed=a.seed, progress=not a.no_progress,
                       title=a.title, estimators=a.estimators)
    print(build_report(a.inputs, a.out, cfg))
    return 0


_COMMANDS["report"] = _cmd_report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``infoplane`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `train` forwards everything after it (including --help) to the trainers' parser
    if "train" in args_list:
        k = args_list.index("train")
        head = args_list[:k]
        if all(x in ("--debug", "-q", "--quiet", "--verbose") or x.startswith("-v") and set(x[1:]) == {"v"}
               for x in head):
            a = parser.parse_args(head + ["train"])
            a.args = args_list[k + 1:]
            setup_logging(a.verbose, a.quiet)
            return _run(a)
    a = parser.parse_args(args_list)
    setup_logging(a.verbose, a.quiet)
    return _run(a)


_HANDLER: Optional[Any] = None


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Messages of the ``infoplane`` and ``trainers`` loggers on stderr, one line each: warnings by
    default (samples left out, settings adapted, rows without a value), ``-v`` adds what each step
    does, ``-vv`` debug, ``-q`` errors only."""
    import logging

    global _HANDLER
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO)[min(verbose, 1)] if verbose < 2 \
        else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("infoplane", "trainers"):
        logger = logging.getLogger(name)
        if _HANDLER is not None:
            logger.removeHandler(_HANDLER)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    _HANDLER = handler


#: What an interrupted command leaves behind (outputs are only ever renamed into place when whole).
_KEPT_ON_INTERRUPT = {
    "extract": "the store keeps every finished checkpoint; re-run the same command to resume",
    "train": "the checkpoints written so far are complete and kept",
    "demo": "the files written so far are complete",
    "estimate": "the finished layers are kept in OUT.partial.jsonl; re-run the same command to resume",
}


def _run(a) -> int:
    try:
        return _COMMANDS[a.command](a)
    except BrokenPipeError:  # output piped into `head` etc.
        return 0
    except KeyboardInterrupt:
        kept = _KEPT_ON_INTERRUPT.get(a.command, "nothing was written")
        if a.command == "estimate":
            from infoplane.estimate import resume_path

            kept = kept.replace("OUT.partial.jsonl", str(resume_path(a.out)))
        print(f"infoplane {a.command}: interrupted; {kept}", file=sys.stderr)
        return 130
    except _ERRORS as exc:
        if a.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"infoplane {a.command}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything unforeseen: still one line, the traceback on request
        if a.debug:
            raise
        print(f"infoplane {a.command}: error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
