"""``python -m trainers ...``: parse arguments into a TrainConfig and call ``trainers.train``."""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Dict, List, Optional

from .config import AUX_KINDS, E2E_LOSSES, LOCAL_LOSSES, NHSIC_TARGETS, OPTIMIZERS, SCHEDULES, TrainConfig


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


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m trainers", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model, help="registered model name (infoplane.models.list_models())")
    g.add_argument("--width", type=int, default=None, help="shortcut for --model-kwargs width=N")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="extra model kwargs")
    g.add_argument("--dataset", default=d.dataset)
    g.add_argument("--data-root", default=d.data_root)
    g.add_argument("--download", action="store_true")
    g.add_argument("--subset", type=int, default=None, help="train on a seeded stratified subset of N samples")
    g.add_argument("--test-subset", type=int, default=None, help="test subset size (default: --subset)")
    g = p.add_argument_group("regime (docs/regimes.md)")
    g.add_argument("--regime", default=d.regime, help="e2e, layerwise, layerwise-sequential, ...")
    g.add_argument("--loss", default=d.loss, choices=E2E_LOSSES, help="E2E loss")
    g.add_argument("--local-loss", default=d.local_loss, choices=LOCAL_LOSSES, help="layer-wise local loss")
    g.add_argument("--aux", default=d.aux, choices=AUX_KINDS, help="auxiliary network (auto: the loss's default)")
    g.add_argument("--aux-hidden", type=int, default=d.aux_hidden)
    g.add_argument("--aux-max-features", type=int, default=d.aux_max_features)
    g.add_argument("--proj-dim", type=int, default=d.proj_dim)
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--probe-lr", type=float, default=d.probe_lr, help="linear evaluation head (contrastive E2E)")
    g.add_argument("--aug-noise", type=float, default=d.aug_noise)
    g.add_argument("--aug-crop-pad", type=int, default=None)
    g.add_argument("--sp-topk", type=int, default=d.sp_topk)
    g.add_argument("--epochs-per-layer", type=int, default=None)
    g.add_argument("--nhsic-lambda", type=float, default=d.nhsic_lambda, help="eq. 11 strength")
    g.add_argument("--nhsic-target", default=d.nhsic_target, choices=NHSIC_TARGETS)
    g.add_argument("--nhsic-sigma", default=d.nhsic_sigma, help="'paper', 'median' or a number")
    g.add_argument("--nhsic-eps", type=float, default=d.nhsic_eps)
    g.add_argument("--regime-kwargs", nargs="*", metavar="KEY=VALUE", help="options of other regimes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="epochs of lr decay (default: 1/2, 3/4, 7/8, 15/16 of the run)")
    g.add_argument("--gamma", type=float, default=d.gamma)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--epochs", type=int, default=d.epochs)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory (refused if not empty)")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-identical CUDA runs)")
    g.add_argument("--device", default=d.device, help="cpu, cuda or auto")
    g.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="checkpoint schedule")
    g.add_argument("--num-checkpoints", type=int, default=d.num_checkpoints, help="for --schedule log")
    g.add_argument("--no-save-init", action="store_true", help="do not write epoch_0000.pt")
    g.add_argument("--no-eval-train", action="store_true", help="skip the train-set evaluation pass")
    g.add_argument("--num-workers", type=int, default=d.num_workers)
    g.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    model_kwargs = parse_kv(args.model_kwargs, "--model-kwargs")
    if args.width is not None:
        model_kwargs["width"] = args.width
    sigma: Any = args.nhsic_sigma
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        pass
    return TrainConfig(
        model=args.model, dataset=args.dataset, model_kwargs=model_kwargs, data_root=args.data_root,
        download=args.download, subset=args.subset, test_subset=args.test_subset, regime=args.regime,
        loss=args.loss, local_loss=args.local_loss, aux=args.aux, aux_hidden=args.aux_hidden,
        aux_max_features=args.aux_max_features, proj_dim=args.proj_dim, temperature=args.temperature, probe_lr=args.probe_lr,
        aug_noise=args.aug_noise, aug_crop_pad=args.aug_crop_pad, sp_topk=args.sp_topk,
        epochs_per_layer=args.epochs_per_layer, nhsic_lambda=args.nhsic_lambda, nhsic_target=args.nhsic_target,
        nhsic_sigma=sigma, nhsic_eps=args.nhsic_eps, regime_kwargs=parse_kv(args.regime_kwargs, "--regime-kwargs"),
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        milestones=tuple(args.milestones) if args.milestones else None, gamma=args.gamma,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, epochs=args.epochs, seed=args.seed, deterministic=args.deterministic,
        device=args.device, out=args.out, overwrite=args.overwrite, schedule=args.schedule,
        num_checkpoints=args.num_checkpoints, save_init=not args.no_save_init, eval_train=not args.no_eval_train,
        num_workers=args.num_workers, progress=not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .loop import train

        paths = train(config_from_args(args))
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} checkpoints to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
