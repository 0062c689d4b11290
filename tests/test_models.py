import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from infoplane.models import LayeredNet, build_model, list_models, module_sizes, split_into_modules

TINY = {
    "mlp": dict(width=8, depth=3),
    "toy-linear": dict(width=8, depth=3),
    "lenet5": dict(channels=(2, 3), hidden=(8, 6)),
    "vgg11": dict(width=1 / 32),
    "vgg11_bn": dict(width=1 / 32),
    "resnet18": dict(width=2),
    "resnet50": dict(width=2),
    "resnet32": dict(depth=8, width=2),
    "resnet110": dict(depth=14, width=2),
    "vit": dict(dim=8, depth=2, heads=2, patch=4),
}

EXPECTED_NAMES = {
    "lenet5": ["conv1", "conv2", "fc1", "fc2", "out"],
    "mlp": ["fc1", "fc2", "fc3", "out"],
    "toy-linear": ["w", "fc1", "fc2", "fc3", "out"],
    "vgg11": [f"conv{i}" for i in range(1, 9)] + ["out"],
    "vgg11_bn": [f"conv{i}" for i in range(1, 9)] + ["out"],
    "resnet18": ["stem"] + [f"block{i}" for i in range(1, 9)] + ["out"],
    "resnet50": ["stem"] + [f"block{i}" for i in range(1, 17)] + ["out"],
    "resnet32": ["stem", "block1", "block2", "block3", "out"],
    "resnet110": ["stem"] + [f"block{i}" for i in range(1, 7)] + ["out"],
    "vit": ["embed", "block1", "block2", "out"],
}


def test_registry_is_complete():
    assert set(TINY) == set(list_models())
    with pytest.raises(ValueError, match="registered models"):
        build_model("alexnet")


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_tiny(name, shape):
    torch.manual_seed(0)
    m = build_model(name, input_shape=shape, num_classes=7, **TINY[name]).eval()
    assert isinstance(m, LayeredNet) and m.input_shape == shape and m.num_classes == 7
    assert m.layer_names == EXPECTED_NAMES[name]
    x = torch.randn(3, *shape)
    with torch.no_grad():
        out = m(x)
        layers = m.forward_layers(x)
    assert out.shape == (3, 7)
    assert list(layers) == m.layer_names
    assert torch.allclose(layers["out"], out, atol=1e-6)
    assert set(m.basic_layers) == set(m.layer_names)
    assert sum(m.basic_layers.values()) >= len(m.layer_names) - 1


def test_paper_basic_layer_counts():
    # Wang et al. 2021 appendix F: ResNet-32 has 16 basic layers, ResNet-110 has 55
    assert sum(build_model("resnet32", width=2).basic_layers.values()) == 16
    assert sum(build_model("resnet110", width=2).basic_layers.values()) == 55
    # Sakamoto & Sato 2024 sec. 4.3: ResNet18 has nine middle representations (stem + 8 blocks) before the output
    assert len(build_model("resnet18", width=2).layer_names) == 10
    assert len(build_model("lenet5").layer_names) == 5


def test_paper_default_sizes():
    assert build_model("mlp", input_shape=(1, 28, 28)).fc3[0].out_features == 512
    assert len(build_model("mlp").layer_names) == 6  # fc1..fc5 + out
    v = build_model("vit", input_shape=(3, 32, 32))
    assert v.embed.proj.kernel_size == (4, 4) and v.embed.proj.out_channels == 512
    assert len([n for n in v.layer_names if n.startswith("block")]) == 6


def test_mlp_uses_inplace_relu():
    m = build_model("mlp", input_shape=(2,), num_classes=2, width=4, depth=2)
    assert any(isinstance(mod, nn.ReLU) and mod.inplace for mod in m.modules())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="6n"):
        build_model("resnet32", depth=30)
    with pytest.raises(ValueError, match="patch"):
        build_model("vit", input_shape=(3, 30, 30), dim=8, heads=2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("lenet5", input_shape=(64,))


def test_split_paper_examples():
    assert module_sizes(55, 4) == [13, 14, 14, 14]
    assert module_sizes(55, 16) == [3] * 9 + [4] * 7
    assert module_sizes(16, 8) == [2] * 8
    r110 = build_model("resnet110", width=2)
    mods = split_into_modules(r110, 4)
    assert [sum(r110.basic_layers[n] for n in mod) for mod in mods] == [13, 14, 14, 14]
    assert mods[0][0] == "stem" and mods[-1][-1] == "out"
    with pytest.raises(ValueError, match="K"):
        split_into_modules(build_model("lenet5"), 6)


@settings(max_examples=200, deadline=None)
@given(L=st.integers(1, 200), data=st.data())
def test_module_sizes_property(L, data):
    K = data.draw(st.integers(1, L))
    sizes = module_sizes(L, K)
    assert len(sizes) == K and sum(sizes) == L
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes)  # earlier modules are the smaller ones


@settings(max_examples=60, deadline=None)
@given(n_layers=st.integers(1, 30), zero_out=st.booleans(), data=st.data())
def test_split_into_modules_property(n_layers, zero_out, data):
    from collections import OrderedDict

    names = [f"l{i}" for i in range(n_layers)] + ["out"]
    net = LayeredNet(OrderedDict((n, nn.Identity()) for n in names), (2,), 2,
                     basic_layers={"out": 0} if zero_out else None)
    total = n_layers + (0 if zero_out else 1)
    K = data.draw(st.integers(1, total))
    mods = split_into_modules(net, K)
    assert [n for mod in mods for n in mod] == names  # order preserved, nothing lost
    counts = [sum(net.basic_layers[n] for n in mod) for mod in mods]
    assert counts == module_sizes(total, K)
