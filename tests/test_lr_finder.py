"""tlhelpers.tools.lr_finder: the learning-rate range test on tiny synthetic data (notebook 06)."""
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.tools.lr_finder import LRFindResult, lr_find
from tlhelpers.tools.plotting import plot_lr_find
from tlhelpers.training import ImageClassificationBase

torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is fastest


def blob_loader(n=64, spread=1.0, batch_size=8):
    """Two Gaussian blobs as 1x4x4 'images': class 0 around -1, class 1 around +1."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = (labels.float() * 2 - 1).view(n, 1, 1, 1) + spread * torch.randn(n, 1, 4, 4, generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size)


class TinyCNN(ImageClassificationBase):
    """With BatchNorm, whose running statistics training changes too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.net(x)


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_find_sweeps_exponentially_and_restores_the_model():
    model = TinyCNN().eval()
    before = state_copy(model)
    result = lr_find(model, blob_loader(), start_lr=1e-5, end_lr=10, num_iter=30, diverge_factor=1e9)
    assert isinstance(result, LRFindResult) and not result.diverged
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == 30  # 8 batches, reused
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(10)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1] and result.lrs[0] <= result.steepest <= result.lrs[-1]
    assert same_state(model.state_dict(), before)  # weights and BatchNorm statistics
    assert not model.training  # eval mode restored


def test_the_suggestion_is_a_tenth_of_the_rate_at_the_loss_minimum():
    result = lr_find(TinyCNN(), blob_loader(), start_lr=1e-4, end_lr=1, num_iter=20)
    best = result.lrs[result.losses.index(min(result.losses))]
    assert result.suggestion == pytest.approx(max(best / 10, result.lrs[0]))


def test_lr_find_stops_when_the_loss_diverges():
    loader = blob_loader(spread=3.0)  # overlapping classes: a huge rate blows the loss up
    result = lr_find(TinyCNN(), loader, opt_func=torch.optim.SGD, start_lr=1e-3, end_lr=1e6, num_iter=100)
    assert result.diverged and len(result.lrs) < 100
    assert max(result.losses) <= 4 * min(result.losses)  # the diverging point itself is dropped
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]


def test_lr_find_trains_only_trainable_parameters_and_survives_ctrl_c(capsys):
    model = TinyCNN()
    model.net[0].requires_grad_(False)
    calls = []

    class Interrupt(torch.optim.AdamW):
        def step(self, closure=None):
            calls.append(sum(p.numel() for g in self.param_groups for p in g["params"]))
            if len(calls) == 3:
                raise KeyboardInterrupt
            return super().step(closure)

    before = state_copy(model)
    result = lr_find(model, blob_loader(), opt_func=Interrupt, num_iter=10)
    assert calls == [(4 + 4) + (4 * 2 + 2)] * 3  # BatchNorm and Linear only: the frozen conv is left out
    assert len(result.lrs) == 2 and "interrupted after 2 steps" in capsys.readouterr().out
    assert same_state(model.state_dict(), before)


def test_lr_find_rejects_bad_arguments():
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find(TinyCNN(), blob_loader(), start_lr=1, end_lr=0.1)
    with pytest.raises(ValueError, match="num_iter=1"):
        lr_find(TinyCNN(), blob_loader(), num_iter=1)


def test_plot_lr_find_marks_the_suggestion():
    result = lr_find(TinyCNN(), blob_loader(), num_iter=20)
    assert result["suggestion"] == result.suggestion
    ax = plot_lr_find(result)
    assert ax.get_xscale() == "log" and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert "suggested" in ax.get_legend().get_texts()[0].get_text()
    plt.close("all")
