"""Your own model and data: ``ip.extract(model, data)`` with any nn.Module over a Dataset, a DataLoader,
(x, y) arrays, an image folder or a dataset factory; and the errors that guard it."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

import infoplane as ip
from infoplane.data import image_folder, resolve_dataset_factory
from infoplane.store import ActivationStore, StoreError
from tests._ckpt_helpers import make_checkpoints


def _images(n: int = 24, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % classes


def _mlp(d_in: int = 3 * 32 * 32, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(d_in, 16), relu=nn.ReLU(),
                                     out=nn.Linear(16, classes)))


def _hooked(model: nn.Module, name: str, x: torch.Tensor) -> np.ndarray:
    out = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: out.setdefault("z", o))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return out["z"].numpy()


def test_torchvision_resnet18(tmp_path):
    from torchvision.models import resnet18

    x, y = _images()
    net = resnet18(num_classes=10).train()
    out = tmp_path / "resnet.h5"
    assert ip.extract(net, TensorDataset(x, y), layers="layer1,layer4", out=out, batch_size=8, progress=False) == out
    assert net.training                                   # the caller's mode is restored
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["model_0000"] and st.layers("model_0000") == ["layer1", "layer4"]
        idx = st.index()
        assert sorted(idx.tolist()) == list(range(24))       # all samples, classes interleaved
        np.testing.assert_allclose(st.read("model_0000", "layer4"), _hooked(net, "layer4", x[idx]),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(st.labels(), y[idx].numpy())
        np.testing.assert_array_equal(st.inputs(), x[idx].numpy())
        assert st.model["name"] == "ResNet" and st.model["class"] == "torchvision.models.resnet.ResNet"
        assert st.model["parameters"] == sum(p.numel() for p in net.parameters())
        assert st.dataset["name"] == "TensorDataset" and st.dataset["num_classes"] == 4
        assert st.dataset["data"] == {"class": "torch.utils.data.dataset.TensorDataset", "length": 24,
                                      "loader": False, "selection": "all"}
        assert st.provenance["model_summary"].startswith("ResNet(") and st.provenance["data"]["length"] == 24
        text = repr(st)
        assert "ResNet (11,181,642 parameters)" in text and "layer1 (64, 8, 8), layer4 (512, 1, 1)" in text
    net.train()
    df = ip.estimate(out, batch_size=12, progress=False)
    assert len(df) == 2 * 2 and (df["status"] == "ok").all() and np.isfinite(df["value"]).all()
    assert np.isfinite(df[["null_mean", "z", "adjusted"]].to_numpy()).all()
    assert set(df["regime"]) == {"ResNet"} and set(df["model"]) == {"ResNet"}


def test_states_of_one_model_share_a_store(tmp_path):
    x, y = _images()
    data, mlp, out = TensorDataset(x, y), _mlp(), tmp_path / "mlp.h5"
    ip.extract(mlp, data, out=out, progress=False)
    ip.extract(mlp, data, out=out, progress=False)        # same weights, same id: nothing to do
    with torch.no_grad():
        mlp.fc1.weight.mul_(2.0)
    with pytest.raises(StoreError, match="already holds a checkpoint 'model_0000' with other weights; nothing was "
                                         "overwritten"):
        ip.extract(mlp, data, out=out, progress=False)
    ip.extract(mlp, data, out=out, epoch=3, progress=False)
    ip.extract(mlp, data, out=out, name="final", epoch=7, progress=False)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["model_0000", "epoch_0003", "final"]
        assert [st.checkpoint_attrs(c)["epoch"] for c in st.checkpoints()] == [0, 3, 7]
        np.testing.assert_allclose(st.read("final", "fc1"), _hooked(mlp, "fc1", x[st.index()]), rtol=1e-5, atol=1e-6)
        assert st.layers("final") == ["flatten", "fc1", "relu", "out"]   # "all": every leaf module
    with pytest.raises(StoreError, match="holds activations of model"):   # another architecture
        ip.extract(_mlp(classes=5), data, out=out, epoch=9, progress=False)
    other = TensorDataset(x + 1.0, y)                    # same labels, other inputs
    with pytest.raises(StoreError, match="holds other inputs in rows 0..23"):
        ip.extract(mlp, other, out=out, epoch=8, progress=False)
    with pytest.raises(StoreError, match="other labels"):
        ip.extract(mlp, TensorDataset(x, (y + 1) % 4), out=out, epoch=8, progress=False)
    with ActivationStore(out) as st:                     # the refused calls left no incomplete checkpoint behind
        assert st.checkpoints(include_incomplete=True) == ["model_0000", "epoch_0003", "final"]
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        ip.extract(mlp, data, out=out, epoch=-1, progress=False)
    with pytest.raises(ValueError, match="name must be a non-empty string without '/'"):
        ip.extract(mlp, data, out=out, name="a/b", progress=False)


def test_a_failed_first_attempt_pins_nothing(tmp_path):
    x, y = _images(n=12)
    out, mlp = tmp_path / "m.h5", _mlp(d_in=10)
    with pytest.raises(RuntimeError):                    # wrong input size for the model: its forward fails
        ip.extract(mlp, TensorDataset(x, y), out=out, progress=False)
    with ActivationStore(out) as st:
        assert st.checkpoints(include_incomplete=True) == [] and not st.samples_complete
    right = TensorDataset(torch.rand(20, 10), torch.arange(20) % 4)   # other samples: the store is made anew
    ip.extract(mlp, right, out=out, progress=False)
    with ActivationStore(out) as st:
        assert st.n_samples == 20 and st.checkpoints() == ["model_0000"]
    assert len(ip.estimate(out, batch_size=10, progress=False)) == 4 * 2


def test_stratified_samples_of_a_dataset(tmp_path):
    x, y = _images(n=40)
    ip.extract(_mlp(), TensorDataset(x, y), layers="fc1", out=tmp_path / "s.h5", samples=12, progress=False)
    with ActivationStore(tmp_path / "s.h5") as st:
        assert np.bincount(st.labels()).tolist() == [3, 3, 3, 3]       # stratified: 3 of each class
        np.testing.assert_array_equal(st.inputs(), x[st.index()].numpy())
        assert st.dataset["data"]["selection"] == "stratified subset"


class _Pairs(Dataset):
    """A map-style dataset without a label attribute, yielding (numpy array, int)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, label=int) -> None:
        self.x, self.y, self.label = x, y, label

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.label(self.y[i])


class _ReversedSecondTime(Sampler):
    """An order that changes between passes (not one of torch's random samplers)."""

    def __init__(self, n: int) -> None:
        self.n, self.passes = n, 0

    def __iter__(self):
        self.passes += 1
        return iter(range(self.n) if self.passes == 1 else reversed(range(self.n)))

    def __len__(self) -> int:
        return self.n


def test_mlp_on_a_dataloader(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 6)), np.arange(30) % 3          # float64 numpy: fed to the model as float32
    mlp = _mlp(d_in=6, classes=3)
    loader = DataLoader(_Pairs(x, y), batch_size=7)               # no .targets: labels come from a first pass
    ip.extract(mlp, loader, layers="relu,out", out=tmp_path / "dl.h5", samples=20, progress=False)
    with ActivationStore(tmp_path / "dl.h5") as st:
        assert st.index().tolist() == list(range(20))              # the first 20, in the loader's order
        np.testing.assert_array_equal(st.labels(), y[:20])
        np.testing.assert_allclose(st.read("model_0000", "out"),
                                   _hooked(mlp, "out", torch.as_tensor(x[:20], dtype=torch.float32)), rtol=1e-5)
        rec = st.dataset["data"]
        assert rec["loader"] is True and rec["loader_batch_size"] == 7 and rec["class"].endswith("_Pairs")
        assert "(via a DataLoader)" in repr(st)
    df = ip.estimate(tmp_path / "dl.h5", batch_size=10, progress=False)
    assert len(df) == 2 * 2 and np.isfinite(df["z"]).all()
    # (x, y) arrays directly, numpy or torch
    ip.extract(mlp, (x, y), out=tmp_path / "arr.h5", layers="out", progress=False)
    ip.extract(mlp, (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)), out=tmp_path / "arr.h5",
               layers="out", epoch=1, progress=False)
    with ActivationStore(tmp_path / "arr.h5") as st:
        assert st.checkpoints() == ["model_0000", "epoch_0001"] and st.dataset["name"] == "arrays"
    with pytest.raises(ValueError, match=r"random order \(RandomSampler, e.g. shuffle=True\)"):
        ip.extract(mlp, DataLoader(_Pairs(x, y), shuffle=True), out=tmp_path / "r.h5", progress=False)
    with pytest.raises(ValueError, match="gave other labels for rows"):
        ip.extract(mlp, DataLoader(_Pairs(x, y), sampler=_ReversedSecondTime(30), batch_size=10),
                   out=tmp_path / "rev.h5", progress=False)
    with pytest.raises(TypeError, match="with a DataLoader, samples must be None"):
        ip.extract(mlp, loader, out=tmp_path / "i.h5", samples=[0, 1, 2, 3, 4], progress=False)


def test_class_sorted_loader_is_warned_about(tmp_path, caplog):
    x, y = np.random.default_rng(2).normal(size=(12, 6)), np.repeat([0, 1, 2], 4)
    with caplog.at_level("WARNING", logger="infoplane.extract"):
        ip.extract(_mlp(d_in=6, classes=3), DataLoader(_Pairs(x, y), batch_size=4), out=tmp_path / "s.h5",
                   progress=False)
    assert "yields its samples sorted by class" in caplog.text
    with ActivationStore(tmp_path / "s.h5") as st:
        np.testing.assert_array_equal(st.labels(), y)                  # the loader's order is kept
    caplog.clear()
    with caplog.at_level("WARNING", logger="infoplane.extract"):
        ip.extract(_mlp(d_in=6, classes=3), _Pairs(x, y), out=tmp_path / "d.h5", progress=False)
    assert "sorted by class" not in caplog.text
    with ActivationStore(tmp_path / "d.h5") as st:                     # a Dataset: classes interleaved
        assert all(sorted(st.labels()[i:i + 3]) == [0, 1, 2] for i in range(0, 12, 3))


def _png_folder(root, sizes=((12, 10), (14, 9), (12, 10), (8, 8)), classes=("cat", "dog", "owl")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    root = tmp_path / "photos"
    _png_folder(root / "test")
    _png_folder(root / "train", sizes=((6, 6),) * 2)
    ds = image_folder(root, split="test")
    assert ds.classes == ["cat", "dog", "owl"] and len(ds) == 12
    shapes = {tuple(ds[i][0].shape) for i in range(len(ds))}
    assert shapes == {(3, 12, 10)}                              # every image resized to the first one's size
    assert ds[0][0].dtype == torch.float32 and 0.0 <= float(ds[0][0].min()) <= float(ds[0][0].max()) <= 1.0
    assert [ds[i][1] for i in range(len(ds))] == [0] * 4 + [1] * 4 + [2] * 4
    from torchvision import transforms

    small = image_folder(root / "test", transform=transforms.Compose([transforms.Resize((5, 5)),
                                                                      transforms.ToTensor()]))
    assert tuple(small[5][0].shape) == (3, 5, 5)
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                    out=nn.Linear(4, 3)))
    out = ip.extract(net, image_folder=root, layers="conv,out", out=tmp_path / "if.h5", progress=False)
    with ActivationStore(out) as st:                            # ROOT/test is used: split defaults to "test"
        assert st.n_samples == 12 and tuple(st.inputs().shape[1:]) == (3, 12, 10)
        # the folder lists its images class by class; the store interleaves them, so that every minibatch
        # of estimate holds every class (here: each run of 3 rows)
        assert sorted(st.index().tolist()) == list(range(12))
        assert all(sorted(st.labels()[i:i + 3]) == [0, 1, 2] for i in range(0, 12, 3))
        assert st.dataset["name"] == "ImageFolder" and st.dataset["num_classes"] == 3
        assert st.dataset["data"]["classes"] == ["cat", "dog", "owl"]
        assert st.dataset["data"]["image_folder"] == str(root)
        assert st.dataset["data"]["root"] == str(root / "test")
    out = ip.extract(net, image_folder=root, split="train", layers="out", out=tmp_path / "tr.h5", progress=False)
    with ActivationStore(out) as st:
        assert st.n_samples == 6 and tuple(st.inputs().shape[1:]) == (3, 6, 6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder .*missing.* does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class subfolders; put the images in one subfolder per class"):
        image_folder(tmp_path / "empty")
    for c in ("a", "b"):
        (tmp_path / "noimg" / c).mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image in its class subfolders"):
        image_folder(tmp_path / "noimg")
    _png_folder(tmp_path / "some", sizes=((4, 4),), classes=("a", "b"))
    (tmp_path / "some" / "c").mkdir()
    with pytest.raises(ValueError, match="class subfolder\\(s\\) without an image: c"):
        image_folder(tmp_path / "some")
    with pytest.raises(FileNotFoundError, match="no split folder 'val'; its subfolders are: a, b, c"):
        image_folder(tmp_path / "some", split="val")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        image_folder(tmp_path / "noimg" / "a" / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ip.extract(_mlp(), image_folder=tmp_path / "missing", out=tmp_path / "x.h5")


class _DictItems(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return {"image": torch.zeros(3), "label": i % 2}


def test_data_errors(tmp_path):
    x, y = _images(n=8)
    mlp, out = _mlp(), tmp_path / "e.h5"
    cases = [
        (TensorDataset(x, y.float()), r"must hold integer class labels, one per sample \(shape \(8,\)\); its labels "
                                      r"are a torch.float32 tensor of shape \(8,\); if the values are whole numbers"),
        (TensorDataset(x, nn.functional.one_hot(y)), r"its labels are a torch.int64 tensor of shape \(8, 4\); pass "
                                                     r"one class index per sample \(one-hot rows: y.argmax\(-1\)\)"),
        (_Pairs(x.numpy(), y.numpy(), label=float), r"must yield \(x, y\) pairs with y an integer class label "
                                                   r"\(a scalar\); it yielded y = float 0.0; if the values are whole"),
        (_Pairs(x.numpy(), np.array(["cat"] * 8), label=str), "it yielded y = str 'cat'"),
        (_Pairs(x.numpy(), y.numpy() - 1), "yielded the label -1; labels must be class indices"),
        (_DictItems(), r"must yield \(x, y\) pairs; it yielded a dict with keys \['image', 'label'\]; wrap it"),
        ((x.numpy(), y.numpy().astype(float)), r"data=\(x, y\) must hold integer class labels"),
        ((x, y[:5]), r"data=\(x, y\): x has 8 rows but y has 5 labels"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            ip.extract(mlp, data, out=out, progress=False)
    with pytest.raises(ValueError, match="PIL image: give the dataset a transform that makes tensors"):
        ip.extract(mlp, [(Image.new("RGB", (4, 4)), 0)] * 8, out=out, progress=False)
    with pytest.raises(TypeError, match="a model needs data"):
        ip.extract(mlp, out=out)
    with pytest.raises(TypeError, match="pass layers=, out= and the other options as keywords"):
        ip.extract(mlp, "fc1")
    with pytest.raises(ValueError, match="pass one source of data, not data and image_folder"):
        ip.extract(mlp, TensorDataset(x, y), image_folder=tmp_path, out=out)
    with pytest.raises(ValueError, match="at least 4 are needed"):
        ip.extract(mlp, TensorDataset(x[:3], y[:3]), out=out, progress=False)
    with pytest.raises(ValueError, match="model_factory rebuilds the model of a checkpoint file"):
        ip.extract(mlp, TensorDataset(x, y), model_factory="torchvision.models:resnet18", out=out)
    assert not out.exists()


def test_dataset_factory_and_checkpoints_of_your_own(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    (tmp_path / "mydata.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def make(split='test'):\n"
        "    g = torch.Generator().manual_seed(0 if split == 'test' else 1)\n"
        "    return TensorDataset(torch.rand(16, 3, 32, 32, generator=g), torch.arange(16) % 4)\n"
        "def bare():\n    return make()\n"
        "def bad():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    test = resolve_dataset_factory("mydata:make", split="test")
    assert not torch.equal(test[0][0], resolve_dataset_factory("mydata:make", split="train")[0][0])
    assert torch.equal(resolve_dataset_factory("mydata:bare", split="train")[0][0], test[0][0])  # no split arg
    with pytest.raises(ValueError, match="dataset factory 'mydata:bad' returned int, not a Dataset"):
        resolve_dataset_factory("mydata:bad")
    with pytest.raises(ValueError, match="dataset factory: factory 'nomodule:make': cannot import module"):
        resolve_dataset_factory("nomodule:make")
    # a torchvision model saved as an infoplane checkpoint that names a dataset infoplane does not know
    torch.manual_seed(0)
    ck = ip.save_checkpoint(tmp_path / "run" / "epoch_0002.pt", resnet18(num_classes=4), model_name="resnet18",
                            model_kwargs={"num_classes": 4}, epoch=2, step=0, regime="e2e",
                            dataset={"name": "my_imagefolder", "num_classes": 4})
    kw = dict(model_factory="torchvision.models:resnet18", layers="layer4", progress=False)
    with pytest.raises(ValueError, match="names the dataset 'my_imagefolder', which infoplane does not know .* "
                                         "dataset_factory='pkg.mod:fn' or image_folder=ROOT"):
        ip.extract(ck, out=tmp_path / "no.h5", **kw)
    out = ip.extract(ck, dataset_factory="mydata:make", out=tmp_path / "ck.h5", **kw)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0002"] and st.dataset["name"] == "my_imagefolder"
        assert st.dataset["data"]["factory"] == "mydata:make" and st.checkpoint_attrs("epoch_0002")["epoch"] == 2
        np.testing.assert_array_equal(st.inputs(), torch.stack([test[int(i)][0] for i in st.index()]).numpy())
    with pytest.raises(ValueError, match="epoch= and name= label the state of a model object"):
        ip.extract(ck, dataset_factory="mydata:make", out=tmp_path / "ck.h5", epoch=3, **kw)
    with pytest.raises(ValueError, match="has the label 3 but the checkpoint .* was trained on 2 classes"):
        small = ip.save_checkpoint(tmp_path / "small.pt", resnet18(num_classes=2), model_name="resnet18",
                                   model_kwargs={"num_classes": 2}, epoch=0, step=0, regime="e2e",
                                   dataset={"name": "my_imagefolder", "num_classes": 2})
        ip.extract(small, dataset_factory="mydata:make", out=tmp_path / "small.h5", **kw)


def test_registered_checkpoints_over_your_data(tmp_path):
    from infoplane.data import load_dataset

    ckpts = make_checkpoints(tmp_path / "run", n=2)
    test = load_dataset("digits", split="test")
    x, y = test.tensors[0][:40], test.tensors[1][:40]
    out = ip.extract(ckpts, data=TensorDataset(x, y), out=tmp_path / "own.h5", progress=False)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000", "epoch_0001"] and st.n_samples == 40
        assert st.checkpoint_attrs("epoch_0001")["metrics_samples"] == "unknown"
        assert st.dataset["name"] == "digits" and st.dataset["data"]["length"] == 40
    more = make_checkpoints(tmp_path / "more", n=3)[2:]
    with pytest.raises(StoreError, match="holds samples of your own data"):
        ip.extract(more, out=out, progress=False)              # the digits test split is not the data stored
    ip.extract(more, data=TensorDataset(x, y), out=out, progress=False)
    with ActivationStore(out) as st:
        assert st.checkpoints() == ["epoch_0000", "epoch_0001", "epoch_0002"]
