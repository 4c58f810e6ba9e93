"""Tests for tlhelpers.interpret (notebook 08), tools.diagnostics and their figures: known answers on tiny inputs."""
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tlhelpers import interpret  # noqa: E402
from tlhelpers.models import create_model  # noqa: E402
from tlhelpers.tools import diagnostics, plotting  # noqa: E402
from tlhelpers.training import PretrainedClassifier  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: tiny models are fastest on one thread

CLASSES = ["Abyssinian", "beagle", "Bengal", "boxer"]  # 2 cats (Capitalised), 2 dogs


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --- top losses, confusions, accuracy --------------------------------------------------------

def test_top_losses_are_minus_log_p_of_the_actual_class_largest_first():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    targets = torch.tensor([0, 0, 1, 1])
    losses, idx = interpret.top_losses(probs, targets, k=3)
    assert idx.tolist() == [1, 2, 3]  # p(actual) = 0.2, 0.4, 0.5
    assert torch.allclose(losses, -torch.log(torch.tensor([0.2, 0.4, 0.5])))
    all_losses, all_idx = interpret.top_losses(probs, targets, k=None)
    assert all_idx.tolist() == [1, 2, 3, 0] and len(all_losses) == 4


def test_top_losses_handle_zero_probability_and_ties():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    losses, idx = interpret.top_losses(probs, torch.tensor([0, 1, 1]), k=None)
    assert idx.tolist() == [1, 0, 2]  # p = 0 first (finite loss), then the tie in data order
    assert torch.isfinite(losses).all()


def test_normalize_rows_gives_shares_per_actual_class():
    cm = np.array([[1, 1, 0], [0, 1, 0], [2, 0, 1]])
    assert np.allclose(diagnostics.normalize_rows(cm)[2], [2 / 3, 0, 1 / 3])
    assert diagnostics.normalize_rows([[0, 0], [1, 1]]).tolist() == [[0, 0], [0.5, 0.5]]  # empty row stays 0


def test_most_confused_known_pairs_in_order():
    # beagle -> boxer 3 times, Bengal -> Abyssinian twice, Abyssinian -> Bengal once, boxer never wrong
    targets = [1, 1, 1, 1, 2, 2, 2, 0, 0, 3]
    preds = [3, 3, 3, 1, 0, 0, 2, 2, 0, 3]
    table = interpret.most_confused(targets, preds, CLASSES)
    assert table[["actual", "predicted", "count"]].values.tolist() == [
        ["beagle", "boxer", 3], ["Bengal", "Abyssinian", 2], ["Abyssinian", "Bengal", 1]]
    assert table["share"].tolist() == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    assert len(interpret.most_confused(targets, preds, CLASSES, top=1)) == 1
    assert interpret.most_confused([0, 1], [0, 1], CLASSES).empty  # no errors: no pairs


def test_per_class_accuracy_sorted_worst_first_with_empty_classes_last():
    targets = [0, 0, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, 1, 0]
    table = diagnostics.per_class_accuracy(targets, preds, CLASSES)
    assert list(table.index) == ["Bengal", "Abyssinian", "beagle", "boxer"]
    assert table["accuracy"].tolist()[:3] == [0.0, 0.5, 1.0]
    assert math.isnan(table.loc["boxer", "accuracy"])  # no validation images
    assert table.loc["beagle", "images"] == 3 and table.loc["beagle", "correct"] == 3


def test_cluster_order_puts_confused_classes_side_by_side():
    # classes 0<->3 and 1<->4 are confused with each other; 2 is never confused
    cm = np.diag([10, 10, 10, 10, 10])
    cm[0, 3] = cm[3, 0] = 5
    cm[1, 4] = cm[4, 1] = 6
    order = diagnostics.cluster_order(cm)
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert abs(order.index(0) - order.index(3)) == 1
    assert abs(order.index(1) - order.index(4)) == 1
    assert diagnostics.cluster_order(np.diag([3, 3, 3])) == [0, 1, 2]  # no confusion: class order


def test_most_confused_classes_picks_the_classes_with_most_errors():
    cm = np.diag([10, 10, 10, 10, 10])
    cm[0, 3], cm[3, 0], cm[1, 4] = 5, 4, 1
    picked = diagnostics.most_confused_classes(cm, n=3)
    assert set(picked) == {0, 3, 1} or set(picked) == {0, 3, 4}
    assert set(diagnostics.most_confused_classes(cm, n=2)) == {0, 3}
    assert diagnostics.most_confused_classes(np.diag([1, 1]), n=5) == []


# --- Grad-CAM --------------------------------------------------------------------------------

class BlobDetector(nn.Module):
    """conv -> ReLU -> global average pool -> linear: class 0 = "bright blob", class 1 = the opposite."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def blob_image(row=2, col=5, size=8):
    image = torch.zeros(1, 1, size, size)
    image[0, 0, row, col] = 1.0
    return image


def tiny_cnn(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def test_grad_cam_finds_the_blob_and_sees_no_evidence_for_the_other_class():
    model = BlobDetector()
    cam = interpret.grad_cam(model, blob_image(), target_classes=0)  # a 1x1 conv: the map is the image's size
    assert cam.shape == (1, 8, 8)
    assert cam[0, 2, 5] == 1.0 and cam.sum() == 1.0  # all the evidence sits on the blob
    cam_other = interpret.grad_cam(model, blob_image(), target_classes=1)
    assert (cam_other == 0).all()  # the blob speaks against class 1: nothing positive


def test_grad_cam_shape_range_and_dependence_on_the_target_class():
    model = tiny_cnn()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cams = interpret.grad_cam(model, images)
    assert cams.shape == (4, 16, 16)  # upsampled to the input's H, W
    assert (cams >= 0).all() and (cams <= 1).all()
    peaks = cams.amax(dim=(1, 2))
    assert torch.all((peaks == 1) | (peaks == 0))  # each map normalised to 0-1 (or no evidence at all)
    per_class = [interpret.grad_cam(model, images, target_classes=c) for c in range(3)]
    assert not torch.allclose(per_class[0], per_class[1]) or not torch.allclose(per_class[1], per_class[2])


def test_grad_cam_leaves_the_model_as_it_was():
    model = tiny_cnn()
    model.train()
    layer = diagnostics.gradcam_layer(model)
    assert layer is model[2]  # the last Conv2d of a model without stages
    interpret.grad_cam(model, torch.randn(2, 3, 8, 8))
    assert not layer._forward_hooks and model.training
    assert all(p.grad is None for p in model.parameters())  # autograd.grad, not backward()
    with pytest.raises(RuntimeError):  # a bad class index fails inside the hooked forward pass ...
        interpret.grad_cam(model, torch.randn(2, 3, 8, 8), target_classes=99)
    assert not layer._forward_hooks and model.training  # ... and the hook is still removed


def test_grad_cam_works_on_a_frozen_model():
    model = tiny_cnn()
    for p in model.parameters():
        p.requires_grad_(False)
    cams = interpret.grad_cam(model, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert cams.shape == (2, 8, 8) and (cams >= 0).all()


def test_gradcam_layer_of_registry_backbones():
    lite = PretrainedClassifier("efficientnet_lite0", 5, pretrained=False)
    assert diagnostics.gradcam_layer(lite) is lite.network._act_head  # the ReLU6 after the head conv
    lite.pretrained = True  # (pretend) pretrained: its BatchNorm layers keep their statistics in training
    lite.freeze()
    lite.train()
    cams = interpret.grad_cam(lite, torch.randn(2, 3, 64, 64))
    assert cams.shape == (2, 64, 64)
    assert lite.training and not lite.network._bn1.training  # still the BatchNorm rule after Grad-CAM
    resnet = PretrainedClassifier("resnet18", 5, pretrained=False)
    assert diagnostics.gradcam_layer(resnet) is resnet.network.layer4
    plain = create_model("resnet18", 5, pretrained=False)  # no stage list: the last Conv2d
    assert diagnostics.gradcam_layer(plain) is plain.layer4[-1].conv2
    with pytest.raises(ValueError, match="no Conv2d"):
        diagnostics.gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


# --- figures ---------------------------------------------------------------------------------

def test_interpretation_figures_have_titles_labels_and_readable_names():
    cm = np.array([[3, 1, 0, 0], [0, 2, 2, 0], [1, 0, 4, 0], [0, 0, 0, 5]])
    ax = plotting.plot_class_confusion(cm, CLASSES, order=diagnostics.cluster_order(cm), title="CM")
    assert ax.get_title() == "CM" and ax.get_xlabel() == "predicted breed" and ax.get_ylabel() == "actual breed"
    assert {t.get_text() for t in ax.get_xticklabels()} == set(CLASSES)
    assert len(ax.texts) == int((cm > 0).sum())  # few classes: counts written in the cells

    names = ["american_pit_bull_terrier", "British_Shorthair"]
    table = diagnostics.per_class_accuracy([0, 1, 1], [0, 1, 0], names)
    fig = plotting.plot_per_class_accuracy(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["British Shorthair (2)", "american pit bull terrier (1)"]  # worst first, no underscores
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_title()

    fig = plotting.plot_top_k(np.zeros((8, 8, 3)), [("beagle", 0.7), ("boxer", 0.2)], actual="boxer", title="t")
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["beagle", "boxer"]
    assert fig.axes[1].get_xlabel() == "probability (%)"

    images = torch.zeros(2, 3, 8, 8)
    fig = plotting.plot_gradcam(images, torch.stack([torch.ones(8, 8), torch.zeros(8, 8)]), ["a", "b"])
    assert fig._suptitle.get_text()
    assert any(t.get_text() == "no positive\nevidence" for ax in fig.axes for t in ax.texts)

    dataset = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 8, 8), 1)]
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    fig = plotting.plot_top_losses(dataset, probs, torch.tensor([0, 1]), [1], ["Bengal", "boxer"])
    assert "actual: boxer" in fig.axes[0].get_title() and "predicted: Bengal (0.80)" in fig.axes[0].get_title()
