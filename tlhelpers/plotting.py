"""The course's figures: images and batches, training curves, confusion matrices (all notebooks)."""
from __future__ import annotations


# --- training curves ---
# Figures of a training history (notebooks 05-06). A history is the list of per-epoch dicts
# returned by tlhelpers.train.fit / fit_one_cycle; it may start with a bare evaluate() result
# (the "before training" point, plotted at epoch 0) and may join several fits
# (history += fit_one_cycle(...)): epochs are numbered by position, not by each fit's count.


def _history_epochs(history):
    """x positions of history entries: 0 for a leading evaluate() result, then 1, 2, ..."""
    xs, epoch = [], 0
    for entry in history:
        if "train_loss" in entry or "lrs" in entry:
            epoch += 1
        xs.append(epoch)
    return xs


def _metric(history, key):
    return [entry.get(key, float("nan")) for entry in history]


def _new_axes(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_losses(history, ax=None):
    """Training and validation loss per epoch (notebook 05); returns the Axes."""
    ax = _new_axes(ax)
    xs = _history_epochs(history)
    ax.plot(xs, _metric(history, "train_loss"), "-bx", label="training")
    ax.plot(xs, _metric(history, "val_loss"), "-rx", label="validation")
    ax.set(title="Loss vs. number of epochs", xlabel="epoch", ylabel="loss")
    ax.legend()
    return ax


def plot_accuracies(history, ax=None):
    """Validation accuracy per epoch (notebook 05); returns the Axes."""
    ax = _new_axes(ax)
    ax.plot(_history_epochs(history), _metric(history, "val_acc"), "-x")
    ax.set(title="Accuracy vs. number of epochs", xlabel="epoch", ylabel="validation accuracy")
    return ax


def plot_lrs(history, ax=None):
    """The learning rate at every batch step, e.g. the one-cycle schedule (notebook 06); returns the Axes."""
    ax = _new_axes(ax)
    lrs = [lr for entry in history for lr in entry.get("lrs", [])]
    ax.plot(range(1, len(lrs) + 1), lrs)
    ax.set(title="Learning rate vs. batch number", xlabel="batch step", ylabel="learning rate")
    return ax


def plot_lr_find(result, ax=None):
    """Smoothed loss against learning rate (log scale) from ``lr_find``, suggestion marked (notebook 06)."""
    ax = _new_axes(ax)
    lrs, losses, suggestion = result["lrs"], result["losses"], result["suggestion"]
    ax.plot(lrs, losses)
    if lrs:
        i = min(range(len(lrs)), key=lambda j: abs(lrs[j] - suggestion))
        ax.plot([lrs[i]], [losses[i]], "ro", label=f"suggested max_lr ≈ {suggestion:.1e}")
        ax.legend()
    ax.set_xscale("log")
    ax.set(title="Learning rate finder", xlabel="learning rate (log scale)", ylabel="smoothed training loss")
    return ax


def plot_histories(histories, metrics=("val_loss", "val_acc")):
    """Overlay several runs, one panel per metric: ``plot_histories({"frozen": h1, "fine-tuned": h2})`` (notebook 06).

    Returns the Figure (one Axes per metric in ``fig.axes``).
    """
    import matplotlib.pyplot as plt

    labels = {"train_loss": "training loss", "val_loss": "validation loss", "val_acc": "validation accuracy",
              "epoch_time": "seconds per epoch"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, history in histories.items():
            ax.plot(_history_epochs(history), _metric(history, metric), "-x", label=name)
        ax.set(title=f"{labels.get(metric, metric).capitalize()} vs. epoch", xlabel="epoch",
               ylabel=labels.get(metric, metric))
        ax.legend()
    fig.tight_layout()
    return fig


# --- images ---
# Pictures of the data (notebooks 01-03): single images, titled batch grids, sample grids and the
# class-balance bar charts. Tensors come normalised from the transforms; ``denormalize`` undoes it.


def denormalize(images, mean=None, std=None):
    """Undo ``Normalize(mean, std)`` on a (C, H, W) image or a (B, C, H, W) batch; clipped to 0-1 (notebook 02).

    ``mean``/``std`` default to ImageNet's (``tlhelpers.pets.IMAGENET_MEAN``/``IMAGENET_STD``).
    """
    import torch

    from tlhelpers.pets import IMAGENET_MEAN, IMAGENET_STD

    images = torch.as_tensor(images, dtype=torch.float32)
    mean = torch.as_tensor(IMAGENET_MEAN if mean is None else mean, dtype=images.dtype, device=images.device)
    std = torch.as_tensor(IMAGENET_STD if std is None else std, dtype=images.dtype, device=images.device)
    shape = (-1, 1, 1)  # broadcast over (C, H, W) and (B, C, H, W) alike
    return (images * std.reshape(shape) + mean.reshape(shape)).clamp(0, 1)


def _to_hwc(img, mean, std, normalized):
    """A (C, H, W) tensor -> an (H, W, C) NumPy array in 0-1 for ``imshow``."""
    img = denormalize(img, mean, std) if normalized else img.float().clamp(0, 1)
    return img.detach().cpu().permute(1, 2, 0).numpy()


def _label_name(label, classes):
    label = int(label)
    return classes[label] if classes is not None else str(label)


def show_example(img, label, classes=None, mean=None, std=None, normalized=True):
    """One (C, H, W) image tensor with its class name as title and pixel axes (notebook 02); returns the Figure.

    ``normalized=False`` shows a 0-1 tensor as it is (e.g. after ``ToTensor`` only).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(_to_hwc(img, mean, std, normalized))
    ax.set(title=f"{_label_name(label, classes)} (class {int(label)}), {tuple(img.shape)}",
           xlabel="width (pixels)", ylabel="height (pixels)")
    return fig


def show_batch(dl_or_batch, classes=None, mean=None, std=None, n=16, nrow=8, normalized=True,
               title="A batch of images"):
    """The first ``n`` images of a batch, ``nrow`` per row, each titled with its class (notebook 02).

    ``dl_or_batch``: a DataLoader (its first batch is shown) or an ``(images, labels)`` pair.
    ``classes`` defaults to the loader's ``dataset.classes`` when it has one. Returns the Figure.
    """
    import math

    import matplotlib.pyplot as plt

    if isinstance(dl_or_batch, (tuple, list)):
        images, labels = dl_or_batch[0], dl_or_batch[1]
    else:
        images, labels = next(iter(dl_or_batch))
        if classes is None:
            classes = getattr(getattr(dl_or_batch, "dataset", None), "classes", None)
    n = min(n, len(images))
    ncols = min(nrow, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 2.1 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_to_hwc(images[i], mean, std, normalized))
            ax.set_title(_label_name(labels[i], classes), fontsize=8)
    fig.suptitle(f"{title} ({n} of {len(images)}, {tuple(images.shape[1:])} each)")
    fig.tight_layout()
    return fig


def plot_image_grid(paths, titles=None, ncols=8, title="Sample images"):
    """Image files in a grid, titled by file name or ``titles``, at their own sizes (notebook 01); returns the Figure."""
    import math
    from pathlib import Path

    import matplotlib.pyplot as plt

    from tlhelpers.pets import load_rgb

    paths = [Path(p) for p in paths]
    titles = [p.name for p in paths] if titles is None else list(titles)
    ncols = max(1, min(ncols, len(paths)))
    nrows = max(1, math.ceil(len(paths) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(paths):
            img = load_rgb(paths[i])
            ax.imshow(img)
            ax.set_title(f"{titles[i]}\n{img.width}x{img.height}", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_breed_counts(counts, title="Images per breed"):
    """Bar chart of ``{breed: count}``, cats and dogs coloured apart (notebook 02); returns the Figure.

    Cats are the Capitalised breeds (``tlhelpers.pets.is_cat``). Use ``tlhelpers.pets.class_counts``
    to turn targets into counts.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from tlhelpers.pets import is_cat

    names, values = list(counts), list(counts.values())
    colours = ["tab:orange" if is_cat(name) else "tab:blue" for name in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names) + 1), 4))
    ax.bar(range(len(names)), values, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set(title=f"{title} ({sum(values)} images)", xlabel="breed", ylabel="number of images")
    ax.legend(handles=[Patch(color="tab:orange", label="cat"), Patch(color="tab:blue", label="dog")])
    fig.tight_layout()
    return fig


def plot_class_balance(splits, classes, normalize=True, title="Class balance"):
    """Grouped bars per class, one bar per split: ``{"train": targets, "valid": targets}`` (notebook 03).

    With ``normalize=True`` each bar is the class's share of its split (in %), so splits of
    different sizes compare directly: a random split shows uneven bars, a stratified one even bars.
    Returns the Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from tlhelpers.pets import class_counts

    x = np.arange(len(classes))
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) + 1), 4))
    for i, (name, targets) in enumerate(splits.items()):
        counts = np.array(list(class_counts(targets, classes).values()), dtype=float)
        values = 100 * counts / max(1, counts.sum()) if normalize else counts
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width, label=f"{name} ({len(targets)})")
    if normalize and classes:
        ax.axhline(100 / len(classes), color="gray", linestyle="--", linewidth=1, label="perfectly balanced")
    ax.set_xticks(x, classes, rotation=90, fontsize=8)
    ax.set(title=title, xlabel="class",
           ylabel="share of the split (%)" if normalize else "number of images")
    ax.legend()
    fig.tight_layout()
    return fig
