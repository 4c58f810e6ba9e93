"""The course's figures as a student sees them in JupyterLab: legible, no overlapping titles, legends.

JupyterLab shows a figure at most about 830 px wide (``plotting.MAX_WIDTH_IN`` at 100 dpi) and
shrinks wider ones, text included. Each figure of notebooks 06 and 08 is drawn here with the
sizes of the real course (37 breeds, six Grad-CAM images, long breed names), at the notebooks'
100 dpi, and measured after drawing.
"""
import matplotlib

matplotlib.use("Agg")

import itertools  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tlhelpers.tools import diagnostics, plotting  # noqa: E402

DPI = 100                 # the notebooks' setup cell: figure.dpi 100
SHOWN_WIDTH_PX = 830      # JupyterLab's output width in a 1280 px window with the file browser open
MIN_TEXT_PX = 10

BREEDS = ["Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon",
          "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx", "american_bulldog",
          "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua", "english_cocker_spaniel",
          "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
          "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed",
          "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier"]


@pytest.fixture(autouse=True)
def notebook_style():
    """The rcParams of the notebooks' setup cell."""
    with plt.rc_context({"figure.dpi": DPI, "savefig.dpi": 300, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "font.size": 11}):
        yield
    plt.close("all")


def _texts(fig):
    """Every visible, non-empty text of the figure: titles, labels, ticks, legends, annotations."""
    seen = []
    for artist in fig.findobj(matplotlib.text.Text):
        if artist.get_visible() and artist.get_text().strip() and artist.get_figure() is fig:
            seen.append(artist)
    return seen


def _shown_scale(fig) -> float:
    """How much JupyterLab shrinks the figure: its tight bounding box (as saved inline) vs the output width."""
    fig.canvas.draw()
    width_px = fig.get_tightbbox(fig.canvas.get_renderer()).width * DPI
    return min(1.0, SHOWN_WIDTH_PX / width_px)


def assert_legible(fig, name):
    scale = _shown_scale(fig)
    small = sorted({(round(t.get_fontsize() * DPI / 72 * scale, 1), t.get_text()[:30]) for t in _texts(fig)
                    if t.get_fontsize() * DPI / 72 * scale < MIN_TEXT_PX})
    assert not small, f"{name}: text below {MIN_TEXT_PX} px as shown in JupyterLab (px, text): {small[:8]}"


def assert_titles_apart(fig, name):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [(ax.title.get_text(), ax.title.get_window_extent(renderer)) for ax in fig.axes
              if ax.title.get_text().strip()]
    for (text_a, box_a), (text_b, box_b) in itertools.combinations(titles, 2):
        assert not box_a.overlaps(box_b), f"{name}: titles {text_a!r} and {text_b!r} overlap"


def assert_fits_the_screen(fig, name, max_height_px=760):
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    height = box.height * DPI * _shown_scale(fig)
    assert height <= max_height_px, f"{name}: {height:.0f} px tall as shown: taller than a laptop screen's notebook area"


def gradcam_figure(titles):
    images = torch.zeros(len(titles), 3, 128, 128)
    heatmaps = torch.rand(len(titles), 128, 128, generator=torch.Generator().manual_seed(0))
    return plotting.plot_gradcam(images, heatmaps, titles,
                                 title="Grad-CAM for the predicted breed: surest correct (left), top-loss wrong (right)")


def test_gradcam_titles_never_overlap_and_stay_legible():
    # the titles of notebook 08 that ran into each other: long breed names side by side
    titles = [f"{verdict}: {plotting.readable_class_name(b)} (1.00)\nactual: {plotting.readable_class_name(a)}"
              for verdict, b, a in [("right", "american_pit_bull_terrier", "american_pit_bull_terrier"),
                                    ("right", "english_cocker_spaniel", "english_cocker_spaniel"),
                                    ("right", "staffordshire_bull_terrier", "staffordshire_bull_terrier"),
                                    ("WRONG", "staffordshire_bull_terrier", "great_pyrenees"),
                                    ("WRONG", "great_pyrenees", "german_shorthaired"),
                                    ("WRONG", "yorkshire_terrier", "miniature_pinscher")]]
    fig = gradcam_figure(titles)
    assert_titles_apart(fig, "plot_gradcam")
    assert_legible(fig, "plot_gradcam")
    shown = [ax.title.get_text() for ax in fig.axes if ax.title.get_text()]
    assert all("\n" in t for t in shown) and any(t.count("\n") >= 2 for t in shown)  # wrapped, not cut


def test_the_overlap_check_can_fail():
    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 2))
    a.set_title("a long title that runs far into the next panel " * 2)
    b.set_title("the next panel's title")
    with pytest.raises(AssertionError, match="overlap"):
        assert_titles_apart(fig, "bad")
    with pytest.raises(AssertionError, match="below 10 px"):
        fig.axes[0].set_xlabel("tiny", fontsize=6)
        assert_legible(fig, "bad")


def test_history_figure_of_notebook_06_is_legible_with_one_legend():
    rng = np.random.default_rng(0)
    history = [{"val_loss": 3.0, "val_acc": 0.1}] + [
        {"train_loss": float(x), "val_loss": float(x), "val_acc": float(a), "lrs": [1e-3]}
        for x, a in zip(rng.uniform(0.5, 3, 6), rng.uniform(0.1, 0.9, 6))]
    runs = {"feature extraction": history, "fine-tuning": history, "from scratch": history}
    fig = plotting.plot_histories(runs, metrics=("train_loss", "val_loss", "val_acc"))
    assert_legible(fig, "plot_histories")
    assert_titles_apart(fig, "plot_histories")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(runs)  # one legend for the three panels


def test_confusion_matrix_of_37_breeds_is_legible_and_fits_the_screen():
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(1, 4, len(BREEDS))) + (rng.random((37, 37)) < 0.05)
    ax = plotting.plot_class_confusion(cm, BREEDS, order=diagnostics.cluster_order(cm), title="37 breeds")
    assert_legible(ax.figure, "plot_class_confusion")
    assert_fits_the_screen(ax.figure, "plot_class_confusion")
    assert len(ax.get_yticklabels()) == 37  # every breed named
    zoom = diagnostics.most_confused_classes(cm, n=12)
    ax = plotting.plot_class_confusion(cm, BREEDS, order=zoom, title="zoom")
    assert_legible(ax.figure, "plot_class_confusion (zoom)")


def test_per_class_accuracy_and_top_losses_are_legible():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(37), 2)
    preds = np.where(rng.random(74) < 0.7, targets, rng.integers(0, 37, 74))
    fig = plotting.plot_per_class_accuracy(diagnostics.per_class_accuracy(targets, preds, BREEDS))
    assert_legible(fig, "plot_per_class_accuracy")

    dataset = [(torch.zeros(3, 64, 64), i % 37) for i in range(8)]
    probs = torch.full((8, 37), 0.01)
    probs[:, 13] = 0.64  # all predicted american pit bull terrier: the longest name
    fig = plotting.plot_top_losses(dataset, probs, torch.tensor([33] * 8), range(8), BREEDS)
    assert_legible(fig, "plot_top_losses")
    assert_titles_apart(fig, "plot_top_losses")


def test_top_k_chart_has_a_legend_for_its_colours_and_labels_inside_the_axes():
    top = [("Bengal", 0.966), ("Egyptian_Mau", 0.02), ("american_pit_bull_terrier", 0.008),
           ("Abyssinian", 0.004), ("beagle", 0.002)]
    fig = plotting.plot_top_k(np.zeros((64, 64, 3)), top, actual="Bengal", title="my_cat.jpg: Bengal (97%)")
    assert_legible(fig, "plot_top_k")
    ax = fig.axes[1]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["cat breed", "dog breed", "actual breed"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    for label in ax.texts:  # "96.6%" and the others stay inside the chart
        box = label.get_window_extent(renderer)
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, f"{label.get_text()} runs past the chart"
    without_actual = plotting.plot_top_k(np.zeros((8, 8, 3)), top[:2], title="t")
    assert [t.get_text() for t in without_actual.axes[1].get_legend().get_texts()] == ["cat breed", "dog breed"]
