"""Tests for rfstore.models: reproducible loading, layer selection, feature capture."""
from __future__ import annotations

import gc
import hashlib
import threading
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from rfstore.models import (
    FeatureExtractor,
    LayerInfo,
    LayerSelectionError,
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    UntrustedPickleError,
    load_model,
    probe_layers,
    select_layers,
)

ALEXNET_RELUS = [
    "features.1", "features.4", "features.7", "features.9", "features.11",
    "classifier.2", "classifier.5",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    )


class _CallCounter:
    """Forward hook counting calls of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    return load_model(ModelSpec("torchvision:alexnet", "none", 0)).module


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return load_model(ModelSpec("torchvision:resnet18", "none", 0)).module


@pytest.fixture()
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(2, 3, 96, 96, generator=generator)


# --------------------------------------------------------------------------- spec


def test_spec_round_trip_and_defaults() -> None:
    spec = ModelSpec("torchvision:alexnet", "DEFAULT", None)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == {
        "spec": "torchvision:alexnet", "weights": "DEFAULT", "seed": None, "trust_pickle": False,
    }
    assert spec.default_name() == "alexnet"
    assert spec.default_preprocessing() == "imagenet"
    cases = {
        "pkg.module:factory": "factory",
        "nets/my_net.py:build": "build",
        "torchscript:/tmp/exported/net_v2.pt": "net_v2",
        "pickle:model.pth": "model",
    }
    for text, name in cases.items():
        other = ModelSpec(text, None, 3, trust_pickle=True)
        assert other.default_name() == name
        assert other.default_preprocessing() == "tensor"
        assert ModelSpec.from_dict(other.to_dict()) == other


@pytest.mark.parametrize("bad", ["alexnet", "torchvision:", "pkg.mod:not-an-identifier", ""])
def test_spec_rejects_malformed(bad: str) -> None:
    with pytest.raises(ModelLoadError, match="torchvision:NAME"):
        ModelSpec(bad, None, None)


def test_spec_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="only the keys"):
        ModelSpec.from_dict({"spec": "torchvision:alexnet", "colour": "red"})


# -------------------------------------------------------------------- torchvision


def test_torchvision_random_init_is_seeded(alexnet: nn.Module) -> None:
    state_before = torch.get_rng_state()
    loaded = load_model(ModelSpec("torchvision:alexnet", "none", 0))
    assert torch.equal(torch.get_rng_state(), state_before)  # caller's RNG untouched
    assert _params_equal(loaded.module, alexnet)
    assert loaded.weights_sha256 is None
    assert loaded.num_classes == 1000
    assert not loaded.module.training
    assert all(not p.requires_grad for p in loaded.module.parameters())
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())

    other = load_model(ModelSpec("torchvision:alexnet", "none", 1)).module
    assert not _params_equal(other, alexnet)


def test_torchvision_seed_is_set_right_before_construction() -> None:
    torch.manual_seed(0)
    manual = torchvision.models.mobilenet_v3_small()
    torch.manual_seed(1)
    manual1 = torchvision.models.mobilenet_v3_small()
    default_seed = load_model(ModelSpec("torchvision:mobilenet_v3_small", None, None)).module
    assert _params_equal(default_seed, manual)  # weights None -> random init, seed 0
    seeded1 = load_model(ModelSpec("torchvision:mobilenet_v3_small", "none", 1)).module
    assert _params_equal(seeded1, manual1)


def test_unknown_torchvision_name_lists_close_matches() -> None:
    with pytest.raises(ModelLoadError, match="alexnet") as info:
        load_model(ModelSpec("torchvision:alexnt", "none", 0))
    assert "close matches" in str(info.value)
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_model(ModelSpec("torchvision:resnet181", "none", 0))


def test_torchvision_unknown_weights_name() -> None:
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1"):
        load_model(ModelSpec("torchvision:alexnet", "IMAGENET9K", None))


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; returns its checkpoints directory."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case set_dir() was used
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert Path(torch.hub.get_dir()) / "checkpoints" == checkpoints
    return checkpoints


def test_offline_pretrained_names_file_and_directory(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = torchvision.models.AlexNet_Weights.DEFAULT.url
    file_name = url.rsplit("/", 1)[-1]
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("torchvision:alexnet", "DEFAULT", None))
    message = str(info.value)
    assert file_name in message
    assert str(torch_home / file_name) in message
    assert url in message and "URLError" in message


def test_cached_pretrained_file_is_used_without_download(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(7)
    substitute = torchvision.models.mobilenet_v3_small()
    cached = torch_home / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(substitute.state_dict(), cached)
    # torch.hub verifies the hash prefix in the file name only while downloading, so
    # this substitute is loaded as is; rfstore records its real hash and warns.
    with pytest.warns(RuntimeWarning, match="hash prefix"):
        loaded = load_model(ModelSpec("torchvision:mobilenet_v3_small", "imagenet1k_v1", None))
    assert _params_equal(loaded.module, substitute)
    assert loaded.weights_sha256 == _sha256(cached)
    assert loaded.num_classes == 1000


def test_torchvision_state_dict_path(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model(ModelSpec("torchvision:mobilenet_v3_small", str(path), None))
    assert _params_equal(loaded.module, source)
    assert loaded.weights_sha256 == _sha256(path)
    assert not loaded.module.training

    torch.manual_seed(5)
    ten_classes = torchvision.models.mobilenet_v3_small(num_classes=10)
    path10 = tmp_path / "ten.pt"
    torch.save(ten_classes.state_dict(), path10)
    loaded10 = load_model(ModelSpec("torchvision:mobilenet_v3_small", str(path10), None))
    assert loaded10.num_classes == 10
    assert _params_equal(loaded10.module, ten_classes)


def test_state_dict_mismatch_lists_keys(tmp_path: Path) -> None:
    torch.manual_seed(5)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    state["surplus.weight"] = torch.zeros(3)
    state["features.0.0.renamed"] = state.pop("features.0.0.weight")
    state["classifier.0.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("torchvision:mobilenet_v3_small", str(path), None))
    message = str(info.value)
    assert "missing keys: features.0.0.weight" in message
    assert "surplus.weight" in message and "features.0.0.renamed" in message
    assert "shape mismatches: classifier.0.bias (7,)" in message


def test_whole_model_as_state_dict_suggests_pickle(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_tiny_net(), path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(f"{tmp_path / 'net.py'}:build", str(path), None))
    (tmp_path / "net.py").write_text(_FACTORY_SOURCE)
    with pytest.raises(ModelLoadError, match="pickle:PATH"):
        load_model(ModelSpec(f"{tmp_path / 'net.py'}:build", str(path), None))


# ----------------------------------------------------------------------- factories

_FACTORY_SOURCE = """
from torch import nn

def build():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    )

def broken():
    raise RuntimeError("cannot build")

NOT_CALLABLE = 3
"""


def test_factory_from_file(tmp_path: Path) -> None:
    source = tmp_path / "my_net.py"
    source.write_text(_FACTORY_SOURCE)
    spec = ModelSpec(f"{source}:build", None, 4)
    first, second = load_model(spec), load_model(spec)
    assert _params_equal(first.module, second.module)
    assert first.weights_sha256 is None and first.num_classes == 5
    assert spec.default_name() == "build" and spec.default_preprocessing() == "tensor"
    torch.manual_seed(4)
    assert _params_equal(first.module, _tiny_net())

    weights = tmp_path / "w.pt"
    torch.manual_seed(9)
    trained = _tiny_net()
    torch.save(trained.state_dict(), weights)
    loaded = load_model(ModelSpec(f"{source}:build", str(weights), None))
    assert _params_equal(loaded.module, trained)
    assert loaded.weights_sha256 == _sha256(weights)

    with pytest.raises(ModelLoadError, match="cannot build"):
        load_model(ModelSpec(f"{source}:broken", None, None))
    with pytest.raises(ModelLoadError, match="not callable"):
        load_model(ModelSpec(f"{source}:NOT_CALLABLE", None, None))
    with pytest.raises(ModelLoadError, match="no attribute 'missing'"):
        load_model(ModelSpec(f"{source}:missing", None, None))


def test_factory_from_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "rfs_test_nets"
    package.mkdir()
    (package / "__init__.py").write_text(_FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model(ModelSpec("rfs_test_nets:build", "none", 4))
    torch.manual_seed(4)
    assert _params_equal(loaded.module, _tiny_net())
    with pytest.raises(ModelLoadError, match="no_such_module_xyz.*ModuleNotFoundError"):
        load_model(ModelSpec("no_such_module_xyz:build", None, None))
    broken = tmp_path / "broken.py"
    broken.write_text("def build(:\n")
    with pytest.raises(ModelLoadError, match="SyntaxError"):
        load_model(ModelSpec(f"{broken}:build", None, None))


# ----------------------------------------------------------- torchscript and pickle


def test_torchscript_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = _tiny_net().eval()
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit.* is deprecated; rfstore still loads it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    loaded = load_model(ModelSpec(f"torchscript:{path}", "ignored", None))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded.module(x), net(x))
    assert loaded.weights_sha256 == _sha256(path)
    assert loaded.num_classes == 5
    assert not loaded.module.training
    assert select_layers(loaded.module, None) == ["1"]
    with pytest.raises(LayerSelectionError, match="eager model"):
        FeatureExtractor(loaded.module, ["1"])
    with pytest.raises(LayerSelectionError, match="eager model"):
        probe_layers(loaded.module, ["1"], (3, 8, 8))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(f"torchscript:{tmp_path / 'missing.pt'}", None, None))
    state_path = tmp_path / "state.pt"
    torch.save(net.state_dict(), state_path)
    with pytest.raises(ModelLoadError, match="could not be loaded as TorchScript"):
        load_model(ModelSpec(f"torchscript:{state_path}", None, None))


def test_pickle_requires_trust(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = _tiny_net()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(UntrustedPickleError) as info:
        load_model(ModelSpec(f"pickle:{path}", None, None))
    assert "arbitrary code" in str(info.value) and "--trust-pickle" in str(info.value)
    assert isinstance(info.value, ModelLoadError)

    loaded = load_model(ModelSpec(f"pickle:{path}", None, None, trust_pickle=True))
    assert _params_equal(loaded.module, net)
    assert loaded.weights_sha256 == _sha256(path)
    assert not loaded.module.training

    state_path = tmp_path / "state.pt"
    torch.save(net.state_dict(), state_path)
    with pytest.raises(ModelLoadError, match="state_dict.*factory"):
        load_model(ModelSpec(f"pickle:{state_path}", None, None, trust_pickle=True))


# ------------------------------------------------------------------ layer selection


def test_select_layers(alexnet: nn.Module, resnet18: nn.Module) -> None:
    assert select_layers(alexnet, None) == ALEXNET_RELUS
    assert select_layers(alexnet, "") == ALEXNET_RELUS
    assert select_layers(alexnet, "relu") == ALEXNET_RELUS
    assert select_layers(alexnet, " features.4, classifier.1,features.4 ") == [
        "features.4", "classifier.1",
    ]
    relus = select_layers(resnet18, None)
    assert relus[0] == "relu" and relus[1:3] == ["layer1.0.relu", "layer1.1.relu"]
    assert len(relus) == 9
    assert select_layers(resnet18, "relu,") == ["relu"]
    assert select_layers(resnet18, "layer3,layer4.1.bn2") == ["layer3", "layer4.1.bn2"]


def test_unknown_layer_lists_near_matches(alexnet: nn.Module) -> None:
    with pytest.raises(LayerSelectionError, match="near matches: features.4"):
        select_layers(alexnet, "features.1,feature.4")
    with pytest.raises(LayerSelectionError, match="top-level modules: features"):
        select_layers(alexnet, "zzz")
    with pytest.raises(LayerSelectionError, match="near matches"):
        FeatureExtractor(alexnet, ["classifer.1"])
    with pytest.raises(LayerSelectionError, match="no activation module"):  # GELU is one since issue 14
        select_layers(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sigmoid()), None)


def test_probe_layers(alexnet: nn.Module) -> None:
    infos = probe_layers(alexnet, ["features.4", "classifier.1"], (3, 96, 96))
    assert infos == [
        LayerInfo("features.4", "conv", 192, (192, 11, 11)),
        LayerInfo("classifier.1", "linear", 4096, (4096,)),
    ]
    assert not alexnet.training
    assert all(not m._forward_hooks for m in alexnet.modules())
    three_d = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(start_dim=2))
    with pytest.raises(LayerSelectionError, match=r"outputs shape \(1, 4, 36\)"):
        probe_layers(three_d, ["1"], (3, 8, 8))


def test_probe_restores_training_flag() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    net.train()
    running = net[1].running_mean.clone()
    probe_layers(net, ["2"], (3, 8, 8))
    assert net.training and net[1].training
    assert torch.equal(net[1].running_mean, running)


# ------------------------------------------------------------------ feature capture


def test_alexnet_capture_matches_manual_forward(alexnet: nn.Module, image: torch.Tensor) -> None:
    with torch.inference_mode():
        manual_conv = alexnet.features[0](image)
        manual_relu = alexnet.features[:2](image)
        flat = torch.flatten(alexnet.avgpool(alexnet.features(image)), 1)
        manual_fc = alexnet.classifier[:2](flat)
    layers = ["features.0", "features.1", "classifier.1"]
    with FeatureExtractor(alexnet, layers) as extractor:
        for _ in range(2):  # first pass counts calls, later passes stop early
            with torch.inference_mode():
                out = extractor(image)
            assert list(out) == layers
            assert torch.equal(out["features.1"], manual_relu)
            assert torch.equal(out["features.0"], manual_conv)
            assert (out["features.0"] < 0).any()  # not rectified by the in-place ReLU
            assert torch.equal(out["classifier.1"], manual_fc)
        assert extractor.call_counts == {name: 1 for name in layers}
    assert all(not m._forward_hooks for m in alexnet.modules())


def test_capture_stops_after_deepest_layer(alexnet: nn.Module, image: torch.Tensor) -> None:
    spies = [_CallCounter(alexnet.features[5]), _CallCounter(alexnet.classifier)]
    try:
        with FeatureExtractor(alexnet, ["features.1", "features.4"]) as extractor:
            with torch.no_grad():
                extractor(image)  # calibration pass runs the whole network once
                for spy in spies:
                    spy.calls = 0
                out = extractor(image)
                extractor(image)
            assert [spy.calls for spy in spies] == [0, 0]
            with torch.no_grad():
                assert torch.equal(out["features.4"], alexnet.features[:5](image))
    finally:
        for spy in spies:
            spy.handle.remove()


def test_hooks_are_inert_outside_capture_and_removed(
    alexnet: nn.Module, image: torch.Tensor
) -> None:
    extractor = FeatureExtractor(alexnet, ["features.4"])
    with torch.no_grad():
        extractor(image)
        assert alexnet(image).shape == (2, 1000)  # direct use runs to the end
    assert len(alexnet.features[4]._forward_hooks) == 1
    del extractor
    gc.collect()
    assert not alexnet.features[4]._forward_hooks
    closed = FeatureExtractor(alexnet, ["features.4"])
    closed.close()
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed(image)


def test_threads_share_an_extractor(alexnet: nn.Module) -> None:
    inputs = [torch.full((1, 3, 96, 96), float(i)) for i in range(4)]
    with torch.no_grad():
        expected = [alexnet.features[:5](x) for x in inputs]
    results: dict[int, torch.Tensor] = {}
    with FeatureExtractor(alexnet, ["features.4"]) as extractor:

        def work(i: int) -> None:
            with torch.no_grad():
                results[i] = extractor(inputs[i])["features.4"]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(torch.equal(results[i], expected[i]) for i in range(4))


def _resnet_stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def test_resnet_container_and_reused_relu(resnet18: nn.Module, image: torch.Tensor) -> None:
    block = resnet18.layer1[0]
    with torch.inference_mode():
        stem = _resnet_stem(resnet18, image)
        manual_layer3 = resnet18.layer3(resnet18.layer2(resnet18.layer1(stem)))
        manual_block = block(stem)
        manual_bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem)))))
    layers = ["layer1.0.relu", "layer1.0.bn2", "layer3"]
    spy = _CallCounter(resnet18.layer4)
    try:
        with FeatureExtractor(resnet18, layers) as extractor:
            for _ in range(2):
                spy.calls = 0
                with torch.inference_mode():
                    out = extractor(image)
                # the reused BasicBlock.relu is recorded at its last call: the block output
                assert torch.equal(out["layer1.0.relu"], manual_block)
                # bn2's output is later modified by `out += identity` and the ReLU
                assert torch.equal(out["layer1.0.bn2"], manual_bn2)
                assert torch.equal(out["layer3"], manual_layer3)
            assert spy.calls == 0  # the second pass stopped after layer3
            assert extractor.call_counts == {"layer1.0.relu": 2, "layer1.0.bn2": 1, "layer3": 1}
    finally:
        spy.handle.remove()


def test_resnet_every_relu_default(resnet18: nn.Module, image: torch.Tensor) -> None:
    layers = select_layers(resnet18, None)
    infos = probe_layers(resnet18, layers, (3, 96, 96))
    assert [info.num_units for info in infos] == [64, 64, 64, 128, 128, 256, 256, 512, 512]
    assert all(info.kind == "conv" for info in infos)
    with FeatureExtractor(resnet18, layers) as extractor, torch.inference_mode():
        extractor(image)
        out = extractor(image)
        assert extractor.call_counts == {name: (1 if name == "relu" else 2) for name in layers}
        assert torch.equal(out["layer4.1.relu"], resnet18.layer4(
            resnet18.layer3(resnet18.layer2(resnet18.layer1(_resnet_stem(resnet18, image))))
        ))


def test_non_tensor_output_and_unused_layer() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.unused = nn.Linear(2, 2)
            self.pair = nn.LSTM(4, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x).flatten(2).transpose(1, 2)
            return self.pair(y)[0]

    net = TwoHeads().eval()
    with pytest.raises(LayerSelectionError, match="did not run"):
        FeatureExtractor(net, ["unused"])(torch.zeros(1, 3, 6, 6))
    with pytest.raises(LayerSelectionError, match="not a tensor"):
        FeatureExtractor(net, ["pair"])(torch.zeros(1, 3, 6, 6))
    assert all(not m._forward_hooks for m in net.modules())


def test_loaded_model_is_frozen_dataclass(alexnet: nn.Module) -> None:
    loaded = LoadedModel(alexnet, None, 1000)
    with pytest.raises(AttributeError):
        loaded.num_classes = 3  # type: ignore[misc]


def test_capture_supports_input_gradients(alexnet: nn.Module, image: torch.Tensor) -> None:
    x = image[:1].clone().requires_grad_(True)
    alexnet.features[:5](x)[0, 3, 4, 5].backward()
    manual = x.grad.clone()
    with FeatureExtractor(alexnet, ["features.0", "features.4"]) as extractor:
        for _ in range(2):
            x.grad = None
            out = extractor(x)
            (out["features.4"][0, 3, 4, 5] + 0 * out["features.0"].sum()).backward()
            assert torch.allclose(x.grad, manual)


class _InplaceAfterCapture(nn.Module):
    """relu's output is captured, then scaled in place: only a copy or an in-hook summary survives."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.tail = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.tail.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        h.mul_(10.0)  # an in-place op after the captured layer
        return self.tail(h)


def test_reduce_summarises_in_the_hook_before_later_inplace_ops() -> None:
    model = _InplaceAfterCapture().eval()
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])  # (1, 1, 2, 2)
    seen: list[str] = []

    def reduce(name: str, out: torch.Tensor) -> torch.Tensor:
        seen.append(name)
        return out.amax(dim=(2, 3))

    with torch.inference_mode():
        with FeatureExtractor(model, ["relu", "tail"], reduce=reduce) as extractor:
            first = extractor(x)  # calibration pass
            second = extractor(x)
        with FeatureExtractor(model, ["relu"]) as plain:
            cloned = plain(x)["relu"]
    # on paper: channel 0 = relu(x) -> max 3; channel 1 = relu(-x) -> max 2; tail = 10 * (sum) -> max 30
    for out in (first, second):
        assert out["relu"].tolist() == [[3.0, 2.0]]
        assert out["tail"].tolist() == [[30.0]]
    assert cloned.amax(dim=(2, 3)).tolist() == [[3.0, 2.0]]
    assert seen == ["relu", "tail", "relu", "tail"]
