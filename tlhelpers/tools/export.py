"""Export a trained classifier as one self-describing file, and load it anywhere (notebook 08).

An export holds everything needed to predict in a fresh process: the weights of a
``tlhelpers.training.PretrainedClassifier``, its backbone name (to rebuild the architecture), the
class names and the preprocessing (image size, mean, std). It is written atomically and read
back with ``torch.load(weights_only=True)``: plain values and tensors only, no pickled code.
"""
from __future__ import annotations

import math
import operator
from numbers import Real
from pathlib import Path

import torch

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.tools.fileio import atomic_path
from tlhelpers.training import PretrainedClassifier

EXPORT_KIND = "classifier-export"

#: What every export holds besides the weights (``load_exported`` checks them).
REQUIRED_KEYS = ("backbone", "classes", "image_size", "mean", "std")
#: The image sizes (pixels) an export may record: below 8 the networks have nothing left to see,
#: above 2048 one image is larger than any ImageNet network was trained on by far.
IMAGE_SIZE_RANGE = (8, 2048)


class ExportError(ValueError):
    """An export that cannot be written or used; the message names the file and the field (notebook 08)."""


def _head_weight_key(backbone: str) -> str:
    from tlhelpers.tools.backbones import BACKBONES

    return f"network.{BACKBONES[backbone].head}.weight"


def check_export(meta: dict, path) -> None:
    """``ExportError`` naming ``path`` and the field for any metadata an export cannot have (notebook 08).

    Checked without building the model (a huge class count allocates nothing): ``backbone`` is a
    known name, ``classes`` distinct strings as many as the head's outputs (and ``num_classes``),
    ``image_size`` a whole number in ``IMAGE_SIZE_RANGE``, ``mean`` and ``std`` three finite
    numbers each with every std above 0, and every weight finite.
    """
    from tlhelpers.tools.backbones import BACKBONES

    def bad(field: str, value, must: str) -> ExportError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ExportError(f"{path}: the field {field!r} is {shown} ({type(value).__name__}); it must be {must}. "
                           "Export the model again with tlhelpers.tools.export.export_model.")

    backbone = meta["backbone"]
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise bad("backbone", backbone, f"one of {', '.join(BACKBONES)}")
    classes = meta["classes"]
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", classes, "a non-empty list of class names (strings)")
    if len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})[:5]
        raise bad("classes", classes, f"distinct names, but {', '.join(map(repr, twice))} appear more than once")
    num_classes = meta.get("num_classes", len(classes))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes != len(classes):
        raise bad("num_classes", num_classes, f"the number of class names, {len(classes)}")
    size = meta["image_size"]
    low, high = IMAGE_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        raise bad("image_size", size, f"a whole number of pixels from {low} to {high}")
    for field in ("mean", "std"):
        values = meta[field]
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise bad(field, values, "3 finite numbers, one per colour channel (R, G, B)")
        if field == "std" and not all(v > 0 for v in values):
            raise bad(field, values, "3 numbers above 0 (images are divided by them)")
    weights = meta["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise bad("state_dict", type(weights).__name__, "a dict of tensors (model.state_dict())")
    head = weights.get(_head_weight_key(backbone))
    if head is None or head.ndim != 2:
        raise ExportError(f"{path}: the field 'state_dict' has no {_head_weight_key(backbone)} (the classifier head "
                          f"of a {backbone} PretrainedClassifier). Export the model again with "
                          "tlhelpers.tools.export.export_model.")
    if head.shape[0] != len(classes):
        raise ExportError(f"{path}: the field 'classes' has {len(classes)} names but the model's head has "
                          f"{head.shape[0]} outputs; each output needs its class name. Export the model again with "
                          "tlhelpers.tools.export.export_model.")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ExportError(f"{path}: the weight {name!r} in the field 'state_dict' holds NaN or infinite values: "
                              "the training diverged (a learning rate too high?). Train again with a lower rate.")


def _plain_int(value):
    """A Python int for any integer type (NumPy's too); other values unchanged, for ``check_export`` to refuse."""
    try:
        return value if isinstance(value, bool) else operator.index(value)
    except TypeError:
        return value


def export_model(path, model: PretrainedClassifier, classes, image_size: int, backbone: str | None = None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, **extra) -> Path:
    """Save weights + class names + preprocessing in one file for :func:`load_exported` (notebook 08).

    ``extra`` values (metrics, settings) must be plain Python values or tensors.
    """
    backbone = backbone or getattr(model, "backbone", None)
    if not isinstance(backbone, str):
        raise TypeError(f"export_model: {type(model).__name__} has no backbone name; export a "
                        "tlhelpers.training.PretrainedClassifier, or pass backbone=... .")
    payload = {"kind": EXPORT_KIND, "state_dict": model.state_dict(), "backbone": backbone,
               "pretrained": bool(getattr(model, "pretrained", True)), "classes": [str(c) for c in classes],
               "num_classes": len(classes), "image_size": _plain_int(image_size),
               "mean": [float(m) for m in mean], "std": [float(s) for s in std], **extra}
    check_export(payload, path)  # nothing is written that load_exported would refuse (e.g. NaN weights)
    with atomic_path(path) as part:
        torch.save(payload, part)
    return Path(path)


def load_exported(path, map_location="cpu") -> tuple[PretrainedClassifier, dict]:
    """Rebuild the classifier saved by :func:`export_model`: ``(model in eval mode, meta)`` (notebook 08).

    ``meta`` is the file's dict without the weights. Raises ``FileNotFoundError`` or ``ValueError``
    naming ``path`` (once) when it is not an export this code can use.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No exported model at {path}: check the path, or export one with "
                                "tlhelpers.tools.export.export_model (notebooks 06 and 08 do).")
    how = "Export models with tlhelpers.tools.export.export_model(path, model, classes, image_size)."
    try:
        meta = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds for a file that is not ours
        raise ValueError(f"{path} is not an exported model: torch.load(weights_only=True) cannot read it "
                         f"({type(err).__name__}). {how}") from err
    if isinstance(meta, dict) and meta and all(isinstance(v, torch.Tensor) for v in meta.values()):
        raise ValueError(f"{path} is a bare state_dict (a training checkpoint, e.g. fit_one_cycle's "
                         f"checkpoint=): it has no class names or preprocessing. {how}")
    if not isinstance(meta, dict) or meta.get("kind") != EXPORT_KIND:
        raise ValueError(f"{path} is not an exported model (no kind={EXPORT_KIND!r}). {how}")
    missing = [key for key in (*REQUIRED_KEYS, "state_dict") if key not in meta]
    if missing:
        raise ValueError(f"{path} is an incomplete export: it lacks {', '.join(missing)}. Export it again. {how}")
    check_export(meta, path)  # before the model is built: a wrong class count allocates nothing
    model = PretrainedClassifier(meta["backbone"], len(meta["classes"]), pretrained=False)
    try:
        model.load_state_dict(meta.pop("state_dict"))
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit a {meta['backbone']!r} classifier with "
                         f"{len(meta['classes'])} classes ({err}). {how}") from err
    model.pretrained = meta.get("pretrained", True)  # the BatchNorm rule of the model that was exported
    return model.to(map_location).eval(), meta


def preprocess(meta: dict):
    """The evaluation transform recorded in an export (resize, centre crop, normalise) (notebook 08)."""
    from tlhelpers.pets import eval_transforms

    return eval_transforms(meta["image_size"], mean=meta["mean"], std=meta["std"])
