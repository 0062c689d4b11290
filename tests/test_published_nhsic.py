"""The re-implemented published nHSIC (benchmarks/published_nhsic.py) against itself and infoplane.

(1) as published and (2) written well are the same formula in float32: they must agree to float32
precision (the resolvent's condition number is ~ 1/(eps m) = 1e3 on the RBF side and larger on
the rank-(c-1) label side, so "float32 precision" of the value is ~1e-4..1e-3 relative, not 1e-7).
infoplane with distance="euclidean" (float64, H K H two-sided centring) must give the published
values: Tr(f(K H) f(L H)) = Tr(f(H K H) f(H L H)) exactly for f(M) = M (M + a I)^-1 (checked in
float64 to 1e-10), and within 2e-3 of the float32 published numbers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import published_nhsic as P  # noqa: E402

from infoplane.estimators import assess  # noqa: E402


def _data(n: int = 300, d: int = 196, dz: int = 60, c: int = 10, seed: int = 0):
    g = np.random.default_rng(seed)
    y = g.integers(0, c, n)
    x = (g.normal(size=(n, d)) + 0.5 * g.normal(size=(c, d))[y]).astype(np.float32)
    z = np.tanh(x @ g.normal(size=(d, dz)).astype(np.float32) / np.sqrt(d)).astype(np.float32)
    return x, z, y


def _published_f64(x, z, y, b=100, eps=1e-5):
    X, Z = torch.tensor(x, dtype=torch.float64), torch.tensor(z, dtype=torch.float64)
    Y = P.one_hot(y, 10, torch.float64)
    vx, vy = [], []
    for i in range(len(x) // b):
        sl = slice(i * b, (i + 1) * b)
        kz = P.gram_as_published(Z[sl])
        vx.append(float(P._nhsic_from_centred(P.gram_as_published(X[sl]), kz, eps)))
        vy.append(float(P._nhsic_from_centred(P.linear_gram_as_published(Y[sl]), kz, eps)))
    return np.array(vx), np.array(vy)


def test_grams_agree():
    x, _, y = _data(n=100)
    X = torch.tensor(x)
    torch.testing.assert_close(P.gram_written_well(X), P.gram_as_published(X), rtol=0, atol=1e-5)
    Y = P.one_hot(y, 10)
    torch.testing.assert_close(P.linear_gram_written_well(Y), P.linear_gram_as_published(Y), rtol=0, atol=1e-5)


def test_as_published_and_written_well_agree_to_float32_precision():
    x, z, y = _data()
    a = P.minibatch_as_published(x, z, y, num_classes=10)
    b = P.minibatch_written_well(x, z, y, num_classes=10)
    ref = _published_f64(x, z, y)
    for i in range(2):
        assert a[i].shape == b[i].shape == (3,)
        assert np.max(np.abs(a[i] / b[i] - 1)) < 2e-3
        # both are float32 roundings of the same float64 number
        assert np.max(np.abs(a[i] / ref[i] - 1)) < 2e-3
        assert np.max(np.abs(b[i] / ref[i] - 1)) < 2e-3


def test_infoplane_euclidean_matches_published():
    x, z, y = _data()
    ref = _published_f64(x, z, y)
    pub = P.minibatch_as_published(x, z, y, num_classes=10)
    rx = assess(z, x, protocol="minibatch", batch_size=100, distance="euclidean", kernel_y="rbf")
    ry = assess(z, y, protocol="minibatch", batch_size=100, distance="euclidean")
    # same formula: K H one-sided centring gives the value of H K H exactly (float64)
    np.testing.assert_allclose(rx.batch_values, ref[0], rtol=1e-10)
    np.testing.assert_allclose(ry.batch_values, ref[1], rtol=1e-10)
    # and within 2e-3 of the float32 published numbers
    np.testing.assert_allclose(rx.batch_values, pub[0], rtol=2e-3)
    np.testing.assert_allclose(ry.batch_values, pub[1], rtol=2e-3)
    assert abs(rx.value / pub[0].mean() - 1) < 2e-3 and abs(ry.value / pub[1].mean() - 1) < 2e-3


def test_squared_distance_is_a_different_number():
    """The default (squared) distance is not the published formula: it must not pass for it."""
    x, z, y = _data()
    pub = P.minibatch_as_published(x, z, y, num_classes=10)
    rx = assess(z, x, protocol="minibatch", batch_size=100, distance="squared", kernel_y="rbf")
    assert abs(rx.value / pub[0].mean() - 1) > 1e-2


@pytest.mark.parametrize("n", [250])
def test_drops_incomplete_batch(n):
    x, z, y = _data(n=n)
    a = P.minibatch_as_published(x, z, y, num_classes=10)
    assert a[0].shape == (2,)
