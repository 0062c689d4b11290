"""trainers: produce per-epoch checkpoints of a LayeredNet under a training regime.

``python -m trainers --model lenet5 --dataset digits --regime layerwise --aux linear --epochs 20
--out runs/NAME`` or, from Python, ``trainers.train(TrainConfig(...)) -> list[Path]``; a paper's
settings by name: ``--preset wang2021-cifar`` / ``TrainConfig.from_preset("wang2021-cifar", ...)``.
Regimes (E2E, layer-wise simultaneous / sequential, ...) live in ``trainers.regimes``; see
docs/regimes.md. ``torchrun --nproc_per_node N -m trainers ...`` trains on N processes
(``trainers.distributed``, docs/scaling.md). Depends on infoplane; infoplane never imports trainers
(except lazily from its CLI).
"""
from .config import TrainConfig
from .loop import train
from .presets import get_preset, list_presets
from .regimes import Regime, get_regime, list_regimes, register_regime

__all__ = ["TrainConfig", "train", "Regime", "get_regime", "list_regimes", "register_regime", "get_preset",
           "list_presets"]
