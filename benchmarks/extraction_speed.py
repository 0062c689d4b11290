"""Extraction speed: ``infoplane.extract`` against a bare forward pass of the same model.

One run, same data, same batch size (256), eval mode, ``no_grad``, in-process, best of
``--repeats`` (the repeats of all rows interleaved, so a burst of load on a shared machine hits
them alike):

* ``lenet5 / fashion-mnist``: LeNet5 (untrained, 28x28) on the 10,000 Fashion-MNIST test images,
  ``extract(checkpoint, layers="all")`` (5 layers) from a checkpoint file, as ``infoplane extract``
  runs it;
* ``resnet18 w16 / cifar-size``: ResNet18 at width 16 (CIFAR stem) on ``--resnet-samples``
  random 3x32x32 images, ``extract(model, (x, y), layers="all")`` (10 layers);
* ``lenet5 / digits``: the embedded 8x8 digits test split (360 samples), where fixed costs dominate.

Columns: ``bare`` = the model over the same batches taken by indexing the in-memory tensors (the
cheapest input path); ``bare (DataLoader)`` = a ``DataLoader`` over the dataset (sample-by-sample
collation, what a plain PyTorch loop does); ``extract`` = the whole call into a new store (loading
the checkpoint and the dataset, hooks, writing inputs and activations with checksums);
``fixed`` = the same call again, which finds the checkpoint complete and skips it (loading, opening,
checking); ``ratio`` = extract / bare (after one untimed warm-up extraction for first-call imports); ``streaming ratio`` = (extract - fixed) / bare. CPU seconds
(``time.process_time``, all threads of the process) are given next to wall seconds because the
machine is shared.

    python benchmarks/extraction_speed.py                  # table + results/extraction_speed.{md,json}
    python benchmarks/extraction_speed.py --quick          # a smoke run (small data, 1 repeat)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def _clock(fn: Callable[[], Any]) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _bare(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            for lo in range(0, len(x), batch_size):
                model(x[lo:lo + batch_size])
    return run


def _bare_loader(model: torch.nn.Module, ds: Any, batch_size: int) -> Callable[[], None]:
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)

    def run() -> None:
        with torch.no_grad():
            for xb, _ in loader:
                model(xb)
    return run


def writer_overlap(n_rows: int = 10000, width: int = 1176, loop: int = 3_000_000) -> Dict[str, float]:
    """How much an HDF5 writer thread overlaps Python work in the main thread (h5py holds the GIL
    while it writes): seconds of a pure-Python loop alone, the same loop beside a thread writing
    ``n_rows x width`` float32 rows three times in 256-row Fletcher-32 chunks, the writer alone, and
    both together (``serial`` = loop + writer one after the other)."""
    import threading

    import h5py

    data = np.random.default_rng(0).random((n_rows, width), dtype=np.float32)

    def write(path: str) -> None:
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("x", shape=data.shape, dtype="f4", chunks=(256, width), fletcher32=True)
            for _ in range(3):
                for lo in range(0, n_rows, 256):
                    ds[lo:lo + 256] = data[lo:lo + 256]

    def spin() -> None:
        acc = 0
        for i in range(loop):
            acc += i

    with tempfile.TemporaryDirectory() as tmp:
        write(os.path.join(tmp, "warm.h5"))
        t = time.perf_counter()
        spin()
        alone = time.perf_counter() - t
        t = time.perf_counter()
        write(os.path.join(tmp, "w.h5"))
        writer = time.perf_counter() - t
        th = threading.Thread(target=write, args=(os.path.join(tmp, "b.h5"),))
        t = time.perf_counter()
        th.start()
        spin()
        beside = time.perf_counter() - t
        th.join()
        both = time.perf_counter() - t
    return {"loop_alone_s": alone, "loop_beside_writer_s": beside, "writer_alone_s": writer, "both_s": both,
            "serial_s": alone + writer}


def _summarise(name: str, times: Dict[str, List[Tuple[float, float]]], extra: Dict[str, Any]) -> Dict[str, Any]:
    best = {k: min(v, key=lambda t: t[0]) for k, v in times.items()}
    cpu = {k: min(t[1] for t in v) for k, v in times.items()}
    bare, ext, fixed = best["bare"][0], best["extract"][0], best["fixed"][0]
    row = {"case": name, **extra, "bare_s": bare, "extract_s": ext, "fixed_s": fixed,
           "ratio": ext / bare, "streaming_ratio": max(ext - fixed, 0.0) / bare,
           "bare_cpu_s": cpu["bare"], "extract_cpu_s": cpu["extract"], "fixed_cpu_s": cpu["fixed"],
           "cpu_ratio": cpu["extract"] / cpu["bare"], "repeats": len(times["bare"])}
    loader = best["bare_loader"][0] if "bare_loader" in best else float("nan")  # every row has the same keys
    row["bare_loader_s"], row["ratio_vs_loader"] = loader, ext / loader
    return row


def measure_checkpoint_case(model_name: str = "lenet5", dataset: str = "fashion-mnist", batch_size: int = 256,
                            repeats: int = 3, data_root: str = FASHION_ROOT,
                            model_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Bare forward vs ``extract([checkpoint], layers="all")`` over a registered dataset's test split."""
    from infoplane.checkpoint import save_checkpoint
    from infoplane.data import dataset_info, load_dataset
    from infoplane.extract import extract
    from infoplane.models import build_model

    info = dataset_info(dataset)
    kwargs = {"input_shape": tuple(info.input_shape), "num_classes": info.num_classes, **(model_kwargs or {})}
    torch.manual_seed(0)
    model = build_model(model_name, **kwargs).eval()
    ds = load_dataset(dataset, split="test", root=data_root)
    x = ds.tensors[0]
    times: Dict[str, List[Tuple[float, float]]] = {"bare": [], "bare_loader": [], "extract": [], "fixed": []}
    with tempfile.TemporaryDirectory() as tmp:
        ck = save_checkpoint(Path(tmp) / "ck.pt", model, model_name=model_name, model_kwargs=kwargs, epoch=0,
                             step=0, regime={"name": "e2e"},
                             dataset={"name": dataset, "num_classes": info.num_classes,
                                      "input_shape": list(info.input_shape)}, seed=0)
        # warm-up (first-call imports and lazy initialisation), not timed
        extract([ck], layers="all", out=Path(tmp) / "warm.h5", split="test", batch_size=batch_size,
                data_root=data_root, progress=False, samples=min(len(x), 2 * batch_size))
        _bare(model, x[:batch_size], batch_size)()
        for i in range(repeats):
            out = Path(tmp) / f"acts{i}.h5"
            times["bare"].append(_clock(_bare(model, x, batch_size)))
            times["bare_loader"].append(_clock(_bare_loader(model, ds, batch_size)))
            times["extract"].append(_clock(lambda: extract([ck], layers="all", out=out, split="test",
                                                           batch_size=batch_size, data_root=data_root,
                                                           progress=False)))
            times["fixed"].append(_clock(lambda: extract([ck], layers="all", out=out, split="test",
                                                         batch_size=batch_size, data_root=data_root,
                                                         progress=False)))
            size = out.stat().st_size
            out.unlink()
    return _summarise(f"{model_name} / {dataset}", times,
                      {"model": model_name, "dataset": dataset, "n_samples": len(x), "batch_size": batch_size,
                       "store_bytes": size, "form": "checkpoint file"})


def measure_model_case(n: int = 2000, width: int = 16, batch_size: int = 256, repeats: int = 3) -> Dict[str, Any]:
    """Bare forward vs ``extract(model, (x, y), layers="all")`` for ResNet18 at ``width`` on random
    CIFAR-size images."""
    from infoplane.extract import extract
    from infoplane.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, width=width).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 10
    times: Dict[str, List[Tuple[float, float]]] = {"bare": [], "extract": [], "fixed": []}
    with tempfile.TemporaryDirectory() as tmp:
        extract(model, (x[:2 * batch_size], y[:2 * batch_size]), layers="all", out=Path(tmp) / "warm.h5",
                batch_size=batch_size, progress=False, epoch=0)  # warm-up, not timed
        _bare(model, x[:batch_size], batch_size)()
        for i in range(repeats):
            out = Path(tmp) / f"acts{i}.h5"
            times["bare"].append(_clock(_bare(model, x, batch_size)))
            times["extract"].append(_clock(lambda: extract(model, (x, y), layers="all", out=out,
                                                           batch_size=batch_size, progress=False, epoch=0)))
            times["fixed"].append(_clock(lambda: extract(model, (x, y), layers="all", out=out,
                                                         batch_size=batch_size, progress=False, epoch=0)))
            size = out.stat().st_size
            out.unlink()
    return _summarise(f"resnet18 w{width} / cifar-size random", times,
                      {"model": f"resnet18 (width {width})", "dataset": "random 3x32x32", "n_samples": n,
                       "batch_size": batch_size, "store_bytes": size, "form": "model object"})


def _table(rows: List[Dict[str, Any]]) -> str:
    head = ("| case | samples | bare s | bare (DataLoader) s | extract s | fixed s | ratio | streaming ratio | "
            "ratio vs DataLoader | CPU ratio | store MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        loader = "-" if r["bare_loader_s"] != r["bare_loader_s"] else f"{r['bare_loader_s']:.3f}"
        vs = "-" if r["ratio_vs_loader"] != r["ratio_vs_loader"] else f"{r['ratio_vs_loader']:.2f}"
        lines.append(f"| {r['case']} | {r['n_samples']} | {r['bare_s']:.3f} | {loader} | {r['extract_s']:.3f} | "
                     f"{r['fixed_s']:.3f} | {r['ratio']:.2f} | {r['streaming_ratio']:.2f} | {vs} | "
                     f"{r['cpu_ratio']:.2f} | {r['store_bytes'] / 2 ** 20:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--resnet-samples", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="small data, one repeat (smoke test)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    rows: List[Dict[str, Any]] = []
    fashion = Path(FASHION_ROOT).exists()
    reps = 1 if a.quick else a.repeats
    if fashion and not a.quick:
        rows.append(measure_checkpoint_case("lenet5", "fashion-mnist", repeats=reps))
        print(_table(rows[-1:]), flush=True)
    rows.append(measure_model_case(n=256 if a.quick else a.resnet_samples, repeats=reps))
    print(_table(rows[-1:]), flush=True)
    rows.append(measure_checkpoint_case("lenet5", "digits", repeats=reps, data_root="data"))
    print(_table(rows[-1:]), flush=True)
    load1 = os.getloadavg()
    table = _table(rows)
    print(table)
    if a.quick:
        return rows
    meta = {"command": "python benchmarks/extraction_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores", "torch": torch.__version__,
            "threads": a.threads, "python": platform.python_version(),
            "load_before": [round(v, 2) for v in load0], "load_after": [round(v, 2) for v in load1]}
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Extraction speed: `infoplane extract` vs a bare forward pass", "",
          f"Command: `{meta['command']}`  ",
          f"Machine: {meta['machine']}, torch {meta['torch']} ({a.threads} thread(s)), Python {meta['python']}  ",
          f"Load average (1, 5, 15 min) before: {' '.join(map(str, meta['load_before']))}; after: "
          f"{' '.join(map(str, meta['load_after']))} (shared machine).", "",
          "Best of the interleaved repeats; see the module docstring of `benchmarks/extraction_speed.py` for "
          "what each column times.", "", table, ""]
    for name, text in (("extraction_speed.md", "\n".join(md)),
                       ("extraction_speed.json", json.dumps({"meta": meta, "rows": rows}, indent=1))):
        tmp = out / (name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return rows


if __name__ == "__main__":
    main()
