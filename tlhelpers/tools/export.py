"""Export a trained classifier as one self-describing file, and load it anywhere (notebook 08).

An export holds everything needed to predict in a fresh process: the weights of a
``tlhelpers.training.PretrainedClassifier``, its backbone name (to rebuild the architecture), the
class names and the preprocessing (image size, mean, std). It is written atomically and read
back with ``torch.load(weights_only=True)``: plain values and tensors only, no pickled code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.tools.fileio import atomic_path
from tlhelpers.training import PretrainedClassifier

EXPORT_KIND = "classifier-export"

#: What every export holds besides the weights (``load_exported`` checks them).
REQUIRED_KEYS = ("backbone", "classes", "image_size", "mean", "std")


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
               "num_classes": len(classes), "image_size": int(image_size),
               "mean": [float(m) for m in mean], "std": [float(s) for s in std], **extra}
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
