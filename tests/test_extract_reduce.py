"""Reduced and compressed stores (`extract --reduce/--compression`), the size estimate and the
refusal on a full disk."""
import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infoplane.reduce as R
from infoplane.cli import main
from infoplane.extract import DiskSpaceError, extract
from infoplane.reduce import GaussianMatrix, GaussianProjection, parse_reduction, plan_layer
from infoplane.store import ActivationStore, StoreError
from tests._ckpt_helpers import make_checkpoints

N = 24


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 5))


def _data(n: int = N):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g), torch.arange(n) % 3


def _reference(model: nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad():
        conv = model[0](x)
        return {"0": conv, "1": conv.relu(), "3": model(x)}


def _rows_in_store_order(path, x):
    with ActivationStore(path) as st:
        return x[torch.as_tensor(st.index())]


def test_parse_reduction_vocabulary_and_errors():
    assert parse_reduction("none").spec == "none" and parse_reduction(None).method == "none"
    assert parse_reduction("avgpool").spec == "avgpool"
    r = parse_reduction("random-projection:64", seed=3)
    assert (r.method, r.dim, r.seed, r.spec) == ("random-projection", 64, 3, "random-projection:64")
    assert parse_reduction("flatten-max:100", seed=3).seed is None       # the seed is a projection's only
    for bad, words in (("pca:3", "unknown reduction"), ("flatten-max", "needs a dimension"),
                       ("flatten-max:x", "needs a dimension"), ("random-projection:0", "positive"),
                       ("avgpool:4", "takes no")):
        with pytest.raises(ValueError, match=words) as err:
            parse_reduction(bad)
        assert "--reduce" in str(err.value)


def test_avgpool_is_the_spatial_mean_and_leaves_vectors(tmp_path):
    model, (x, y) = _net(), _data()
    out = extract(model, (x, y), layers="all", out=tmp_path / "a.h5", reduce="avgpool", progress=False, epoch=0)
    xs = _rows_in_store_order(out, x)
    ref = _reference(model, xs)
    with ActivationStore(out) as st:
        assert st.reduction["method"] == "avgpool"
        z = st.read("epoch_0000", "0")
        assert z.shape == (N, 3)
        np.testing.assert_allclose(z, ref["0"].numpy().mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "1"), ref["1"].numpy().mean(axis=(2, 3)), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "3"), ref["3"].numpy(), rtol=1e-5, atol=1e-6)
        a = st.layer_attrs("epoch_0000", "0")
        assert a["original_shape"] == [3, 6, 6] and '"avgpool"' in a["reduction"]
        assert '"none"' in st.layer_attrs("epoch_0000", "3")["reduction"]
        assert st.checkpoint_attrs("epoch_0000")["reduce"] == "avgpool"


def test_flatten_max_pools_to_the_largest_grid_within_d(tmp_path):
    model, (x, y) = _net(), _data()
    # (3, 6, 6) = 108 values > 30: f = 2 gives a 3x3 grid, 27 <= 30; the 5 outputs are kept. The
    # Flatten layer (108 values without spatial dimensions) could not be pooled: left out
    out = extract(model, (x, y), layers="0,1,3", out=tmp_path / "f.h5", reduce="flatten-max:30", progress=False,
                  epoch=0)
    xs = _rows_in_store_order(out, x)
    ref = _reference(model, xs)
    with ActivationStore(out) as st:
        z = st.read("epoch_0000", "0")
        assert z.shape == (N, 3, 3, 3)
        hand = ref["0"].numpy().reshape(N, 3, 3, 2, 3, 2).mean(axis=(3, 5))   # 2x2 block means
        np.testing.assert_allclose(z, hand, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "3"), ref["3"].numpy(), rtol=1e-5, atol=1e-6)
        assert '"grid": [3, 3]' in st.layer_attrs("epoch_0000", "0")["reduction"]


def test_flatten_max_uneven_grid_matches_adaptive_bins_by_hand():
    z = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    plan = plan_layer(parse_reduction("flatten-max:20"), "c:1", (2, 5, 5))
    assert plan.grid == (3, 3) and plan.out_shape == (2, 3, 3)                 # f = 2: ceil(5/2) = 3
    got = plan(z)
    bins = [(0, 2), (1, 4), (3, 5)]     # adaptive bins: floor(i*5/3) .. ceil((i+1)*5/3)
    hand = torch.stack([torch.stack([z[..., a:b, c:d].mean(dim=(-2, -1)) for (c, d) in bins], -1)
                        for (a, b) in bins], -2)
    torch.testing.assert_close(got, hand)
    # the smallest f that fits: 2x(5x5) = 50 values, D = 8 -> f = 3 gives 2x2x2 = 8
    assert plan_layer(parse_reduction("flatten-max:8"), "c:1", (2, 5, 5)).grid == (2, 2)
    # layers at most D are kept; impossible cases name the way out
    assert plan_layer(parse_reduction("flatten-max:50"), "c:1", (2, 5, 5)).method == "none"
    with pytest.raises(ValueError, match="random-projection:10"):
        plan_layer(parse_reduction("flatten-max:10"), "fc:1", (120,))
    with pytest.raises(ValueError, match="channels"):
        plan_layer(parse_reduction("flatten-max:4"), "c:1", (8, 5, 5))


def test_random_projection_by_hand_and_same_matrix_every_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "_BLOCK_ENTRIES", 8 * 40)        # 40 rows per block: 108 rows in 3 blocks
    (x, y) = _data()
    out = tmp_path / "p.h5"
    models = [_net(0), _net(1)]
    for epoch, model in enumerate(models):
        extract(model, (x, y), layers="all", out=out, reduce="random-projection:8", reduce_seed=5,
                progress=False, epoch=epoch)
    proj = GaussianProjection(GaussianMatrix(5, 8), 108)
    # the matrix, drawn again from its documented seeds: G[:108] / sqrt(108)
    blocks = []
    for k in range(3):
        g = torch.Generator().manual_seed(R._block_seed(5, 8, k))
        blocks.append(torch.randn(40, 8, generator=g))
    torch.testing.assert_close(proj.matrix(), torch.cat(blocks)[:108] / math.sqrt(108))
    xs = _rows_in_store_order(out, x)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000", "epoch_0001"]
        for epoch, model in enumerate(models):
            ref = _reference(model, xs)
            for layer in ("0", "1", "2"):                     # 108 values each: projected with the same G
                z = st.read(f"epoch_{epoch:04d}", layer)
                assert z.shape == (N, 8)
                want = ref["0"] if layer == "0" else ref["1"]
                np.testing.assert_allclose(z, (want.reshape(N, -1) @ proj.matrix()).numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(st.read(f"epoch_{epoch:04d}", "3"), ref["3"].numpy(), rtol=1e-5, atol=1e-6)
        rec = st.reduction
        assert rec["seed"] == 5 and rec["fingerprints"] == {"matrix": proj.fingerprint()}
        a0, a1 = (st.layer_attrs(c, "2")["reduction"] for c in st.checkpoints())
        assert a0 == a1 and proj.fingerprint() in a0
        assert '"kept": "at most 8 values"' in st.layer_attrs("epoch_0000", "3")["reduction"]
    # another seed is another reduction: refused
    with pytest.raises(StoreError, match=r"--reduce random-projection:8 --reduce-seed 5"):
        extract(models[0], (x, y), out=out, reduce="random-projection:8", reduce_seed=6, progress=False, epoch=2)
    # a matrix that another torch would draw differently: refused by its fingerprint
    with ActivationStore(out, "a") as st:
        st.set_reduction_fingerprints({"matrix": proj.fingerprint()})
        with pytest.raises(StoreError, match="other random numbers"):
            st.set_reduction_fingerprints({"matrix": "0" * 16})


def test_projection_matrix_statistics_and_uncached_blocks():
    G = GaussianMatrix(0, 50, cache_bytes=0)                # nothing kept: every block drawn again
    p = GaussianProjection(G, 400)
    m = p.matrix()
    assert not G._blocks and m.shape == (400, 50)
    assert abs(float(m.mean())) < 0.01 and abs(float(m.var()) * 400 - 1) < 0.05
    torch.testing.assert_close(p.matrix(), m)                              # drawn again identically
    z = torch.randn(7, 4, 10, 10)
    torch.testing.assert_close(p(z), z.reshape(7, -1) @ m)


def test_compression_round_trips(tmp_path):
    model, (x, y) = _net(), _data()
    stores = {c: extract(model, (x, y), out=tmp_path / f"{c}.h5", compression=c, progress=False, epoch=0)
              for c in ("none", "lzf", "gzip")}
    with ActivationStore(stores["none"]) as ref:
        for c in ("lzf", "gzip"):
            with ActivationStore(stores[c]) as st:
                assert st.checkpoint_attrs("epoch_0000")["compression"] == c
                for layer in ref.layers("epoch_0000"):
                    ds = st._layer_ds("epoch_0000", layer)
                    assert ds.compression == c and ds.fletcher32 and ds.shuffle
                    np.testing.assert_array_equal(st.read("epoch_0000", layer), ref.read("epoch_0000", layer))
                np.testing.assert_array_equal(st.inputs(), ref.inputs())
                assert st.verify() == []
    with pytest.raises(ValueError, match="--compression"):
        extract(model, (x, y), out=tmp_path / "bad.h5", compression="zstd", progress=False, epoch=0)


def test_mismatched_reduction_is_refused(tmp_path):
    model, (x, y) = _net(), _data()
    out = extract(model, (x, y), out=tmp_path / "a.h5", reduce="avgpool", progress=False, epoch=0)
    with pytest.raises(StoreError, match=r"reduced with 'avgpool'.*--reduce avgpool"):
        extract(model, (x, y), out=out, progress=False, epoch=1)
    plain = extract(model, (x, y), out=tmp_path / "plain.h5", progress=False, epoch=0)
    with pytest.raises(StoreError, match=r"'none'.*--reduce none"):
        extract(model, (x, y), out=plain, reduce="avgpool", progress=False, epoch=1)
    extract(model, (x, y), out=out, reduce="avgpool", progress=False, epoch=1)    # the same one appends
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000", "epoch_0001"]


def test_size_estimate_and_disk_refusal(tmp_path, monkeypatch):
    model, (x, y) = _net(), _data()
    lines = []
    extract(model, (x, y), out=tmp_path / "a.h5", reduce="avgpool", progress=False, epoch=0, notify=lines.append)
    # per sample: "0" and "1" -> 3 floats each, "2" -> 108, "3" -> 5: 119 floats; + inputs 36 floats
    assert len(lines) == 1
    assert f"1 checkpoint(s) x {N} samples x 476 B per sample (4 layers, float32, --reduce avgpool)" in lines[0]
    assert lines[0].startswith("about 14.5 KiB to write")                  # 476 x 24 + 3456 bytes
    assert "+ inputs 3.4 KiB" in lines[0] and "free there" in lines[0]        # 24 x 36 floats

    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10 ** 6, 10 ** 6 - 1000, 1000))
    with pytest.raises(DiskSpaceError) as err:
        extract(model, (x, y), out=tmp_path / "b.h5", progress=False, epoch=0)
    msg = str(err.value)
    for words in ("would need about", "1000 B is free", "--reduce avgpool", "--dtype float16",
                  "--compression lzf or gzip", "--force", "largest layers"):
        assert words in msg, (words, msg)
    assert not (tmp_path / "b.h5").exists()                      # nothing left behind
    extract(model, (x, y), out=tmp_path / "b.h5", progress=False, epoch=0, force=True)
    with ActivationStore(tmp_path / "b.h5") as st:
        assert st.checkpoints() == ["epoch_0000"]


def test_cli_reduce_compression_estimate_and_refusals(tmp_path, capsys, monkeypatch):
    ckpts = [str(p) for p in make_checkpoints(tmp_path / "run", n=2)]
    out = tmp_path / "acts.h5"
    assert main(["extract", *ckpts, "--out", str(out), "--samples", "40", "--batch-size", "16", "--reduce",
                 "avgpool", "--compression", "lzf", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "infoplane extract: about" in err and "2 checkpoint(s) x 40 samples" in err and "lzf" in err
    with ActivationStore(out) as st:
        c = st.checkpoints()[-1]
        assert st.read(c, "conv1").shape == (40, 6) and st.read(c, "fc1").shape == (40, 120)
        assert st._layer_ds(c, "conv1").compression == "lzf" and st.reduction["spec"] == "avgpool"
    assert main(["extract", *ckpts, "--out", str(out), "--samples", "40", "--reduce", "random-projection:16",
                 "--no-progress"]) == 2
    assert "--reduce avgpool" in capsys.readouterr().err
    assert main(["extract", *ckpts, "--out", str(tmp_path / "x.h5"), "--reduce", "flatten-max"]) == 2
    assert "flatten-max:D" in capsys.readouterr().err
    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10 ** 6, 10 ** 6 - 10, 10))
    assert main(["extract", *ckpts, "--out", str(tmp_path / "y.h5"), "--samples", "40", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "10 B is free" in err and "--force" in err and "Traceback" not in err
    assert not (tmp_path / "y.h5").exists()
    assert main(["-q", "extract", *ckpts, "--out", str(tmp_path / "y.h5"), "--samples", "40", "--force",
                 "--reduce", "random-projection:32", "--reduce-seed", "2", "--compression", "gzip",
                 "--no-progress"]) == 0
    assert "about" not in capsys.readouterr().err                 # -q: no notice
    with ActivationStore(tmp_path / "y.h5") as st:
        c = st.checkpoints()[-1]
        assert st.read(c, "conv1").shape == (40, 32) and st.read(c, "out").shape == (40, 10)
        assert st.reduction["seed"] == 2 and st.checkpoint_attrs(c)["compression"] == "gzip"
