"""Shared test setup: one torch thread (suite runs on few cores), repo root importable, a seeded rng."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # for `benchmarks.*` (closed-form ground truth)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
