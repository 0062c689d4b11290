"""Dependence estimators: pure functions on tensors plus a name registry (docs/estimators.md).

Built-in names: ``nhsic`` (Sakamoto & Sato 2024 appendix F.1.2), ``hsic`` (biased, paper normalisation),
``hsic-unbiased`` (Song et al. 2012 eq. 5), ``snn`` (soft nearest neighbour loss, Sakamoto & Sato 2024 eq. 30).
Neural estimators register themselves from ``infoplane.estimators.neural``.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

from infoplane.estimators.hsic import hsic_biased, hsic_unbiased, validate_grams
from infoplane.estimators.nhsic import check_eps, nhsic, nhsic_eps_path, nhsic_from_resolvents, resolvent
from infoplane.estimators.registry import (EstimatorSpec, get_estimator, list_estimators,
                                           register_estimator)
from infoplane.estimators.snn import soft_nearest_neighbour_loss
from infoplane.estimators.dependence import pair_grams
from infoplane.estimators.protocol import DependenceResult, assess, dependence
from infoplane.estimators.null import (PermutationResult, null_baseline, null_baseline_grams,
                                       permutation_test, permutation_test_grams)
from infoplane.kernels import center

__all__ = [
    "hsic_biased", "hsic_unbiased", "nhsic", "nhsic_eps_path", "resolvent", "nhsic_from_resolvents",
    "soft_nearest_neighbour_loss", "EstimatorSpec", "register_estimator", "get_estimator",
    "list_estimators", "dependence", "assess", "DependenceResult", "pair_grams", "PermutationResult", "null_baseline",
    "null_baseline_grams", "permutation_test", "permutation_test_grams", "validate_grams",
]


def _prep_nhsic(G: torch.Tensor, eps: float = 1e-5, method: str = "solve", **_: Any) -> Tuple[torch.Tensor, float]:
    return resolvent(G.to(torch.float64), check_eps(eps), method), 1.0


def _prep_hsic(G: torch.Tensor, **_: Any) -> Tuple[torch.Tensor, float]:
    return center(G.to(torch.float64)), 1.0 / (G.shape[0] - 1)


register_estimator("nhsic", "kernel", nhsic,
                   "normalized HSIC Tr[K~(K~+eps m I)^-1 L~(L~+eps m I)^-1] (Sakamoto & Sato 2024 app. F.1.2; "
                   "-> chi2 mutual information)", {"eps": 1e-5}, null_prepare=_prep_nhsic)
register_estimator("hsic", "kernel", hsic_biased,
                   "biased HSIC Tr(K~L~)/(m-1)^2 (Sakamoto & Sato 2024 sec. 3)", {}, null_prepare=_prep_hsic)
register_estimator("hsic-unbiased", "kernel", hsic_unbiased,
                   "unbiased HSIC (Song et al. 2012 eq. 5), m >= 4, can be negative", {})
register_estimator("snn", "samples", soft_nearest_neighbour_loss,
                   "soft nearest neighbour loss of z given integer labels y (Sakamoto & Sato 2024 eq. 30; "
                   "higher = more entangled classes)", {"temperature": "paper"},
                   larger_is_dependent=False)
from infoplane.estimators import neural as _neural  # noqa: E402,F401  registers decoder, classifier, linear-probe
