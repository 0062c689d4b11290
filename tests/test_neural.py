"""Neural estimators separate informative representations from noise (Wang et al. 2021 sec. 3.3; Sakamoto & Sato 2024 Fig. 1)."""
import math

import numpy as np
import pytest
import torch

from infoplane.estimators import neural


def _binary_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 1, 8, 8)) < 0.5).astype(np.float32)


def _clusters(n, c=4, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    means = rng.normal(0, 3.0, (c, d))
    return (means[y] + rng.normal(0, 1.0, (n, d))).astype(np.float32), y


def test_decoder_mlp_invertible_map_beats_noise():
    x = _binary_images(600)
    rng = np.random.default_rng(1)
    w = np.linalg.qr(rng.normal(size=(64, 64)))[0].astype(np.float32)
    z_info = x.reshape(600, -1) @ w
    z_noise = rng.normal(size=(600, 64)).astype(np.float32)
    good = neural.decoder_information(z_info, x, epochs=40, seed=0)
    bad = neural.decoder_information(z_noise, x, epochs=40, seed=0)
    assert good["n_train"] == 480 and good["n_test"] == 120
    assert good["value"] == pytest.approx(1 - good["bce_test"])
    assert bad["bce_test"] > 0.65  # ~log 2: nothing to reconstruct from noise
    assert good["bce_test"] < bad["bce_test"] - 0.2


def test_decoder_conv_feature_map_beats_noise():
    x = _binary_images(400, seed=2)
    z_info = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x), 2)  # (N,4,4,4), invertible
    z_noise = torch.randn(400, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    good = neural.decoder_information(z_info, x, epochs=30, seed=0)
    bad = neural.decoder_information(z_noise, x, epochs=30, seed=0)
    assert good["value"] > bad["value"] + 0.05


def test_decoder_reconstructions_shapes_and_range():
    x = _binary_images(100)
    r = neural.decoder_reconstructions(x.reshape(100, -1), x, n_examples=5, epochs=2)
    assert r["originals"].shape == (5, 1, 8, 8) and r["reconstructions"].shape == (5, 1, 8, 8)
    assert 0 <= r["reconstructions"].min() and r["reconstructions"].max() <= 1


def test_classifier_separable_vs_shuffled():
    z, y = _clusters(600)
    good = neural.classifier_information(z, y, epochs=20)
    bad = neural.classifier_information(z, np.random.default_rng(0).permutation(y), epochs=20)
    h = neural.label_entropy(y)
    assert good["entropy_y"] == pytest.approx(h)
    assert good["value"] <= h + 1e-9
    assert good["value"] > 0.7 * h and good["accuracy_test"] > 0.9
    assert bad["value"] < 0.2 and bad["accuracy_test"] < 0.45


def test_classifier_conv_features():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    means = rng.normal(0, 2.0, (4, 4, 1, 1))  # class signal per channel, spread over the map
    z = (means[y] + rng.normal(0, 1.0, (300, 4, 8, 8))).astype(np.float32)
    good = neural.classifier_information(z, y, epochs=10)
    assert good["accuracy_test"] > 0.8


def test_linear_probe_separable_vs_shuffled():
    z, y = _clusters(500)
    good = neural.linear_probe(z, y)
    bad = neural.linear_probe(z, np.random.default_rng(0).permutation(y))
    assert good["value"] == good["accuracy_test"] > 0.9
    assert bad["accuracy_test"] < 0.45


def test_seeded_reproducible():
    z, y = _clusters(200)
    a = neural.linear_probe(z, y, epochs=3, seed=5)
    b = neural.linear_probe(torch.from_numpy(z), torch.from_numpy(y), epochs=3, seed=5)
    assert a == b


def test_label_entropy_uniform():
    assert neural.label_entropy(np.repeat(np.arange(4), 5)) == pytest.approx(math.log(4))


def test_unit_range_modes():
    x = np.linspace(-2, 2, 2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    u = neural.to_unit_range(x)
    assert float(u.min()) == 0 and float(u.max()) == 1
    v = neural.to_unit_range(x, "normalization", {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert float(v.min()) >= 0 and float(v.max()) <= 1
    assert float(v[0, 0, 0, 1]) == pytest.approx(float(x[0, 0, 0, 1]) * 0.25 + 0.5)


@pytest.mark.parametrize("call", [
    lambda: neural.linear_probe(np.zeros((10, 3)), np.zeros(9, dtype=int)),
    lambda: neural.linear_probe(np.zeros((10, 3)), np.zeros(10, dtype=int)),  # one class
    lambda: neural.linear_probe(np.zeros((10, 3)), np.arange(10) % 2, epochs=0),
    lambda: neural.linear_probe(np.zeros((10, 3)), np.arange(10) % 2, bogus=1),
    lambda: neural.linear_probe(np.full((10, 3), np.nan), np.arange(10) % 2),
    lambda: neural.classifier_information(np.zeros((10, 3)), np.arange(10) % 2, train_fraction=1.0),
    lambda: neural.decoder_information(np.zeros((10, 3)), np.ones((10, 4))),  # constant inputs
    lambda: neural.decoder_information(np.zeros((10, 3)), np.zeros((9, 4))),
    lambda: neural.to_unit_range(np.zeros((3, 2)) + np.arange(2), "nope"),
])
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_registered_and_run_through_estimate_store(tmp_path):
    from infoplane.estimate import EstimateConfig, estimate_store
    from infoplane.estimators import get_estimator, list_estimators
    from test_report import _tiny_store

    assert {"decoder", "classifier", "linear-probe"} <= set(list_estimators("neural"))
    assert get_estimator("decoder").fn(np.zeros((8, 2)), np.arange(8) % 2)["applicable"] == 0.0  # wrong target
    _tiny_store(tmp_path / "s.h5", "e2e")
    df = estimate_store(tmp_path / "s.h5", EstimateConfig(estimator="linear-probe", progress=False))
    y = df[df["target"] == "y"].set_index(["checkpoint", "layer"])["value"]
    assert df[df["target"] == "x"]["value"].isna().all()
    assert (y.xs("fc1", level="layer") > 0.8).all()  # fc1 holds one-hot labels + small noise
    # the probe's secondary outputs are columns of the table, row-aligned with the value
    ydf = df[df["target"] == "y"]
    assert {"accuracy_train", "n_train", "n_test"} <= set(df.columns)
    assert (ydf["accuracy_train"].between(0, 1)).all() and (ydf["n_train"] > ydf["n_test"]).all()


from hypothesis import given, settings, strategies as st


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=60))
def test_label_entropy_bounds(labels):
    y = np.asarray(labels)
    h = neural.label_entropy(y)
    assert -1e-12 <= h <= math.log(len(np.unique(y))) + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 200), st.floats(0.05, 0.95), st.integers(0, 10 ** 6))
def test_split_partitions(n, frac, seed):
    try:
        tr, te = neural.train_test_split_indices(n, frac, seed)
    except ValueError:
        assert int(math.floor(frac * n)) < 2 or n - int(math.floor(frac * n)) < 1
        return
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == n and len(tr) == int(math.floor(frac * n))
