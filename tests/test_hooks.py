"""Layer selection and forward-hook capture (infoplane.hooks)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from infoplane.hooks import capture, default_layers, list_layers, resolve_layers, split_call_name
from infoplane.models.base import LayeredNet


def _layered() -> LayeredNet:
    return LayeredNet(OrderedDict(fc1=nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True)),
                                  fc2=nn.Sequential(nn.Linear(6, 5), nn.ReLU()),
                                  out=nn.Linear(5, 3)), input_shape=(4,), num_classes=3)


def test_all_selects_top_level_layers_of_layerednet():
    assert resolve_layers(_layered(), "all") == ["fc1", "fc2", "out"]


def test_all_selects_leaves_of_plain_module():
    m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
    assert default_layers(m) == ["0", "1.0", "1.1"]


def test_names_globs_and_order():
    m = _layered()
    assert resolve_layers(m, "out,fc1") == ["fc1", "out"]          # network order, not request order
    assert resolve_layers(m, "fc*.0") == ["fc1.0", "fc2.0"]
    assert resolve_layers(m, ["fc2.1", "fc1"]) == ["fc1", "fc2.1"]
    assert ("fc1.0", "Linear") in list_layers(m)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError) as err:
        resolve_layers(_layered(), "fc1,conv9")
    msg = str(err.value)
    assert "conv9" in msg and "fc1.0" in msg and "out" in msg
    with pytest.raises(ValueError, match="matches no module"):
        resolve_layers(_layered(), "conv*")


def test_capture_survives_inplace_relu():
    torch.manual_seed(0)
    m = _layered()
    x = torch.randn(32, 4)
    with torch.no_grad(), capture(m, "fc1.0,fc1") as acts:
        m(x)
        lin = m.fc1[0](x)
    assert (acts["fc1.0"] < 0).any(), "the in-place ReLU must not have changed the saved Linear output"
    torch.testing.assert_close(acts["fc1.0"], lin)
    torch.testing.assert_close(acts["fc1"], lin.clamp_min(0))


def test_repeated_calls_are_numbered_and_hooks_removed():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.lin(x))

    m = Twice()
    x = torch.randn(5, 3)
    with torch.no_grad(), capture(m, "lin") as acts:
        y = m(x)
        assert list(acts) == ["lin:1", "lin:2"]
        torch.testing.assert_close(acts["lin:1"], m.lin(x))
        torch.testing.assert_close(acts["lin:2"], y)
        m(x[:2])
        assert acts["lin:1"].shape[0] == 2           # cleared and refilled on each forward
    assert not m.lin._forward_hooks and not m._forward_hooks and not m._forward_pre_hooks
    assert split_call_name("lin:2") == ("lin", 2) and split_call_name("a.b") == ("a.b", 1)
