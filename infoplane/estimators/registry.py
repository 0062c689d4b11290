"""Registry of dependence estimators by name (used by ``infoplane.dependence``, estimate and the CLI).

Kinds: ``"kernel"`` — ``fn(K, L, **params)`` on two ``(m, m)`` Gram matrices; ``"samples"`` —
``fn(x, y, **params)`` on raw paired samples (e.g. the soft nearest neighbour loss on z and labels);
``"neural"`` — ``fn(x, y, **params)`` trained estimators (decoder, classifier, linear probe),
registered by ``infoplane.estimators.neural``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["EstimatorSpec", "register_estimator", "get_estimator", "list_estimators", "KINDS"]

KINDS = ("kernel", "samples", "neural")


@dataclass(frozen=True)
class EstimatorSpec:
    """A named estimator. ``defaults``: default keyword parameters passed to ``fn``.

    ``null_prepare`` (kernel kind only, optional): ``(K, **params) -> (A, s)`` such that the value on
    the pairing permuted by ``p`` is ``s_K * s_L * sum(A_K * A_L[p][:, p])``; it lets permutation
    tests cost O(m^2) per permutation instead of re-running ``fn``. ``larger_is_dependent=False`` for
    scores that fall with dependence (the SNN loss): permutation p-values then count ``null <= value``.
    ``targets``: what ``infoplane estimate`` pairs each layer with: ``("x", "y")`` (inputs and
    labels) or one of them for an estimator that measures only that (the SNN loss needs labels).
    """

    name: str
    kind: str
    fn: Callable[..., Any]
    description: str = ""
    defaults: Dict[str, Any] = field(default_factory=dict)
    null_prepare: Optional[Callable[..., Any]] = None
    larger_is_dependent: bool = True
    targets: Tuple[str, ...] = ("x", "y")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"estimator {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}.")
        if not callable(self.fn):
            raise ValueError(f"estimator {self.name!r}: fn must be callable.")
        if not self.targets or any(t not in ("x", "y") for t in self.targets):
            raise ValueError(f"estimator {self.name!r}: targets must be a non-empty subset of ('x', 'y'), "
                             f"got {self.targets!r}.")


_REGISTRY: Dict[str, EstimatorSpec] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_estimator(name: str, kind: str, fn: Optional[Callable[..., Any]] = None, description: str = "",
                       defaults: Optional[Dict[str, Any]] = None, *, null_prepare: Optional[Callable] = None,
                       larger_is_dependent: bool = True, targets: Tuple[str, ...] = ("x", "y"),
                       overwrite: bool = False) -> Any:
    """Register ``fn`` under ``name`` (case-insensitive, '_' == '-'); usable as a decorator when fn is None.

    Re-registering an existing name raises ValueError unless ``overwrite=True``.
    """
    def _do(f: Callable[..., Any]) -> Callable[..., Any]:
        key = _key(name)
        if key in _REGISTRY and not overwrite:
            raise ValueError(f"estimator {key!r} is already registered; pass overwrite=True to replace it.")
        _REGISTRY[key] = EstimatorSpec(key, kind, f, description, dict(defaults or {}), null_prepare,
                                      larger_is_dependent, tuple(targets))
        return f

    if fn is None:
        return _do
    _do(fn)
    return _REGISTRY[_key(name)]


def get_estimator(name: str) -> EstimatorSpec:
    """Spec for ``name``; unknown names raise ValueError listing the valid ones."""
    if isinstance(name, EstimatorSpec):
        return name
    key = _key(str(name))
    if key not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; valid: {', '.join(list_estimators())}.")
    return _REGISTRY[key]


def list_estimators(kind: Optional[str] = None) -> List[str]:
    """Sorted registered names, optionally of one kind."""
    return sorted(k for k, s in _REGISTRY.items() if kind is None or s.kind == kind)
