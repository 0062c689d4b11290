"""Datasets: the embedded default, torchvision datasets under a data root, and the toy rings.

Every dataset yields ``(x, y)`` with ``x`` a normalised float32 tensor of shape ``input_shape`` and
``y`` an integer label. The normalisation is recorded in :class:`DatasetInfo` (``{"mean": [...],
"std": [...]}``, per channel for images, per feature for vectors) so that checkpoints and stores can
say what the network saw, and :func:`denormalize` maps inputs back to ``[0, 1]`` images for decoders
(Wang et al. 2021 sec. 3.3, appendix G).

Names (see :func:`list_datasets`):

* ``digits`` -- scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn, no files needed);
  split stratified and deterministically into 1437 train / 360 test; pixels ``/16`` to ``[0, 1]``
  then normalised with the train split's mean/std; input shape ``(1, 8, 8)``.
* ``toy-rings`` -- the toy data of Sakamoto & Sato 2024 sec. 4.2 / Figure 4: class 1 at radius 3 with
  ``theta ~ vonMises(0, 2)``, class -1 at radius 1 with ``theta ~ vonMises(pi, 2)``, plus a small
  isotropic Gaussian noise; labels are mapped to ``1 -> 1`` and ``-1 -> 0``; input shape ``(2,)``.
* ``mnist``, ``fashion-mnist`` -- read from idx files (in memory); Fashion-MNIST is also found where
  the Debian package ``dataset-fashion-mnist`` installs it (``/usr/share/datasets/fashion-mnist``).
* ``cifar10``, ``cifar100``, ``svhn``, ``stl10`` -- torchvision datasets under ``root``.

Nothing is downloaded unless ``download=True``.

Your own data: :func:`image_folder` (a folder of class subfolders of images) and
:func:`resolve_dataset_factory` (``"pkg.mod:fn"`` returning a ``Dataset``) give a ``Dataset`` that
``infoplane.extract`` takes as ``data=`` (CLI: ``--image-folder ROOT``, ``--dataset-factory``).
"""
from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

ArrayLike = Union[np.ndarray, torch.Tensor]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Toy rings (Sakamoto & Sato 2024 Figure 4): sizes, the "small noise" and fixed generation seeds per split.
TOY_RINGS_SIZES = {"train": 2000, "test": 1000}
TOY_RINGS_NOISE = 0.1
TOY_RINGS_SEEDS = {"train": 0, "test": 1}
# Digits: deterministic stratified split.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: name, number of classes, the shape of one input and its normalisation.

    ``normalization`` is ``{"mean": [...], "std": [...]}``; inputs are ``(raw - mean) / std`` with
    ``raw`` in ``[0, 1]`` (per channel for images, per feature for vectors).
    """

    name: str
    num_classes: int
    input_shape: Tuple[int, ...]
    normalization: Dict[str, List[float]]
    description: str = ""
    splits: Tuple[str, ...] = ("train", "test")
    in_memory: bool = False

    def as_dict(self) -> Dict[str, object]:
        """The plain-types record checkpoints keep under ``"dataset"``."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "normalization": {k: [float(v) for v in vals] for k, vals in self.normalization.items()},
        }


class ArrayDataset(TensorDataset):
    """An in-memory ``TensorDataset`` of ``(x, y)`` that remembers where it came from.

    ``indices`` are the positions of its rows in the full split (``arange`` unless subset).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo, split: str,
                 indices: Optional[torch.Tensor] = None) -> None:
        super().__init__(x, y)
        self.info = info
        self.split = split
        self.indices = torch.arange(len(y)) if indices is None else indices.long()

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]


# --------------------------------------------------------------------------------------------
# registry of names and their metadata
# --------------------------------------------------------------------------------------------

_STATIC_INFO: Dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), {"mean": [0.1307], "std": [0.3081]},
                         "MNIST handwritten digits (60000/10000)", in_memory=True),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), {"mean": [0.2860], "std": [0.3530]},
                                 "Fashion-MNIST (60000/10000)", in_memory=True),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32),
                           {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
                           "CIFAR-10 (50000/10000)"),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32),
                            {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]},
                            "CIFAR-100 (50000/10000)"),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32),
                        {"mean": [0.4377, 0.4438, 0.4728], "std": [0.1980, 0.2010, 0.1970]},
                        "SVHN digits (73257/26032)"),
    "stl10": DatasetInfo("stl10", 10, (3, 96, 96),
                         {"mean": [0.4467, 0.4398, 0.4066], "std": [0.2603, 0.2566, 0.2713]},
                         "STL-10 labelled images (5000/8000)"),
    "toy-rings": DatasetInfo("toy-rings", 2, (2,), {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
                             "Sakamoto & Sato 2024 Fig. 4 toy data: r=3, theta~vM(0,2) (label 1) vs "
                             "r=1, theta~vM(pi,2) (label 0), small Gaussian noise", in_memory=True),
}

_ALIASES = {"fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "toy_rings": "toy-rings", "rings": "toy-rings", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "stl-10": "stl10", "sklearn-digits": "digits"}


def list_datasets() -> List[str]:
    """Sorted names accepted by :func:`load_dataset`."""
    return sorted(list(_STATIC_INFO) + ["digits"])


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in list_datasets():
        raise ValueError(f"unknown dataset {name!r}; known datasets are: {', '.join(list_datasets())}")
    return key


@lru_cache(maxsize=1)
def _digits_arrays() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """The digits split (stratified, fixed seed) in [0, 1] and the train mean/std."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x.astype(np.float64) / 16.0).reshape(-1, 1, 8, 8)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED,
                              stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    mean = float(x[tr].mean())
    std = float(x[tr].std())
    return x[tr], y[tr].astype(np.int64), x[te], y[te].astype(np.int64), mean, std


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a dataset (no files are read; ``digits`` computes its train mean/std)."""
    key = _canonical(name)
    if key == "digits":
        *_, mean, std = _digits_arrays()
        return DatasetInfo("digits", 10, (1, 8, 8), {"mean": [mean], "std": [std]},
                           "scikit-learn 8x8 digits, stratified 1437/360 split (embedded default)",
                           in_memory=True)
    return _STATIC_INFO[key]


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------

def _stats(info: DatasetInfo, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mean = torch.as_tensor(info.normalization["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(info.normalization["std"], dtype=x.dtype, device=x.device)
    if len(info.input_shape) == 3:  # per channel: (C, 1, 1)
        mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    sample_ndim = len(info.input_shape)
    if x.ndim not in (sample_ndim, sample_ndim + 1):
        raise ValueError(f"expected inputs of shape {info.input_shape} or (N, *{info.input_shape}) for "
                         f"dataset {info.name!r}, got {tuple(x.shape)}")
    return mean, std


def normalize(x: ArrayLike, info: DatasetInfo) -> torch.Tensor:
    """``(x - mean) / std`` for raw inputs ``x`` in ``[0, 1]``; shapes ``(*input_shape)`` or ``(N, ...)``."""
    x = torch.as_tensor(x)
    x = x.float() if not torch.is_floating_point(x) else x
    mean, std = _stats(info, x)
    return torch.sub(x, mean).div_(std)          # one allocation (a full-size copy is 10-30 ms per 10k images)


def denormalize(x: ArrayLike, info: DatasetInfo, clamp: bool = True) -> torch.Tensor:
    """Inverse of the dataset normalisation: ``x * std + mean`` (clamped to ``[0, 1]`` for images).

    Decoders reconstructing inputs (Wang et al. 2021 appendix G) need images in ``[0, 1]``.
    """
    x = torch.as_tensor(x)
    x = x.float() if not torch.is_floating_point(x) else x
    mean, std = _stats(info, x)
    out = x * std + mean
    if clamp and len(info.input_shape) == 3:
        out = out.clamp(0.0, 1.0)
    return out


# --------------------------------------------------------------------------------------------
# the toy rings of Sakamoto & Sato 2024 Figure 4
# --------------------------------------------------------------------------------------------

def make_toy_rings(n: int, noise: float = TOY_RINGS_NOISE, seed: int = 0,
                   kappa: float = 2.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample the toy data of Sakamoto & Sato 2024 sec. 4.2 / Figure 4.

    Class ``y = 1``: ``x = 3 (cos t, sin t)``, ``t ~ vonMises(0, kappa)``; class ``y = -1`` (label 0
    here): ``x = 1 (cos t, sin t)``, ``t ~ vonMises(pi, kappa)``; then ``x += noise * N(0, I_2)``.
    Classes alternate so both have ``n // 2`` (+1) points. Returns ``x (n, 2) float32, y (n,) int64``.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2 == 0).astype(np.int64)  # 1, 0, 1, 0, ...
    mu = np.where(y == 1, 0.0, np.pi)
    r = np.where(y == 1, 3.0, 1.0)
    theta = rng.vonmises(mu, kappa)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    x = x + noise * rng.standard_normal(x.shape)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


# --------------------------------------------------------------------------------------------
# idx files (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), gzipped (``.gz``) or not.

    Header: two zero bytes, a dtype code, the number of dimensions, then each dimension as a
    big-endian int32; the data follow in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: header says {dims} but the file is too short")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


_IDX_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _idx_candidates(key: str, root: Path) -> List[Path]:
    dirs = [root / _IDX_DIRS[key] / "raw", root / _IDX_DIRS[key], root / key]
    if key == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _find_idx_pair(key: str, split: str, root: Path) -> Optional[Tuple[Path, Path]]:
    prefix = "train" if split == "train" else "t10k"
    for d in _idx_candidates(key, root):
        found = []
        for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            hits = [d / (stem + sfx) for sfx in ("", ".gz") if (d / (stem + sfx)).is_file()]
            found.append(hits[0] if hits else None)
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    return None


def _missing(key: str, looked: Sequence[Path], extra: str = "", downloaded: bool = False) -> FileNotFoundError:
    where = ", ".join(str(p) for p in looked)
    extra = " " + " ".join(extra.split()) if extra.strip() else ""  # one line, whatever the error printed
    if downloaded:
        return FileNotFoundError(
            f"dataset {key!r}: the download failed{extra} (is this machine offline?) and no files were found "
            f"(looked in: {where}); copy the dataset files there from a machine with network access, or pass "
            "--data-root pointing at a copy. The embedded default 'digits' needs no files.")
    how = "pass download=True (CLI: --download) to fetch it into the data root"
    if key == "fashion-mnist":
        how += ", or install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
    return FileNotFoundError(f"dataset {key!r} not found (looked in: {where}){extra}; {how}. "
                             f"The embedded default 'digits' needs no files.")


def _download_note(key: str, root: Path) -> None:
    print(f"infoplane: downloading {key} into {root} (download=True)", file=sys.stderr, flush=True)


def _load_idx_dataset(key: str, split: str, root: Path, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    pair = _find_idx_pair(key, split, root)
    if pair is None and download:
        import torchvision

        _download_note(key, root)
        cls = torchvision.datasets.MNIST if key == "mnist" else torchvision.datasets.FashionMNIST
        try:
            cls(str(root), train=(split == "train"), download=True)
        except (RuntimeError, OSError) as err:  # URLError is an OSError
            raise _missing(key, _idx_candidates(key, root), extra=f" ({err})", downloaded=True) from None
        pair = _find_idx_pair(key, split, root)
    if pair is None:
        raise _missing(key, _idx_candidates(key, root))
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{pair[0]} has {images.shape[0]} images but {pair[1]} has {labels.shape[0]} labels")
    x = torch.tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)   # one copy, converted
    return x, torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------
# torchvision datasets kept on disk
# --------------------------------------------------------------------------------------------

def _load_torchvision(key: str, split: str, root: Path, download: bool) -> Dataset:
    import torchvision
    from torchvision import transforms

    info = _STATIC_INFO[key]
    tf = transforms.Compose([transforms.ToTensor(),
                             transforms.Normalize(info.normalization["mean"], info.normalization["std"])])
    train = split == "train"
    if download:
        _download_note(key, root)
    try:
        if key == "cifar10":
            return torchvision.datasets.CIFAR10(str(root), train=train, transform=tf, download=download)
        if key == "cifar100":
            return torchvision.datasets.CIFAR100(str(root), train=train, transform=tf, download=download)
        if key == "svhn":
            return torchvision.datasets.SVHN(str(root / "SVHN"), split=split, transform=tf, download=download)
        if key == "stl10":
            return torchvision.datasets.STL10(str(root), split=split, transform=tf, download=download)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        sub = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "SVHN",
               "stl10": "stl10_binary"}[key]
        raise _missing(key, [root / sub], extra=f" ({err})", downloaded=download) from None
    raise ValueError(f"dataset {key!r} is not a torchvision dataset")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def dataset_labels(ds: Dataset) -> torch.Tensor:
    """All labels of a dataset as a ``LongTensor (N,)`` (no images are decoded where avoidable)."""
    if isinstance(ds, TensorDataset):
        return torch.as_tensor(ds.tensors[1]).long().reshape(-1)
    if isinstance(ds, Subset):
        parent = dataset_labels(ds.dataset)
        return parent[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return torch.as_tensor(np.asarray(getattr(ds, attr)), dtype=torch.long).reshape(-1)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.long)  # type: ignore[arg-type]


def stratified_subset_indices(labels: ArrayLike, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` indices drawn class-proportionally after a seeded permutation, in ascending order.

    Each element gets the key ``(rank within its class in the permuted order + 0.5) / class size``;
    the ``n`` smallest keys form the subset, so every class is represented in proportion to its size
    (up to rounding) and the choice is fixed by ``seed``.
    """
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    total = len(y)
    if not 1 <= n <= total:
        raise ValueError(f"subset must be between 1 and the dataset size {total}, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(total, generator=gen)
    yp = y[perm]
    keys = torch.empty(total, dtype=torch.float64)
    for c in torch.unique(yp):
        pos = (yp == c).nonzero(as_tuple=True)[0]
        keys[pos] = (torch.arange(len(pos), dtype=torch.float64) + 0.5) / len(pos)
    order = torch.argsort(keys, stable=True)  # ties keep the permuted order
    chosen = perm[order[:n]]
    return torch.sort(chosen).values


def load_dataset(name: str, split: str = "train", root: Union[str, Path] = "data", download: bool = False,
                 subset: Optional[int] = None, seed: int = 0) -> Dataset:
    """Load a dataset split as a ``Dataset`` of ``(x normalised float32, y int64)``.

    ``digits``, ``toy-rings``, ``mnist`` and ``fashion-mnist`` are in-memory :class:`ArrayDataset`\\ s;
    the others are torchvision datasets under ``root`` (wrapped in ``Subset`` when ``subset`` is set).
    ``subset=N`` keeps ``N`` samples chosen class-proportionally by :func:`stratified_subset_indices`
    with ``seed``. Missing files raise ``FileNotFoundError`` naming where we looked and how to get them.
    """
    key = _canonical(name)
    split = str(split).lower()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    info = dataset_info(key)

    if key == "digits":
        xtr, ytr, xte, yte, _, _ = _digits_arrays()
        x_np, y_np = (xtr, ytr) if split == "train" else (xte, yte)
        x = normalize(torch.from_numpy(x_np.astype(np.float32)), info)
        y = torch.from_numpy(y_np)
    elif key == "toy-rings":
        x, y = make_toy_rings(TOY_RINGS_SIZES[split], seed=TOY_RINGS_SEEDS[split])
        x = normalize(x, info)
    elif key in _IDX_DIRS:
        x, y = _load_idx_dataset(key, split, root, download)
        x = normalize(x, info)
    else:
        ds = _load_torchvision(key, split, root, download)
        if subset is not None:
            idx = stratified_subset_indices(dataset_labels(ds), int(subset), seed)
            ds = Subset(ds, idx.tolist())
        return ds

    indices = None
    if subset is not None:
        indices = stratified_subset_indices(y, int(subset), seed)
        x, y = x[indices], y[indices]
    return ArrayDataset(x.float().contiguous(), y.long(), info, split, indices)


def dataset_tensors(ds: Dataset, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack a dataset (or its first ``limit`` samples) into ``(x (N, ...), y (N,))`` tensors."""
    n = len(ds)  # type: ignore[arg-type]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        n = min(n, int(limit))
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][:n], ds.tensors[1][:n].long()
    xs, ys = zip(*(ds[i] for i in range(n)))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# your own data
# --------------------------------------------------------------------------------------------

#: Image file extensions :func:`image_folder` reads (those of torchvision's ImageFolder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(root: Union[str, Path], split: Optional[str] = None, transform: Optional[Callable] = None
                 ) -> Dataset:
    """A folder of images, one subfolder per class (``root/<class>/<image>``), as a ``Dataset``.

    A torchvision ``ImageFolder`` of ``root/split`` (``split`` given: e.g. ``root/test/cat/1.png``)
    or of ``root``. Labels are the class subfolders' positions in sorted order (``.classes`` lists
    the names, ``.class_to_idx`` maps them). Images are read as RGB. ``transform`` maps a PIL image
    to a tensor; the default resizes every image to the size of the first one and converts it with
    ``ToTensor`` (float32, shape ``(3, H, W)``, values in [0, 1], no normalisation): pass e.g. a
    pretrained model's ``weights.transforms()`` to feed it what it was trained on.

    Raises ``FileNotFoundError`` when the folder does not exist, and ``ValueError`` when it holds no
    class subfolder or no image.
    """
    from torchvision.datasets import ImageFolder

    base = Path(root)
    if not base.exists():
        raise FileNotFoundError(f"image folder {str(base)!r} does not exist; pass the folder holding one "
                                "subfolder of images per class (root/<class>/<image>)")
    if not base.is_dir():
        raise ValueError(f"image folder {str(base)!r} is a file, not a folder; pass the folder holding one "
                         "subfolder of images per class (root/<class>/<image>)")
    folder = base / split if split else base
    if split and not folder.is_dir():
        subdirs = sorted(d.name for d in base.iterdir() if d.is_dir())
        raise FileNotFoundError(f"image folder {str(base)!r} has no split folder {split!r}; its subfolders are: "
                                f"{', '.join(subdirs) or '(none)'}. Pass split= one of them, or split=None to "
                                "use the folder itself")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"image folder {str(folder)!r} has no class subfolders; put the images in one subfolder "
                         f"per class, e.g. {str(folder / 'cat' / '0001.png')!r}")
    try:
        ds = ImageFolder(str(folder), transform=transform)
    except FileNotFoundError:  # torchvision: a class subfolder without a readable image
        empty = [c for c in classes if not any(f.suffix.lower() in IMAGE_EXTENSIONS
                                               for f in (folder / c).rglob("*") if f.is_file())]
        where = ("holds no image in its class subfolders" if len(empty) == len(classes) else
                 f"has class subfolder(s) without an image: {', '.join(empty[:10])}{', ...' if len(empty) > 10 else ''}"
                 " (remove them or add images)")
        raise ValueError(f"image folder {str(folder)!r} {where}; readable files end in "
                         f"{', '.join(IMAGE_EXTENSIONS)}") from None
    if transform is None:
        from torchvision import transforms

        width, height = ds.loader(ds.samples[0][0]).size
        ds.transform = transforms.Compose([transforms.Resize((height, width)), transforms.ToTensor()])
    return ds


def resolve_dataset_factory(factory: Union[str, Callable[..., Any]], split: Optional[str] = None,
                            root: Union[str, Path, None] = None) -> Any:
    """Call a user's dataset factory and return what it builds (a ``Dataset`` or ``DataLoader``).

    ``factory``: ``"package.module:function"`` (the module must be importable: installed or on
    ``PYTHONPATH``) or a callable. It is called with the keywords it accepts among ``split`` and
    ``root`` (when given), so ``def make(split="test"): ...`` and ``def make(): ...`` both work. The
    result must yield ``(x, y)`` pairs: a ``torch.utils.data.Dataset`` (or any object with
    ``__len__`` and ``__getitem__``) or a ``DataLoader``; anything else is a ``ValueError``.
    """
    import inspect

    from torch.utils.data import DataLoader

    from infoplane.checkpoint import resolve_factory

    try:
        fn = resolve_factory(factory)
    except ValueError as err:
        raise ValueError(f"dataset factory: {err}") from None
    offered = {k: v for k, v in (("split", split), ("root", None if root is None else str(root))) if v is not None}
    try:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_any or k in params}
    except (TypeError, ValueError):  # no signature (a builtin): call it bare
        kwargs = {}
    name = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    obj = fn(**kwargs)
    if isinstance(obj, (Dataset, DataLoader)) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        return obj
    raise ValueError(f"dataset factory {name!r} returned {type(obj).__name__}, not a Dataset or DataLoader of "
                     "(x, y) pairs; make it return e.g. a torch.utils.data.TensorDataset(x, y)")


__all__ = ["DatasetInfo", "ArrayDataset", "list_datasets", "dataset_info", "load_dataset", "dataset_labels",
           "normalize", "denormalize", "make_toy_rings", "read_idx", "stratified_subset_indices",
           "dataset_tensors", "DEBIAN_FASHION_MNIST", "image_folder", "resolve_dataset_factory",
           "IMAGE_EXTENSIONS"]
