
import numpy as np
import pytest
import torch

from infoplane.data import (DEBIAN_FASHION_MNIST, ArrayDataset, dataset_info, dataset_labels, denormalize,
                            list_datasets, load_dataset, make_toy_rings, normalize, read_idx,
                            stratified_subset_indices)


def test_list_datasets_has_all_names():
    names = list_datasets()
    for n in ["digits", "toy-rings", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "stl10"]:
        assert n in names
        info = dataset_info(n)
        assert len(info.normalization["mean"]) == len(info.normalization["std"])


def test_digits_shapes_normalisation_and_determinism():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert isinstance(tr, ArrayDataset)
    x, y = tr.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert te.tensors[0].shape == (360, 1, 8, 8)
    # train split is standardised with its own recorded statistics
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-3
    # stratified: every class is present in both splits in (nearly) equal proportions
    assert torch.bincount(y).min() >= 139 and torch.bincount(te.tensors[1]).min() >= 35
    # raw pixels are k/16: denormalised values land on that grid in [0, 1]
    raw = denormalize(x, tr.info) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-3) and raw.min() >= 0 and raw.max() <= 16
    again = load_dataset("digits", "train")
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    assert dataset_info("digits").input_shape == (1, 8, 8)
    assert torch.equal(dataset_labels(tr), y)


def test_normalize_denormalize_roundtrip_per_channel():
    info = dataset_info("cifar10")
    raw = torch.rand(4, 3, 5, 5)
    back = denormalize(normalize(raw, info), info)
    assert torch.allclose(back, raw, atol=1e-6)
    with pytest.raises(ValueError, match="expected inputs"):
        normalize(torch.rand(4, 5), info)


def test_toy_rings_geometry():
    x, y = make_toy_rings(4000, noise=0.0, seed=3)
    r = x.norm(dim=1)
    assert torch.allclose(r[y == 1], torch.full_like(r[y == 1], 3.0), atol=1e-5)
    assert torch.allclose(r[y == 0], torch.full_like(r[y == 0], 1.0), atol=1e-5)
    theta = torch.atan2(x[:, 1], x[:, 0])
    # von Mises(mu, kappa=2): mean resultant length I1(2)/I0(2) = 0.6978 around mu
    from scipy.special import i0, i1
    R = i1(2.0) / i0(2.0)
    assert abs(torch.cos(theta[y == 1]).mean().item() - R) < 0.03
    assert abs(torch.cos(theta[y == 0]).mean().item() + R) < 0.03
    ds = load_dataset("toy-rings", "train")
    assert ds.tensors[0].shape == (2000, 2) and set(ds.tensors[1].tolist()) == {0, 1}
    noisy_r = ds.tensors[0].norm(dim=1)
    assert (noisy_r[ds.tensors[1] == 1].mean() - 3).abs() < 0.1
    assert not torch.equal(load_dataset("toy-rings", "test").tensors[0][:10], ds.tensors[0][:10])


def test_subset_is_stratified_and_seeded():
    ds = load_dataset("digits", "train", subset=100, seed=1)
    counts = torch.bincount(ds.tensors[1], minlength=10)
    assert len(ds) == 100 and counts.min() >= 9 and counts.max() <= 11
    full = load_dataset("digits", "train")
    assert torch.equal(full.tensors[0][ds.indices], ds.tensors[0])
    assert torch.equal(load_dataset("digits", "train", subset=100, seed=1).indices, ds.indices)
    assert not torch.equal(load_dataset("digits", "train", subset=100, seed=2).indices, ds.indices)
    with pytest.raises(ValueError, match="subset"):
        stratified_subset_indices(torch.zeros(5), 6)


def test_idx_reader(tmp_path):
    import gzip
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], dtype=">i4").tobytes()
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + arr.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def test_mnist_from_a_root_in_torchvision_layout(tmp_path):
    import gzip
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    labels = (np.arange(20) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + np.array([20, 28, 28], ">i4").tobytes() + imgs.tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 8, 1]) + np.array([20], ">i4").tobytes() + labels.tobytes())
    ds = load_dataset("mnist", "test", root=tmp_path)
    assert ds.tensors[0].shape == (20, 1, 28, 28)
    assert torch.equal(ds.tensors[1], torch.from_numpy(labels.astype(np.int64)))
    back = denormalize(ds.tensors[0], ds.info) * 255
    assert torch.allclose(back, torch.from_numpy(imgs).float().unsqueeze(1), atol=1e-3)


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_path(tmp_path):
    ds = load_dataset("fashion-mnist", "test", root=tmp_path, subset=500)
    assert ds.tensors[0].shape == (500, 1, 28, 28)
    assert torch.bincount(ds.tensors[1]).tolist() == [50] * 10
    assert abs(ds.tensors[0].mean().item()) < 0.2


def test_missing_dataset_error_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "download" in msg
    with pytest.raises(FileNotFoundError, match="download"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="known datasets"):
        load_dataset("imagenet-22k")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
