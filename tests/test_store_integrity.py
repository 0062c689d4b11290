"""Store integrity: checksummed blocks, atomic creation, one writer at a time."""
import multiprocessing as mp

import numpy as np
import pytest

from infoplane.store import ActivationStore, StoreError


def _make(path, n=64, d=32):
    st = ActivationStore.create(path, index=np.arange(n), labels=np.arange(n) % 3, input_shape=(d,),
                                model={"name": "m", "kwargs": {}}, dataset={"name": "toy"}, split="test")
    st.write_inputs(0, np.random.default_rng(0).normal(size=(n, d)).astype("float32"))
    st.mark_inputs_complete()
    st.begin_checkpoint("epoch_0001", attrs={"epoch": 1, "sha256": "abc"})
    z = np.random.default_rng(1).normal(size=(n, 256)).astype("float32")
    st.write_layer_rows("epoch_0001", "fc", 0, z)
    st.set_rows_done("epoch_0001", n)
    st.finish_checkpoint("epoch_0001")
    st.close()
    return z


def test_flipped_bytes_in_a_data_block_are_detected(tmp_path):
    path = tmp_path / "s.h5"
    z = _make(path)
    with ActivationStore(path) as st:
        ds = st._f["checkpoints/epoch_0001/layers/fc"]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
        np.testing.assert_array_equal(st.read("epoch_0001", "fc"), z)
    raw = bytearray(path.read_bytes())
    for i in range(offset + 100, offset + 300):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with ActivationStore(path) as st:
        with pytest.raises(StoreError, match="checkpoint 'epoch_0001', layer 'fc' is damaged"):
            st.read("epoch_0001", "fc")


def test_creation_is_atomic_and_an_interrupted_one_is_explained(tmp_path):
    path = tmp_path / "s.h5"
    _make(path)
    assert not (tmp_path / "s.h5.partial").exists()
    stub = tmp_path / "stub.h5"
    stub.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 88)           # what a kill during creation used to leave
    with pytest.raises(StoreError, match=r"creation was interrupted\). Delete it"):
        ActivationStore(stub)


def _hold(path, ready, done):
    st = ActivationStore(path, "a")
    ready.set()
    done.wait(20)
    st.close()


def test_a_second_writer_is_refused_with_the_pid(tmp_path):
    path = tmp_path / "s.h5"
    _make(path)
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(path, ready, done))
    p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(StoreError, match=f"in use by another process \\(pid {p.pid}\\)"):
            ActivationStore(path, "a")
    finally:
        done.set()
        p.join(20)
    with ActivationStore(path, "a") as st:          # free again once the other writer closed
        assert st.checkpoints() == ["epoch_0001"]
