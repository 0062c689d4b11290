"""Neural (trained-probe) information estimates of a representation Z.

Three estimators, each trained on a split of the stored samples and evaluated on the held-out rest:

* ``decoder`` -- I(Z;X) proxy by reconstruction (Wang et al. 2021, sec. 3.3 and appendix G):
  I(h,x) = H(X) - H(X|h) >= H(X) - R(x|h). A decoder w (Table 7: bilinear interpolation to the
  input size, 3x3 conv -> 12 channels + BatchNorm + ReLU, 3x3 conv -> C channels, sigmoid) is
  trained with the per-pixel binary cross-entropy against the input mapped to [0, 1]. As InfoPro
  did, ``value = 1 - BCE`` (held out), i.e. the bound shifted by the constant 1 - H(X); the raw BCE
  is reported beside it. Non-image inputs/representations use an MLP decoder.
* ``classifier`` -- I(Z;Y) >= H(Y) - CE (Wang et al. 2021 sec. 3.3, Sakamoto & Sato 2024 eq. 8): a classifier psi
  (Table 8: one 3x3 conv + BN + ReLU, global average pooling, FC 128 + ReLU, FC c; an MLP for flat
  features) is trained with cross-entropy; ``value = H(Y) - CE_test`` in nats, with H(Y) the
  entropy of the empirical label distribution of all N samples. The bound can be negative on
  held-out data when the classifier overfits; it is reported as measured.
* ``linear-probe`` -- train and test accuracy of a linear classifier on the flattened,
  standardised Z (Sakamoto & Sato 2024, Figure 1); ``value`` = test accuracy.

Every function takes ``z`` of shape (N, ...) (numpy or torch), a target of shape (N, ...) (inputs)
or (N,) (integer labels), and returns a dict of floats: ``value`` plus named extras (train/test
losses and accuracies, ``n_train``, ``n_test``, ``epochs``). Runs are seeded, do not touch the global
RNG state, and run on ``device`` ("cpu", "cuda", ...).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from infoplane.device import resolve_device
from tqdm.auto import tqdm

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "DecoderConfig", "ClassifierConfig", "LinearProbeConfig",
    "decoder_information", "decoder_reconstructions", "classifier_information", "linear_probe",
    "to_unit_range", "label_entropy", "train_test_split_indices", "TARGETS",
]


# ----------------------------------------------------------------------------- configurations
@dataclass
class _TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    train_fraction: float = 0.8
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    def validate(self) -> None:
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm needs 2 samples), got {self.batch_size}")
        if not (0.0 < float(self.train_fraction) < 1.0):
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")
        if float(self.lr) <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class DecoderConfig(_TrainConfig):
    """Decoder w of Wang et al. 2021 (Table 7, appendix G: Adam lr 1e-3, 10 epochs).

    ``width``: channels of the hidden conv (12 in Table 7); ``hidden``: width of the MLP decoder
    used for flat inputs/representations; ``input_range``: how stored (normalised) inputs are
    mapped to [0, 1]: "minmax" (global min/max over the N samples) or "normalization" (undo
    x*std+mean with the ``normalization`` mapping, then clip).
    """
    width: int = 12
    hidden: int = 256
    input_range: str = "minmax"


@dataclass
class ClassifierConfig(_TrainConfig):
    """Classifier psi of Wang et al. 2021 (Table 8), trained like the decoder (Adam, 10 epochs)."""
    hidden: int = 128


@dataclass
class LinearProbeConfig(_TrainConfig):
    """Linear probe of Sakamoto & Sato 2024 Fig. 1: one linear layer on standardised, flattened features."""
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 256


def _make_config(cls, config: Optional[_TrainConfig], params: Mapping[str, Any]):
    cfg = cls() if config is None else config
    if not isinstance(cfg, cls):
        raise ValueError(f"config must be a {cls.__name__}, got {type(cfg).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(names)}")
    cfg = replace(cfg, **dict(params))
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- helpers
def _cpu_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """A detached CPU tensor view of a numpy array or torch tensor (no dtype change)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _as_float(x: ArrayLike, name: str) -> torch.Tensor:
    t = _cpu_tensor(x, name)
    if t.ndim < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values; clean the activations first")
    return t


def _as_labels(y: ArrayLike, n: int) -> torch.Tensor:
    t = _cpu_tensor(y, "labels")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (one integer class per sample), got {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("labels must be integer class indices, got non-integer floats")
    t = t.to(torch.int64)
    if (t < 0).any():
        raise ValueError("labels must be non-negative class indices")
    return t


def train_test_split_indices(n: int, train_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded random split of range(n) into (train, test) index arrays; both non-empty."""
    n_train = int(math.floor(float(train_fraction) * n))
    if n_train < 2 or n - n_train < 1:
        raise ValueError(f"cannot split {n} samples with train_fraction={train_fraction} into a train "
                         f"set of >= 2 and a test set of >= 1 samples; store more samples")
    perm = np.random.default_rng(int(seed)).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def label_entropy(y: ArrayLike) -> float:
    """H(Y) in nats of the empirical label distribution."""
    y = _as_labels(y, len(y)).numpy()
    p = np.bincount(y).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def to_unit_range(x: ArrayLike, mode: str = "minmax",
                  normalization: Optional[Mapping[str, Sequence[float]]] = None) -> torch.Tensor:
    """Map stored (normalised) inputs to [0, 1] for the BCE of Wang et al. 2021 appendix G.

    mode "minmax": (x - min)/(max - min) with the global min/max of the given samples.
    mode "normalization": x*std + mean per channel (dim 1) from ``normalization={"mean", "std"}``,
    then clipped to [0, 1].
    """
    t = _as_float(x, "inputs")
    if mode == "minmax":
        lo, hi = t.min(), t.max()
        if float(hi - lo) <= 0:
            raise ValueError("inputs are constant; cannot map them to [0, 1] for reconstruction")
        return (t - lo) / (hi - lo)
    if mode == "normalization":
        if not normalization or "mean" not in normalization or "std" not in normalization:
            raise ValueError('input_range="normalization" needs normalization={"mean": [...], "std": [...]}')
        mean = torch.as_tensor(np.atleast_1d(normalization["mean"]), dtype=torch.float32)
        std = torch.as_tensor(np.atleast_1d(normalization["std"]), dtype=torch.float32)
        if t.ndim >= 2 and mean.numel() == t.shape[1] and t.ndim > 2:
            shape = (1, -1) + (1,) * (t.ndim - 2)
            mean, std = mean.view(shape), std.view(shape)
        elif mean.numel() != 1:
            mean, std = mean.mean(), std.mean()
        return (t * std + mean).clamp(0.0, 1.0)
    raise ValueError(f'input_range must be "minmax" or "normalization", got {mode!r}')


def _device(device: Union[str, torch.device]) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; pass device='cpu'")
    return dev


class _Decoder(nn.Module):
    """Table 7 of Wang et al. 2021: bilinear upsampling to the input size + 2 convs, sigmoid output."""

    def __init__(self, in_channels: int, out_shape: Tuple[int, ...], width: int) -> None:
        super().__init__()
        self.out_hw = tuple(out_shape[1:])
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out_shape[0], 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # returns logits; sigmoid in the loss
        z = F.interpolate(z, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.body(z)


class _MLP(nn.Module):
    """Flatten -> Linear -> BN -> ReLU -> Linear (a decoder or classifier for flat features)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, out_shape: Optional[Tuple[int, ...]] = None) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, d_out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return out if self.out_shape is None else out.view(z.shape[0], *self.out_shape)


class _ConvClassifier(nn.Module):
    """Table 8 of Wang et al. 2021: 3x3 conv (stride 2 if H >= 16) + BN + ReLU, GAP, FC hidden, FC c."""

    def __init__(self, in_channels: int, height: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        ch = 32 if height >= 32 else 64
        stride = 2 if height >= 16 else 1
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ch, 3, stride=stride, padding=1), nn.BatchNorm2d(ch), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _fit(model: nn.Module, z: torch.Tensor, target: torch.Tensor, loss_fn, cfg: _TrainConfig,
         train_idx: np.ndarray, desc: str) -> None:
    """Adam on minibatches of the train split (seeded shuffling), ``cfg.epochs`` epochs."""
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    idx = torch.as_tensor(train_idx)
    bs = int(cfg.batch_size)
    model.train()
    for _ in tqdm(range(int(cfg.epochs)), desc=desc, disable=None if cfg.progress else True, leave=False):
        perm = idx[torch.randperm(len(idx), generator=gen)]
        for start in range(0, len(perm), bs):
            b = perm[start:start + bs]
            if len(b) < 2:  # BatchNorm cannot train on a single sample
                continue
            b = b.to(z.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(z[b]), target[b])
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def _evaluate(model: nn.Module, z: torch.Tensor, target: torch.Tensor, idx: np.ndarray, loss_fn,
              batch_size: int, with_accuracy: bool) -> Tuple[float, float]:
    """Mean loss (and accuracy) over ``idx``; loss_fn must use reduction='sum'."""
    total, correct = 0.0, 0
    ids = torch.as_tensor(idx).to(z.device)
    for start in range(0, len(ids), max(int(batch_size), 256)):
        b = ids[start:start + max(int(batch_size), 256)]
        out = model(z[b])
        total += float(loss_fn(out, target[b]))
        if with_accuracy:
            correct += int((out.argmax(1) == target[b]).sum())
    return total / len(ids), (correct / len(ids) if with_accuracy else float("nan"))


def _per_sample_bce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over samples of the per-pixel-averaged BCE (appendix G: averaged BCE of each pixel)."""
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per.flatten(1).mean(1).sum()


def _bce_mean(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)
    return ctx


# ----------------------------------------------------------------------------- decoder
def _train_decoder(z: ArrayLike, x: ArrayLike, config: Optional[DecoderConfig], normalization, params):
    cfg: DecoderConfig = _make_config(DecoderConfig, config, params)
    zt = _as_float(z, "z")
    xt = to_unit_range(x, cfg.input_range, normalization)
    if xt.shape[0] != zt.shape[0]:
        raise ValueError(f"z has {zt.shape[0]} samples but the inputs have {xt.shape[0]}; they must match")
    n = zt.shape[0]
    tr, te = train_test_split_indices(n, cfg.train_fraction, cfg.seed)
    dev = _device(cfg.device)
    x_shape = tuple(xt.shape[1:])
    with _seeded(cfg.seed, dev):
        torch.manual_seed(int(cfg.seed))
        if zt.ndim == 4 and len(x_shape) == 3:
            model: nn.Module = _Decoder(zt.shape[1], x_shape, int(cfg.width))
        else:
            d_in = int(np.prod(zt.shape[1:]))
            model = _MLP(d_in, int(cfg.hidden), int(np.prod(x_shape)), out_shape=x_shape)
        model.to(dev)
        zd, xd = zt.to(dev), xt.to(dev)
        _fit(model, zd, xd, _bce_mean, cfg, tr, "decoder")
    bce_tr, _ = _evaluate(model, zd, xd, tr, _per_sample_bce_sum, cfg.batch_size, False)
    bce_te, _ = _evaluate(model, zd, xd, te, _per_sample_bce_sum, cfg.batch_size, False)
    out = {"value": 1.0 - bce_te, "bce_test": bce_te, "bce_train": bce_tr,
           "n_train": float(len(tr)), "n_test": float(len(te)), "epochs": float(cfg.epochs)}
    return out, model, zd, xd, te


def decoder_information(z: ArrayLike, x: ArrayLike, *, config: Optional[DecoderConfig] = None,
                        normalization: Optional[Mapping[str, Sequence[float]]] = None,
                        **params: Any) -> Dict[str, float]:
    """I(Z;X) proxy of Wang et al. 2021 appendix G: ``value = 1 - BCE_test`` (plus ``bce_test``, ``bce_train``).

    z: (N, C, h, w) feature maps (conv decoder) or (N, ...) (MLP decoder); x: (N, C, H, W) or (N, D)
    stored inputs, mapped to [0, 1] per ``input_range``. ``params`` override DecoderConfig fields.
    """
    out, *_ = _train_decoder(z, x, config, normalization, params)
    return out


def decoder_reconstructions(z: ArrayLike, x: ArrayLike, *, n_examples: int = 8,
                            config: Optional[DecoderConfig] = None,
                            normalization: Optional[Mapping[str, Sequence[float]]] = None,
                            **params: Any) -> Dict[str, Any]:
    """Train the decoder as :func:`decoder_information` and return held-out reconstructions.

    Returns the scalar dict plus ``originals`` and ``reconstructions``: float arrays
    (n_examples, *input_shape) in [0, 1] (the first held-out samples; Wang et al. 2021 Figure 7).
    """
    out, model, zd, xd, te = _train_decoder(z, x, config, normalization, params)
    ids = torch.as_tensor(te[: int(n_examples)]).to(zd.device)
    with torch.no_grad():
        rec = torch.sigmoid(model(zd[ids]))
    res: Dict[str, Any] = dict(out)
    res["originals"] = xd[ids].cpu().numpy()
    res["reconstructions"] = rec.cpu().numpy()
    res["indices"] = te[: int(n_examples)]
    return res


# ----------------------------------------------------------------------------- classifier
def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def classifier_information(z: ArrayLike, y: ArrayLike, *, config: Optional[ClassifierConfig] = None,
                           num_classes: Optional[int] = None, **params: Any) -> Dict[str, float]:
    """I(Z;Y) >= H(Y) - CE (Wang et al. 2021 sec. 3.3; Sakamoto & Sato 2024 eq. 8), in nats, on held-out samples.

    z: (N, C, h, w) (Table 8 conv head) or (N, ...) (MLP head); y: (N,) integer labels.
    Returns ``value`` (= entropy_y - ce_test), ``ce_test``, ``ce_train``, ``bound_train``,
    ``entropy_y``, ``accuracy_train``, ``accuracy_test``, ``n_train``, ``n_test``, ``epochs``.
    """
    cfg: ClassifierConfig = _make_config(ClassifierConfig, config, params)
    zt = _as_float(z, "z")
    yt = _as_labels(y, zt.shape[0])
    c = int(num_classes) if num_classes is not None else int(yt.max()) + 1
    if c < 2 or int(yt.max()) >= c:
        raise ValueError(f"need >= 2 classes and labels < num_classes; got num_classes={c}, max label {int(yt.max())}")
    tr, te = train_test_split_indices(zt.shape[0], cfg.train_fraction, cfg.seed)
    dev = _device(cfg.device)
    with _seeded(cfg.seed, dev):
        torch.manual_seed(int(cfg.seed))
        if zt.ndim == 4:
            model: nn.Module = _ConvClassifier(zt.shape[1], zt.shape[2], int(cfg.hidden), c)
        else:
            model = _MLP(int(np.prod(zt.shape[1:])), int(cfg.hidden), c)
        model.to(dev)
        zd, yd = zt.to(dev), yt.to(dev)
        _fit(model, zd, yd, F.cross_entropy, cfg, tr, "classifier")
    ce_tr, acc_tr = _evaluate(model, zd, yd, tr, _ce_sum, cfg.batch_size, True)
    ce_te, acc_te = _evaluate(model, zd, yd, te, _ce_sum, cfg.batch_size, True)
    h = label_entropy(yt)
    return {"value": h - ce_te, "ce_test": ce_te, "ce_train": ce_tr, "bound_train": h - ce_tr,
            "entropy_y": h, "accuracy_train": acc_tr, "accuracy_test": acc_te,
            "n_train": float(len(tr)), "n_test": float(len(te)), "epochs": float(cfg.epochs)}


# ----------------------------------------------------------------------------- linear probe
class _Linear(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, c: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.fc = nn.Linear(mean.numel(), c)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc((z.flatten(1) - self.mean) / self.std)


def linear_probe(z: ArrayLike, y: ArrayLike, *, config: Optional[LinearProbeConfig] = None,
                 num_classes: Optional[int] = None, **params: Any) -> Dict[str, float]:
    """Linear-probe accuracy (Sakamoto & Sato 2024 Fig. 1): softmax regression on standardised flattened z.

    Features are standardised with the train split's mean/std. Returns ``value`` (= accuracy_test),
    ``accuracy_train``, ``accuracy_test``, ``ce_train``, ``ce_test``, ``n_train``, ``n_test``, ``epochs``.
    """
    cfg: LinearProbeConfig = _make_config(LinearProbeConfig, config, params)
    zt = _as_float(z, "z")
    yt = _as_labels(y, zt.shape[0])
    c = int(num_classes) if num_classes is not None else int(yt.max()) + 1
    if c < 2 or int(yt.max()) >= c:
        raise ValueError(f"need >= 2 classes and labels < num_classes; got num_classes={c}, max label {int(yt.max())}")
    tr, te = train_test_split_indices(zt.shape[0], cfg.train_fraction, cfg.seed)
    dev = _device(cfg.device)
    flat = zt.flatten(1)
    mean = flat[torch.as_tensor(tr)].mean(0)
    std = flat[torch.as_tensor(tr)].std(0, unbiased=False).clamp_min(1e-6)
    with _seeded(cfg.seed, dev):
        torch.manual_seed(int(cfg.seed))
        model = _Linear(mean, std, c).to(dev)
        zd, yd = zt.to(dev), yt.to(dev)
        _fit(model, zd, yd, F.cross_entropy, cfg, tr, "linear probe")
    ce_tr, acc_tr = _evaluate(model, zd, yd, tr, _ce_sum, cfg.batch_size, True)
    ce_te, acc_te = _evaluate(model, zd, yd, te, _ce_sum, cfg.batch_size, True)
    return {"value": acc_te, "accuracy_train": acc_tr, "accuracy_test": acc_te, "ce_train": ce_tr,
            "ce_test": ce_te, "n_train": float(len(tr)), "n_test": float(len(te)), "epochs": float(cfg.epochs)}


# ----------------------------------------------------------------------------- registry
#: The target each estimator measures against: "x" (stored inputs) or "y" (integer labels).
TARGETS: Dict[str, str] = {"decoder": "x", "classifier": "y", "linear-probe": "y"}


def _is_labels(t: ArrayLike) -> bool:
    """True for a 1-D integer-valued array (class labels), False for inputs X."""
    if t.ndim != 1:
        return False
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return bool(np.issubdtype(a.dtype, np.integer) or (np.isfinite(a).all() and np.array_equal(a, np.round(a))))


def _entry(name: str, fn):
    """Registry entry ``fn(z, target, **params)``: runs ``fn`` when ``target`` is of the kind the
    estimator measures (TARGETS), else returns ``{"value": nan, "applicable": 0.0}`` so that a caller
    estimating every (Z, X) and (Z, Y) pair gets an explicit not-applicable row, not a wrong number."""
    want = TARGETS[name]

    def run(z: ArrayLike, target: ArrayLike, **params: Any) -> Dict[str, float]:
        if not isinstance(target, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{name}: target must be a numpy array or torch tensor, got {type(target).__name__}")
        if (want == "y") != _is_labels(target):
            return {"value": float("nan"), "applicable": 0.0}
        out = fn(z, target, **params)
        out["applicable"] = 1.0
        return out

    run.__name__ = fn.__name__ + "_entry"
    run.__doc__ = f"Registry entry of {fn.__name__} (target {want!r}; NaN for the other target)."
    return run


def _register() -> None:
    """Register the three estimators (kind "neural") with the estimator registry."""
    from infoplane.estimators.registry import register_estimator

    specs = [
        ("decoder", decoder_information, "I(Z;X) proxy: 1 - held-out BCE of a decoder reconstructing X "
         "from Z (Wang et al. 2021 sec. 3.3, app. G); target x only", asdict(DecoderConfig())),
        ("classifier", classifier_information, "I(Z;Y) >= H(Y) - held-out CE of a classifier on Z, nats "
         "(Wang et al. 2021 sec. 3.3); target y only", asdict(ClassifierConfig())),
        ("linear-probe", linear_probe, "held-out accuracy of a linear classifier on Z (Sakamoto & Sato 2024 Fig. 1); "
         "target y only", asdict(LinearProbeConfig())),
    ]
    for name, fn, desc, defaults in specs:
        register_estimator(name, "neural", _entry(name, fn), desc, defaults, overwrite=True)


_register()
