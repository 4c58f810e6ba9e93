"""What did the model learn, and where does it fail? Top losses, confusions, Grad-CAM (notebook 08).

- ``top_losses``            the validation images the model got most wrong (highest cross entropy)
- ``most_confused``         the (actual, predicted) pairs of classes mixed up most often
- ``confusion_matrix``      counts, rows = actual class, columns = predicted class
- ``normalize_rows``        each row divided by its total: "of the actual X, which share went where"
- ``cluster_order``         a class order that puts classes confused with each other side by side
- ``most_confused_classes`` the classes involved in the most errors, to zoom into a big matrix
- ``per_class_accuracy``    accuracy (recall) of every class, worst first
- ``grad_cam``              where in the image the evidence for a class is (Selvaraju et al., 2017)

Predictions come as ``(probs, targets)`` from ``tlhelpers.train.get_predictions``: tensors of
shape ``(N, num_classes)`` and ``(N,)``. The figures for these live in ``tlhelpers.tools.plotting``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlhelpers.models import get_stages, set_frozen_bn_eval

__all__ = [
    "top_losses", "most_confused", "confusion_matrix", "normalize_rows", "cluster_order",
    "most_confused_classes", "per_class_accuracy", "gradcam_layer", "grad_cam",
]


def _as_labels(preds_or_probs) -> torch.Tensor:
    """Predicted class indices from ``(N,)`` indices or ``(N, C)`` probabilities/logits."""
    preds = torch.as_tensor(preds_or_probs)
    return preds.argmax(dim=1) if preds.dim() == 2 else preds.long()


# --- which images and classes go wrong -------------------------------------------------------

def top_losses(probs, targets, k: int | None = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest per-image losses and their indices, largest first (notebook 08).

    The loss of one image is the cross entropy ``-log p(actual class)``: high when the model is
    confidently wrong, near 0 when it is confidently right. ``probs`` are softmax probabilities
    ``(N, C)``; ``k=None`` returns all, sorted. Ties keep the data order.
    """
    probs, targets = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(targets).long()
    p_true = probs.gather(1, targets[:, None]).squeeze(1)
    losses = -torch.log(p_true.clamp_min(1e-12))  # clamp: a probability of exactly 0 would give inf
    order = torch.sort(losses, descending=True, stable=True).indices
    order = order[:k] if k is not None else order
    return losses[order], order


def confusion_matrix(targets, preds_or_probs, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts: row = actual class, column = predicted class (notebook 08)."""
    targets = torch.as_tensor(targets).long()
    preds = _as_labels(preds_or_probs)
    flat = targets * num_classes + preds  # one bin per (actual, predicted) pair
    return torch.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes).numpy()


def normalize_rows(cm) -> np.ndarray:
    """Each row divided by its total (rows without images stay 0): recall on the diagonal (notebook 08)."""
    cm = np.asarray(cm, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def most_confused(targets, preds_or_probs, classes, min_count: int = 1, top: int | None = 10):
    """The (actual, predicted) pairs mixed up most often, as a DataFrame, most errors first (notebook 08).

    Columns: ``actual``, ``predicted``, ``count``, and ``share`` = count / images of the actual
    class (so a rare class with 2 of 3 images wrong ranks its problem fairly). Correct
    predictions are not pairs. Ties are broken by share, then by class names.
    """
    import pandas as pd

    cm = confusion_matrix(targets, preds_or_probs, len(classes))
    share = normalize_rows(cm)
    rows = [(classes[a], classes[p], int(cm[a, p]), float(share[a, p]))
            for a, p in zip(*np.nonzero(cm)) if a != p and cm[a, p] >= min_count]
    rows.sort(key=lambda r: (-r[2], -r[3], r[0], r[1]))
    table = pd.DataFrame(rows[:top] if top is not None else rows, columns=["actual", "predicted", "count", "share"])
    return table


def per_class_accuracy(targets, preds_or_probs, classes):
    """Accuracy of each class (its recall), worst first, as a DataFrame indexed by class (notebook 08).

    Columns: ``accuracy`` (NaN for a class without validation images; listed last), ``correct``
    and ``images``. Sorting by accuracy shows at a glance which breeds need more work.
    """
    import pandas as pd

    cm = confusion_matrix(targets, preds_or_probs, len(classes))
    images = cm.sum(axis=1)
    correct = np.diag(cm)
    accuracy = np.where(images > 0, correct / np.maximum(images, 1), np.nan)
    table = pd.DataFrame({"accuracy": accuracy, "correct": correct, "images": images},
                         index=pd.Index(list(classes), name="class"))
    return table.sort_values(["accuracy", "images"], ascending=[True, False], na_position="last", kind="stable")


def cluster_order(cm) -> list[int]:
    """An order of the classes that puts classes confused with each other next to each other (notebook 08).

    Two classes are "close" when many images of one are predicted as the other, in either
    direction (rows normalised first, so big classes do not dominate). Average-linkage
    hierarchical clustering on ``1 - closeness`` with optimal leaf ordering then gives a
    sequence in which confused classes form blocks along the diagonal of the matrix.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    share = normalize_rows(cm)
    closeness = share + share.T
    np.fill_diagonal(closeness, 0.0)
    n = len(closeness)
    if n < 3 or closeness.max() == 0:  # nothing to cluster: keep the class order
        return list(range(n))
    distance = 1.0 - closeness / closeness.max()
    np.fill_diagonal(distance, 0.0)
    condensed = squareform(distance, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return [int(i) for i in leaves_list(tree)]


def most_confused_classes(cm, n: int = 10) -> list[int]:
    """Indices of (at most) ``n`` classes involved in the most errors, in cluster order (notebook 08).

    Errors are counted in both directions (images of the class predicted as another, and images
    of other classes predicted as it). Use them to zoom into the interesting corner of a big
    confusion matrix: ``cm[np.ix_(idx, idx)]``.
    """
    cm = np.asarray(cm)
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(axis=0) + off.sum(axis=1)
    ranked = [int(i) for i in np.argsort(-errors, kind="stable") if errors[i] > 0][:n]
    if len(ranked) < 3:
        return sorted(ranked)
    sub = cm[np.ix_(ranked, ranked)]
    return [ranked[i] for i in cluster_order(sub)]


# --- Grad-CAM ----------------------------------------------------------------------------------

def gradcam_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM uses: the end of the last convolutional stage (notebook 08).

    For a model from ``tlhelpers.models`` that is the last module of the last stage holding a
    convolution (``get_stages``): ``layer4`` of a ResNet, the 1x1 head conv block of an
    EfficientNet/MobileNet, ``_bn1`` after EfficientNet-Lite0's ``_conv_head`` (the ReLU6 that
    follows is a function call, not a module: ``grad_cam`` applies it in its hook), the last conv
    block of a VGG. Any other model: its last ``Conv2d``.
    """
    try:
        stages = get_stages(model)
    except ValueError:  # not built by tlhelpers.models: no stage list
        stages = []
    for _, modules in reversed(stages):
        if any(isinstance(m, nn.Conv2d) for module in modules for m in module.modules()):
            return modules[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: Grad-CAM needs a convolutional network.")
    return convs[-1]


def _activation_after(layer: nn.Module, model: nn.Module):
    """The activation a model applies to ``layer``'s output as a function call (not a module), or None.

    EfficientNet-Lite0's ``features`` ends with ``F.relu6(self._bn1(...))``: a hook on ``_bn1``
    sees the values *before* the ReLU6. Grad-CAM wants the feature maps the head really uses.
    """
    from tlhelpers.tools.efficientnet_lite import EfficientNetLite0

    for module in model.modules():
        if isinstance(module, EfficientNetLite0) and layer is module._bn1:
            return F.relu6
    return None


def grad_cam(model: nn.Module, images: torch.Tensor, target_classes=None, layer: nn.Module | None = None,
             upsample: bool = True) -> torch.Tensor:
    """Grad-CAM heatmaps, one per image, in 0-1: where the evidence for ``target_classes`` is (notebook 08).

    ``images``: a normalised ``(B, 3, H, W)`` batch (or one ``(3, H, W)`` image).
    ``target_classes``: one class index per image (or one for all); default: the predicted class.
    ``layer``: default ``gradcam_layer(model)``. Returns ``(B, H, W)`` heatmaps, or the feature-map
    size ``(B, h, w)`` with ``upsample=False``, on the CPU. The model is left as it was: hooks
    removed, train/eval mode restored, no ``.grad`` written into its parameters.
    """
    layer = gradcam_layer(model) if layer is None else layer
    activation = _activation_after(layer, model)  # EfficientNet-Lite0's ReLU6, else None
    if images.dim() == 3:
        images = images.unsqueeze(0)
    saved = {}

    def keep_activations(module, inputs, output):  # a forward hook: runs right after `layer`
        if activation is not None:  # applied here so we keep what the head sees (ReLU6 twice = once)
            output = activation(output)
        if not output.requires_grad:  # a frozen backbone: start a graph here, we only need what follows
            output = output.detach().requires_grad_(True)
        saved["activations"] = output  # (B, K, h, w): K feature maps of size h x w
        return output.clone()  # the network goes on with a copy: a later in-place op cannot change ours

    handle = layer.register_forward_hook(keep_activations)
    was_training = model.training
    model.eval()  # dropout off, BatchNorm uses its running statistics
    try:
        with torch.enable_grad():
            device = next(model.parameters()).device
            logits = model(images.to(device))  # (B, num_classes)
            if target_classes is None:
                targets = logits.argmax(dim=1)
            else:
                targets = torch.as_tensor(target_classes, device=device).long().expand(len(images))
            scores = logits.gather(1, targets[:, None]).sum()  # each image's score for its target class
            activations = saved["activations"]
            # d score / d activations. autograd.grad, not backward(): nothing lands in the parameters' .grad
            (gradients,) = torch.autograd.grad(scores, activations)
    finally:
        handle.remove()
        model.train(was_training)
        if was_training:
            set_frozen_bn_eval(model)  # frozen BatchNorm layers stay in eval mode (notebook 04)
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1): how much each map matters
    cam = F.relu((weights * activations).sum(dim=1))   # (B, h, w): keep the evidence *for* the class
    cam = cam.detach()
    if upsample:
        cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = cam.clamp_min(0)  # bilinear interpolation of non-negative values stays >= 0; be exact
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))  # 0-1 per image
    return cam.float().cpu()
