"""tlhelpers.finetune (notebook 06): discriminative rates, fit_one_cycle and the fine-tuning recipe.
Tiny synthetic data and models: seconds on a CPU."""
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.finetune import FineTuneConfig, Phase, fine_tune, fit_one_cycle, get_lr, stage_param_groups
from tlhelpers.training import ImageClassificationBase, PretrainedClassifier

torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is fastest

META = torch.device("meta")


def blobs(n, seed=0, channels=1, size=4):
    """Two Gaussian blobs as small images: class 0 around -1, class 1 around +1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    return (labels.float() * 2 - 1).view(n, 1, 1, 1) + torch.randn(n, channels, size, size, generator=g), labels


def loaders(n_train=64, batch_size=8, **image_kwargs):
    return (DataLoader(TensorDataset(*blobs(n_train, 0, **image_kwargs)), batch_size),
            DataLoader(TensorDataset(*blobs(16, 1, **image_kwargs)), batch_size))


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TinyNet(ImageClassificationBase):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.conv(x))


class ScriptedNet(TinyNet):
    """Its validation loss follows a script; it records its weights at the end of every epoch."""

    def __init__(self, val_losses):
        super().__init__()
        self.val_losses, self.epoch_states = list(val_losses), []

    def validation_step(self, batch):
        loss = self.val_losses[len(self.epoch_states)]
        return {"val_loss": torch.tensor(loss), "val_acc": torch.tensor(1 - loss), "n": len(batch[1])}

    def epoch_end(self, epoch, result):
        self.epoch_states.append(state_copy(self))


class InterruptingLoader:
    """A DataLoader stand-in that raises KeyboardInterrupt (like Ctrl-C) at its `stop_at`-th batch."""

    def __init__(self, dl, stop_at):
        self.dl, self.stop_at, self.steps = dl, stop_at, 0

    def __len__(self):
        return len(self.dl)

    def __iter__(self):
        for batch in self.dl:
            self.steps += 1
            if self.steps == self.stop_at:
                raise KeyboardInterrupt
            yield batch


def test_get_lr():
    assert get_lr(torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.3}], lr=0.1)) == 0.3


# --- stage_param_groups ------------------------------------------------------------------------

@pytest.fixture
def resnet18():
    with META:
        return PretrainedClassifier("resnet18", 3, pretrained=False)


def _ids(params):
    return [id(p) for p in params]


@pytest.mark.parametrize("lr_ratio", [100, 10])
def test_stage_param_groups_rates_fall_towards_the_input(resnet18, lr_ratio):
    groups = stage_param_groups(resnet18, max_lr=1e-3, lr_ratio=lr_ratio)
    assert [g["name"] for g in groups] == ["head", "layer4", "layer3", "layer2", "layer1", "stem"]
    lrs = [g["lr"] for g in groups]
    assert lrs[0] == 1e-3 and lrs[-1] == pytest.approx(1e-3 / lr_ratio)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert [a / b for a, b in zip(lrs, lrs[1:])] == pytest.approx([lr_ratio ** (1 / 5)] * 5)  # log-spaced
    ids = [i for g in groups for i in _ids(g["params"])]
    assert sorted(ids) == sorted(_ids(resnet18.parameters()))  # every parameter in exactly one group
    assert _ids(groups[0]["params"]) == _ids(resnet18.network.fc.parameters())
    torch.optim.AdamW(groups, lr=1.0)  # a valid optimizer definition


def test_stage_param_groups_leave_out_frozen_parameters(resnet18):
    resnet18.freeze()
    assert [g["name"] for g in stage_param_groups(resnet18, 0.01)] == ["head"]
    resnet18.unfreeze(1)
    groups = stage_param_groups(resnet18, 0.01)
    assert [g["name"] for g in groups] == ["head", "layer4"]
    trainable = [p for p in resnet18.parameters() if p.requires_grad]
    assert sorted(i for g in groups for i in _ids(g["params"])) == sorted(_ids(trainable))
    assert groups[1]["lr"] == pytest.approx(0.01 / 100 ** (1 / 5))  # layer4's rate, whatever is frozen


def test_stage_param_groups_of_a_network_without_stages():
    model = TinyNet()
    model.conv.requires_grad_(False)
    (group,) = stage_param_groups(model, 0.05)
    assert group["name"] == "head" and group["lr"] == 0.05
    assert _ids(group["params"]) == _ids(model.head.parameters())


# --- fit_one_cycle ------------------------------------------------------------------------------

def test_fit_one_cycle_trains_and_records_the_schedule(capsys):
    train_dl, valid_dl = loaders(n_train=160)  # 20 steps per epoch
    model = TinyNet()
    history = fit_one_cycle(3, 0.05, model, train_dl, valid_dl, weight_decay=1e-4, grad_clip=0.1)
    assert len(history) == 3 and "Epoch [2]" in capsys.readouterr().out
    assert set(history[0]) == {"val_loss", "val_acc", "train_loss", "lrs", "epoch_time"}
    assert history[-1]["val_acc"] > 0.8 and history[-1]["train_loss"] < history[0]["train_loss"]
    lrs = [lr for h in history for lr in h["lrs"]]
    total = 3 * len(train_dl)
    peak = max(range(total), key=lrs.__getitem__)
    assert len(lrs) == total and abs(peak - 0.3 * total) <= 1  # warm-up over the first 30% of the steps
    assert lrs[peak] == pytest.approx(0.05) and lrs[0] == pytest.approx(0.05 / 25) and lrs[-1] < 0.05 / 1000
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises ...
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # ... then anneals


def test_every_param_group_peaks_at_its_own_rate():
    train_dl, valid_dl = loaders(n_train=80)  # 2 x 10 steps: the peak falls on step 0.3 * 20 - 1 = 5
    model = TinyNet()
    rates = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            rates.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    groups = [{"params": list(model.head.parameters()), "lr": 0.05}, {"params": list(model.conv.parameters()), "lr": 5e-4}]
    before = model.conv.weight.detach().clone()
    history = fit_one_cycle(2, 0.05, model, train_dl, valid_dl, opt_func=RecordingSGD, param_groups=groups)
    head, conv = zip(*rates)
    assert max(head) == pytest.approx(0.05) and max(conv) == pytest.approx(5e-4)
    assert [a / b for a, b in zip(head, conv)] == pytest.approx([100] * len(rates))  # one shape, two heights
    assert [lr for h in history for lr in h["lrs"]] == pytest.approx(list(head))  # history: the first group
    assert not torch.equal(model.conv.weight, before)


def test_grad_clip_limits_every_gradient_element():
    train_dl, valid_dl = loaders(n_train=8)
    grads = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            grads.extend(p.grad.abs().max().item() for g in self.param_groups for p in g["params"])
            return super().step(closure)

    fit_one_cycle(1, 0.1, TinyNet(), train_dl, valid_dl, opt_func=RecordingSGD)
    assert max(grads) > 0.01
    grads.clear()
    fit_one_cycle(1, 0.1, TinyNet(), train_dl, valid_dl, grad_clip=0.01, opt_func=RecordingSGD)
    assert max(grads) == pytest.approx(0.01)


def test_restore_best_and_the_checkpoint_hold_the_best_epoch(tmp_path):
    train_dl, valid_dl = loaders()
    model = ScriptedNet([0.5, 0.2, 0.4, 0.3])  # best: the second epoch
    path = tmp_path / "best.pt"
    history = fit_one_cycle(4, 0.1, model, train_dl, valid_dl, restore_best=True, checkpoint=path)
    assert [h["val_loss"] for h in history] == pytest.approx([0.5, 0.2, 0.4, 0.3])
    best = model.epoch_states[1]
    assert not same_state(best, model.epoch_states[-1])  # training did change the weights
    assert same_state(model.state_dict(), best)
    assert os.listdir(tmp_path) == ["best.pt"]  # no temporary file left behind
    fresh = TinyNet()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert same_state(fresh.state_dict(), best)
    # without restore_best the model keeps its last weights; the checkpoint still holds the best
    model = ScriptedNet([0.5, 0.2, 0.4])
    fit_one_cycle(3, 0.1, model, train_dl, valid_dl, checkpoint=path)
    assert same_state(model.state_dict(), model.epoch_states[-1])
    assert same_state(torch.load(path, weights_only=True), model.epoch_states[1])


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    train_dl, valid_dl = loaders(n_train=16)
    path = tmp_path / "best.pt"
    real_save, saves = torch.save, []

    def save_then_fail(obj, f):
        saves.append(f)
        if len(saves) == 2:
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            raise OSError("disk full")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_then_fail)
    model = ScriptedNet([0.5, 0.2])
    with pytest.raises(OSError, match="disk full"):
        fit_one_cycle(2, 0.1, model, train_dl, valid_dl, checkpoint=path)
    assert saves[0] != path  # written beside the file, then renamed onto it
    assert os.listdir(tmp_path) == ["best.pt"]
    assert same_state(torch.load(path, weights_only=True), model.epoch_states[0])


def test_ctrl_c_returns_the_finished_epochs(capsys):
    train_dl, valid_dl = loaders()  # 8 steps per epoch
    model = ScriptedNet([0.3, 0.6, 0.9])
    history = fit_one_cycle(3, 0.1, model, InterruptingLoader(train_dl, stop_at=8 + 3), valid_dl, restore_best=True)
    assert len(history) == 1 and "Interrupted in epoch 2 of 3" in capsys.readouterr().out
    assert same_state(model.state_dict(), model.epoch_states[0])  # the best epoch, not half of the second
    model = ScriptedNet([0.3])
    assert fit_one_cycle(1, 0.1, model, InterruptingLoader(train_dl, stop_at=1), valid_dl) == []


def test_amp_on_cpu_runs_in_bfloat16():
    train_dl, valid_dl = loaders()
    seen = []

    class Probe(TinyNet):
        def forward(self, x):
            out = super().forward(x)
            seen.append(out.dtype)
            return out

    history = fit_one_cycle(1, 0.1, Probe(), train_dl, valid_dl, amp=True)
    assert set(seen) == {torch.bfloat16} and math.isfinite(history[0]["train_loss"])
    seen.clear()
    fit_one_cycle(1, 0.1, Probe(), train_dl, valid_dl)
    assert set(seen) == {torch.float32}


# --- fine_tune ----------------------------------------------------------------------------------

class RecordingClassifier(PretrainedClassifier):
    """Records, at the end of every epoch, how many parameters train and whether the stem has changed."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__("mobilenet_v2", 2, pretrained=False)
        self.stem = self.network.features[0][0].weight.detach().clone()
        self.epochs = []

    def epoch_end(self, epoch, result):
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.epochs.append((trainable, not torch.equal(self.network.features[0][0].weight, self.stem)))


def test_fine_tune_runs_the_phases_in_order(capsys):
    train_dl, valid_dl = loaders(n_train=16, channels=3, size=8)  # 2 steps per epoch
    model = RecordingClassifier()
    head = 1280 * 2 + 2
    cfg = FineTuneConfig([Phase(1, 1e-3, unfreeze=0), Phase(1, 1e-3, unfreeze=1), Phase(1, 1e-4, unfreeze=None)])
    history = fine_tune(model, train_dl, valid_dl, cfg)
    assert [h["phase"] for h in history] == [1, 2, 3]
    assert all({"val_loss", "val_acc", "train_loss", "lrs"} <= set(h) for h in history)
    conv_head = sum(p.numel() for p in model.network.features[18].parameters())  # the last stage
    total = sum(p.numel() for p in model.parameters())
    assert model.epochs == [(head, False), (head + conv_head, False), (total, True)]
    out = capsys.readouterr().out
    assert out.index("Phase 1: head only") < out.index("Phase 2: head + last 1 stages") < out.index("Phase 3: all")
    assert max(history[0]["lrs"]) > 5 * max(history[-1]["lrs"])  # each phase its own max_lr


def test_min_steps_stretches_short_phases():
    train_dl, valid_dl = loaders(n_train=16)  # 2 steps per epoch
    cfg = FineTuneConfig([Phase(1, 1e-3), Phase(4, 1e-3)], min_steps=5)
    history = fine_tune(TinyNet(), train_dl, valid_dl, cfg)
    assert [h["phase"] for h in history] == [1, 1, 1, 2, 2, 2, 2]  # ceil(5 / 2) = 3 epochs at least


def test_fine_tune_stops_after_an_interrupted_phase():
    train_dl, valid_dl = loaders(n_train=16)
    cfg = FineTuneConfig([Phase(2, 1e-3), Phase(2, 1e-3)])
    history = fine_tune(TinyNet(), InterruptingLoader(train_dl, stop_at=4), valid_dl, cfg)
    assert [h["phase"] for h in history] == [1]


# --- the guards, the cap and the interrupt flag ---------------------------------------------------

@pytest.mark.parametrize("max_lr", [float("inf"), float("nan"), 0, -1e-3])
def test_fit_one_cycle_refuses_a_bad_max_lr(max_lr):
    train_dl, valid_dl = loaders()
    with pytest.raises(ValueError, match=r"^max_lr must be a finite number > 0, got "):
        fit_one_cycle(1, max_lr, TinyNet(), train_dl, valid_dl)
    with pytest.raises(ValueError, match="max_lr must be a finite number > 0"):
        fine_tune(TinyNet(), train_dl, valid_dl, FineTuneConfig([Phase(1, max_lr)]))


def test_fit_one_cycle_stops_at_a_non_finite_loss():
    images, labels = blobs(64)
    images[8:16] = float("inf")  # batch 2 of every epoch
    train_dl = DataLoader(TensorDataset(images, labels), 8)
    model = TinyNet()
    with pytest.raises(FloatingPointError,
                       match=r"^training loss is (nan|inf) in epoch 0, step 2: lower the learning rate \(max_lr\)"):
        fit_one_cycle(2, 0.1, model, train_dl, loaders()[1], grad_clip=0.1)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_max_steps_caps_each_epoch_and_the_schedule_fits_the_cap():
    train_dl, valid_dl = loaders()  # 8 steps per epoch
    history = fit_one_cycle(3, 0.1, TinyNet(), train_dl, valid_dl, max_steps=2)
    lrs = [lr for h in history for lr in h["lrs"]]
    assert len(history) == 3 and [len(h["lrs"]) for h in history] == [2, 2, 2]
    assert max(lrs) == pytest.approx(0.1, rel=0.05)  # the peak is reached within the capped steps
    assert lrs[-1] < 0.1 / 25  # and the cycle ends annealed, as an uncapped run would
    history = fine_tune(TinyNet(), train_dl, valid_dl, FineTuneConfig([Phase(1, 1e-3), Phase(2, 1e-3)], max_steps=1))
    assert [len(h["lrs"]) for h in history] == [1, 1, 1]


def test_an_interrupted_run_says_so():
    train_dl, valid_dl = loaders()
    finished = fit_one_cycle(1, 0.1, TinyNet(), train_dl, valid_dl)
    assert len(finished) == 1 and finished.interrupted is False
    cut = fit_one_cycle(2, 0.1, TinyNet(), InterruptingLoader(train_dl, stop_at=10), valid_dl)
    assert len(cut) == 1 and cut.interrupted is True
    cfg = FineTuneConfig([Phase(1, 1e-3), Phase(1, 1e-3)])
    assert fine_tune(TinyNet(), train_dl, valid_dl, cfg).interrupted is False
    cut = fine_tune(TinyNet(), InterruptingLoader(train_dl, stop_at=10), valid_dl, cfg)
    assert [h["phase"] for h in cut] == [1] and cut.interrupted is True
