"""CUDA gives the CPU float64 numbers (skipped without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infoplane.estimators.batched import nhsic_minibatches
from infoplane.estimators.fast import factorize, nhsic_factored, nhsic_full

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _data(m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (m,), generator=g)
    mu = 1.5 * torch.randn(10, 6, generator=g, dtype=torch.float64)
    u = mu[y] + torch.randn(m, 6, generator=g, dtype=torch.float64)
    x = torch.tanh(u @ torch.randn(6, 200, generator=g, dtype=torch.float64) / 6 ** 0.5)
    z = torch.tanh(x @ (3 * torch.randn(200, 100, generator=g, dtype=torch.float64) / 200 ** 0.5))
    return x, z, y


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_exact_and_label_factors_cuda_match_cpu():
    x, z, y = _data(700)
    out = {}
    for dev in ("cpu", "cuda"):
        fx, fz = factorize(x, device=dev), factorize(z, device=dev)
        fy = factorize(y, kernel="label", device=dev)
        out[dev] = (nhsic_factored(fx, fz)[0], nhsic_factored(fy, fz)[0])
        assert fz.U.device.type == dev
    for a, b in zip(out["cuda"], out["cpu"]):
        assert _rel(a, b) < 1e-6


def test_lowrank_cuda_matches_cpu():
    x, z, y = _data(2000, seed=1)
    out = {}
    for dev in ("cpu", "cuda"):
        vx, ex, fx = nhsic_full(z, x, kernel_y="rbf", eps=1e-5, sigma="paper", tolerance=1e-10, device=dev)
        vy, ey, _ = nhsic_full(z, y, kernel_y="label", eps=1e-5, sigma="paper", tolerance=1e-10, device=dev)
        out[dev] = (vx, vy)
    for a, b in zip(out["cuda"], out["cpu"]):
        assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("kernel_y", ["rbf", "label"])
def test_minibatches_cuda_match_cpu(kernel_y):
    x, z, y = _data(1050, seed=2)
    other = x if kernel_y == "rbf" else y
    cpu = nhsic_minibatches(z, other, kernel_y=kernel_y, device="cpu")
    gpu = nhsic_minibatches(z, other, kernel_y=kernel_y, device="cuda")
    assert cpu.shape == gpu.shape == (10,)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6)


def test_exact_resolvents_cuda_match_cpu():
    from infoplane.estimators import assess

    x, z, y = _data(900, seed=3)
    for other in (x, y):
        cpu = assess(z, other, protocol="full", device="cpu")
        gpu = assess(z, other, protocol="full", device="cuda")
        for col in ("value", "null_mean", "null_sd", "max_value", "adjusted"):
            assert _rel(getattr(gpu, col), getattr(cpu, col)) < 1e-6, col


def test_estimate_store_on_cuda_matches_cpu(tmp_path):
    from _store_helpers import write_store
    from infoplane.estimate import EstimateConfig, estimate_store

    x, z, y = _data(400, seed=4)
    path = write_store(tmp_path / "s.h5", x.numpy(), y.numpy(), lambda e: {"z": z.numpy()}, epochs=[0],
                       num_classes=10)
    for protocol in ("minibatch", "full"):
        cpu = estimate_store(path, EstimateConfig(protocol=protocol, progress=False, device="cpu"))
        gpu = estimate_store(path, EstimateConfig(protocol=protocol, progress=False, device="cuda"))
        np.testing.assert_allclose(gpu["value"], cpu["value"], rtol=1e-6)
        np.testing.assert_allclose(gpu["null_sd"], cpu["null_sd"], rtol=1e-6)
