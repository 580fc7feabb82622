"""Networks as researchers bring them (issue 14): other activations, ceil-mode pooling,
several outputs, grayscale input.

Every network is written here and loaded by rfstore as ``tests/test_networks.py:FACTORY``.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from rfstore.cli.app import app
from rfstore.rf.theory import theoretical_receptive_fields
from rfstore.datasets import Preprocessing
from rfstore.models import (
    InputChannelsError,
    LayerSelectionError,
    ModelSpec,
    OutputChoiceError,
    choose_output,
    input_channels,
    named_outputs,
    pick_output,
    select_layers,
)
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext, load_images
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.pipeline.stages.validate import ValidateConfig, run_validate
from rfstore.store import open_store

HERE = Path(__file__).resolve()
SIZE = 12  # every test image is SIZE x SIZE


def spec(factory: str) -> ModelSpec:
    return ModelSpec(f"{HERE}:{factory}", seed=0)


# --------------------------------------------------------------------------- the networks


class PReLUNet(nn.Module):
    """MTCNN-like: PReLU activations, ceil-mode pooling, a tuple of three outputs (scores, box, landmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 6, 3), nn.PReLU(6)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(6, 8, 3), nn.PReLU(8)
        self.head_scores, self.head_box, self.head_marks = nn.Linear(8, 2), nn.Linear(8, 4), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))).mean(dim=(2, 3))
        return self.head_scores(features), self.head_box(features), self.head_marks(features)


class GeluSiluNet(nn.Module):
    """GELU and SiLU activations in a Sequential, a dict output whose scores are not first."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 5, 3), nn.SiLU())
        self.classifier = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.features(x)
        return {"embedding": maps.mean(dim=(2, 3)), "logits": self.classifier(maps.amax(dim=(2, 3)))}


Pair = collections.namedtuple("Pair", ["main", "aux"])


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    saliency: torch.Tensor


class TwoHeadNet(nn.Module):
    """Two outputs of two classes each (a namedtuple), or a dataclass with one."""

    def __init__(self, dataclass_output: bool = False) -> None:
        super().__init__()
        self.dataclass_output = dataclass_output
        self.conv, self.act = nn.Conv2d(3, 4, 3), nn.ELU()
        self.main, self.aux = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> Pair | Prediction:
        maps = self.act(self.conv(x))
        pooled = maps.mean(dim=(2, 3))
        if self.dataclass_output:
            return Prediction(self.main(pooled), maps.sum(dim=1))
        return Pair(self.main(pooled), self.aux(pooled))


class GrayNet(nn.Module):
    """Takes one channel: running it on three fails in its first convolution."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3, 3)
        self.act = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).amax(dim=(2, 3)))


class MixedNet(nn.Module):
    """A ReLU on a map (recordable) and a GELU on a (N, L, D) token tensor (not recordable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 4, 3), nn.ReLU()
        self.mix, self.gelu = nn.Linear(4, 4), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (N, L, D)
        return self.gelu(self.mix(tokens)).mean(dim=1)


class FlatGrayNet(nn.Module):
    """No convolution: a Linear on the flattened 1 x SIZE x SIZE image; only one channel fits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(SIZE * SIZE, 2), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x.flatten(1)))


def prelu_net() -> nn.Module:
    return PReLUNet()


def gelu_silu_net() -> nn.Module:
    return GeluSiluNet()


def namedtuple_net() -> nn.Module:
    return TwoHeadNet()


def dataclass_net() -> nn.Module:
    return TwoHeadNet(dataclass_output=True)


def gray_net() -> nn.Module:
    return GrayNet()


def four_channel_net() -> nn.Module:
    return GrayNet(in_channels=4)


def flat_gray_net() -> nn.Module:
    return FlatGrayNet()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two class folders ``a`` and ``b`` of three random SIZE x SIZE RGB images each."""
    root = tmp_path_factory.mktemp("networks") / "images"
    rng = np.random.default_rng(14)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / label / f"{i}.png")
    return root


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


def initialised(tmp_path: Path, folder: Path, factory: str, **options: object) -> Path:
    store = tmp_path / f"{factory}.zarr"
    with open_store(store, "a") as st:
        run_init(st, InitConfig(model=spec(factory), data=folder, name=factory, **options))
    return store


def _zero_alexnet() -> nn.Module:
    """torchvision's AlexNet with zero weights, built without the slow random initialisation."""
    with torch.device("meta"):
        model = torchvision.models.alexnet(weights=None)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.zero_()
    return model.eval()


# --------------------------------------------------------------------------- 1. default layers, patterns, types


def test_default_layers_are_the_activation_modules() -> None:
    shape = (3, SIZE, SIZE)
    assert select_layers(PReLUNet(), None, shape) == ["prelu1", "prelu2"]
    assert select_layers(GeluSiluNet(), None, shape) == ["features.1", "features.4"]
    assert select_layers(TwoHeadNet(), "", shape) == ["act"]
    assert select_layers(GrayNet(), None, (1, SIZE, SIZE)) == ["act"]
    assert select_layers(FlatGrayNet(), None) == ["act"]  # Tanh
    # only recordable outputs: the GELU acts on (N, L, D) tokens, which no layer group can hold
    assert select_layers(MixedNet(), None) == ["relu", "gelu"]
    assert select_layers(MixedNet(), None, shape) == ["relu"]
    # torchvision AlexNet keeps its selection: five conv ReLUs and the two classifier ReLUs
    relus = ["features.1", "features.4", "features.7", "features.9", "features.11", "classifier.2", "classifier.5"]
    assert select_layers(_zero_alexnet(), None, (3, 64, 64)) == relus
    assert select_layers(_zero_alexnet(), "relu", (3, 64, 64)) == relus


def test_layer_patterns_and_module_types() -> None:
    prelu, shape = PReLUNet(), (3, SIZE, SIZE)
    assert select_layers(prelu, "*prelu*", shape) == ["prelu1", "prelu2"]
    assert select_layers(prelu, "type:PReLU") == ["prelu1", "prelu2"]
    assert select_layers(prelu, "type:prelu", shape) == ["prelu1", "prelu2"]  # types ignore case
    assert select_layers(prelu, "conv2, type:PReLU, conv2", shape) == ["conv2", "prelu1", "prelu2"]
    assert select_layers(prelu, "head_*", shape) == ["head_scores", "head_box", "head_marks"]
    assert select_layers(prelu, "conv?", shape) == ["conv1", "conv2"]
    gelu = GeluSiluNet()
    assert select_layers(gelu, "features.*", shape) == [f"features.{i}" for i in range(5)]
    assert select_layers(gelu, "type:Conv2d,classifier", shape) == ["features.0", "features.3", "classifier"]
    assert select_layers(gelu, "type:SiLU,type:GELU", shape) == ["features.4", "features.1"]
    # a base class selects its subclasses; with shapes known only recordable modules stay
    assert select_layers(MixedNet(), "type:Module", shape) == ["conv", "relu"]
    assert select_layers(MixedNet(), "relu") == ["relu"]  # 'relu' alone: every torch.nn.ReLU, as before


def test_an_empty_selection_lists_the_candidates(tmp_path: Path, folder: Path) -> None:
    shape = (3, SIZE, SIZE)
    with pytest.raises(LayerSelectionError) as info:
        select_layers(PReLUNet(), "type:GELU", shape)
    text = str(info.value)
    assert "'type:GELU' selects no module" in text and "candidates (name, type, output shape)" in text
    for row in (r"prelu1 +PReLU +\(6, 10, 10\)", r"pool1 +MaxPool2d +\(6, 5, 5\)", r"head_box +Linear +\(4,\)"):
        assert any(re.fullmatch(rf" *{row}", line) for line in text.splitlines()), (row, text)
    with pytest.raises(LayerSelectionError, match="'\\*gelu\\*' selects no module that can be recorded"):
        select_layers(MixedNet(), "*gelu*", shape)
    with pytest.raises(LayerSelectionError, match=r"no activation module .*\n +0 +Conv2d +\(2, 12, 12\)"):
        select_layers(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Sigmoid()), None, shape)
    with pytest.raises(LayerSelectionError, match="names no type"):
        select_layers(PReLUNet(), "type:", shape)
    code, out = cli("init", str(tmp_path / "s.zarr"), "--model", f"{HERE}:prelu_net", "--data", str(folder),
                    "--layers", "type:Hardswish")
    assert code == 1 and "'type:Hardswish' selects no module" in out and "prelu2" in out, out
    assert "Traceback" not in out


# --------------------------------------------------------------------------- ceil-mode pooling: theory vs gradient


class CeilPoolNet(nn.Module):
    """PReLU and ceil-mode max pools, the second with padding (PyTorch drops its window that would start
    in the right padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(4, 4, 3, padding=1), nn.PReLU(4)
        self.pool2 = nn.MaxPool2d(2, 2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))


def _linearised(net: CeilPoolNet) -> nn.Module:
    """The same geometry with every unit a positive sum of its whole window: PReLU -> identity,
    max pool -> average pool (ceil mode and padding kept), convolutions all-positive without bias."""
    twin = CeilPoolNet()
    twin.prelu1, twin.prelu2 = nn.Identity(), nn.Identity()
    for name in ("pool1", "pool2"):
        pool = getattr(net, name)
        setattr(twin, name, nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode))
    with torch.no_grad():
        for conv in (twin.conv1, twin.conv2):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    return twin.eval()


def _layer_output(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    hook = net.get_submodule(layer).register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        net(x)
    finally:
        hook.remove()
    return captured[-1]


@pytest.mark.parametrize("size", [12, 14])
def test_ceil_mode_pooling_rf_matches_the_gradient_support(size: int) -> None:
    """Every unit's theoretical RF, clipped to the image, is the support of its input gradient.

    At both sizes pool1's ceil mode adds a last window that hangs over the edge; at 12
    PyTorch also drops pool2's last window, which would start in the right padding.
    """
    net = CeilPoolNet().eval()
    layers = ["prelu1", "pool1", "prelu2", "pool2"]
    rfs = theoretical_receptive_fields(net, layers, (size, size))
    twin = _linearised(net)
    with torch.no_grad():
        shapes = {layer: _layer_output(net, layer, torch.zeros(1, 3, size, size)).shape[-2:] for layer in layers}
    floor_units = nn.MaxPool2d(3, 2)(torch.zeros(1, 1, size - 2, size - 2)).shape[-1]
    assert shapes["pool1"] == (floor_units + 1, floor_units + 1)  # ceil mode's extra window
    overhanging = 0
    for layer in layers:
        units = [(y, x) for y in range(shapes[layer][0]) for x in range(shapes[layer][1])]
        image = torch.ones(len(units), 3, size, size, requires_grad=True)
        output = _layer_output(twin, layer, image)
        assert output.shape[-2:] == shapes[layer]  # the twin pools exactly like the network
        sum(output[b, :, y, x].sum() for b, (y, x) in enumerate(units)).backward()
        for b, (y, x) in enumerate(units):
            support = image.grad[b].sum(0) > 0
            rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
            measured = ((rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item()))
            (y_lo, y_hi), (x_lo, x_hi) = rfs[layer].bounds(y, x)
            overhanging += y_hi > size - 1
            expected = ((max(0, y_lo), min(size - 1, y_hi)), (max(0, x_lo), min(size - 1, x_hi)))
            assert measured == expected, f"{layer} unit {(y, x)}: gradient {measured}, theory {expected}"
    assert overhanging, "no window hangs over the image's edge: the test would not see ceil mode"


# --------------------------------------------------------------------------- 2. input channels


def test_input_channels_come_from_the_model() -> None:
    hw = (SIZE, SIZE)
    assert input_channels(PReLUNet(), hw) == 3
    assert input_channels(GrayNet(), hw) == 1
    assert input_channels(FlatGrayNet(), hw) == 1  # no convolution: three channels fail, one runs
    assert input_channels(GrayNet(), hw, requested=1) == 1
    with pytest.raises(InputChannelsError, match=r"cannot be run on RGB images \(3 channels\) of 12x12 "
                                                 r"\(--channels 3\): RuntimeError"):
        input_channels(GrayNet(), hw, requested=3)
    with pytest.raises(InputChannelsError, match=r"first convolution \(conv\) takes 4 input channels"):
        input_channels(GrayNet(in_channels=4), hw)
    with pytest.raises(InputChannelsError, match="must be 1 .* or 3"):
        input_channels(PReLUNet(), hw, requested=2)
    with pytest.raises(InputChannelsError, match="cannot be run on grayscale or RGB images of 4x4"):
        input_channels(PReLUNet(), (4, 4))  # too small for its convolutions whatever the channels


def test_one_channel_network_end_to_end(tmp_path: Path, folder: Path) -> None:
    store = initialised(tmp_path, folder, "gray_net")
    with open_store(store, "a") as st:
        ctx = NetworkContext.open(st)
        assert ctx.attrs["input_channels"] == 1 and ctx.input_channels == 1
        assert ctx.attrs["preprocessing"]["channels"] == 1 and ctx.preprocessing.channels == 1
        assert ctx.layers == ["act"] and ctx.layer_attrs("act")["output_shape"] == [3, 10, 10]
        assert ctx.layer_attrs("act")["rf_theory_size"] == [3, 3]
        run_activations(ctx, ActivationsConfig(num_workers=0))
        run_topk(ctx, TopKConfig(k=2))
        images = load_images(ctx, [0, 4])
        assert images.shape == (2, 1, SIZE, SIZE) and load_images(ctx, []).shape == (0, 1, SIZE, SIZE)
        path = folder / str(ctx.image_paths()[4])
        gray = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)
        assert torch.equal(images[1, 0], gray)  # PIL 'L', scaled to [0, 1]
        model = ctx.load_model().module
        expected = model.act(model.conv(images)).amax(dim=(2, 3))
        act_max = st.read("gray_net/act/act_max")
        np.testing.assert_allclose(act_max[[0, 4]], expected.numpy(), rtol=1e-6, atol=1e-6)
        assert (st.read("gray_net/act/topk_value")[:, 0] == act_max.max(axis=0)).all()
        from rfstore.results.layers import ImageCache

        pixels = ImageCache(ctx)(4)  # the report's pictures: the grayscale input, drawn gray
        assert pixels.shape == (SIZE, SIZE, 3)
        assert (pixels == np.asarray(Image.open(path).convert("L"))[..., None]).all()
    code, out = cli("status", str(store))
    assert code == 0 and "input 12x12 grayscale" in out, out
    code, out = cli("occlude", str(store), "--size", "3", "--stride", "1", "--device", "cpu")
    assert code == 0, out
    code, out = cli("rf", str(store))
    assert code == 0 and "act" in out, out


def test_a_network_that_cannot_take_rgb_images(tmp_path: Path, folder: Path) -> None:
    init = ["init", str(tmp_path / "s.zarr"), "--data", str(folder)]
    code, out = cli(*init, "--model", f"{HERE}:gray_net", "--channels", "3")
    assert code == 1 and "cannot be run on RGB images (3 channels) of 12x12 (--channels 3)" in out, out
    assert "Traceback" not in out
    code, out = cli(*init, "--model", f"{HERE}:four_channel_net")
    assert code == 1 and "takes 4 input channels" in out and "grayscale (1 channel) or RGB" in out, out
    code, out = cli(*init, "--model", f"{HERE}:gray_net", "--channels", "2")
    assert code == 2 and "--channels: must be 1" in out, out
    code, out = cli(*init, "--model", f"{HERE}:gray_net", "--preprocess", "imagenet")
    assert code == 1 and "takes 1 input channel(s)" in out and "--mean and --std one value each" in out, out
    code, out = cli(*init, "--model", f"{HERE}:gray_net", "--mean", "0.5", "--std", "0.25", "--name", "g")
    assert code == 0, out
    with open_store(tmp_path / "s.zarr", "r") as st:
        ctx = NetworkContext.open(st, "g")
        assert ctx.preprocessing == Preprocessing(None, None, (0.5,), (0.25,), channels=1)
        assert load_images(ctx, [0]).shape == (1, 1, SIZE, SIZE)
    code, out = cli("rf-theory", "--model", f"{HERE}:gray_net", "--input-size", "12")
    assert code == 0 and re.search(r"^act +conv +3 3 +1 1 +1 1$", out, re.M), out
    code, out = cli("rf-theory", "--model", f"{HERE}:gray_net", "--input-size", "12", "--channels", "3")
    assert code == 1 and "cannot be run on RGB images" in out, out


def test_rgb_stores_keep_their_records(tmp_path: Path, folder: Path) -> None:
    store = initialised(tmp_path, folder, "prelu_net")
    with open_store(store, "r") as st:
        ctx = NetworkContext.open(st)
        assert ctx.attrs["input_channels"] == 3 and "channels" not in ctx.attrs["preprocessing"]
        assert load_images(ctx, [1]).shape == (1, 3, SIZE, SIZE)
        ctx.attrs.pop("input_channels")  # a store written before the attr: RGB
        assert ctx.input_channels == 3 and ctx.preprocessing.channels == 3
    one = Preprocessing(None, 8, (0.5,), (0.25,))  # one value normalises every channel
    rgb = Image.fromarray(np.full((8, 8, 3), (255, 0, 51), dtype=np.uint8), "RGB")
    assert torch.allclose(one(rgb)[:, 0, 0], torch.tensor([2.0, -2.0, -1.2]))
    with pytest.raises(ValueError, match="1 value each"):
        Preprocessing(None, None, (0.4, 0.4, 0.4), (1.0, 1.0, 1.0), channels=1)
    assert Preprocessing.from_dict(one.with_channels(1).to_dict()) == one.with_channels(1)


# --------------------------------------------------------------------------- 3. several outputs


def test_named_outputs_and_the_choice_of_class_scores() -> None:
    a, b, c = torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 2, 1, 1)
    assert [label for label, _ in named_outputs(a)] == [""]
    assert [label for label, _ in named_outputs((a, [b, None], {"x": c, "n": 3}))] == ["0", "1.0", "2.x"]
    assert [label for label, _ in named_outputs(Pair(a, b))] == ["main", "aux"]
    assert [label for label, _ in named_outputs(Prediction(a, b))] == ["logits", "saliency"]
    outputs = named_outputs({"box": b, "scores": c})
    assert choose_output(outputs, None, [2]) == "scores"  # a (N, K, 1, 1) head is read as (N, K)
    assert pick_output({"box": b, "scores": c}, "scores").shape == (2, 2)
    assert choose_output(outputs, "0", [2]) == choose_output(outputs, "box", [7]) == "box"
    assert choose_output(named_outputs(a), None, [5]) == ""  # a single output is the scores
    assert choose_output(named_outputs((a, b, torch.zeros(2, 10))), None, [3, 10]) == "2"  # then the next count
    with pytest.raises(OutputChoiceError) as info:
        choose_output(named_outputs(Pair(a, a)), None, [2])
    assert str(info.value) == ("the model returns 2 outputs (main: (N, 2), aux: (N, 2)); several of them "
                               "(main, aux) have 2 classes in the last dimension: choose the class scores with "
                               "--output INDEX|KEY")
    with pytest.raises(OutputChoiceError, match=r"none of them has 3 classes .* --output INDEX\|KEY$"):
        choose_output(named_outputs((a, b)), None, [3])
    with pytest.raises(OutputChoiceError, match=r"--output 'box2' is neither .* returns box: \(N, 4\)"):
        choose_output(outputs, "box2", [2])
    with pytest.raises(OutputChoiceError, match="is not class scores"):
        choose_output(named_outputs(Prediction(a, torch.zeros(2, 5, 5))), "saliency", [2])


def _expected_confusion(ctx: NetworkContext, scores: callable) -> np.ndarray:
    """Folder class x predicted output (then 'other'), computed here from the model and the images."""
    labels = ctx.store.read(f"{ctx.network}/image_label")
    images = load_images(ctx, list(range(len(labels))))
    with torch.no_grad():
        predicted = scores(ctx.load_model().module(images)).argmax(dim=1).numpy()
    confusion = np.zeros((2, 3), dtype=np.int64)
    for label, output in zip(labels, predicted):
        confusion[label, output] += 1
    return confusion


@pytest.mark.parametrize(("factory", "label", "scores"), [
    ("prelu_net", "0", lambda out: out[0]),              # tuple of three; its last Linear gives 10 outputs
    ("gelu_silu_net", "logits", lambda out: out["logits"]),  # dict, the scores second
    ("dataclass_net", "logits", lambda out: out.logits),  # dataclass with a (N, H, W) map beside
])
def test_several_outputs_through_init_activations_and_validate(tmp_path: Path, folder: Path, factory: str,
                                                               label: str, scores: callable) -> None:
    store = initialised(tmp_path, folder, factory)
    with open_store(store, "a") as st:
        ctx = NetworkContext.open(st)
        run_activations(ctx, ActivationsConfig(num_workers=0))
        layer = ctx.layers[-1]
        assert not np.isnan(st.read(f"{factory}/{layer}/act_max")).any()
        report = run_validate(ctx, ValidateConfig(num_workers=0))
        assert report.n_images == 6 and st.attrs(f"{factory}/validation")["output"] == label
        np.testing.assert_array_equal(report.confusion, _expected_confusion(ctx, scores))


def test_validate_output_chooses_among_equal_heads(tmp_path: Path, folder: Path) -> None:
    store = initialised(tmp_path, folder, "namedtuple_net")
    with open_store(store, "a") as st:
        ctx = NetworkContext.open(st)
        with pytest.raises(OutputChoiceError, match=r"main: \(N, 2\), aux: \(N, 2\)"):
            run_validate(ctx, ValidateConfig(num_workers=0))
        report = run_validate(ctx, ValidateConfig(output="1", num_workers=0))  # no --force after the error
        np.testing.assert_array_equal(report.confusion, _expected_confusion(ctx, lambda out: out.aux))
        assert st.attrs("namedtuple_net/validation")["output"] == "aux"
    code, out = cli("validate", str(store), "--workers", "0", "--output", "main", "--class-map", "a=1,b=0", "--force")
    assert code == 0 and "accuracy" in out, out
    code, out = cli("validate", str(store), "--workers", "0", "--force")  # --output left out: the recorded main
    assert code == 0 and "accuracy" in out, out
    with open_store(store, "r") as st:
        assert st.attrs("namedtuple_net/validation")["output"] == "main"
    code, out = cli("validate", str(store), "--workers", "0", "--output", "main", "--class-map", "a=0,b=2")
    assert code == 2 and "outside the network's 2 outputs" in out, out
