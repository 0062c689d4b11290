"""Synthetic activation stores for the estimation tests: inputs, labels and given layers per checkpoint."""
from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np

from infoplane.store import ActivationStore

Layers = Dict[str, np.ndarray]


def write_store(path: Path, x: np.ndarray, y: np.ndarray, layers: Callable[[int], Layers],
                epochs: Sequence[int] = (0, 1), num_classes: int = 3) -> Path:
    """A complete store at ``path``: inputs ``x`` (n, ...), labels ``y`` (n,), and for every epoch
    the layers ``layers(epoch)`` (name -> (n, ...) array) in a checkpoint ``epoch_EEEE``."""
    n = len(y)
    st = ActivationStore.create(path, index=np.arange(n), labels=y, input_shape=tuple(x.shape[1:]),
                                model={"name": "toy", "kwargs": {}},
                                dataset={"name": "toy", "num_classes": num_classes}, split="test")
    st.write_inputs(0, np.asarray(x, dtype=np.float32))
    st.mark_inputs_complete()
    for epoch in epochs:
        c = f"epoch_{epoch:04d}"
        st.begin_checkpoint(c, attrs={"epoch": epoch, "step": epoch, "regime": {"name": "e2e"}, "metrics": {},
                                      "sha256": str(epoch), "model": "toy", "run": "r"})
        for order, (name, z) in enumerate(layers(epoch).items()):
            st.write_layer_rows(c, name, 0, np.asarray(z, dtype=np.float32), order=order)
        st.set_rows_done(c, n)
        st.finish_checkpoint(c)
    st.close()
    return path
