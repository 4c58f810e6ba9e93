"""Export a trained classifier as one self-describing file, and load it anywhere (notebook 08).

An export holds everything needed to predict in a fresh process: the weights, the backbone
name (to rebuild the architecture), the class names, and the preprocessing (image size,
mean, std). It is a :func:`tlhelpers.train.save_checkpoint` file (atomic write, format tag)
with ``kind="classifier-export"``.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from tlhelpers.models import create_model
from tlhelpers.train import load_checkpoint, save_checkpoint

EXPORT_KIND = "classifier-export"


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a ``PetsModel``-style wrapper (its ``network`` attribute)."""
    return getattr(model, "network", model)


def export_model(path, model: nn.Module, classes, image_size: int, backbone: str | None = None,
                 mean=None, std=None, dropout: float = 0.0, **extra) -> Path:
    """Save weights + class names + preprocessing in one file for :func:`load_exported` (notebook 08)."""
    network = _unwrap(model)
    meta = getattr(network, "tl_meta", {}) or {}
    backbone = backbone or meta.get("backbone")
    if backbone is None:
        raise ValueError("export_model: pass backbone=... (the model has no tl_meta['backbone'] to read it from).")
    mean = tuple(float(m) for m in (mean if mean is not None else meta["mean"]))
    std = tuple(float(s) for s in (std if std is not None else meta["std"]))
    classes = [str(c) for c in classes]
    return save_checkpoint(path, network, kind=EXPORT_KIND, backbone=backbone, classes=classes,
                           num_classes=len(classes), image_size=int(image_size), mean=mean, std=std,
                           dropout=float(dropout), **extra)


#: What every export holds besides the weights (``load_exported`` checks them).
REQUIRED_KEYS = ("backbone", "classes", "num_classes", "image_size", "mean", "std")


def load_exported(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network saved by :func:`export_model`; returns ``(model in eval mode, meta)`` (notebook 08).

    ``meta`` is the file's dict without the weights: ``classes``, ``image_size``, ``mean``, ``std``,
    ``backbone`` and whatever extra values were exported. Raises ``FileNotFoundError`` or
    ``ValueError`` with a message naming ``path`` when it is not an export this code can use.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No exported model at {path}: check the path, or export one with "
                                "tlhelpers.tools.export.export_model (notebooks 06 and 08 do).")
    try:
        ckpt = load_checkpoint(path, map_location=map_location)
    except ValueError as err:
        if err.__cause__ is None:  # a PyTorch file without our format tag: the message says what it is
            raise
        raise ValueError(f"{path} is not an exported model: torch.load(weights_only=True) cannot read it "
                         f"({type(err.__cause__).__name__}). Export models with "
                         "tlhelpers.tools.export.export_model.") from err
    if ckpt.get("kind") != EXPORT_KIND:
        raise ValueError(f"{path} is a training checkpoint, not an exported classifier: it has no class names "
                         "or preprocessing. Export one with tlhelpers.tools.export.export_model(path, model, classes, image_size).")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"{path} is an incomplete export: it lacks {', '.join(missing)}. Export it again "
                         "with tlhelpers.tools.export.export_model.")
    model = create_model(ckpt["backbone"], ckpt["num_classes"], pretrained=False, dropout=ckpt.get("dropout", 0.0))
    try:
        model.load_state_dict(ckpt.pop("state_dict"))
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit a {ckpt['backbone']!r} network with "
                         f"{ckpt['num_classes']} classes ({err}). "
                         "Export it again with tlhelpers.tools.export.export_model.") from err
    model.eval()
    return model, ckpt


def preprocess(meta: dict):
    """The evaluation transform recorded in an export (resize, centre crop, normalise) (notebook 08)."""
    from tlhelpers.pets import eval_transforms

    return eval_transforms(meta["image_size"], mean=meta["mean"], std=meta["std"])
