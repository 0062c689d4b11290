"""Rebuild the function a checkpoint's regime actually trained (for extraction and evaluation).

Most regimes train a network whose backbone alone is the trained function (E2E with CE, layer-wise,
greedy, DGL, InfoPro, forward-gradient). Others need pieces that live outside the backbone's
state_dict; their checkpoint says so in ``aux_state["inference"]`` (plain types, written by the
trainer) and keeps the pieces' weights in ``aux_state["heads"]``:

=================  ==============================================  ===================  ==============
kind               network (:mod:`.contsup`, ...)                  extra pieces         prediction
=================  ==============================================  ===================  ==============
(none)/backbone    the backbone                                    -                    ``out``
contsup            :class:`ContSupNet`: context paths (eq. 16)     ``ctxE_k``, ``ctxR`` ``out``
forward-forward    :class:`FFNet`: normalisation, label channel    ``prototypes``       ``goodness``
linear-eval        :class:`LinearEvalNet`: head on normalised out  ``linear_eval``      ``linear_eval``
=================  ==============================================  ===================  ==============

Every network keeps the backbone's top-level layer names (``layer_names``), so ``--layers all`` and
hooks see ``conv1 ... out`` as before; the prediction layer, when it is not ``out``, is an extra
module selected by name. Without ``aux_state["inference"]`` the record is derived from the regime
record: contrastive ``e2e`` runs (``loss`` supcon/simclr: ``linear-eval`` with ``heads["linear_eval.*"]``),
and ``contsup`` / ``forward-forward`` checkpoints written before the record existed (forward-forward
with a warning: its old label channel used the batch maximum, which cannot be reproduced exactly).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from .contsup import ContSupNet, build_contsup, contsup_spec
from .forward_forward import FFNet, build_ff, ff_spec
from .linear_eval import LinearEvalNet, build_linear_eval, linear_eval_spec

KINDS = ("backbone", "contsup", "forward-forward", "linear-eval")


def inference_spec(regime: Optional[Mapping[str, Any]], aux_state: Optional[Mapping[str, Any]],
                   source: str = "checkpoint") -> Dict[str, Any]:
    """The inference record of a checkpoint: ``aux_state["inference"]``, or one derived from an older
    checkpoint's regime record; ``{"kind": "backbone"}`` when the backbone is the trained function."""
    aux = dict(aux_state or {})
    if "inference" in aux and aux["inference"] is not None:
        spec = dict(aux["inference"])
        if spec.get("kind") not in KINDS:
            raise ValueError(f"{source}: aux_state['inference'] has kind {spec.get('kind')!r}; this version of "
                             f"infoplane knows {', '.join(KINDS)}; upgrade infoplane")
        return spec
    reg = dict(regime or {})
    name = reg.get("name")
    if name == "contsup" and "modules" in reg and "context" in reg:
        return contsup_spec(reg["modules"], reg["context"])
    if name == "forward-forward":
        warnings.warn(f"{source}: forward-forward checkpoint without aux_state['inference'] (written by an "
                      f"older trainer): rebuilt with RMS normalisation and the per-sample maximum as label "
                      f"value; training used the batch maximum, so predictions may differ slightly; "
                      f"re-train to extract the exact function", stacklevel=3)
        children = reg.get("layers")
        return {"kind": "forward-forward", "label": reg.get("ff_label", "onehot"), "norm": "rms",
                "score_layers": children, "prediction_layer": "goodness"}
    if name == "e2e" and reg.get("loss") in ("supcon", "simclr"):
        return linear_eval_spec()
    return {"kind": "backbone", "prediction_layer": "out"}


def build_inference_model(backbone: nn.Module, regime: Optional[Mapping[str, Any]],
                          aux_state: Optional[Mapping[str, Any]], source: str = "checkpoint") -> nn.Module:
    """Wrap a loaded backbone (weights in, any device) into the trained function (eval mode)."""
    spec = inference_spec(regime, aux_state, source)
    kind = spec["kind"]
    if kind == "backbone":
        return backbone.eval()
    from infoplane.models.base import LayeredNet

    if not isinstance(backbone, LayeredNet):
        raise ValueError(f"{source}: regime inference kind {kind!r} needs a LayeredNet backbone (named top-level "
                         f"layers), got {type(backbone).__name__}")
    heads = dict((aux_state or {}).get("heads") or {})
    if kind == "contsup":
        return build_contsup(backbone, spec, heads, source)
    if kind == "forward-forward":
        return build_ff(backbone, spec, heads, source)
    return build_linear_eval(backbone, spec, heads, source)


def prediction_layer(regime: Optional[Mapping[str, Any]], aux_state: Optional[Mapping[str, Any]]) -> str:
    """The stored layer whose argmax is the regime's prediction: ``out``, ``goodness`` or ``linear_eval``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(inference_spec(regime, aux_state).get("prediction_layer", "out"))


__all__ = ["KINDS", "inference_spec", "build_inference_model", "prediction_layer", "ContSupNet", "FFNet",
           "LinearEvalNet", "contsup_spec", "ff_spec", "linear_eval_spec"]
