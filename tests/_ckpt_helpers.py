"""Small checkpoints for the store / extract tests (LeNet5 on the embedded digits data)."""
from pathlib import Path
from typing import List

import torch

from infoplane.checkpoint import save_checkpoint
from infoplane.data import dataset_info
from infoplane.models import build_model

KWARGS = {"input_shape": [1, 8, 8], "num_classes": 10}


def make_checkpoints(directory: Path, n: int = 2, kwargs=None, model: str = "lenet5") -> List[Path]:
    kwargs = dict(KWARGS if kwargs is None else kwargs)
    paths = []
    for epoch in range(n):
        torch.manual_seed(epoch)
        net = build_model(model, **kwargs)
        paths.append(save_checkpoint(directory / f"epoch_{epoch:04d}.pt", net, model_name=model,
                                     model_kwargs=kwargs, epoch=epoch, step=10 * epoch,
                                     regime={"name": "e2e"}, dataset=dataset_info("digits"),
                                     metrics={"test_acc": 0.1 * epoch}, seed=0))
    return paths
