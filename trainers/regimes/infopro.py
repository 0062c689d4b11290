"""InfoPro: locally supervised learning with the information propagation loss (Wang et al. 2021,
"Revisiting Locally Supervised Learning: an Alternative to End-to-end Training").

Module k < K-1 minimises the surrogate of eq. 5,

    lambda1_k * R_w(x | h) + lambda2_k * L_y(h),

R_w = binary cross-entropy of a decoder w reconstructing the input image in [0, 1] from h (sec. 3.3,
decoder of Table 7: bilinear upsampling to the input size, 3x3 conv 12 + BN + ReLU, 3x3 conv to the
input channels + sigmoid), and L_y either the softmax CE of psi (``infopro_loss=softmax``) or the
contrastive loss eq. 4 on z = phi(h) (``contrast``, tau = 0.07, sec. 4), normalised per anchor as
in the reference implementation (:func:`infopro_contrast_loss`); psi and phi are
:class:`~trainers.heads.ConvFCHead` (Table 8). lambda1/lambda2 change linearly from the 1st to the
(K-1)th module (sec. 4); the last module is trained by plain CE.

Options (CLI ``--modules K --infopro-loss softmax|contrast --lambda1 FIRST [LAST] --lambda2 FIRST
[LAST] --tau T``; ``regime_kwargs`` keys ``modules``, ``infopro_loss``, ``lambda1``, ``lambda2``,
``tau``) and ``async``/``epochs_per_module`` of :class:`ModularRegime`; ``tau`` only with the
contrastive loss. The paper tunes lambda from {0, 0.1, 0.5, 1, 2, 5, 10, 20}; the defaults are the
values of the authors' ResNet-32 / CIFAR-10 commands for the chosen K (:data:`REFERENCE_LAMBDAS`;
K = 4: lambda1 6 -> 1, lambda2 0 -> 2; other K use the K = 4 values).
Inputs that are not images (e.g. 2-D toy data) are reconstructed with a linear output and MSE.
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from infoplane.data import dataset_info, denormalize
from . import register_regime
from .greedy import ConvFCHead, ModularRegime

#: (lambda1, lambda2) as (module 1, module K-1) pairs from the authors' ResNet-32 / CIFAR-10 InfoPro
#: commands (reference implementation of Wang et al. 2021, ``--ixx_1 --ixy_1 --ixx_2 --ixy_2``), by K.
REFERENCE_LAMBDAS: Dict[int, Tuple[Tuple[float, float], Tuple[float, float]]] = {
    2: ((5.0, 0.0), (1.0, 0.0)),
    4: ((6.0, 1.0), (0.0, 2.0)),
    8: ((5.0, 0.0), (0.0, 2.0)),
    16: ((5.0, 0.2), (0.05, 0.5)),
}
DEFAULT_LAMBDA1, DEFAULT_LAMBDA2 = REFERENCE_LAMBDAS[4]
INFOPRO_LOSSES = ("softmax", "contrast")
CONTRAST_NORMALISATIONS = ("pairs", "anchor")


def infopro_contrast_loss(z: torch.Tensor, y: torch.Tensor, tau: float = 0.07,
                          normalisation: str = "pairs") -> torch.Tensor:
    """The contrastive loss of Wang et al. 2021 eq. 4 on L2-normalised ``z`` (N, d), labels ``y`` (N,).

    With l_ij = log( exp(z_i.z_j/tau) / sum_{k!=i} exp(z_i.z_k/tau) ) and P(i) = {j != i: y_j = y_i}:

    * ``pairs`` (eq. 4 as printed): -(1 / sum_i |P(i)|) sum_i sum_{j in P(i)} l_ij;
    * ``anchor`` (the authors' reference code, a SupCon loss with one view): -(1/N) sum_i
      (1 / max(|P(i)|, 1)) sum_{j in P(i)} l_ij -- every anchor weighs the same, an anchor
      without positives contributes 0.

    0 (with a gradient path) when no two samples share a label.
    """
    if z.dim() != 2 or y.shape[0] != z.shape[0]:
        raise ValueError(f"infopro_contrast_loss needs z (N, d) and y (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if not tau > 0:
        raise ValueError(f"temperature tau must be > 0, got {tau}")
    if normalisation not in CONTRAST_NORMALISATIONS:
        raise ValueError(f"normalisation={normalisation!r} is not one of {', '.join(CONTRAST_NORMALISATIONS)}")
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t() / tau).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    if int(n_pos.sum()) == 0:
        return z.sum() * 0.0
    per_anchor = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)
    if normalisation == "pairs":
        return -per_anchor.sum() / n_pos.sum()
    return -(per_anchor / n_pos.clamp_min(1)).mean()


def interpolate_lambdas(value: Union[float, str, Sequence[float]], n: int) -> List[float]:
    """Wang et al. 2021 sec. 4: lambda changes linearly from the 1st to the (K-1)th module.

    ``value`` a number (constant), a pair (first, last) or the string ``"first,last"``; ``n`` = K-1."""
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").split(",") if p.strip()]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"lambda must be a number or 'first,last', got {value!r}") from None
    if isinstance(value, (int, float)):
        first = last = float(value)
    else:
        vals = [float(v) for v in value]
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2:
            raise ValueError(f"lambda must be a number or a (first, last) pair, got {value!r}")
        first, last = vals
    if first < 0 or last < 0:
        raise ValueError(f"lambdas must be >= 0 (eq. 1: alpha, beta >= 0), got {first}, {last}")
    if n <= 1:
        return [first] * max(n, 0)
    return [first + (last - first) * i / (n - 1) for i in range(n)]


class Decoder(nn.Module):
    """Decoder w of Wang et al. 2021 Table 7: h (N, C, h, w) -> x_hat (N, C_in, H, W) in (0, 1).

    Bilinear interpolation to the input size (corners aligned, as in the reference code), 3x3 conv
    to 12 channels + BN + ReLU, 3x3 conv to the
    input's channels + sigmoid. Flat features or non-image inputs: Linear(d, 256) + ReLU +
    Linear(256, prod(input_shape)) (+ sigmoid for images)."""

    def __init__(self, feature_shape: Sequence[int], input_shape: Sequence[int], hidden: int = 12) -> None:
        super().__init__()
        fshape = tuple(int(s) for s in feature_shape)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.image = len(self.input_shape) == 3
        self.conv = len(fshape) == 3 and self.image
        if self.conv:
            self.net = nn.Sequential(
                nn.Conv2d(fshape[0], hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, self.input_shape[0], 3, padding=1))
        else:
            d = int(torch.Size(fshape).numel())
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(),
                                     nn.Linear(256, int(torch.Size(self.input_shape).numel())))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.conv:
            h = F.interpolate(h, size=self.input_shape[1:], mode="bilinear", align_corners=True)
            out = self.net(h)
        else:
            out = self.net(h).view((h.shape[0],) + self.input_shape)
        return torch.sigmoid(out) if self.image else out


def reconstruction_loss(decoder: Decoder, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R_w(x | h): mean per-pixel BCE for images in [0, 1] (Wang et al. 2021 sec. 3.3), MSE otherwise."""
    out = decoder(h)
    if decoder.image:
        with torch.autocast(out.device.type, enabled=False):  # BCE is unsafe under autocast (--precision)
            return F.binary_cross_entropy(out.float(), target.float())
    return F.mse_loss(out, target)


def reference_lambdas(k: int) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """The authors' (lambda1, lambda2) (first, last) pairs for K = ``k`` modules (K = 4's for other K)."""
    return REFERENCE_LAMBDAS.get(int(k), REFERENCE_LAMBDAS[4])


@register_regime("infopro")
class InfoPro(ModularRegime):
    """Eq. 5 of Wang et al. 2021 for modules 1..K-1, CE for the last; see the module docstring."""

    options = ModularRegime.options + ("infopro_loss", "lambda1", "lambda2", "tau")
    option_notes = {**ModularRegime.option_notes, "tau": "only with --infopro-loss contrast"}

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        opts = set(super().options_for(config))
        if str(config.regime_kwargs.get("infopro_loss", "contrast")) != "contrast":
            opts.discard("tau")
        return frozenset(opts)

    def __init__(self, model: nn.Module, config, device) -> None:
        kw = config.regime_kwargs
        self.infopro_loss = str(kw.get("infopro_loss", "contrast"))
        if self.infopro_loss not in INFOPRO_LOSSES:
            raise ValueError(f"infopro_loss={self.infopro_loss!r} is not one of {', '.join(INFOPRO_LOSSES)}")
        self.tau = float(kw.get("tau", 0.07))
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        ref1, ref2 = reference_lambdas(int(kw.get("modules", self.default_modules)))
        self._lambda_spec = (kw.get("lambda1", ref1), kw.get("lambda2", ref2))
        self._lambda_source = "given" if ("lambda1" in kw or "lambda2" in kw) else "reference command for K"
        self._info = None
        try:
            self._info = dataset_info(config.dataset)
        except (ValueError, KeyError):
            self._info = None
        super().__init__(model, config, device)

    def build_aux(self) -> None:
        n = self.K - 1
        self.lambda1 = interpolate_lambdas(self._lambda_spec[0], n)
        self.lambda2 = interpolate_lambdas(self._lambda_spec[1], n)
        out_dim = self.num_classes if self.infopro_loss == "softmax" else 128
        in_shape = tuple(int(s) for s in self.model.input_shape)
        for k in range(n):
            shape = self.split.feature_shapes[k]
            self.heads[f"aux_{k}"] = ConvFCHead(shape, out_dim)  # psi (softmax) or phi (contrast)
            if self.lambda1[k] > 0:
                self.heads[f"dec_{k}"] = Decoder(shape, in_shape)

    def target_image(self, x: torch.Tensor) -> torch.Tensor:
        """The input in [0, 1] for the BCE (dataset normalisation undone; min-max if unknown)."""
        if len(self.model.input_shape) != 3:
            return x
        if self._info is not None:
            return denormalize(x, self._info).to(x.device, x.dtype)
        flat = x.flatten(1)
        lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
        return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)

    def label_loss(self, k: int, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.heads[f"aux_{k}"](h)
        if self.infopro_loss == "softmax":
            return F.cross_entropy(out, y)
        out, y = self.global_batch(out, y)  # the contrast spans the whole batch on several processes
        return infopro_contrast_loss(out, y, self.tau, normalisation="anchor")

    def local_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.lambda2[k] * self.label_loss(k, h, y)
        if self.lambda1[k] > 0:
            loss = loss + self.lambda1[k] * reconstruction_loss(self.heads[f"dec_{k}"], h, self.target_image(x))
        return loss

    def describe(self) -> Dict[str, Any]:
        d = {**super().describe(), "infopro_loss": self.infopro_loss, "lambda1": self.lambda1,
             "lambda2": self.lambda2, "lambdas_from": self._lambda_source,
             "aux": "psi/phi conv+2fc (Table 8, width by channels), decoder (Table 7)"}
        if self.infopro_loss == "contrast":
            d.update(tau=self.tau, contrast_normalisation="per anchor (reference code)")
        return d


__all__ = ["REFERENCE_LAMBDAS", "infopro_contrast_loss", "interpolate_lambdas", "reference_lambdas", "Decoder",
           "reconstruction_loss", "InfoPro"]
