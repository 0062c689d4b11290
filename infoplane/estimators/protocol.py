"""One engine for every dependence value: the estimation protocol and its chance level.

``assess(x, y, ...)`` returns a :class:`DependenceResult` (value, minibatch sd, exact null mean
and sd, z, p-value, chance-adjusted value, error bound, ranks); ``dependence(x, y, ...)`` returns
its ``value``. ``infoplane estimate`` calls the same functions on the arrays of a store, so a
notebook and the CLI get the same number for the same data and options.

Protocols:

* ``"minibatch"`` (the protocol of Sakamoto & Sato 2024, app. F.1.2): the samples are cut, in the
  given order, into ``B = N // batch_size`` batches of exactly ``batch_size`` (the remainder is
  left out and logged); the value is the mean of the per-batch values, ``std`` their sd.
* ``"full"``: all N samples at once. For nHSIC with ``tolerance=t`` a low-rank factorisation with a
  rigorous error bound ``<= t * value`` (``infoplane.estimators.fast``); exact otherwise, from the
  resolvents of the RBF sides by Cholesky (``infoplane.estimators.exact``).

Chance level (``infoplane.estimators.chance``): for nHSIC and biased HSIC the exact permutation
null mean and sd of the reported value, ``z``, a gamma-approximation p-value, and ``adjusted =
(value - null_mean) / (max_value - null_mean)``. Estimators without an analytic null report NaN
there (use ``permutation_test`` or the shuffled baseline of ``infoplane estimate``).
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from infoplane import kernels as _k
from infoplane.estimators.chance import ChanceLevel, chance_level, summarize, summarize_factor
from infoplane.estimators.registry import EstimatorSpec, get_estimator

__all__ = ["DependenceResult", "assess", "dependence", "PROTOCOLS", "DISTANCES", "resolve_kernel",
           "check_estimator_params"]

log = logging.getLogger(__name__)

PROTOCOLS = ("full", "minibatch")
DISTANCES = ("squared", "euclidean")
DeviceLike = Union[str, torch.device, None]


@dataclass
class DependenceResult:
    """A dependence value with everything needed to read it against chance.

    value: the estimate (mean over minibatches for the minibatch protocol); std: sd of the
    per-batch values (NaN for one batch); null_mean / null_sd: exact permutation-null mean and sd
    of ``value``; z = (value - null_mean) / null_sd; p_value: one-sided (gamma approximation);
    max_value: upper bound of the statistic (von Neumann); adjusted: (value - null_mean) /
    (max_value - null_mean), 0 at chance, 1 at perfect alignment; error_bound: for the low-rank
    full-sample path, ``exact - value`` lies in ``[0, error_bound]`` (0 when exact, NaN when not
    applicable); rank_z / rank_target: ranks of the factors used (full-sample nHSIC only);
    batch_values: the per-batch values.
    """

    estimator: str
    value: float
    std: float = math.nan
    n_samples: int = 0
    batch_size: int = 0
    n_batches: int = 1
    protocol: str = "full"
    null_mean: float = math.nan
    null_sd: float = math.nan
    z: float = math.nan
    p_value: float = math.nan
    max_value: float = math.nan
    adjusted: float = math.nan
    error_bound: float = math.nan
    rank_z: Optional[int] = None
    rank_target: Optional[int] = None
    batch_values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    extras: Dict[str, float] = field(default_factory=dict, repr=False)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of the scalar fields (``batch_values`` left out, extras merged)."""
        d = asdict(self)
        d.pop("batch_values")
        extras = d.pop("extras")
        return {**d, **extras}

    def __str__(self) -> str:
        s = f"{self.estimator} = {self.value:.4g}"
        if self.n_batches > 1:
            s += f" ± {self.std:.3g} (sd over {self.n_batches} batches of {self.batch_size})"
        else:
            s += f" (m = {self.n_samples})"
        if math.isfinite(self.null_mean):
            s += (f"; chance {self.null_mean:.4g} ± {self.null_sd:.3g}, z = {self.z:.3g}, "
                  f"p ≈ {self.p_value:.2g}, adjusted = {self.adjusted:.3g}")
        if math.isfinite(self.error_bound) and self.error_bound > 0:
            s += f"; low-rank error <= {self.error_bound:.3g}"
        return s


def check_estimator_params(spec: EstimatorSpec, params: Dict[str, Any]) -> Dict[str, Any]:
    """Estimator parameters over its defaults; an unknown name raises ``TypeError`` listing the valid ones."""
    sig = inspect.signature(spec.fn)
    names = list(sig.parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return {**spec.defaults, **params}
    valid = set(names[2:]) | set(spec.defaults)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise TypeError(f"estimator {spec.name!r} got unexpected parameter(s) {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(sorted(valid)) or '(none)'}.")
    return {**spec.defaults, **params}


def resolve_kernel(data: Any, kernel: str) -> str:
    """Kernel name for one variable: 'rbf' | 'linear' | 'label'.

    'auto' is 'label' for a 1-D integer vector, else 'rbf'. 'linear' on a 1-D integer vector is the
    linear kernel on one-hot codes ('label', the papers' meaning); 'linear' or 'auto' on a 1-D float
    vector whose values are all integers is ambiguous and raises.
    """
    k = str(kernel).lower()
    if k in ("onehot", "one-hot"):
        k = "label"
    if k not in ("auto", "rbf", "linear", "label"):
        raise ValueError(f"unknown kernel {kernel!r}; use 'auto', 'rbf', 'linear' or 'label'.")
    is_labels = _k.is_label_vector(data)
    if k in ("auto", "linear") and not is_labels:
        t = data if isinstance(data, torch.Tensor) else np.asarray(data)
        if t.ndim == 1 and k == "linear" and _integral_floats(t):
            raise ValueError("kernel 'linear' on a 1-D float vector of whole numbers is ambiguous: pass integer "
                             "labels (e.g. y.astype(int)) for the linear kernel on one-hot codes, or reshape "
                             "to (m, 1) for a scalar feature.")
    if k == "auto":
        return "label" if is_labels else "rbf"
    if k == "linear" and is_labels:
        return "label"
    return k


def _integral_floats(t: Any) -> bool:
    if isinstance(t, torch.Tensor):
        return bool(t.is_floating_point() and torch.all(torch.isfinite(t)) and torch.all(t == t.round()))
    return bool(np.issubdtype(t.dtype, np.floating) and np.all(np.isfinite(t)) and np.all(t == np.round(t)))


def _check_choice(value: str, choices: tuple, name: str) -> str:
    v = str(value).lower()
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return v


#: Smallest number of samples (and minibatch size) for which a value and its exact chance level exist.
MIN_SAMPLES = 4


def _check_batch_size(batch_size: Any, n: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < MIN_SAMPLES:
        raise ValueError(f"batch_size must be an integer >= {MIN_SAMPLES} (the exact null variance needs m >= 4), "
                         f"got {batch_size!r}.")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} samples given; pass a smaller "
                         "batch_size or use protocol='full'.")
    return int(batch_size)


def _device(device: DeviceLike, x: Any) -> torch.device:
    if device is None:
        return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    from infoplane.device import resolve_device

    return resolve_device(device)


def _n_samples(x: Any, y: Any) -> int:
    from infoplane.estimators.dependence import check_paired

    return check_paired(x, y)


def _squared(distance: str) -> bool:
    return _check_choice(distance, DISTANCES, "distance") == "squared"


def assess(x: Any, y: Any, estimator: Union[str, EstimatorSpec] = "nhsic", *, protocol: str = "full",
           batch_size: int = 100, tolerance: Optional[float] = None, sigma: _k.SigmaLike = "paper",
           sigma_x: Optional[_k.SigmaLike] = None, sigma_y: Optional[_k.SigmaLike] = None,
           kernel_x: str = "rbf", kernel_y: str = "auto", distance: str = "squared",
           num_classes: Optional[int] = None, dtype: torch.dtype = torch.float64, device: DeviceLike = None,
           **params: Any) -> DependenceResult:
    """Dependence between paired samples x (m, ...) and y (m, ...) or labels (m,), read against chance.

    estimator: a registered name (``infoplane.estimators.list_estimators()``); params go to it over
    its defaults (e.g. ``eps=1e-3`` for nHSIC); an unknown parameter raises ``TypeError``.
    protocol: 'full' (all samples) or 'minibatch' (consecutive batches of ``batch_size``).
    tolerance: full-sample nHSIC only: relative error bound of the low-rank value (None = exact).
    sigma: RBF bandwidth rule for both sides ('paper' = 5 sqrt(d), 'median', or a float);
    sigma_x / sigma_y override it per side. kernel_x / kernel_y: 'rbf', 'linear', 'label' or 'auto'
    (see :func:`resolve_kernel`). distance: 'squared' (standard RBF) or 'euclidean' (the non-squared
    distance of the published E2E-info code).
    """
    spec = get_estimator(estimator)
    protocol = _check_choice(protocol, PROTOCOLS, "protocol")
    squared = _squared(distance)
    kw = check_estimator_params(spec, params)
    n = _n_samples(x, y)
    if n < MIN_SAMPLES:
        raise ValueError(f"got {n} paired sample(s); a dependence value needs at least {MIN_SAMPLES} (the exact "
                         "chance level needs m >= 4, and below that every value is indistinguishable from chance).")
    dev = _device(device, x)
    sx = sigma if sigma_x is None else sigma_x
    sy = sigma if sigma_y is None else sigma_y
    if tolerance is not None and not (spec.name == "nhsic" and protocol == "full"):
        raise ValueError("tolerance applies to full-sample nHSIC only (estimator='nhsic', protocol='full').")
    if spec.kind != "kernel":
        if device is not None and "device" in inspect.signature(spec.fn).parameters and "device" not in kw:
            kw["device"] = str(dev)
        if protocol == "minibatch" and spec.kind == "samples":
            b = _check_batch_size(batch_size, n)
            outs = [spec.fn(_rows(x, sl), _rows(y, sl), **kw) for sl in _slices(n, b)]
            res = _result(spec.name, np.asarray([_to_float(o) for o in outs]), n, b, "minibatch")
            if outs and all(isinstance(o, dict) for o in outs):   # extra fields: their mean over batches
                keys = [k for k, v in outs[0].items() if k != "value" and isinstance(v, (int, float))
                        and not isinstance(v, bool)]
                res.extras = {k: float(np.mean([float(o[k]) for o in outs])) for k in keys}
            return res
        out = spec.fn(x, y, **kw)
        res = _result(spec.name, np.asarray([_to_float(out)]), n, n, "full")
        if isinstance(out, dict):
            res.extras = {k: float(v) for k, v in out.items()
                          if k != "value" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        return res
    kx, ky = resolve_kernel(x, kernel_x), resolve_kernel(y, kernel_y)
    if spec.name == "nhsic":
        eps = float(kw.get("eps", 1e-5))
        if protocol == "minibatch":
            from infoplane.estimators.batched import prepare_minibatch_side

            b = _check_batch_size(batch_size, n)
            _log_dropped(n, b)
            a = prepare_minibatch_side(x, kernel=kx, batch_size=b, eps=eps, sigma=sx, squared=squared, device=dev,
                                       dtype=dtype, num_classes=num_classes)
            c = prepare_minibatch_side(y, kernel=ky, batch_size=b, eps=eps, sigma=sy, squared=squared, device=dev,
                                       dtype=dtype, num_classes=num_classes)
            return nhsic_minibatch_result(a, c)
        from infoplane.estimators import fast

        if tolerance is None and kx == "rbf":      # exact: resolvents by Cholesky (infoplane.estimators.exact)
            from infoplane.estimators import exact

            za = exact.prepare_resolvent(x, sigma=sx, squared=squared, eps=eps, device=dev, dtype=dtype)
            if ky == "rbf":
                zb: Any = exact.prepare_resolvent(y, sigma=sy, squared=squared, eps=eps, device=dev, dtype=dtype)
            else:
                zb = fast.factorize(y, kernel=ky, sigma=sy, squared=squared, device=dev, dtype=dtype,
                                    num_classes=num_classes)
            return nhsic_resolvent_result(za, zb)
        fa = fast.factorize(x, kernel=kx, sigma=sx, squared=squared, tolerance=tolerance, device=dev,
                            dtype=dtype, num_classes=num_classes)
        fb = fast.factorize(y, kernel=ky, sigma=sy, squared=squared, tolerance=tolerance, device=dev,
                            dtype=dtype, num_classes=num_classes)
        if tolerance is not None:
            ref = fast.refine_nhsic(fa, fb, eps=eps, tolerance=tolerance)
            fa, fb = ref.z_factor, ref.other_factor
        return nhsic_factor_result(fa, fb, eps)
    # any other kernel estimator: Gram matrices per batch (one batch for 'full')
    b = n if protocol == "full" else _check_batch_size(batch_size, n)
    if protocol == "minibatch":
        _log_dropped(n, b)
    vals, sa, sb, scale = [], [], [], 1.0
    for sl in _slices(n, b):
        K = _k.gram(_rows(x, sl), kx, sigma=sx, squared=squared, num_classes=None, dtype=dtype, device=dev)
        L = _k.gram(_rows(y, sl), ky, sigma=sy, squared=squared, num_classes=num_classes, dtype=dtype, device=dev)
        vals.append(_to_float(spec.fn(K, L, **kw)))
        if spec.null_prepare is not None:
            AK, s1 = spec.null_prepare(K, **kw)
            AL, s2 = spec.null_prepare(L, **kw)
            sa.append(AK)
            sb.append(AL)
            scale = float(s1 * s2)
    res = _result(spec.name, np.asarray(vals), n, b, protocol)
    if sa:
        _attach(res, chance_level(res.batch_values, summarize(torch.stack(sa)), summarize(torch.stack(sb)), scale))
    return res


def dependence(x: Any, y: Any, estimator: Union[str, EstimatorSpec] = "nhsic", **kwargs: Any) -> float:
    """The value of :func:`assess` (same arguments), e.g. ``dependence(z, labels)`` = nHSIC(Y; Z) with
    eps = 1e-5, RBF sigma = 5 sqrt(d) on z and the linear kernel on one-hot labels."""
    return assess(x, y, estimator, **kwargs).value


# ----------------------------------------------------------------------------- building blocks
def nhsic_minibatch_result(a: Any, b: Any, estimator: str = "nhsic") -> DependenceResult:
    """Result of the minibatch protocol from two prepared sides (``batched.prepare_minibatch_side``)."""
    from infoplane.estimators.batched import minibatch_values

    vals = minibatch_values(a, b).detach().to("cpu", torch.float64).numpy()
    res = _result(estimator, vals, a.n, a.batch_size, "minibatch")
    _attach(res, chance_level(vals, a.summary, b.summary))
    return res


def nhsic_factor_result(fa: Any, fb: Any, eps: float, *, estimator: str = "nhsic") -> DependenceResult:
    """Full-sample result from two centred factors (``fast.CenteredFactor``, or the exact
    ``exact.ResolventSide`` a low-rank factor falls back to): value, rigorous error bound (0 when both
    are exact), ranks and the chance level computed from the same factors."""
    from infoplane.estimators import fast

    fb = fb.to(fast._device_of(fa))
    out = fast.nhsic_factored(fa, fb, eps=eps)
    value, bound = float(out[0]), float(out[1])
    res = _result(estimator, np.asarray([value]), fa.m, fa.m, "full")
    res.error_bound = bound
    res.rank_z, res.rank_target = fa.rank, fb.rank
    _attach(res, chance_level(np.asarray([value]), _side_summary(fa, eps), _side_summary(fb, eps)))
    return res


def nhsic_resolvent_result(z: Any, other: Any, *, estimator: str = "nhsic") -> DependenceResult:
    """Exact full-sample result from the Z resolvent (``exact.ResolventSide``) and the target side
    (another resolvent, or an exact ``fast.CenteredFactor`` such as the labels'): value, error bound 0,
    ranks, and the chance level from the same matrices."""
    from infoplane.estimators.exact import resolvent_summary, resolvent_value

    value = resolvent_value(z, other)
    res = _result(estimator, np.asarray([value]), z.m, z.m, "full")
    res.error_bound = 0.0
    res.rank_z = z.rank
    res.rank_target = other.rank
    _attach(res, chance_level(np.asarray([value]), resolvent_summary(z), _side_summary(other.to(z.R.device), z.eps)))
    return res


def _side_summary(side: Any, eps: float):
    """Spectral summary (``chance``) of a full-sample side: an exact ``exact.ResolventSide`` or a
    ``fast.CenteredFactor`` (its eigenvalues ``w`` at ``eps``)."""
    from infoplane.estimators.exact import ResolventSide, resolvent_summary

    if isinstance(side, ResolventSide):
        return resolvent_summary(side)
    return summarize_factor(side.U, side.weights(eps))


def _attach(res: DependenceResult, ch: ChanceLevel) -> None:
    res.null_mean, res.null_sd, res.z = ch.null_mean, ch.null_sd, ch.z
    res.p_value, res.max_value, res.adjusted = ch.p_value, ch.max_value, ch.adjusted


def _result(name: str, vals: np.ndarray, n_used: int, b: int, protocol: str) -> DependenceResult:
    B = len(vals)
    return DependenceResult(estimator=name, value=float(np.mean(vals)),
                            std=float(np.std(vals, ddof=1)) if B > 1 else math.nan,
                            n_samples=B * b if protocol == "minibatch" else int(n_used), batch_size=int(b),
                            n_batches=B, protocol=protocol, batch_values=vals)


def _slices(n: int, b: int):
    return [slice(i * b, (i + 1) * b) for i in range(n // b)]


def _rows(x: Any, sl: slice) -> Any:
    return x[sl]


def _log_dropped(n: int, b: int) -> None:
    left = n % b
    if left:
        log.info("minibatch protocol: %d of %d samples left out (%d batches of %d; every value uses the same m).",
                 left, n, n // b, b)


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu().double().item())
    if isinstance(v, dict):
        for key in ("value", "estimate", "mi"):
            if key in v:
                return _to_float(v[key])
        raise ValueError(f"estimator returned a dict without a 'value' entry: {sorted(v)}")
    return float(v)
