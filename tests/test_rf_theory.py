"""Tests of rfstore.rf.theory: published values and an independent gradient measurement."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from rfstore.rf.theory import (
    ReceptiveField,
    ReceptiveFieldError,
    describe_table,
    theoretical_receptive_fields,
)
from rfstore.errors import RfstoreError

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


def _opaque_shift(x: torch.Tensor) -> torch.Tensor:
    return torch.roll(x, 1, dims=3)


torch.fx.wrap("_opaque_shift")  # fx records a call to it without looking inside


def _model(name: str, **kwargs: object) -> nn.Module:
    """A torchvision model with zero weights, built without the (slow) random initialisation.

    Receptive fields depend on the architecture only; the gradient test sets its own weights.
    """
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, **kwargs)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
    return model.eval()


# --------------------------------------------------------------------------- independent measurement


def _linearise(model: nn.Module) -> nn.Module:
    """Make every unit a positive combination of its whole window, in place.

    Convolutions and linear layers get positive constant weights and zero bias, ReLUs become
    identities, max-pools become average pools of the same geometry and batch norm the identity.
    The gradient of a unit with respect to an all-ones input is then nonzero exactly on the
    input pixels its windows reach.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1))
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, _FunctionalConv)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
    return model.eval()


def _probe_units(height: int, width: int) -> list[tuple[int, int]]:
    """Centre, bottom-right corner and top-left corner units."""
    units = [(height // 2, width // 2), (height - 1, width - 1), (0, 0)]
    return list(dict.fromkeys(units))


class _Stop(Exception):
    """Raised by a forward hook to skip the rest of the network."""


def _check_gradient_support(model: nn.Module, layers: Sequence[str], size: tuple[int, int]) -> None:
    """Compare the theoretical bounds, clipped to the image, with the gradient support of probe units."""
    rfs = theoretical_receptive_fields(model, layers, size)
    model = _linearise(model).requires_grad_(False)
    for name in layers:
        captured: list[torch.Tensor] = []

        def stop(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            captured.append(output)
            raise _Stop

        hook = model.get_submodule(name).register_forward_hook(stop)
        image = torch.ones(3, 3, *size, requires_grad=True)
        with pytest.raises(_Stop):
            model(image)
        hook.remove()
        output = captured[0]
        probes = _probe_units(*output.shape[-2:])
        whole = ((0.0, size[0] - 1.0), (0.0, size[1] - 1.0))
        clipped = [tuple((max(0.0, lo), min(n - 1.0, hi)) for (lo, hi), n in zip(rfs[name].bounds(y, x), size))
                   for y, x in probes]
        assert any(c != whole for c in clipped), f"{name}: every probe sees the whole image, nothing to test"
        sum(output[b, :, y, x].sum() for b, (y, x) in enumerate(probes)).backward()
        for b, (y, x) in enumerate(probes):
            support = image.grad[b].abs().sum(0) > 0
            rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
            measured = ((rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item()))
            (y_lo, y_hi), (x_lo, x_hi) = rfs[name].bounds(y, x)
            expected = ((max(0, y_lo), min(size[0] - 1, y_hi)), (max(0, x_lo), min(size[1] - 1, x_hi)))
            assert measured == expected, f"{name} unit {(y, x)}: gradient support {measured}, theory {expected}"


class _FunctionalConv(nn.Module):
    """A convolution written with F.conv2d and F.pad."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6, 2, 3))
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 1, 0)), self.weight, stride=(1, 2), padding=(0, 1))


class _Branches(nn.Module):
    """Two branches with different kernels and offsets, concatenated along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Sequential(nn.ZeroPad2d((2, 0, 2, 0)), nn.Conv2d(4, 4, 3))  # shifted up-left

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class _Residual(nn.Module):
    """x + conv(x) with an even kernel and padding='same' (one more pixel of padding at the end)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 4, padding="same", dilation=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.conv(x))


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, (2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True)


class _Tiny(nn.Module):
    """Asymmetric kernels, strides, paddings and dilations, ceil_mode, merges and functional calls."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 2), dilation=(2, 1))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.branches = _Branches()
        self.mix = nn.Conv2d(8, 6, (2, 3), stride=(2, 1), padding="valid")
        self.residual = _Residual()
        self.fconv = _FunctionalConv()
        self.fpool = _Pool()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(self.mix(self.branches(x)))
        x = self.fpool(self.fconv(self.residual(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


TINY_LAYERS = ["stem", "pool", "branches", "branches.b", "mix", "residual", "fconv", "fpool", "gap"]


# --------------------------------------------------------------------------- published values


def test_alexnet_matches_published_values() -> None:
    layers = ["features.1", "features.2", "features.4", "features.5", "features.7", "features.9",
              "features.11", "features.12"]
    rfs = theoretical_receptive_fields(_model("alexnet"), layers, (224, 224))
    expected = {  # size, jump, start (Araujo et al., Distill 2019)
        "features.1": (11, 4, 3), "features.2": (19, 8, 7), "features.4": (51, 8, 7),
        "features.5": (67, 16, 15), "features.7": (99, 16, 15), "features.9": (131, 16, 15),
        "features.11": (163, 16, 15), "features.12": (195, 32, 31),
    }
    for name, (size, jump, start) in expected.items():
        assert rfs[name] == ReceptiveField((size, size), (jump, jump), (start, start), "conv"), name


def test_vgg16_matches_published_values() -> None:
    rfs = theoretical_receptive_fields(_model("vgg16"), ["features.29", "features.30"], (224, 224))
    assert rfs["features.29"] == ReceptiveField((196, 196), (16, 16), (7.5, 7.5), "conv")  # conv5_3
    assert rfs["features.30"] == ReceptiveField((212, 212), (32, 32), (15.5, 15.5), "conv")  # pool5


def test_inception_v3_matches_published_value() -> None:
    """1311 in Araujo et al.; exercises functional pools, 1x7/7x1 kernels and concatenations."""
    model = _model("inception_v3", aux_logits=False, init_weights=False)
    rfs = theoretical_receptive_fields(model, ["Mixed_7c"], (299, 299))
    assert rfs["Mixed_7c"].size == (1311, 1311)
    assert rfs["Mixed_7c"].jump == (32, 32)


def test_resnet18_layers() -> None:
    layers = ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    rfs = theoretical_receptive_fields(_model("resnet18"), layers, (224, 224))
    assert [rfs[n].size[0] for n in layers] == [7, 11, 43, 99, 211, 435]
    assert [rfs[n].jump[0] for n in layers] == [2, 4, 4, 8, 16, 32]
    assert all(rfs[n].start == (0.0, 0.0) for n in layers)


def test_resnet50_stride_placement_explains_published_483() -> None:
    """Araujo et al. report 483 for ResNet-50, whose (original, TF-slim) blocks downsample in the
    first 1x1 convolution. torchvision ("ResNet v1.5") downsamples in the 3x3 convolution instead,
    so the following 3x3 convolutions of each first block grow the field at the finer jump: 427."""
    layers = ["layer1", "layer2", "layer3", "layer4"]
    model = _model("resnet50")
    rfs = theoretical_receptive_fields(model, layers, (224, 224))
    assert [rfs[n].size[0] for n in layers] == [35, 91, 267, 427]
    for stage in (model.layer2, model.layer3, model.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    rfs = theoretical_receptive_fields(model, layers, (224, 224))
    assert [rfs[n].size[0] for n in layers] == [35, 99, 291, 483]
    assert rfs["layer4"].jump == (32, 32)


def test_linear_layers_see_the_whole_input() -> None:
    rfs = theoretical_receptive_fields(_model("alexnet"), ["classifier.1", "avgpool", ""], (224, 224))
    assert rfs["classifier.1"] == ReceptiveField((224, 224), (224, 224), (111.5, 111.5), "linear")
    assert rfs[""] == rfs["classifier.1"]
    assert rfs["classifier.1"].bounds(0, 0) == ((0.0, 223.0), (0.0, 223.0))
    assert rfs["classifier.1"].bounds(3, 7) == rfs["classifier.1"].bounds(0, 0)
    assert rfs["avgpool"] == ReceptiveField((195, 195), (32, 32), (31.0, 31.0), "conv")  # 6x6 -> 6x6
    rfs = theoretical_receptive_fields(_model("resnet18"), ["fc"], (224, 200))
    assert rfs["fc"] == ReceptiveField((224, 200), (224, 200), (111.5, 99.5), "linear")


def test_global_pool_is_still_conv() -> None:
    rfs = theoretical_receptive_fields(_model("resnet18"), ["avgpool", "fc"], (224, 224))
    assert rfs["avgpool"] == ReceptiveField((627, 627), (224, 224), (96.0, 96.0), "conv")
    assert rfs["fc"].kind == "linear"


def test_adaptive_pool_identity_and_divisible() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d((10, 5)), nn.AdaptiveMaxPool2d((5, 5)),
                          nn.AdaptiveAvgPool2d(5))
    rfs = theoretical_receptive_fields(model, ["0", "1", "2", "3"], (12, 12))  # conv output 10x10
    assert rfs["0"] == ReceptiveField((3, 3), (1, 1), (1.0, 1.0), "conv")
    assert rfs["1"] == ReceptiveField((3, 4), (1, 2), (1.0, 1.5), "conv")  # x: 10 -> 5, a 2-wide pool
    assert rfs["2"] == ReceptiveField((4, 4), (2, 2), (1.5, 1.5), "conv")  # y: 10 -> 5
    assert rfs["3"] == rfs["2"]  # 5x5 -> 5x5 is the identity


# --------------------------------------------------------------------------- gradient support


def test_gradient_support_alexnet() -> None:
    layers = ["features.0", "features.2", "features.5", "features.9", "features.12"]
    _check_gradient_support(_model("alexnet"), layers, (224, 224))


def test_gradient_support_vgg16() -> None:
    # conv5_3 (196 pixels) would see all of a 64-pixel image from every unit: nothing to test there.
    layers = ["features.3", "features.4", "features.9", "features.16", "features.23"]
    _check_gradient_support(_model("vgg16"), layers, (64, 64))


def test_gradient_support_resnet18() -> None:
    layers = ["maxpool", "layer1", "layer2.0", "layer3", "layer4"]
    _check_gradient_support(_model("resnet18"), layers, (224, 224))


def test_gradient_support_tiny_custom_net() -> None:
    # Not "stem": its y dilation leaves holes, so the first in-image pixel of a border unit's
    # window (row 0) is skipped and the support starts at row 1; the later pool fills the holes.
    # Not "gap" either: a global pool sees the whole image, which leaves nothing to compare.
    _check_gradient_support(_Tiny().eval(), TINY_LAYERS[1:-1], (41, 53))


def test_tiny_custom_net_values() -> None:
    rfs = theoretical_receptive_fields(_Tiny(), TINY_LAYERS, (41, 53))
    # stem: y kernel 3 dilation 2 -> 5, pad 1; x kernel 5 stride 2 pad 2.
    assert rfs["stem"] == ReceptiveField((5, 5), (1, 2), (1.0, 0.0), "conv")
    assert rfs["pool"] == ReceptiveField((7, 9), (2, 4), (1.0, 0.0), "conv")
    # branch a: 3x3 centred (+2 jumps); branch b: shifted one jump up-left; union spans 3 jumps more.
    assert rfs["branches.b"] == ReceptiveField((11, 17), (2, 4), (-1.0, -4.0), "conv")
    assert rfs["branches"] == ReceptiveField((13, 21), (2, 4), (0.0, -2.0), "conv")


def test_ceil_mode_adds_the_last_window() -> None:
    floor = theoretical_receptive_fields(nn.Sequential(nn.MaxPool2d(3, 2)), ["0"], (10, 10))
    ceil = theoretical_receptive_fields(nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True)), ["0"], (10, 10))
    assert floor == ceil  # same recurrence, only the number of units differs (4 vs 5)
    assert ceil["0"].bounds(4, 4) == ((8.0, 10.0), (8.0, 10.0))  # last window hangs over the edge


def test_channels_last_detour_is_followed() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc, self.b = nn.Conv2d(3, 4, 3), nn.Linear(4, 4), nn.Conv2d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.fc(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.b(x)

    rfs = theoretical_receptive_fields(Block(), ["fc", "b"], (16, 16))
    assert rfs["fc"] == ReceptiveField((3, 3), (1, 1), (1.0, 1.0), "conv")
    assert rfs["b"] == ReceptiveField((5, 5), (1, 1), (2.0, 2.0), "conv")


def test_functional_pools_and_reductions() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool, self.keep, self.drop = nn.Identity(), nn.Identity(), nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(F.max_pool2d(x, (3, 2), stride=2, padding=1, dilation=(2, 1), ceil_mode=True))
            self.keep(x.mean((2, 3), keepdim=True))
            return self.drop(torch.softmax(x, dim=1).amax((2, 3)))

    rfs = theoretical_receptive_fields(Functional(), ["pool", "keep", "drop"], (15, 16))
    assert rfs["pool"] == ReceptiveField((5, 2), (2, 2), (1.0, -0.5), "conv")
    assert rfs["keep"] == ReceptiveField((17, 18), (14, 18), (7.0, 7.5), "conv")  # 7x9 map pooled to 1x1
    assert rfs["drop"] == ReceptiveField((15, 16), (15, 16), (7.0, 7.5), "linear")


# --------------------------------------------------------------------------- errors


def _raises(model: nn.Module, layer: str, size: tuple[int, int], *fragments: str) -> str:
    with pytest.raises(ReceptiveFieldError) as info:
        theoretical_receptive_fields(model, [layer], size)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_non_divisible_adaptive_pool_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 2))
    _raises(model, "1", (12, 12), "module '1'", "AdaptiveAvgPool2d", "10x10 to 4x4", "not a multiple")
    _raises(model, "3", (12, 12), "module '1'")  # everything downstream is refused too
    assert theoretical_receptive_fields(model, ["0"], (12, 12))["0"].size == (3, 3)  # upstream is fine


def test_unknown_spatial_module_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    _raises(model, "2", (12, 12), "module '1'", "Upsample")


def test_unknown_function_changing_size_is_named() -> None:
    class Crop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:, :]

    _raises(nn.Sequential(Crop()), "0", (12, 12), "getitem", "12x12 to 11x12")


def test_merge_with_different_jumps_is_refused() -> None:
    class TwoStrides(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 4, 1, stride=4, padding=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)  # both 4x4 from an 8x8 input

    _raises(TwoStrides(), "", (8, 8), "add", "different jumps")


def test_broadcast_gate_is_refused() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(F.adaptive_avg_pool2d(self.conv(x), 1))

    _raises(Gate(), "", (8, 8), "mul", "8x8, 1x1", "broadcasting")


def test_untraceable_model_reports_tracer_reason() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    message = _raises(Branchy(), "", (8, 8), "Branchy", "torch.fx")
    assert "TraceError" in message or "symbolically traced" in message


@pytest.mark.parametrize(("layer", "fragment"), [("nope", "no module named 'nope'"),
                                                 ("b", "called 2 times"), ("alias", "called 2 times"),
                                                 ("unused", "never called")])
def test_bad_layer_names(layer: str, fragment: str) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(self.b(x)))

    model = Twice()
    model.register_module("alias", model.b)
    model.register_module("unused", nn.Conv2d(3, 3, 1))
    assert theoretical_receptive_fields(model, ["a"], (8, 8))["a"].size == (3, 3)
    _raises(model, layer, (8, 8), fragment)


def test_opaque_and_spatial_operations_are_refused() -> None:
    class Opaque(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _opaque_shift(x)

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x, dim=-1)

    _raises(Opaque(), "", (8, 8), "_opaque_shift", "did not trace into")
    _raises(Attention(), "", (8, 8), "softmax", "spatial dimension")


def test_swapped_spatial_axes_are_refused() -> None:
    class Swap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.transpose(2, 3))

    _raises(Swap(), "conv", (8, 8), "module 'conv'", "not its last two dimensions")


def test_error_is_an_rfstore_error() -> None:
    assert issubclass(ReceptiveFieldError, ValueError)
    assert issubclass(ReceptiveFieldError, RfstoreError)


# --------------------------------------------------------------------------- value object and table


def test_receptive_field_methods() -> None:
    rf = ReceptiveField((4, 3), (2, 8), (0.5, -1.0), "conv")
    assert rf.centre(0, 0) == (0.5, -1.0)
    assert rf.centre(3, 2) == (6.5, 15.0)
    assert rf.bounds(3, 2) == ((5.0, 8.0), (14.0, 16.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rf.size = (1, 1)  # type: ignore[misc]


def test_model_state_is_left_alone() -> None:
    model = _model("resnet18").train()
    model.layer1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theoretical_receptive_fields(model, ["layer1"], (64, 64))
    assert model.training and not model.layer1.training and model.layer2.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_describe_table() -> None:
    rfs = theoretical_receptive_fields(_model("alexnet"), ["features.1", "features.12", "classifier.1"],
                                       (224, 224))
    table = describe_table(rfs)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"]
    assert lines[2].split() == ["features.1", "conv", "11", "11", "4", "4", "3", "3"]
    assert lines[4].split() == ["classifier.1", "linear", "224", "224", "224", "224", "111.5", "111.5"]
    assert len(lines) == 5
    assert describe_table({}).splitlines()[0].startswith("layer")
