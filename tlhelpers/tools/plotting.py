"""The course's figures: images, training curves, confusion matrices (all notebooks).

The lesson's own figures (``show_batch``) and ``denormalize`` live in ``tlhelpers.pets`` (notebook 02).
"""
from __future__ import annotations

#: Figures are drawn at 100 dpi (the notebooks' setup cell). JupyterLab shows an output at most
#: about 830 px wide (a 1280 px window with the file browser open) and shrinks wider figures,
#: text included: figures meant for the notebooks stay within this width and use fonts of at
#: least ``MIN_FONT_PT`` points, i.e. 10 px (tests/test_plotting.py checks both).
MAX_WIDTH_IN = 8.3
MIN_FONT_PT = 7.5


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` with each line wrapped to fit ``width_in`` inches at ``fontsize`` points."""
    import textwrap

    chars = max(8, int(width_in * 72 / (0.6 * fontsize)))  # a DejaVu Sans character: ~0.6 em wide at most
    return "\n".join(textwrap.fill(line, chars) for line in str(text).split("\n"))


# --- training curves ---
# Figures of a training history (notebooks 05-06). A history is the list of per-epoch dicts
# returned by tlhelpers.training.fit / tlhelpers.finetune.fit_one_cycle; it may start with a bare
# evaluate() result (the "before training" point, plotted at epoch 0) and may join several fits
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


def _integer_epochs(ax):
    """Ticks only at whole epochs (matplotlib would also mark 0.25, 0.5, ... for short runs)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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
    _integer_epochs(ax)
    ax.legend()
    return ax


def plot_accuracies(history, ax=None):
    """Validation accuracy per epoch (notebook 05); returns the Axes."""
    ax = _new_axes(ax)
    ax.plot(_history_epochs(history), _metric(history, "val_acc"), "-x")
    ax.set(title="Accuracy vs. number of epochs", xlabel="epoch", ylabel="validation accuracy")
    _integer_epochs(ax)
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
    lrs, losses, suggestion = result.lrs, result.losses, result.suggestion
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

    The panels share one legend, below them; the figure fits a notebook's width (``MAX_WIDTH_IN``),
    so its text is not shrunk. Returns the Figure (one Axes per metric in ``fig.axes``).
    """
    import matplotlib.pyplot as plt

    labels = {"train_loss": "training loss", "val_loss": "validation loss", "val_acc": "validation accuracy",
              "epoch_time": "seconds per epoch"}
    width = min(MAX_WIDTH_IN, 4.2 * len(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, history in histories.items():
            ax.plot(_history_epochs(history), _metric(history, metric), "-x", label=name)
        ax.set(title=labels.get(metric, metric).capitalize(), xlabel="epoch", ylabel=labels.get(metric, metric))
        _integer_epochs(ax)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room for the legend below the panels
    return fig


# --- images ---
# Pictures of the data (notebooks 01-03): single images, sample grids and the class-balance bar
# charts. Tensors come normalised from the transforms; ``tlhelpers.pets.denormalize`` undoes it.


def _to_hwc(img, mean, std, normalized):
    """A (C, H, W) tensor -> an (H, W, C) NumPy array in 0-1 for ``imshow``; mean/std None: ImageNet's."""
    from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
    from tlhelpers.pets import denormalize

    if normalized:
        img = denormalize(img, IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std)
    else:
        img = img.detach().float().cpu().clamp(0, 1)
    return img.permute(1, 2, 0).numpy()


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


def plot_image_grid(paths, titles=None, ncols=8, title="Sample images"):
    """Image files in a grid, titled by file name or ``titles``, at their own sizes (notebook 01); returns the Figure."""
    import math
    from pathlib import Path

    import matplotlib.pyplot as plt

    from tlhelpers.tools.images import load_rgb

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

    Cats are the Capitalised breeds (``tlhelpers.pets.is_cat``).
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

    x = np.arange(len(classes))
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) + 1), 4))
    for i, (name, targets) in enumerate(splits.items()):
        counts = np.bincount(np.asarray(targets, dtype=int), minlength=len(classes)).astype(float)
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


# --- interpretation ---
# Figures of notebook 08: the worst predictions, a confusion matrix that stays readable with 37
# classes, accuracy per class, Grad-CAM heatmaps and the top-k bars of one prediction. The
# numbers behind them come from tlhelpers.interpret and tlhelpers.tools.predict.


def readable_class_name(name) -> str:
    """``"american_pit_bull_terrier"`` -> ``"american pit bull terrier"``; cats keep their capitals (notebook 08)."""
    return str(name).replace("_", " ")


def _species_colour(name):
    from tlhelpers.pets import is_cat

    return "tab:orange" if is_cat(str(name)) else "tab:blue"


def plot_top_losses(dataset, probs, targets, indices, classes, mean=None, std=None, ncols=4,
                    title="Top losses: the validation images the model got most wrong"):
    """The images at ``indices`` titled actual / predicted (probability) / loss (notebook 08); returns the Figure.

    ``dataset[i]`` must give the normalised image tensor the model saw (the validation transform);
    ``probs``/``targets`` are indexed like ``dataset`` (from ``tlhelpers.training.get_predictions``).
    """
    import math

    import matplotlib.pyplot as plt
    import torch

    probs, targets = torch.as_tensor(probs), torch.as_tensor(targets)
    indices = [int(i) for i in indices]
    ncols = max(1, min(ncols, len(indices)))
    nrows = max(1, math.ceil(len(indices) / ncols))
    column = MAX_WIDTH_IN / ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(MAX_WIDTH_IN, (column + 1.1) * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        actual, predicted = int(targets[i]), int(probs[i].argmax())
        p_actual = float(probs[i, actual])
        ax.imshow(_to_hwc(dataset[i][0], mean, std, True))
        caption = (f"actual: {readable_class_name(classes[actual])}\n"
                   f"predicted: {readable_class_name(classes[predicted])} ({float(probs[i, predicted]):.2f})\n"
                   f"loss {-math.log(max(p_actual, 1e-12)):.2f}, p(actual) {p_actual:.2f}")
        ax.set_title(_wrap(caption, column, 8), fontsize=8, color="black" if actual == predicted else "firebrick")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_confusion(cm, classes, order=None, normalize=True, annotate=None, ax=None,
                         title="Confusion matrix"):
    """A confusion matrix that stays readable with many classes (notebook 08); returns the Axes.

    - ``normalize=True`` divides each row by its total: the colour is the share of the actual
      class's images that went to each prediction (the diagonal is per-class accuracy), so rare
      and common classes are on the same 0-1 scale.
    - ``order``: class indices to show, in that order (``tlhelpers.interpret.cluster_order`` puts
      confused classes next to each other; ``most_confused_classes`` picks a subset to zoom in).
    - ``annotate``: write the counts in the cells (default: only when 15 classes or fewer).
    Tick labels use readable names, cats in orange and dogs in blue.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from tlhelpers.tools.diagnostics import normalize_rows

    cm = np.asarray(cm)
    order = list(range(len(cm))) if order is None else [int(i) for i in order]
    counts = cm[np.ix_(order, order)]
    values = normalize_rows(cm)[np.ix_(order, order)] if normalize else counts
    names = [readable_class_name(classes[i]) for i in order]
    n = len(order)
    annotate = n <= 15 if annotate is None else annotate
    if ax is None:  # at most a notebook's width, and shorter than a laptop screen: no scrolling
        side = min(7.0, max(4.5, 0.14 * n + 2.5))
        _, ax = plt.subplots(figsize=(min(MAX_WIDTH_IN, side + 1.5), side), layout="constrained")
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, values.max()))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                       label="share of the actual class" if normalize else "images")
    fontsize = 9 if n <= 20 else MIN_FONT_PT
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    for label, i in zip(ax.get_xticklabels() + ax.get_yticklabels(), order + order):
        label.set_color(_species_colour(classes[i]))
    ax.grid(False)
    if annotate:
        for r in range(n):
            for c in range(n):
                if counts[r, c]:
                    ax.text(c, r, int(counts[r, c]), ha="center", va="center", fontsize=fontsize,
                            color="white" if values[r, c] > 0.6 * (1 if normalize else values.max()) else "black")
    ax.set(title=title, xlabel="predicted breed", ylabel="actual breed")
    return ax


def plot_per_class_accuracy(table, title="Accuracy per breed, worst first"):
    """Horizontal bars of ``interpret.per_class_accuracy``'s table, worst at the top (notebook 08); returns the Figure.

    Each label shows how many validation images the accuracy rests on; the dashed line is the
    overall accuracy. Cats orange, dogs blue.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    table = table.dropna(subset=["accuracy"])
    names = [f"{readable_class_name(name)} ({int(n)})" for name, n in zip(table.index, table["images"])]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.19 * len(table) + 1.2)))
    ax.barh(range(len(table)), 100 * table["accuracy"], color=[_species_colour(c) for c in table.index])
    ax.set_yticks(range(len(table)), names, fontsize=MIN_FONT_PT if len(table) > 20 else 9)
    ax.invert_yaxis()  # worst first, at the top
    overall = 100 * table["correct"].sum() / max(1, table["images"].sum())
    ax.axvline(overall, color="gray", linestyle="--", linewidth=1)
    ax.set_xlim(0, 100)
    ax.set(title=title, xlabel="accuracy on the validation images (%)", ylabel="breed (validation images)")
    ax.legend(handles=[Patch(color="tab:orange", label="cat"), Patch(color="tab:blue", label="dog"),
                       plt.Line2D([], [], color="gray", linestyle="--", label=f"overall {overall:.0f}%")],
              loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_gradcam(images, heatmaps, titles=None, mean=None, std=None, alpha=0.5,
                 title="Grad-CAM: where the evidence for the class is", ncols=3):
    """Each image above its Grad-CAM heatmap overlaid on it, ``ncols`` images a row (notebook 08); returns the Figure.

    ``images``: normalised ``(B, 3, H, W)``; ``heatmaps``: ``(B, H, W)`` in 0-1 from
    ``tlhelpers.interpret.grad_cam``. Red = strong evidence, blue = none; an all-zero heatmap
    (every position counts against the class) is labelled "no positive evidence". Titles are
    wrapped to their column, so neighbours never run into each other.
    """
    import math

    import matplotlib.pyplot as plt

    n = len(images)
    titles = list(titles) if titles is not None else [""] * n
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    column = min(2.6, (MAX_WIDTH_IN - 0.8) / ncols)  # 0.8 in: the colour bar
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(column * ncols + 0.8, (2 * column + 0.8) * nrows + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    overlay = None
    for j in range(n):
        top, bottom = axes[2 * (j // ncols), j % ncols], axes[2 * (j // ncols) + 1, j % ncols]
        picture = _to_hwc(images[j], mean, std, True)
        top.imshow(picture)
        top.set_title(_wrap(titles[j], column, 9), fontsize=9)
        bottom.imshow(picture)
        heatmap = heatmaps[j].detach().cpu().numpy()
        overlay = bottom.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
        if heatmap.max() <= 0:  # every position counts against the class: say so, not just "blue"
            bottom.text(0.5, 0.5, "no positive\nevidence", transform=bottom.transAxes, ha="center",
                        va="center", fontsize=9, color="white", fontweight="bold")
        for ax in (top, bottom):
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        if j % ncols == 0:
            top.set_ylabel("image")
            bottom.set_ylabel("Grad-CAM overlay")
    fig.colorbar(overlay, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="evidence (0-1)")
    fig.suptitle(_wrap(title, MAX_WIDTH_IN, 11))
    return fig


def plot_top_k(image, top, title="Prediction", actual=None):
    """An image beside the bar chart of its top-k classes and probabilities (notebook 08); returns the Figure.

    ``image``: a PIL image or an (H, W, 3) array; ``top``: ``[(class, probability), ...]`` most
    likely first (``tlhelpers.tools.predict.Prediction.top``). ``actual``: the true class, if known
    (its bar is drawn green). Cats orange, dogs blue; a legend says so.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = [readable_class_name(name) for name, _ in top]
    probs = [100 * p for _, p in top]
    colours = ["tab:green" if actual is not None and name == actual else _species_colour(name) for name, _ in top]
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(MAX_WIDTH_IN, 3.4), gridspec_kw={"width_ratios": [1, 1.4]})
    ax_img.imshow(image)
    ax_img.set(xlabel="width (pixels)", ylabel="height (pixels)",
               title=f"actual: {readable_class_name(actual)}" if actual is not None else "input image")
    ax_img.grid(False)
    ax_bar.barh(range(len(top)), probs, color=colours)
    ax_bar.set_yticks(range(len(top)), names)
    ax_bar.invert_yaxis()  # most likely on top
    for y, p in enumerate(probs):
        if p > 75:  # a long bar: the number inside its end, in white
            ax_bar.text(p - 1.5, y, f"{p:.1f}%", va="center", ha="right", fontsize=9, color="white", fontweight="bold")
        else:
            ax_bar.text(p + 1.5, y, f"{p:.1f}%", va="center", ha="left", fontsize=9)
    ax_bar.set_xlim(0, 100)
    ax_bar.set(title=f"top-{len(top)} classes", xlabel="probability (%)", ylabel="class")
    legend = [Patch(color="tab:orange", label="cat breed"), Patch(color="tab:blue", label="dog breed")]
    if actual is not None:
        legend.append(Patch(color="tab:green", label="actual breed"))
    ax_bar.legend(handles=legend, loc="lower right", fontsize=9)
    fig.suptitle(_wrap(title, MAX_WIDTH_IN, 11))
    fig.tight_layout()
    return fig


# --- evaluation ---
# Comparing trained models on held-out images (notebook 07): confusion matrices side by side and
# a grid of predictions titled "True / Prediction", wrong ones in red.


def plot_confusion_matrices(matrices, classes, normalize=False, title="Confusion matrices"):
    """Several confusion matrices side by side as seaborn heatmaps, class names on both axes (notebook 07).

    ``matrices``: ``{"model name": cm}`` with ``cm[actual, predicted]`` counts (e.g. from
    ``sklearn.metrics.confusion_matrix``). ``normalize=True`` shows each row as shares of the
    actual class (the diagonal is then the recall per class). Returns the Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    n = len(matrices)
    side = max(4.5, 0.45 * len(classes) + 1.5)
    fig, axes = plt.subplots(1, n, figsize=(side * n + 0.5, side), squeeze=False)
    for ax, (name, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm)
        values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
        sns.heatmap(values, annot=cm if len(classes) <= 15 else False, fmt="d", cmap="Blues", cbar=False,
                    square=True, xticklabels=classes, yticklabels=classes, ax=ax,
                    vmin=0, vmax=1 if normalize else None, annot_kws={"fontsize": 7})
        accuracy = np.trace(cm) / max(cm.sum(), 1)
        ax.set(title=f"{name} (accuracy {accuracy:.1%})", xlabel="predicted", ylabel="actual")
        ax.tick_params(axis="x", rotation=90)
        ax.tick_params(axis="y", rotation=0)
        ax.grid(False)  # the course style's grid would cross the cells
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_prediction_grid(images, targets, preds, classes, mean=None, std=None, n=16, ncols=8,
                         title="Predictions on held-out images"):
    """Images titled "True: ... / Prediction: ...", wrong predictions in red (notebook 07); returns the Figure.

    ``images``: a (B, C, H, W) batch, either uint8 pixels or normalised with ``mean``/``std``;
    ``targets``/``preds``: class indices.
    """
    import math

    import matplotlib.pyplot as plt
    import torch

    images = torch.as_tensor(images)
    n = min(n, len(images))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 2.3 * nrows + 0.4), squeeze=False)
    wrong = 0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.dtype == torch.uint8:
            shown = img.permute(1, 2, 0).numpy()
        else:
            shown = _to_hwc(img, mean, std, normalized=True)
        ax.imshow(shown)
        actual, predicted = int(targets[i]), int(preds[i])
        wrong += actual != predicted
        ax.set_title(f"True: {classes[actual]}\nPrediction: {classes[predicted]}", fontsize=8,
                     color="black" if actual == predicted else "red")
    fig.suptitle(f"{title}: {n - wrong} of {n} right (wrong ones in red)")
    fig.tight_layout()
    return fig
