"""How extract streams rows: outputs kept without a copy stay correct under in-place operations,
the background writer and lazy flushes never let ``rows_done`` claim a row that is not in the file,
and an interrupted extraction keeps its whole batches and resumes to the same store."""
import numpy as np
import pytest
import torch
from torch import nn

import infoplane.extract as E
from infoplane.extract import extract
from infoplane.store import ActivationStore, _row_chunks

N, B = 48, 16


def _xy(n: int = N, d: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.arange(n) % 3


@pytest.fixture(params=[True, False], ids=["background-writer", "direct-writes"])
def threaded(request, monkeypatch):
    monkeypatch.setattr(E, "WRITE_IN_BACKGROUND", request.param)
    return request.param


class _Residual(nn.Module):
    """Like torchvision's BasicBlock: the hooked ``bn`` output is changed in place by ``+=`` and ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn(self.lin(x))
        out += x
        return self.relu(out)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(5, 6)
        self.block = _Residual()

    def forward(self, x):
        return self.block(self.up(x))


def test_inplace_operations_do_not_change_stored_outputs(tmp_path, threaded):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), _Block(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[2].block.bn.running_mean.normal_()            # a BatchNorm that is not the identity
    x, y = _xy()
    out = extract(model, (x, y), layers="0,1,2.block.bn,2.block.relu,3", out=tmp_path / "a.h5", batch_size=B,
                  samples=list(range(N)), progress=False, epoch=0)
    with torch.no_grad():
        lin = model[0](x)
        h = lin.clamp_min(0)
        pre = model[2].up(h)
        bn = model[2].block.bn(model[2].block.lin(pre))
        res = (bn + pre).clamp_min(0)
        final = model[3](res)
    with ActivationStore(out) as st:
        z0 = st.read("epoch_0000", "0")
        assert (z0 < 0).any()                               # the Linear output before the in-place ReLU
        np.testing.assert_allclose(z0, lin.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "1"), h.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "2.block.bn"), bn.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "2.block.relu"), res.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.read("epoch_0000", "3"), final.numpy(), rtol=1e-5, atol=1e-6)


class _SometimesInPlace(nn.Module):
    """Changes the hooked Linear output in place only for inputs marked by a large first feature,
    which the first batch does not have: the copy is decided batch by batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(6, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.lin(x)
        if float(x[:, 0].mean()) > 5:
            h.mul_(-2.0)
        return h.sum(dim=1, keepdim=True)


def test_a_batch_whose_kept_output_changes_in_place_is_run_again(tmp_path, threaded):
    x, y = _xy()
    x[2 * B:, 0] = 10.0                                    # the last batch takes the in-place branch
    model = _SometimesInPlace()
    out = extract(model, (x, y), layers="lin", out=tmp_path / "a.h5", batch_size=B, samples=list(range(N)),
                  progress=False, epoch=0)
    assert model.calls == 1 + 3 + 1                        # probe, three batches, the last one again
    with torch.no_grad():
        ref = model.lin(x)
    with ActivationStore(out) as st:
        np.testing.assert_allclose(st.read("epoch_0000", "lin"), ref.numpy(), rtol=1e-5, atol=1e-6)


class _Stateful(nn.Module):
    """Returns the same buffer every call (overwritten by the next batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("last", torch.zeros(B, 6))

    def forward(self, x):
        self.last.copy_(x)
        return self.last


def test_an_output_that_is_a_buffer_is_copied_before_the_next_batch(tmp_path, threaded):
    x, y = _xy()
    model = nn.Sequential(_Stateful(), nn.Linear(6, 2))
    out = extract(model, (x, y), layers="0", out=tmp_path / "a.h5", batch_size=B, samples=list(range(N)),
                  progress=False, epoch=0)
    with ActivationStore(out) as st:
        np.testing.assert_array_equal(st.read("epoch_0000", "0"), x.numpy())


class _Interrupting(nn.Module):
    def __init__(self, at_call: int) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        self.at_call, self.calls = at_call, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.net(x)


@pytest.mark.parametrize("exc", ["interrupt", "crash"])
def test_an_interruption_keeps_whole_batches_and_resume_completes(tmp_path, threaded, exc, monkeypatch):
    x, y = _xy()
    ref = extract(_Interrupting(0), (x, y), out=tmp_path / "ref.h5", batch_size=B, samples=list(range(N)),
                  progress=False, epoch=0)
    out = tmp_path / "a.h5"
    model = _Interrupting(at_call=1 + 3)                   # probe, batches 1 and 2, then the third
    if exc == "crash":                                     # a write that fails in the third batch
        model.at_call = 0
        original, calls = ActivationStore.write_layer_rows, {"n": 0}

        def flaky(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 2 * 3 + 2:                    # three layers per batch
                raise RuntimeError("disk went away")
            return original(self, *a, **k)

        monkeypatch.setattr(ActivationStore, "write_layer_rows", flaky)
    with pytest.raises(KeyboardInterrupt if exc == "interrupt" else RuntimeError):
        extract(model, (x, y), out=out, batch_size=B, samples=list(range(N)), progress=False, epoch=0)
    monkeypatch.undo()
    monkeypatch.setattr(E, "WRITE_IN_BACKGROUND", threaded)
    with ActivationStore(out) as st, ActivationStore(ref) as rs:
        assert st.checkpoints() == [] and st.checkpoints(include_incomplete=True) == ["epoch_0000"]
        done = st.checkpoint_attrs("epoch_0000")["rows_done"]
        assert done == 2 * B                               # every whole batch before the failure is kept
        for layer in rs.layers("epoch_0000"):
            np.testing.assert_array_equal(st.read("epoch_0000", layer, rows=slice(0, done)),
                                          rs.read("epoch_0000", layer, rows=slice(0, done)))
    model.at_call = 0
    extract(model, (x, y), out=out, batch_size=B, samples=list(range(N)), progress=False, epoch=0)
    with ActivationStore(out) as st, ActivationStore(ref) as rs:
        assert st.checkpoints() == ["epoch_0000"]
        np.testing.assert_array_equal(st.inputs(), rs.inputs())
        for layer in rs.layers("epoch_0000"):
            np.testing.assert_array_equal(st.read("epoch_0000", layer), rs.read("epoch_0000", layer))


def test_rows_done_follows_a_flush_of_the_rows_it_counts(tmp_path, threaded, monkeypatch):
    x, y = _xy()
    model = _Interrupting(0)
    ref = extract(model, (x, y), out=tmp_path / "ref.h5", batch_size=B, samples=list(range(N)), progress=False,
                  epoch=0)
    with ActivationStore(ref) as rs:
        want = {layer: rs.read("epoch_0000", layer) for layer in rs.layers("epoch_0000")}
    monkeypatch.setattr(E, "FLUSH_BYTES", 1)               # raise rows_done after every batch
    events = []
    flush, set_done = ActivationStore.flush, ActivationStore.set_rows_done

    def logged_flush(self):
        events.append("flush")
        flush(self)

    def checked_set_done(self, ckpt, rows):
        assert events and events[-1] == "flush", "rows_done raised before the rows were flushed"
        for layer, z in want.items():                      # every counted row is in the file
            np.testing.assert_array_equal(self._f[f"checkpoints/{ckpt}/layers/{layer}"][:rows], z[:rows])
        events.append(("rows_done", rows))
        set_done(self, ckpt, rows)

    monkeypatch.setattr(ActivationStore, "flush", logged_flush)
    monkeypatch.setattr(ActivationStore, "set_rows_done", checked_set_done)
    extract(model, (x, y), out=tmp_path / "a.h5", batch_size=B, samples=list(range(N)), progress=False, epoch=0)
    assert [e[1] for e in events if e != "flush"] == [B, 2 * B, 3 * B]


def test_background_and_direct_writes_give_the_same_store(tmp_path, monkeypatch):
    from tests._ckpt_helpers import make_checkpoints

    ckpts = make_checkpoints(tmp_path / "run", n=2)
    stores = {}
    for mode in (True, False):
        monkeypatch.setattr(E, "WRITE_IN_BACKGROUND", mode)
        stores[mode] = extract(ckpts, out=tmp_path / f"{mode}.h5", samples=100, batch_size=32, dtype="float16",
                               progress=False)
    with ActivationStore(stores[True]) as a, ActivationStore(stores[False]) as b:
        assert a.checkpoints() == b.checkpoints() == ["epoch_0000", "epoch_0001"]
        np.testing.assert_array_equal(a.inputs(), b.inputs())
        for c in a.checkpoints():
            assert a.layers(c) == b.layers(c)
            for layer in a.layers(c):
                np.testing.assert_array_equal(a.read(c, layer), b.read(c, layer))


def test_chunks_hold_whole_batches():
    assert _row_chunks((6, 14, 14), 4, 10000) == (222, 6, 14, 14)          # ~1 MiB without a batch size
    assert _row_chunks((6, 14, 14), 4, 10000, 256)[0] == 128               # a divisor of the batch
    assert _row_chunks((400,), 4, 10000, 256)[0] == 512                    # whole batches per chunk
    assert _row_chunks((6, 14, 14), 4, 10000, 100)[0] == 200
    assert _row_chunks((10,), 4, 300, 256)[0] == 300                       # never more than the rows
    assert _row_chunks((300, 1000), 4, 1000, 97)[0] == 1                   # no useful divisor: ~1 MiB
