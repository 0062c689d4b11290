"""Data augmentation: contrastive views (SupCon eq. 14, SimCLR) and training-batch augmentation.

Contrastive views (``ContrastiveViews``, picked by ``TrainConfig.aug_views``):

* ``crop-color`` for RGB images (Khosla et al. 2020, "Supervised Contrastive Learning"; Chen et
  al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"): per image
  RandomResizedCrop(scale 0.2-1, output = input size), horizontal flip (p = 0.5),
  ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, RandomGrayscale p = 0.2 -- the
  ``torchvision.transforms.v2`` pipeline :func:`crop_color_transform`, with the parameters drawn per
  image as v2 draws them but applied to the whole batch at once (one ``grid_sample`` for the crops,
  v2's colour kernels on the batch; tests check it against the per-image v2 kernels), on the [0, 1]
  image (the dataset normalisation is undone and redone);
* ``noise-shift`` for tiny / grayscale inputs: images (N, C, H, W) a random translation by up to
  ``pad`` pixels (zero padding, i.e. the dataset mean after normalisation) plus Gaussian noise;
  vectors (N, D) Gaussian noise only; the noise is ``noise`` times the batch's per-feature std;
* ``auto``: crop-color for 3-channel images, noise-shift otherwise.

Training batches (``TrainConfig.train_augment``): ``crop`` = random translation by up to ``pad``
pixels with reflect padding, ``crop-flip`` = and a horizontal flip with p = 0.5 (the "4x4 random
translation followed by random horizontal flip" of Wang et al. 2021, app. F, with the reflect
padding of their reference code). Everything draws from the global torch RNG (seeded by the loop).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .distributed import Shard

VIEW_RECIPES = ("noise-shift", "crop-color")


def translate(x: torch.Tensor, pad: int, mode: str = "constant", dy: Optional[torch.Tensor] = None,
              dx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Shift every image of ``x`` (N, C, H, W) by its own offset in [-pad, pad]^2 (pad then crop).

    ``mode``: the padding (``constant`` = zeros, ``reflect``); ``dy``/``dx``: offsets in [0, 2 pad]
    (drawn with ``torch.randint`` when None)."""
    n, c, h, w = x.shape
    pad = int(pad)
    if pad <= 0:
        return x
    if dy is None:
        dy = torch.randint(0, 2 * pad + 1, (n,))
    if dx is None:
        dx = torch.randint(0, 2 * pad + 1, (n,))
    if mode == "reflect" and pad >= min(h, w):
        mode = "replicate"  # reflect padding needs pad < size
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    dev = x.device
    rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev)[None, :])  # (N, H)
    cols = (dx.to(dev)[:, None] + torch.arange(w, device=dev)[None, :])  # (N, W)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    return xp[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def augment(x: torch.Tensor, noise: float = 0.1, crop_pad: Optional[int] = None) -> torch.Tensor:
    """One ``noise-shift`` view of the batch ``x``; same shape. ``crop_pad=None`` uses max(1, H // 8)."""
    if x.dim() == 4:
        n, _, h, _ = x.shape
        pad = max(1, h // 8) if crop_pad is None else int(crop_pad)
        if pad > 0:
            dy = torch.randint(0, 2 * pad + 1, (n,))
            dx = torch.randint(0, 2 * pad + 1, (n,))
            x = translate(x, pad, "constant", dy, dx)
    if noise > 0:
        scale = x.flatten(1).std(dim=0).clamp_min(1e-3).view(1, *x.shape[1:]) if x.shape[0] > 1 else 1.0
        x = x + noise * scale * torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return x


def two_views(x: torch.Tensor, noise: float = 0.1, crop_pad: Optional[int] = None) -> torch.Tensor:
    """The 2N-sample batch of eq. 14 with ``noise-shift`` views: [view1; view2] of ``x`` (N, ...)."""
    return torch.cat([augment(x, noise, crop_pad), augment(x, noise, crop_pad)])


def crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True, shard: Optional["Shard"] = None) -> torch.Tensor:
    """Training augmentation: random translation by up to ``pad`` pixels (reflect padding) and, with
    ``flip``, a horizontal flip with p = 0.5. Non-image batches are returned unchanged.

    ``shard`` (several processes, ``trainers.distributed``): ``x`` is this process's part of a global
    batch; the offsets and flips are drawn for the whole batch and cut to its rows, so every sample
    gets the draw a single-process run gives it."""
    if x.dim() != 4:
        return x
    n = x.shape[0] if shard is None else shard.total
    rows = (lambda t: t) if shard is None else shard.rows
    if int(pad) > 0:
        dy = rows(torch.randint(0, 2 * int(pad) + 1, (n,)))
        dx = rows(torch.randint(0, 2 * int(pad) + 1, (n,)))
        x = translate(x, pad, "reflect", dy, dx)
    if flip:
        mask = (rows(torch.rand(n)) < 0.5).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    return x


def resolve_views(kind: str, input_shape: Sequence[int]) -> str:
    """``auto`` -> ``crop-color`` for 3-channel images (C, H, W), ``noise-shift`` otherwise."""
    if kind == "auto":
        shape = tuple(int(s) for s in input_shape)
        return "crop-color" if len(shape) == 3 and shape[0] == 3 else "noise-shift"
    if kind not in VIEW_RECIPES:
        raise ValueError(f"aug_views={kind!r} is not one of auto, {', '.join(VIEW_RECIPES)}")
    if kind == "crop-color" and (len(input_shape) != 3 or int(input_shape[0]) != 3):
        raise ValueError(f"aug_views=crop-color needs RGB images (3, H, W), the inputs are {tuple(input_shape)}; "
                         f"use --aug-views noise-shift")
    return kind


def crop_color_transform(size: Sequence[int]):
    """The Khosla et al. 2020 / Chen et al. 2020 view recipe as a ``torchvision.transforms.v2`` pipeline
    for one [0, 1] image (3, H, W) -- the per-image reference that :func:`crop_color_views` batches."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(tuple(int(s) for s in size), scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAY_P),
    ])


CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P, GRAY_P = 0.8, 0.2


def random_resized_boxes(n: int, height: int, width: int, scale=CROP_SCALE, ratio=CROP_RATIO) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, h, w) drawn as ``v2.RandomResizedCrop`` does, one per image:
    up to 10 tries of area ~ U(scale) x H W and log aspect ~ U(log ratio), else a central crop."""
    area = height * width
    log_r = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * torch.empty(n, 10, dtype=torch.float64).uniform_(*scale)
    aspect = torch.exp(torch.empty(n, 10, dtype=torch.float64).uniform_(float(log_r[0]), float(log_r[1])))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, dtype=torch.long))
    rows = torch.arange(n)
    hh = torch.where(first >= 0, h[rows, first.clamp_min(0)], torch.full((n,), height, dtype=torch.long))
    ww = torch.where(first >= 0, w[rows, first.clamp_min(0)], torch.full((n,), width, dtype=torch.long))
    if (first < 0).any():  # central crop with the aspect ratio clamped into ``ratio``
        in_ratio = width / height
        ch, cw = height, width
        if in_ratio < min(ratio):
            cw, ch = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            ch, cw = height, int(round(height * max(ratio)))
        hh = torch.where(first >= 0, hh, torch.full_like(hh, ch))
        ww = torch.where(first >= 0, ww, torch.full_like(ww, cw))
    top = (torch.rand(n, dtype=torch.float64) * (height - hh + 1).double()).floor().long()
    left = (torch.rand(n, dtype=torch.float64) * (width - ww + 1).double()).floor().long()
    central = first < 0
    top = torch.where(central, (height - hh) // 2, top)
    left = torch.where(central, (width - ww) // 2, left)
    return torch.stack([top, left, hh, ww], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop box (top, left, h, w) of each image of ``x`` (N, C, H, W) and resize it to H x W with
    bilinear interpolation (= ``v2.functional.resized_crop`` for crops no larger than the image);
    ``flip`` (N,) bool mirrors the result horizontally. One ``grid_sample`` call for the batch."""
    n, _, height, width = x.shape
    b = boxes.to(x.device, x.dtype)
    top, left, h, w = b[:, 0:1], b[:, 1:2], b[:, 2:3], b[:, 3:4]
    u = torch.arange(height, device=x.device, dtype=x.dtype)[None, :]
    v = torch.arange(width, device=x.device, dtype=x.dtype)[None, :]
    ys = ((u + 0.5) * h / height - 0.5).clamp_min(0.0)  # source row inside the crop (N, H)
    xs = ((v + 0.5) * w / width - 0.5).clamp_min(0.0)
    ys = torch.minimum(ys, h - 1) + top
    xs = torch.minimum(xs, w - 1) + left
    if flip is not None:
        xs = torch.where(flip.to(x.device)[:, None], xs.flip(1), xs)
    gy = (ys + 0.5) / height * 2 - 1
    gx = (xs + 0.5) / width * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.rgb_to_grayscale(x, num_output_channels=1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-image hue shift of [0, 1] RGB images (N, 3, H, W) by ``factor`` (N,) in [-0.5, 0.5], as
    ``v2.functional.adjust_hue`` (RGB -> HSV, h + factor mod 1, HSV -> RGB) for the whole batch."""
    from torchvision.transforms.v2 import functional as TF

    rgb_to_hsv = getattr(getattr(TF, "_color", None), "_rgb_to_hsv", None)
    hsv_to_rgb = getattr(getattr(TF, "_color", None), "_hsv_to_rgb", None)
    if rgb_to_hsv is None or hsv_to_rgb is None:  # torchvision without the batched kernels: per image
        return torch.stack([TF.adjust_hue(x[i], float(factor[i])) for i in range(x.shape[0])])
    hsv = rgb_to_hsv(x)
    h, s, v = hsv.unbind(dim=-3)
    h = (h + factor.to(x.dtype).view(-1, 1, 1)).remainder(1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def color_jitter(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor, h: torch.Tensor,
                 order: torch.Tensor) -> torch.Tensor:
    """``v2.ColorJitter`` with per-image factors: brightness ``b``, contrast ``c``, saturation ``s``
    (N,) and hue ``h`` (N,), applied in the per-image ``order`` (N, 4) of ops 0..3 (b, c, s, h)."""
    def op(k: int, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if k == 0:
            return (z * b[idx].view(-1, 1, 1, 1)).clamp(0.0, 1.0)
        if k == 1:
            mean = _gray(z).mean(dim=(-3, -2, -1), keepdim=True)
            return _blend(z, mean, c[idx].view(-1, 1, 1, 1))
        if k == 2:
            return _blend(z, _gray(z), s[idx].view(-1, 1, 1, 1))
        return adjust_hue(z, h[idx])

    out = x.clone()
    for pos in range(4):
        for k in range(4):
            idx = torch.nonzero(order[:, pos] == k).flatten()
            if len(idx):
                out[idx.to(x.device)] = op(k, out[idx.to(x.device)], idx)
    return out


def crop_color_views(img: torch.Tensor) -> torch.Tensor:
    """One crop-color view of every [0, 1] image of ``img`` (N, 3, H, W), with the parameters drawn per
    image as :func:`crop_color_transform` draws them, computed for the whole batch at once."""
    n, _, height, width = img.shape
    boxes = random_resized_boxes(n, height, width)
    flip = torch.rand(n) < 0.5
    out = resized_crop(img, boxes, flip)
    jitter = torch.rand(n) < JITTER_P
    bcs = torch.empty(n, 3).uniform_(1 - JITTER[0], 1 + JITTER[0])
    hue = torch.empty(n).uniform_(-JITTER[3], JITTER[3])
    order = torch.argsort(torch.rand(n, 4), dim=1)
    if bool(jitter.any()):
        idx = torch.nonzero(jitter).flatten()
        dev = img.device
        out[idx.to(dev)] = color_jitter(out[idx.to(dev)], bcs[idx, 0].to(dev), bcs[idx, 1].to(dev),
                                        bcs[idx, 2].to(dev), hue[idx].to(dev), order[idx])
    gray = (torch.rand(n) < GRAY_P).to(img.device)
    if bool(gray.any()):
        out = torch.where(gray.view(-1, 1, 1, 1), _gray(out).expand_as(out), out)
    return out


def view_options(config) -> set:
    """The view options ``config`` uses: ``aug_views``, and ``aug_noise`` / ``aug_crop_pad`` when the
    views resolve to noise-shift for ``config.dataset`` (unknown datasets: assume noise-shift)."""
    try:
        from infoplane.data import dataset_info

        recipe = resolve_views(config.aug_views, dataset_info(config.dataset).input_shape)
    except (ValueError, KeyError):
        recipe = "noise-shift"
    return {"aug_views", "aug_noise", "aug_crop_pad"} if recipe == "noise-shift" else {"aug_views"}


class ContrastiveViews:
    """Makes the 2N-sample batch [view1; view2] of eq. 14 with the recipe of the run.

    ``recipe``: noise-shift or crop-color (see the module docstring); ``mean``/``std``: the dataset
    normalisation (per channel) that crop-color undoes before and redoes after the transforms."""

    def __init__(self, recipe: str, noise: float = 0.1, crop_pad: Optional[int] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> None:
        if recipe not in VIEW_RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(VIEW_RECIPES)}, got {recipe!r}")
        self.recipe, self.noise, self.crop_pad = recipe, float(noise), crop_pad
        self.mean = torch.tensor(list(mean) if mean is not None else [0.0, 0.0, 0.0]).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std) if std is not None else [1.0, 1.0, 1.0]).view(1, -1, 1, 1)

    @classmethod
    def from_config(cls, config, input_shape: Sequence[int]) -> "ContrastiveViews":
        """The views of ``config.aug_views`` for inputs of ``input_shape`` of ``config.dataset``."""
        recipe = resolve_views(config.aug_views, input_shape)
        mean = std = None
        if recipe == "crop-color":
            from infoplane.data import dataset_info

            try:
                norm = dataset_info(config.dataset).normalization
                mean, std = norm["mean"], norm["std"]
            except (ValueError, KeyError):
                mean = std = None
        return cls(recipe, config.aug_noise, config.aug_crop_pad, mean, std)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of the batch ``x``."""
        if self.recipe == "noise-shift":
            return augment(x, self.noise, self.crop_pad)
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        img = (x * std + mean).clamp(0.0, 1.0)
        return (crop_color_views(img) - mean) / std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.view(x), self.view(x)])

    def describe(self) -> dict:
        if self.recipe == "noise-shift":
            return {"views": "noise-shift", "aug_noise": self.noise, "aug_crop_pad": self.crop_pad}
        return {"views": "crop-color (RandomResizedCrop 0.2-1, flip, ColorJitter(0.4,0.4,0.4,0.1) p=0.8, "
                         "RandomGrayscale p=0.2)"}


__all__ = ["translate", "augment", "two_views", "crop_flip", "resolve_views", "crop_color_transform",
           "random_resized_boxes", "resized_crop", "adjust_hue", "color_jitter", "crop_color_views",
           "view_options", "ContrastiveViews"]
