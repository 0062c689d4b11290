"""The notebook API: ``import infoplane as ip`` (lazy exports), ``ip.estimate`` options, the store's
``repr`` and ``to_dataframe``."""
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import infoplane as ip
from infoplane.store import ActivationStore

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "h5py", "pandas", "matplotlib", "scipy", "sklearn", "torchvision")


def test_import_loads_nothing_heavy():
    code = (f"import infoplane, sys; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "assert not heavy, heavy; print(infoplane.__version__)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ip.__version__


def test_every_export_resolves():
    assert set(ip.__all__) <= set(dir(ip))
    for name in ip.__all__:
        assert getattr(ip, name) is not None, name
    assert ip.plot_plane is __import__("infoplane.plot").plot.plot_information_plane
    assert ip.plot_curves.__name__ == "plot_layer_curves"
    assert ip.ActivationStore is ActivationStore
    assert ip.load_checkpoint.__module__ == ip.save_checkpoint.__module__ == "infoplane.checkpoint"
    assert callable(ip.dependence) and callable(ip.assess)
    assert ip.data.image_folder is ip.image_folder          # submodules load on attribute access
    with pytest.raises(AttributeError, match="no attribute 'plot_planes'"):
        ip.plot_planes
    from infoplane import kernels                            # submodule imports are unaffected
    assert kernels.__name__ == "infoplane.kernels"


def test_stage_names_are_callable_submodules():
    import infoplane.estimate as est
    import infoplane.extract
    from infoplane.report import build_report

    # ip.extract / ip.estimate / ip.report share their names with submodules: one object serves both
    assert ip.extract is sys.modules["infoplane.extract"] and ip.estimate is est
    assert est.EstimateConfig is ip.EstimateConfig and infoplane.extract.extract is not None
    assert all(callable(f) for f in (ip.extract, ip.estimate, ip.report))
    assert list(inspect.signature(ip.extract).parameters)[:3] == ["source", "data", "layers"]
    assert list(inspect.signature(ip.estimate).parameters) == ["store", "config", "options"]
    assert inspect.signature(ip.report) == inspect.signature(build_report)
    assert "store" in ip.estimate.__call__.__doc__


def _store(path: Path, n: int = 12, complete: bool = True) -> Path:
    rng = np.random.default_rng(0)
    st = ActivationStore.create(path, index=np.arange(n) * 3, labels=np.arange(n) % 3, input_shape=(2,),
                                model={"name": "mlp", "kwargs": {"width": 4}},
                                dataset={"name": "toy", "num_classes": 3}, split="test")
    st.write_inputs(0, rng.normal(size=(n, 2)))
    st.mark_inputs_complete()
    for epoch in (0, 5):
        cid = f"epoch_{epoch:04d}"
        st.begin_checkpoint(cid, attrs={"epoch": epoch, "step": 0, "regime": {"name": "e2e"}, "sha256": cid})
        st.write_layer_rows(cid, "conv", 0, rng.normal(size=(n, 2, 3)), order=0)
        st.write_layer_rows(cid, "fc", 0, np.arange(n * 4, dtype=np.float32).reshape(n, 4), order=1)
        st.set_rows_done(cid, n)
        st.finish_checkpoint(cid)
    if not complete:
        st.begin_checkpoint("epoch_0009", attrs={"epoch": 9, "step": 0, "sha256": "x"})
    st.close()
    return path


def test_store_repr(tmp_path):
    st = ActivationStore(_store(tmp_path / "a.h5", complete=False))
    text = repr(st)
    assert text.startswith(f"<ActivationStore {str(tmp_path / 'a.h5')!r} (read-only)")
    for part in ("samples:     12, input (2,)", "model:       mlp {'width': 4}",
                 "dataset:     toy, 3 classes; split test",
                 "2 complete: epoch_0000 (epoch 0) .. epoch_0005 (epoch 5)", "+1 incomplete",
                 "layers:      conv (2, 3), fc (4,)"):
        assert part in text, (part, text)
    st.close()
    assert repr(st) == f"<ActivationStore {str(tmp_path / 'a.h5')!r} (closed)>"


def test_store_to_dataframe(tmp_path):
    with ActivationStore(_store(tmp_path / "a.h5")) as st:
        df = st.to_dataframe("epoch_0005", "fc")
        assert list(df.columns) == ["index", "label", "f0", "f1", "f2", "f3"]
        assert df.index.name == "row" and list(df.index) == list(range(12))
        assert df["index"].tolist() == list(range(0, 36, 3)) and df["label"].tolist() == [0, 1, 2] * 4
        np.testing.assert_array_equal(df[["f0", "f1", "f2", "f3"]].to_numpy(), st.read("epoch_0005", "fc"))
        conv = st.to_dataframe("epoch_0000", "conv", rows=[7, 2])
        assert list(conv.index) == [7, 2] and conv.shape == (2, 2 + 6)  # (2, 3) flattened in C order
        np.testing.assert_array_equal(conv.iloc[:, 2:].to_numpy(), st.read("epoch_0000", "conv")[[7, 2]].reshape(2, 6))
        assert st.to_dataframe("epoch_0000", "fc", rows=slice(10, None))["index"].tolist() == [30, 33]
        with pytest.raises(KeyError, match="stored layers are: conv, fc"):
            st.to_dataframe("epoch_0000", "nope")


def test_estimate_keywords(tmp_path):
    path = _store(tmp_path / "a.h5")
    df = ip.estimate(path, batch_size=4, layers="fc", progress=False)
    assert set(df["layer"]) == {"fc"} and df["batch_size"].eq(4).all() and len(df) == 2 * 2
    assert {"value", "null_mean", "null_sd", "z", "adjusted"} <= set(df.columns)
    with ActivationStore(path) as st:                      # an open store: its path is used
        again = ip.estimate(st, ip.EstimateConfig(batch_size=6), layers=["fc"], progress=False)
    assert again["batch_size"].eq(6).all() and set(again["layer"]) == {"fc"}
    with pytest.raises(TypeError, match="'batchsize'.*valid options.*batch_size"):
        ip.estimate(path, batchsize=4)
    with pytest.raises(TypeError, match="config must be an EstimateConfig"):
        ip.estimate(path, {"batch_size": 4})
    with pytest.raises(TypeError, match="store must be the path"):
        ip.estimate(3)
