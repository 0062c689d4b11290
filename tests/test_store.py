"""HDF5 activation store (infoplane.store) and extraction into it (infoplane.extract)."""
import h5py
import numpy as np
import pytest
import torch

from infoplane.checkpoint import load_checkpoint
from infoplane.data import load_dataset
from infoplane.extract import extract, select_samples
from infoplane.store import FORMAT, ActivationStore, StoreError
from tests._ckpt_helpers import make_checkpoints


def _new(path, n=10):
    return ActivationStore.create(path, index=np.arange(n) * 2, labels=np.arange(n) % 3, input_shape=(2, 3),
                                  model={"name": "m", "kwargs": {"w": 1}}, dataset={"name": "d"}, split="test",
                                  provenance={"command": "test"})


def test_round_trip_streamed(tmp_path, rng):
    st = _new(tmp_path / "a.h5")
    x = rng.normal(size=(10, 2, 3)).astype(np.float32)
    z = rng.normal(size=(10, 4, 2)).astype(np.float32)
    for s in (0, 4, 8):
        st.write_inputs(s, x[s:s + 4])
    st.mark_inputs_complete()
    assert st.begin_checkpoint("e1", attrs={"epoch": 1, "step": 7, "regime": {"name": "e2e"},
                                            "metrics": {"acc": 0.5}, "sha256": "abc", "model": "m"}) == 0
    for s in (0, 4, 8):
        st.write_layer_rows("e1", "fc:1", s, z[s:s + 4], module_path="fc", call_index=1)
        st.set_rows_done("e1", min(s + 4, 10))
    assert st.checkpoints() == []                       # not complete yet: invisible to readers
    st.finish_checkpoint("e1")
    st.close()
    with ActivationStore(tmp_path / "a.h5") as r:
        assert r.checkpoints() == ["e1"] and r.layers("e1") == ["fc:1"]
        np.testing.assert_array_equal(r.read("e1", "fc:1"), z)
        np.testing.assert_array_equal(r.read("e1", "fc:1", rows=[7, 2, 7]), z[[7, 2, 7]])
        np.testing.assert_array_equal(r.read("e1", "fc:1", rows=slice(3, 5)), z[3:5])
        np.testing.assert_array_equal(r.inputs(), x)
        np.testing.assert_array_equal(r.labels(), np.arange(10) % 3)
        a = r.checkpoint_attrs("e1")
        assert a["epoch"] == 1 and a["regime"] == {"name": "e2e"} and a["metrics"] == {"acc": 0.5}
        la = r.layer_attrs("e1", "fc:1")
        assert la["module_path"] == "fc" and la["original_shape"] == [4, 2]
        ds = r._f["checkpoints/e1/layers/fc:1"]
        assert ds.chunks[1:] == (4, 2) and ds.dtype == np.float32   # chunked by whole rows
        assert r.info["format"] == FORMAT and r.provenance["command"] == "test"
        with pytest.raises(KeyError, match="stored layers are: fc:1"):
            r.read("e1", "nope")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ActivationStore(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        ActivationStore(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not an infoplane activation store"):
        ActivationStore(tmp_path / "foreign.h5")


def test_compatibility_checks(tmp_path):
    st = _new(tmp_path / "a.h5")
    st.check_compatible(model={"name": "m", "kwargs": {"w": 1}}, index=np.arange(10) * 2)
    with pytest.raises(StoreError, match="holds activations of model"):
        st.check_compatible(model={"name": "m", "kwargs": {"w": 2}}, index=np.arange(10) * 2)
    with pytest.raises(StoreError, match="different sample set"):
        st.check_compatible(model={"name": "m", "kwargs": {"w": 1}}, index=np.arange(10))
    st.close()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("run"), n=2)


def test_extract_equals_manual_forward(tmp_path, ckpts):
    out = extract(ckpts, out=tmp_path / "acts.h5", samples=50, batch_size=16, progress=False)
    ds = load_dataset("digits", split="test")
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000", "epoch_0001"]
        idx = st.index()
        np.testing.assert_array_equal(idx, select_samples(ds.targets.numpy(), 50))
        x = ds.tensors[0][torch.as_tensor(idx)]
        np.testing.assert_array_equal(st.inputs(), x.numpy())
        np.testing.assert_array_equal(st.labels(), ds.targets.numpy()[idx])
        model = load_checkpoint(ckpts[1]).build_model()
        with torch.no_grad():
            ref = model.forward_layers(x)
        assert st.layers("epoch_0001") == list(ref)
        for name, z in ref.items():
            np.testing.assert_allclose(st.read("epoch_0001", name), z.numpy(), rtol=1e-5, atol=1e-6)
        assert st.checkpoint_attrs("epoch_0001")["sha256"] == load_checkpoint(ckpts[1]).sha256
    # re-running is idempotent (complete checkpoints are skipped)
    extract(ckpts, out=out, samples=50, batch_size=16, progress=False)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000", "epoch_0001"]


def test_resume_after_interruption(tmp_path, ckpts, monkeypatch):
    out = tmp_path / "acts.h5"
    calls = {"n": 0}
    original = ActivationStore.write_layer_rows

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5 * 3 + 2:   # checkpoint 0 done (3 batches x 5 layers), fail mid checkpoint 1
            raise RuntimeError("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(ActivationStore, "write_layer_rows", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(ckpts, out=out, samples=40, batch_size=16, progress=False)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000"]                       # incomplete one is ignored
        assert st.checkpoints(include_incomplete=True) == ["epoch_0000", "epoch_0001"]
    monkeypatch.setattr(ActivationStore, "write_layer_rows", original)
    extract(ckpts, out=out, samples=40, batch_size=16, progress=False)
    ref = extract(ckpts, out=tmp_path / "ref.h5", samples=40, batch_size=16, progress=False)
    with ActivationStore(out) as st, ActivationStore(ref) as rs:
        assert st.checkpoints() == rs.checkpoints() == ["epoch_0000", "epoch_0001"]
        for c in st.checkpoints():
            for name in rs.layers(c):
                np.testing.assert_array_equal(st.read(c, name), rs.read(c, name))


def test_mismatched_store_refused(tmp_path, ckpts):
    out = extract(ckpts[:1], out=tmp_path / "acts.h5", samples=30, progress=False)
    with pytest.raises(StoreError, match="different sample set"):
        extract(ckpts[1:], out=out, samples=31, progress=False)
    other = make_checkpoints(tmp_path / "other", n=1, model="mlp",
                             kwargs={"input_shape": [1, 8, 8], "num_classes": 10, "width": 8, "depth": 2})
    with pytest.raises(StoreError, match="holds activations of model"):
        extract(other, out=out, samples=30, progress=False)


def test_float16_and_layer_selection(tmp_path, ckpts):
    out = extract(ckpts[:1], layers="conv?,out", out=tmp_path / "h.h5", samples=20, dtype="float16",
                  progress=False)
    with ActivationStore(out) as st:
        c = st.checkpoints()[0]
        assert st.layers(c) == ["conv1", "conv2", "out"]
        assert st.read(c, "out").dtype == np.float16


def test_incomplete_group_restarts_when_request_changes(tmp_path):
    st = _new(tmp_path / "a.h5")
    attrs = {"epoch": 0, "step": 0, "sha256": "s", "layers_spec": "all", "dtype": "float32"}
    st.begin_checkpoint("c", attrs=attrs)
    st.write_layer_rows("c", "fc", 0, np.ones((4, 2), np.float32))
    st.set_rows_done("c", 4)
    assert st.begin_checkpoint("c", attrs=attrs) == 4                        # resume
    assert st.begin_checkpoint("c", attrs={**attrs, "layers_spec": "fc"}) == 0   # restart
    assert st.layers("c") == []
    with pytest.raises(StoreError, match="cannot mark complete"):
        st.finish_checkpoint("c")
    st.close()
