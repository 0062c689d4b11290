"""Dependence estimators: pure functions on tensors plus a name registry (docs/estimators.md).

Built-in names: ``nhsic`` (Sakamoto & Sato 2024 appendix F.1.2), ``hsic`` (biased, paper normalisation),
``hsic-unbiased`` (Song et al. 2012 eq. 5), ``snn`` (soft nearest neighbour loss, Sakamoto & Sato 2024 eq. 30).
Classic information-plane estimators (kind "samples", nats): ``binning`` / ``binning-adaptive``
(Shwartz-Ziv & Tishby 2017; equal-width / equal-mass bins), ``kde`` (Kolchinsky & Tracey 2017 bounds,
as in Saxe et al. 2018), ``renyi`` (matrix-based Rényi, Giraldo et al. 2014), ``knn`` (KSG, Kraskov et
al. 2004; Ross 2014 for labels). Neural estimators register themselves from ``infoplane.estimators.neural``.
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
from infoplane.estimators.binning import binning_information
from infoplane.estimators.kde import kde_information
from infoplane.estimators.knn import ksg_information
from infoplane.estimators.renyi import renyi_entropy, renyi_information
from infoplane.kernels import center

__all__ = [
    "hsic_biased", "hsic_unbiased", "nhsic", "nhsic_eps_path", "resolvent", "nhsic_from_resolvents",
    "soft_nearest_neighbour_loss", "EstimatorSpec", "register_estimator", "get_estimator",
    "list_estimators", "dependence", "assess", "DependenceResult", "pair_grams", "PermutationResult", "null_baseline",
    "null_baseline_grams", "permutation_test", "permutation_test_grams", "validate_grams",
    "binning_information", "kde_information", "ksg_information", "renyi_entropy", "renyi_information",
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
                   larger_is_dependent=False, targets=("y",))
# classic information-plane estimators (docs/estimators.md, "Classic estimators"); no analytic null:
# `infoplane estimate` adds the shuffled-Z baseline
register_estimator("binning", "samples", binning_information,
                   "plug-in I(T;X), I(T;Y) of the layer binned into 30 equal-width bins (Shwartz-Ziv & Tishby "
                   "2017), nats", {"bins": 30, "scheme": "equal-width"}, larger_is_dependent=True)
register_estimator("binning-adaptive", "samples", binning_information,
                   "binning with 30 equal-mass (quantile) bins per layer (adaptive binning), nats",
                   {"bins": 30, "scheme": "equal-mass"}, larger_is_dependent=True)
register_estimator("kde", "samples", kde_information,
                   "pairwise-distance upper bound (KL; lower bound, Bhattacharyya, in lower_bound) on I(T;X), "
                   "I(T;Y) of T = Z + N(0, 0.1 I) (Kolchinsky & Tracey 2017; Saxe et al. 2018), nats",
                   {"noise_variance": 0.1}, larger_is_dependent=True)
register_estimator("renyi", "samples", renyi_information,
                   "matrix-based Renyi alpha-entropy MI, alpha = 1.01, RBF median bandwidth (Giraldo et al. 2014; "
                   "Wickstrom et al. 2019), nats", {"alpha": 1.01, "sigma_z": "median"}, larger_is_dependent=True)
register_estimator("knn", "samples", ksg_information,
                   "KSG k-nearest-neighbour MI, algorithm 1, max-norm, k = 3 (Kraskov et al. 2004); labels: "
                   "Ross 2014 (as scikit-learn's mutual_info_classif), nats", {"k": 3}, larger_is_dependent=True)
from infoplane.estimators import neural as _neural  # noqa: E402,F401  registers decoder, classifier, linear-probe
