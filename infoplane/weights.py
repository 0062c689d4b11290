"""Singular values of weight matrices across checkpoints (Sakamoto & Sato 2024, sec. 4.2, Figure 4).

Layer-wise training of the toy model (a bias-free first layer ``z1 = W x``, W of shape (2, 2), a
linear auxiliary classifier and weight decay on W) drives the second singular value of W to 0:
the first layer discards one input direction. ``weight_spectra`` reads the ``state_dict`` of every
checkpoint (no model is built) and returns the singular values of each selected weight, so the
collapse, or its absence under E2E training, can be read epoch by epoch.

A weight of shape (out, in) is used as is; a convolution weight (out, in, kh, kw) is reshaped to
(out, in * kh * kw). ``effective_rank`` is ``exp`` of the entropy of the normalised singular values
(Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality").
"""
from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import List, Optional, Sequence, Union

import pandas as pd
import torch

PathLike = Union[str, Path]

__all__ = ["weight_spectra", "matrix_parameters"]


def matrix_parameters(state_dict: dict) -> List[str]:
    """Names of the parameters that are weight matrices (2-D) or convolution kernels (>= 3-D)."""
    return [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.dim() >= 2
            and k.endswith("weight")]


def weight_spectra(checkpoints: Sequence[PathLike], params: Optional[Sequence[str]] = None,
                   top: int = 8) -> pd.DataFrame:
    """One row per (checkpoint, parameter): epoch, shape, the ``top`` largest singular values
    (columns ``s1, s2, ...``), ``s2_over_s1``, ``effective_rank`` and ``frobenius``.

    params: parameter names or glob patterns (e.g. ``"w.weight"``, ``"conv1.*"``); default: every
    weight matrix of the first checkpoint. An unknown name raises ``ValueError`` listing the valid ones.
    """
    from infoplane.checkpoint import load_checkpoint

    if not checkpoints:
        raise ValueError("weight_spectra: pass at least one checkpoint file.")
    ckpts = sorted((load_checkpoint(p) for p in checkpoints), key=lambda c: (c.epoch, str(c.path)))
    valid = matrix_parameters(ckpts[0].state_dict)
    if params is None:
        names = valid
    else:
        names = []
        for pat in params:
            hits = [v for v in valid if fnmatch.fnmatchcase(v, pat)]
            if not hits:
                raise ValueError(f"no weight matrix matches {pat!r} in {str(ckpts[0].path)!r}; weight matrices: "
                                 f"{', '.join(valid) or '(none)'}")
            names += [h for h in hits if h not in names]
    rows = []
    for ck in ckpts:
        for name in names:
            if name not in ck.state_dict:
                raise ValueError(f"{str(ck.path)!r} has no parameter {name!r}; are these checkpoints of one run?")
            W = ck.state_dict[name].detach().to(torch.float64)
            W = W.reshape(W.shape[0], -1)
            s = torch.linalg.svdvals(W)
            p = s / s.sum() if float(s.sum()) > 0 else s
            ent = -float((p[p > 0] * p[p > 0].log()).sum())
            row = {"checkpoint": str(ck.path), "epoch": ck.epoch,
                   "regime": (ck.regime or {}).get("name", "") if isinstance(ck.regime, dict) else str(ck.regime),
                   "parameter": name, "shape": "x".join(str(d) for d in ck.state_dict[name].shape),
                   "s2_over_s1": float(s[1] / s[0]) if len(s) > 1 and float(s[0]) > 0 else math.nan,
                   "effective_rank": math.exp(ent), "frobenius": float(W.norm())}
            row.update({f"s{i + 1}": float(v) for i, v in enumerate(s[:top])})
            rows.append(row)
    return pd.DataFrame(rows)
