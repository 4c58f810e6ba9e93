"""Diagnostics behind notebook 08's figures: confusion-matrix orders, per-class accuracy, the Grad-CAM layer.

Course tooling: the lesson (top losses, most confused pairs, Grad-CAM itself) is written in
notebook 08 and exported to ``tlhelpers.interpret``; these helpers make its figures readable.
Confusion matrices come from ``sklearn.metrics.confusion_matrix`` (rows = actual class,
columns = predicted class).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix
from torch import nn

from tlhelpers.tools.backbones import get_stages


def normalize_rows(cm) -> np.ndarray:
    """Each row divided by its total (rows without images stay 0): recall on the diagonal (notebook 08)."""
    cm = np.asarray(cm, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)

def per_class_accuracy(targets, preds, classes):
    """Accuracy of each class (its recall), worst first, as a DataFrame indexed by class (notebook 08).

    Columns: ``accuracy`` (NaN for a class without validation images; listed last), ``correct``
    and ``images``. Sorting by accuracy shows at a glance which breeds need more work.
    """
    import pandas as pd

    cm = confusion_matrix(targets, preds, labels=range(len(classes)))
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

def gradcam_layer(model: nn.Module, image_size=None, min_grid: int = 5) -> nn.Module:
    """The module whose output Grad-CAM uses: the end of a late convolutional stage (notebook 08).

    Without ``image_size``: the end of the last stage holding a convolution (``get_stages``):
    ``layer4`` of a ResNet, the ReLU6 after EfficientNet-Lite0's ``_conv_head``, the last conv
    block of a VGG. With ``image_size`` (an int or ``(H, W)``): the last such stage whose output
    grid is still at least ``min_grid`` x ``min_grid`` for images of that size, because a 4 x 4
    heatmap cannot say where anything is. ResNet34 at 224 px: ``layer4`` (7 x 7);
    EfficientNet-Lite0 at 128 px: its last stages are 4 x 4, so ``stage5`` (8 x 8, stride 16).
    If no stage reaches ``min_grid``, the one with the largest grid. Models without a stage
    list: their last ``Conv2d``.
    """
    try:
        stages = get_stages(model)
    except ValueError:  # not a PretrainedClassifier: no stage list
        stages = []
    conv_stages = [modules[-1] for _, modules in stages
                   if any(isinstance(m, nn.Conv2d) for module in modules for m in module.modules())]
    if conv_stages and image_size is None:
        return conv_stages[-1]
    if conv_stages:
        pairs = list(zip(conv_stages, _output_grids(model, conv_stages, image_size)))
        wide_enough = [layer for layer, grid in pairs if min(grid) >= min_grid]
        if wide_enough:
            return wide_enough[-1]
        return max(reversed(pairs), key=lambda pair: min(pair[1]))[0]  # ties: the later stage
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: Grad-CAM needs a convolutional network.")
    return convs[-1]


def _output_grids(model: nn.Module, layers, image_size) -> list[tuple[int, int]]:
    """The (h, w) of each layer's output for one blank image of ``image_size`` (one forward pass)."""
    import torch

    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)[-2:]
    grids: dict[int, tuple[int, int]] = {}
    handles = [layer.register_forward_hook(lambda m, i, out, k=k: grids.__setitem__(k, tuple(out.shape[-2:])))
               for k, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
        with torch.no_grad():
            model(torch.zeros(1, 3, int(height), int(width), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [grids[k] for k in range(len(layers))]
