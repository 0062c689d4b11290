"""``python -m trainers ...``: parse arguments into a TrainConfig and call ``trainers.train``.

Every option is a flag, grouped by the regime that reads it; an option the chosen regime does not
use is an error naming both (only options given on the command line count, defaults never do).
``--preset NAME`` starts from a paper's settings (``trainers.presets``); explicit flags override it.
``torchrun --nproc_per_node N -m trainers ...`` trains on N processes (docs/scaling.md); --batch-size
is then the global batch.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import (AUX_KINDS, E2E_LOSSES, LOCAL_LOSSES, LR_SCHEDULES, NHSIC_TARGETS, OPTIMIZERS, PRECISIONS,
                     SCHEDULES, TRAIN_AUGMENTS, VIEW_RECIPES, TrainConfig)
from .options import KWARG_FLAGS

_D = TrainConfig()
_S = argparse.SUPPRESS



def parse_kv(items: Optional[List[str]], flag: str) -> Dict[str, Any]:
    """``["width=64", "channels=[4,8]"]`` -> dict; values are Python literals or plain strings."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} takes key=value pairs, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def _default(name: str) -> str:
    value = getattr(_D, name)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _h(text: str, name: Optional[str] = None, default: Optional[str] = None) -> str:
    """Help text with its default stated once (``name``: a TrainConfig field; ``default``: literal)."""
    if name is not None:
        default = _default(name)
    return f"{text} (default: {default})" if default is not None else text


def _context(value: str) -> str:
    """One spelling rule for the CLI and the regime (``infoplane.inference.contsup.canonical_context``)."""
    from infoplane.inference.contsup import canonical_context

    try:
        return canonical_context(str(value).strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--context {value!r}: {exc}") from None


def _sigma(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        if value not in ("paper", "median"):
            raise argparse.ArgumentTypeError(f"--nhsic-sigma takes 'paper', 'median' or a number, got {value!r}")
        return value


def build_parser(prog: str = "python -m trainers") -> argparse.ArgumentParser:
    from .presets import PRESETS, list_presets

    from infoplane.cli import OneLineErrorParser

    p = OneLineErrorParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=_S)
    g = p.add_argument_group("preset (explicit flags override it)")
    g.add_argument("--preset", choices=list_presets(), metavar="NAME",
                   help="start from a paper's settings: " + "; ".join(
                       f"{n} ({PRESETS[n].short})" for n in list_presets())
                        + " (docs/regimes.md lists what each sets) (default: none)")

    g = p.add_argument_group("model and data")
    g.add_argument("--model", help=_h("registered model name (infoplane.models.list_models())", "model"))
    g.add_argument("--width", type=int, help="shortcut for --model-kwargs width=N")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="extra model kwargs")
    g.add_argument("--dataset", help=_h("dataset name (infoplane.data.list_datasets())", "dataset"))
    g.add_argument("--data-root", help=_h("folder of the downloaded datasets", "data_root"))
    g.add_argument("--download", action="store_const", const=True, help="download missing datasets")
    g.add_argument("--subset", type=int, help="train on a seeded stratified subset of N samples (default: all)")
    g.add_argument("--test-subset", type=int, help="test subset size (default: the --subset value)")
    g.add_argument("--train-augment", choices=TRAIN_AUGMENTS,
                   help=_h("training-batch augmentation: random translation (reflect padding), + horizontal "
                           "flip", "train_augment"))
    g.add_argument("--train-crop-pad", type=int, help=_h("translation of --train-augment, pixels", "train_crop_pad"))

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help=_h("optimiser", "optimizer"))
    g.add_argument("--lr", type=float, help=_h("learning rate (a preset's lr scales with --batch-size)", "lr"))
    g.add_argument("--weight-decay", type=float, help=_h("L2 weight decay (gradient + wd * w)", "weight_decay"))
    g.add_argument("--weight-decay-params", nargs="+", metavar="PREFIX",
                   help="decay only the backbone parameters whose names start with these prefixes "
                        "(e.g. w: the toy model's W) (default: every parameter)")
    g.add_argument("--momentum", type=float, help=_h("SGD momentum", "momentum"))
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help=_h("Nesterov momentum (SGD)", "nesterov"))
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help=_h("step: x gamma after each milestone; cosine: annealing to 0 over the run", "lr_schedule"))
    g.add_argument("--warmup", type=int, metavar="N",
                   help=_h("epochs of linear warm-up (lr x e / (N + 1) in epoch e <= N)", "warmup"))
    g.add_argument("--milestones", type=int, nargs="+",
                   help="epochs after which the step schedule decays (default: 1/2, 3/4, 7/8, 15/16 of the run)")
    g.add_argument("--gamma", type=float, help=_h("decay factor of the step schedule", "gamma"))
    g.add_argument("--batch-size", type=int, help=_h("training batch size; under torchrun the global batch, split "
                                                     "evenly across the processes", "batch_size"))
    g.add_argument("--eval-batch-size", type=int, help=_h("evaluation batch size", "eval_batch_size"))
    g.add_argument("--epochs", type=int, help=_h("training epochs", "epochs"))

    g = p.add_argument_group("regime (docs/regimes.md; options of other regimes are refused)")
    g.add_argument("--regime", help=_h("e2e, layerwise, layerwise-sequential, greedy, dgl, infopro, contsup, "
                                       "forward-forward, forward-gradient", "regime"))
    g.add_argument("--regime-kwargs", nargs="*", metavar="KEY=VALUE",
                   help="options of regimes added later (the built-in ones have flags below)")

    g = p.add_argument_group("e2e")
    g.add_argument("--loss", choices=E2E_LOSSES, help=_h("E2E loss", "loss"))
    g.add_argument("--probe-lr", type=float, help=_h("lr of the linear evaluation head (supcon/simclr)", "probe_lr"))

    g = p.add_argument_group("contrastive losses (e2e supcon/simclr, layer-wise supcon)")
    g.add_argument("--temperature", type=float, help=_h("temperature of eq. 14", "temperature"))
    g.add_argument("--aug-views", choices=VIEW_RECIPES,
                   help=_h("view recipe: crop-color (RandomResizedCrop, flip, ColorJitter, grayscale) or "
                           "noise-shift; auto = crop-color on RGB images", "aug_views"))
    g.add_argument("--aug-noise", type=float, help=_h("noise-shift views: noise x per-feature std", "aug_noise"))
    g.add_argument("--aug-crop-pad", type=int, help="noise-shift views: shift in pixels (default: max(1, H // 8))")

    g = p.add_argument_group("layer-wise (layerwise, layerwise-sequential)")
    g.add_argument("--local-loss", choices=LOCAL_LOSSES, help=_h("local loss of the hidden layers", "local_loss"))
    g.add_argument("--aux", choices=AUX_KINDS, help=_h("auxiliary network (auto: the loss's choice)", "aux"))
    g.add_argument("--aux-hidden", type=int, help=_h("hidden width of mlp / mlp2 heads", "aux_hidden"))
    g.add_argument("--aux-max-features", type=int, help=_h("average-pool representations to this size",
                                                           "aux_max_features"))
    g.add_argument("--proj-dim", type=int, help=_h("output size of supcon / sim heads", "proj_dim"))
    g.add_argument("--sp-topk", type=int, help=_h("sp-hard: ones per target row", "sp_topk"))
    g.add_argument("--epochs-per-layer", type=int,
                   help="layerwise-sequential (and async module regimes): epochs per stage "
                        "(default: --epochs split evenly)")
    g.add_argument("--nhsic-lambda", type=float, help=_h("eq. 11 strength", "nhsic_lambda"))
    g.add_argument("--nhsic-target", choices=NHSIC_TARGETS, help=_h("T of eq. 11", "nhsic_target"))
    g.add_argument("--nhsic-sigma", type=_sigma, help=_h("'paper' (5 sqrt(d)), 'median' or a number", "nhsic_sigma"))
    g.add_argument("--nhsic-eps", type=float, help=_h("eps of the nHSIC estimator", "nhsic_eps"))

    g = p.add_argument_group("K local modules (greedy, dgl, infopro, contsup)")
    g.add_argument("--modules", type=int, metavar="K", dest="kw__modules",
                   help=_h("number of gradient-isolated modules", default="4"))
    g.add_argument("--async", action="store_const", const=True, dest="kw__async",
                   help="train module k alone on cached outputs of the trained modules < k (default: simultaneous)")
    g.add_argument("--epochs-per-module", type=int, dest="kw__epochs_per_module", metavar="N",
                   help="--async: epochs per module (default: --epochs-per-layer, else --epochs // K)")
    g.add_argument("--cache-rows", type=int, dest="kw__cache_rows", metavar="N", help=_h("--async: cache size", default="200000"))
    g.add_argument("--tau", type=float, dest="kw__tau", metavar="T",
                   help=_h("temperature of the contrastive local loss (infopro, contsup)", default="0.07"))

    g = p.add_argument_group("infopro")
    g.add_argument("--infopro-loss", choices=("softmax", "contrast"), dest="kw__infopro_loss",
                   help=_h("L_y of eq. 5", default="contrast"))
    g.add_argument("--lambda1", type=float, nargs="+", metavar="L", dest="kw__lambda1",
                   help="FIRST [LAST]: weight of the reconstruction term, module 1 -> module K-1 (default: the "
                        "authors' command for K; K = 4: 6 1)")
    g.add_argument("--lambda2", type=float, nargs="+", metavar="L", dest="kw__lambda2",
                   help="FIRST [LAST]: weight of the label term, module 1 -> module K-1 (default: the authors' "
                        "command for K; K = 4: 0 2)")

    g = p.add_argument_group("contsup")
    g.add_argument("--context", type=_context, metavar="{E,R1,R1E,R2..R16,RnE,...}", dest="kw__context",
                   help=_h("context supplied to each module: E (input), R<n> (n earlier module inputs), "
                           "R<n>E, Rn / RnE (all earlier ones)", default="R1E"))
    g.add_argument("--contsup-loss", choices=("softmax", "contrast"), dest="kw__contsup_loss",
                   help=_h("local loss", default="softmax"))

    g = p.add_argument_group("forward-forward")
    g.add_argument("--ff-label", choices=("onehot", "prototype"), dest="kw__ff_label",
                   help=_h("how the label enters the input", default="onehot"))
    g.add_argument("--ff-mode", choices=("simultaneous", "sequential"), dest="kw__ff_mode",
                   help="train all layers on every batch, or one layer after the other (default: the regime's)")
    g.add_argument("--ff-loss", choices=("reference", "sum"), dest="kw__ff_loss",
                   help="goodness loss (default: the regime's)")
    g.add_argument("--ff-norm", choices=("l2", "rms"), dest="kw__ff_norm",
                   help="normalisation between layers (default: the regime's)")
    g.add_argument("--ff-threshold", type=float, dest="kw__threshold", metavar="T", help="goodness threshold (default: the regime's)")

    g = p.add_argument_group("forward-gradient")
    g.add_argument("--directions", type=int, dest="kw__directions", metavar="N",
                   help=_h("tangents averaged per step", default="1"))

    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory (refused if not empty)")
    g.add_argument("--overwrite", action="store_const", const=True, help="replace the files of an earlier run")
    g.add_argument("--seed", type=int, help=_h("random seed", "seed"))
    g.add_argument("--deterministic", action="store_const", const=True,
                   help="deterministic kernels (bit-identical CUDA runs)")
    g.add_argument("--allow-nonfinite", action="store_const", const=True,
                   help="keep training when the loss becomes NaN/inf (default: stop with a message)")
    g.add_argument("--device", help=_h("cpu, cuda, cuda:N or auto (under torchrun, cuda means cuda:LOCAL_RANK)",
                                       "device"))
    g.add_argument("--precision", choices=PRECISIONS,
                   help=_h("autocast dtype of the training forward passes (fp16: with gradient scaling, CUDA "
                           "only); evaluation stays float32", "precision"))
    g.add_argument("--schedule", choices=SCHEDULES, help=_h("checkpoint schedule", "schedule"))
    g.add_argument("--num-checkpoints", type=int, help=_h("checkpoints of --schedule log", "num_checkpoints"))
    g.add_argument("--no-save-init", action="store_const", const=False, dest="save_init",
                   help="do not write epoch_0000.pt")
    g.add_argument("--no-eval-train", action="store_const", const=False, dest="eval_train",
                   help="skip the train-set evaluation pass")
    g.add_argument("--num-workers", type=int, help=_h("DataLoader workers", "num_workers"))
    g.add_argument("--no-progress", action="store_const", const=False, dest="progress", help="no progress bars")
    return p


def explicit_settings(args: argparse.Namespace) -> Tuple[Dict[str, Any], Optional[str]]:
    """(the TrainConfig settings given on the command line, the preset name)."""
    given = dict(vars(args))
    preset = given.pop("preset", None)
    settings: Dict[str, Any] = {}
    kwargs = parse_kv(given.pop("regime_kwargs", None), "--regime-kwargs")
    for key, value in given.items():
        if not key.startswith("kw__"):
            continue
        name = key[4:]
        if name in ("lambda1", "lambda2"):
            if len(value) > 2:
                raise ValueError(f"{KWARG_FLAGS[name]} takes FIRST [LAST], got {len(value)} numbers")
            value = value[0] if len(value) == 1 else tuple(value)
        if name in kwargs and kwargs[name] != value:
            raise ValueError(f"{KWARG_FLAGS[name]} and --regime-kwargs {name}= disagree; give it once")
        kwargs[name] = value
    if kwargs:
        settings["regime_kwargs"] = kwargs
    model_kwargs = parse_kv(given.pop("model_kwargs", None), "--model-kwargs")
    if "width" in given:
        model_kwargs["width"] = given.pop("width")
    if model_kwargs:
        settings["model_kwargs"] = model_kwargs
    for key, value in given.items():
        if key.startswith("kw__"):
            continue
        if key in ("milestones", "weight_decay_params"):
            value = tuple(value)
        settings[key] = value
    return settings, preset


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed arguments: the preset, the explicit flags on top, options checked."""
    from .presets import resolve

    settings, preset = explicit_settings(args)
    return resolve(settings, preset)


def _is_main_process() -> bool:
    """False on the processes of a torchrun run other than rank 0 (they print nothing but the unforeseen)."""
    from .distributed import world_from_env

    try:
        return world_from_env().is_main
    except ValueError:
        return True


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m trainers") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    main_process = _is_main_process()
    try:
        from .loop import train

        config = config_from_args(args)
        paths = train(config)
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as err:
        if main_process:  # under torchrun every process raises the same error: rank 0 tells it
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        if main_process:
            print(f"interrupted: the checkpoints written so far are complete and kept in {out!r} (a checkpoint "
                  "file is only ever renamed into place when whole)", file=sys.stderr)
        return 130
    except Exception as err:  # anything unforeseen: one line (the data written so far is complete)
        print(f"{parser.prog}: error: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if not main_process:
        return 0
    from infoplane.checkpoint import format_run_summary, summarize_run

    print(format_run_summary(summarize_run(config.out), last=3))
    print(f"wrote {len(paths)} checkpoints to {config.out}")
    return 0


if __name__ == "__main__":
    from .distributed import exit_if_distributed

    sys.exit(exit_if_distributed(main()))
