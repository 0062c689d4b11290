"""Store size and extraction time for big models with each ``--reduce`` and ``--compression``.

ResNet18 and ResNet50 (``infoplane.models``, width 64, CIFAR stem, untrained: the weights do not
change the sizes, and change compression ratios only a little) on random 3x32x32 inputs,
``extract(model, (x, y), layers="all")`` (ResNet18: stem, block1..block8, out; ResNet50: stem,
block1..block16, out), one checkpoint, float32 storage, for every reduction x compression:

* reductions: ``none``, ``avgpool``, ``flatten-max:4096``, ``random-projection:1024``;
* compression: ``none``, ``lzf``, ``gzip`` (level 4; both with byte shuffling).

Measured on ``--samples`` images (default 256 for ResNet18, 128 for ResNet50) and extrapolated,
linearly in the number of samples, to 10,000 samples per checkpoint (labelled as such in the
table): a store grows by the same bytes per sample, and the time by the same seconds per batch,
after the first batch.

    python benchmarks/big_stores.py             # table + results/big_stores.{md,csv}
    python benchmarks/big_stores.py --quick     # tiny widths, a smoke run
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

HERE = Path(__file__).resolve().parent
REDUCTIONS = ("none", "avgpool", "flatten-max:4096", "random-projection:1024")
COMPRESSIONS = ("none", "lzf", "gzip")
PER = 10_000


def _bare(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            model(x[lo:lo + batch_size])
    return time.perf_counter() - t0


def measure(model_name: str, n: int, width: int = 64, batch_size: int = 64,
            reductions=REDUCTIONS, compressions=COMPRESSIONS, tmp: Optional[str] = None) -> List[Dict[str, Any]]:
    from infoplane.extract import extract
    from infoplane.models import build_model
    from infoplane.store import ActivationStore

    torch.manual_seed(0)
    model = build_model(model_name, input_shape=(3, 32, 32), num_classes=10, width=width).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10
    _bare(model, x[:batch_size], batch_size)  # warm-up
    bares = [_bare(model, x, batch_size)]
    rows = []
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        for red in reductions:
            for comp in compressions:
                out = Path(d) / "acts.h5"
                bares.append(_bare(model, x, batch_size))  # the bare pass next to each run: min over all
                lines: List[str] = []
                t0 = time.perf_counter()
                extract(model, (x, y), layers="all", out=out, batch_size=batch_size, reduce=red,
                        compression=comp, progress=False, epoch=0, notify=lines.append, force=True)
                secs = time.perf_counter() - t0
                size = out.stat().st_size
                with ActivationStore(out) as st:
                    layers = st.layers("epoch_0000")
                    floats = sum(int(torch.tensor(st._layer_ds("epoch_0000", l).shape[1:]).prod()) for l in layers)
                inputs = n * 3 * 32 * 32 * 4
                row = {"model": model_name, "width": width, "reduce": red, "compression": comp, "samples": n,
                       "layers": len(layers), "floats_per_sample": floats,
                       "store_MiB": size / 2 ** 20, "layer_bytes_per_sample": (size - inputs) / n,
                       "extract_s": secs, "bare_forward_s": min(bares), "ratio_to_bare": secs / min(bares),
                       "per10k_GiB_extrapolated": (size - inputs) / n * PER / 2 ** 30,
                       "per10k_min_extrapolated": secs / n * PER / 60, "estimate": lines[0] if lines else ""}
                rows.append(row)
                print(f"{model_name:9s} {red:24s} {comp:5s} {row['store_MiB']:9.1f} MiB {secs:7.1f} s  "
                      f"-> {row['per10k_GiB_extrapolated']:8.2f} GiB / 10k", flush=True)
                out.unlink()
    for r in rows:  # against the quickest bare pass of the whole series
        if r["model"] == model_name:
            r["bare_forward_s"] = min(bares)
            r["ratio_to_bare"] = r["extract_s"] / min(bares)
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | --reduce | --compression | floats / sample | measured store MiB (N) | layer bytes / sample | "
             "extract s (N) | x bare forward | **extrapolated** GiB per 10k samples | **extrapolated** min per 10k |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['reduce']} | {r['compression']} | {r['floats_per_sample']:,} | "
                     f"{r['store_MiB']:.1f} ({r['samples']}) | {r['layer_bytes_per_sample']:,.0f} | "
                     f"{r['extract_s']:.1f} ({r['samples']}) | {r['ratio_to_bare']:.2f} | "
                     f"{r['per10k_GiB_extrapolated']:.2f} | {r['per10k_min_extrapolated']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples18", type=int, default=256)
    ap.add_argument("--samples50", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--quick", action="store_true", help="width 4, 32 samples, two options (smoke run)")
    ap.add_argument("--tmp", default=None, help="folder for the stores while they are measured")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    if a.quick:
        rows = measure("resnet18", 32, width=4, batch_size=16, reductions=("none", "avgpool"),
                       compressions=("none", "lzf"), tmp=a.tmp)
        print(_table(rows))
        return rows
    rows = measure("resnet18", a.samples18, tmp=a.tmp) + measure("resnet50", a.samples50, tmp=a.tmp)
    load1 = os.getloadavg()
    table = _table(rows)
    print(table)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/big_stores.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Stores for big models: size and time per `--reduce` / `--compression`", "",
          f"Command: `{cmd.strip()}`  ",
          f"Machine: {platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__} ({a.threads} "
          f"threads), Python {platform.python_version()}  ",
          f"Load average (1, 5, 15 min) before: {' '.join(f'{v:.2f}' for v in load0)}; after: "
          f"{' '.join(f'{v:.2f}' for v in load1)} (shared machine: times are indicative).", "",
          "ResNet18 / ResNet50 at width 64 (CIFAR stem), untrained, random 3x32x32 inputs, `--layers all`, one "
          "checkpoint, float32, batch size 64. Measured on N samples (in brackets); the last two columns are "
          "**extrapolated linearly** to 10,000 samples of one checkpoint (layers only, without the inputs' 12 KiB "
          "per sample). `x bare forward`: the extraction's wall time over the quickest of the bare forward passes of "
          "the same model on the same N samples (one before each extraction). Compression ratios of untrained "
          "(random) weights: trained networks' sparser ReLU maps usually compress better.", "", table, ""]
    for name, text in (("big_stores.md", "\n".join(md)),):
        tmp = out / (name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    tmp = out / "big_stores.csv.partial"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "estimate"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "big_stores.csv")
    return rows


if __name__ == "__main__":
    main()
