"""Tests for tlhelpers.train (and the training-curve plots): tiny synthetic data, tiny models, CPU, seconds."""
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tlhelpers import train
from tlhelpers.tools import plotting  # noqa: E402
from tlhelpers.device import DeviceDataLoader  # noqa: E402
from tlhelpers.models import ImageClassificationBase  # noqa: E402
from tlhelpers.train import (  # noqa: E402
    evaluate, fit, fit_one_cycle, get_lr, get_predictions, load_checkpoint, lr_find,
    save_checkpoint, summarize_history,
)

torch.set_num_threads(1)  # 2 shared cores: tiny models are fastest on one thread


# --- data and models ---------------------------------------------------------------------

def blobs(n=64, seed=0, spread=1.0):
    """Two Gaussian blobs as 1x4x4 'images': class 0 around -1, class 1 around +1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centers = (labels.float() * 2 - 1).view(n, 1, 1, 1)
    images = centers + spread * torch.randn(n, 1, 4, 4, generator=g)
    return images, labels


def loaders(n_train=64, n_val=30, batch_size=8):
    train_ds = TensorDataset(*blobs(n_train, seed=0))
    val_ds = TensorDataset(*blobs(n_val, seed=1))
    return (DataLoader(train_ds, batch_size=batch_size, shuffle=False),
            DataLoader(val_ds, batch_size=batch_size))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ScriptedModel(nn.Module):
    """A model with the ImageClassificationBase methods whose val_loss follows a script.

    It records its weights at the end of every epoch (in ``epoch_end``, so fit it with
    ``verbose=True``), so tests can tell which epoch's weights a checkpoint or restore_best holds.
    """

    def __init__(self, val_losses):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        self.val_losses = list(val_losses)
        self.epoch_states = []
        self.training_steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch):
        self.training_steps += 1
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch):
        loss = self.val_losses[len(self.epoch_states)]
        return {"val_loss": torch.tensor(loss), "val_acc": torch.tensor(1 - loss)}

    def epoch_end(self, epoch, result):
        self.epoch_states.append(state_copy(self))
        print(f"scripted epoch {epoch}: val_loss {result['val_loss']:.2f}")


class InterruptingLoader:
    """A DataLoader stand-in that raises KeyboardInterrupt (like Ctrl-C) at global step ``stop_at``."""

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


QUIET = dict(progress=False, verbose=False)


# --- the loop -----------------------------------------------------------------------------

def test_fit_lowers_the_loss_and_returns_a_history():
    train_dl, val_dl = loaders()
    model = tiny_model()
    before = evaluate(model, train_dl)["val_loss"]
    history = fit(4, 0.2, model, train_dl, val_dl, **QUIET)
    after = evaluate(model, train_dl)["val_loss"]
    assert after < 0.5 * before
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert set(h) >= {"epoch", "train_loss", "val_loss", "val_acc", "lrs", "epoch_time"}
        assert h["lrs"] == [0.2] * len(train_dl)  # constant learning rate, one per step
        assert h["epoch_time"] > 0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.8


def test_fit_uses_training_step_and_epoch_end_when_the_model_has_them(capsys):
    train_dl, val_dl = loaders()
    model = ScriptedModel([0.5, 0.4])
    history = fit(2, 0.1, model, train_dl, val_dl, progress=False)
    assert model.training_steps == 2 * len(train_dl)
    assert [h["val_loss"] for h in history] == pytest.approx([0.5, 0.4])
    assert "scripted epoch 1" in capsys.readouterr().out


def test_fit_with_the_course_base_class(capsys):
    class Classifier(ImageClassificationBase):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def forward(self, x):
            return self.net(x)

    train_dl, val_dl = loaders()
    model = Classifier()
    history = fit_one_cycle(2, 0.1, model, train_dl, val_dl, grad_clip=0.1, weight_decay=1e-4, progress=False)
    assert history[-1]["val_acc"] > 0.8
    assert "Epoch [2]" in capsys.readouterr().out
    assert train.accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])).item() == 0.5


def test_frozen_batchnorm_layers_keep_their_statistics():
    train_dl, val_dl = loaders()
    model = tiny_cnn()
    bn = model[1]
    for p in bn.parameters():
        p.requires_grad_(False)
    stats = state_copy(bn)
    fit(1, 0.1, model, train_dl, val_dl, **QUIET)
    lr_find(model, train_dl, num_iter=5, progress=False)
    assert same_state(bn.state_dict(), stats)
    for p in bn.parameters():
        p.requires_grad_(True)
    fit(1, 0.1, model, train_dl, val_dl, **QUIET)
    assert not torch.equal(bn.running_mean, stats["running_mean"])  # trainable: statistics update


def test_fit_prints_a_standard_line_for_plain_models(capsys):
    train_dl, val_dl = loaders()
    fit(1, 0.1, tiny_model(), train_dl, val_dl, progress=False)
    out = capsys.readouterr().out
    assert "Epoch [1/1]" in out and "val_acc" in out and "train_loss" in out


def test_fit_with_a_custom_loss_fn():
    train_dl, val_dl = loaders()
    calls = []

    def loss_fn(outputs, labels):
        calls.append(len(labels))
        return F.cross_entropy(outputs, labels, label_smoothing=0.1)

    fit(1, 0.1, tiny_model(), train_dl, val_dl, loss_fn=loss_fn, **QUIET)
    assert sum(calls) == 64 + 30  # every training and validation example once


def test_fit_accepts_a_device_data_loader_and_progress_bars():
    train_dl, val_dl = loaders()
    history = fit(1, 0.1, tiny_model(), DeviceDataLoader(train_dl, "cpu"),
                  DeviceDataLoader(val_dl, "cpu"), progress=True, verbose=False)
    assert len(history) == 1


def test_fit_with_amp_on_cpu_uses_bfloat16_autocast():
    train_dl, val_dl = loaders()
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def forward(self, x):
            out = self.net(x)
            seen.append(out.dtype)
            return out

    history = fit(1, 0.1, Probe(), train_dl, val_dl, amp=True, **QUIET)
    assert torch.bfloat16 in seen and history[0]["train_loss"] == history[0]["train_loss"]  # not NaN
    seen.clear()
    fit(1, 0.1, Probe(), train_dl, val_dl, **QUIET)  # amp=None: off on CPU
    assert set(seen) == {torch.float32}


def test_precision_choice_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    _, scaler = train._precision(cuda, None)
    assert scaler is None  # bfloat16 needs no loss scaling
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else _nothing():
        _, scaler = train._precision(cuda, None)
    assert scaler is not None  # float16 does
    autocast, scaler = train._precision(torch.device("cpu"), None)
    assert scaler is None and not isinstance(autocast(), torch.autocast)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_evaluate_weights_examples_not_batches():
    images, labels = blobs(10, seed=3, spread=2.0)
    model = tiny_model()
    with torch.no_grad():
        outputs = model(images)
    expected_loss = F.cross_entropy(outputs, labels).item()
    expected_acc = (outputs.argmax(1) == labels).float().mean().item()
    ds = TensorDataset(images, labels)
    for batch_size in (4, 3, 9):  # uneven last batches: 2, 1 and 1 examples
        result = evaluate(model, DataLoader(ds, batch_size=batch_size))
        assert result["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert result["val_acc"] == pytest.approx(expected_acc)
    # the per-batch mean of the original write-up would differ
    per_batch = [F.cross_entropy(model(x), y).item() for x, y in DataLoader(ds, batch_size=9)]
    assert sum(per_batch) / len(per_batch) != pytest.approx(expected_loss, rel=1e-3)


def test_evaluate_uses_n_from_validation_step_batches_and_restores_mode():
    train_dl, val_dl = loaders()
    model = ScriptedModel([0.25])
    model.train()
    assert evaluate(model, val_dl) == {"val_loss": pytest.approx(0.25), "val_acc": pytest.approx(0.75)}
    assert model.training


def test_evaluate_rejects_an_empty_loader():
    with pytest.raises(ValueError, match="no batches"):
        evaluate(tiny_model(), [])


def test_one_cycle_schedule_shape():
    train_dl, val_dl = loaders(n_train=160, batch_size=8)  # 20 steps per epoch
    epochs, max_lr = 3, 0.05
    history = fit_one_cycle(epochs, max_lr, tiny_model(), train_dl, val_dl, **QUIET)
    lrs = [lr for h in history for lr in h["lrs"]]
    total = epochs * len(train_dl)
    assert len(lrs) == total and all(len(h["lrs"]) == len(train_dl) for h in history)
    peak = max(range(total), key=lrs.__getitem__)
    assert abs(peak - 0.3 * total) <= 1  # warm-up over the first 30% of the steps
    assert lrs[peak] == pytest.approx(max_lr)
    assert lrs[0] == pytest.approx(max_lr / 25)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises ...
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # ... then anneals
    assert lrs[-1] < max_lr / 1000


def test_fit_one_cycle_passes_weight_decay_to_the_optimizer():
    train_dl, val_dl = loaders()
    created = []

    def opt_func(params, lr, **kwargs):
        created.append(kwargs)
        return torch.optim.Adam(params, lr, **kwargs)

    fit_one_cycle(1, 0.01, tiny_model(), train_dl, val_dl, weight_decay=1e-4, opt_func=opt_func, **QUIET)
    assert created == [{"weight_decay": 1e-4}]


def test_fit_one_cycle_with_param_groups_gives_each_group_its_own_peak():
    train_dl, val_dl = loaders(n_train=80, batch_size=8)  # 10 steps per epoch
    model = tiny_cnn()
    conv, rest = list(model[0].parameters()), [p for m in list(model)[1:] for p in m.parameters()]
    peaks = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):  # record every group's rate at every step
            peaks.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    opt_func = RecordingSGD

    groups = [{"params": rest, "lr": 0.05, "name": "head"}, {"params": conv, "lr": 0.0005, "name": "early"}]
    before = [p.detach().clone() for p in conv]
    history = fit_one_cycle(2, 0.05, model, train_dl, val_dl, opt_func=opt_func, param_groups=groups, **QUIET)
    head_lrs, early_lrs = zip(*peaks)
    assert max(head_lrs) == pytest.approx(0.05) and max(early_lrs) == pytest.approx(0.0005)
    assert [a / b for a, b in zip(head_lrs, early_lrs)] == pytest.approx([100] * len(peaks))  # same shape
    assert [lr for h in history for lr in h["lrs"]] == pytest.approx(list(head_lrs))  # history: the first group
    assert not all(torch.equal(a, b) for a, b in zip(before, conv))  # the early group did train
    assert "lr" in groups[0] and groups[0]["lr"] == 0.05  # the caller's dicts are not modified
    # a group without "lr" peaks at max_lr
    peaks.clear()
    model = tiny_cnn()
    fit_one_cycle(1, 0.02, model, train_dl, val_dl, opt_func=opt_func,
                  param_groups=[{"params": list(model.parameters())}], **QUIET)
    assert max(lr for (lr,) in peaks) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="param_groups"):
        fit_one_cycle(1, 0.02, tiny_cnn(), train_dl, val_dl, param_groups=[], **QUIET)


def test_fit_one_cycle_needs_a_sized_loader():
    _, val_dl = loaders()
    with pytest.raises(ValueError, match="len"):
        fit_one_cycle(1, 0.1, tiny_model(), iter([]), val_dl, **QUIET)


def test_get_lr():
    opt = torch.optim.SGD(tiny_model().parameters(), lr=0.123)
    assert get_lr(opt) == 0.123


# --- gradient clipping ----------------------------------------------------------------------

def _one_step_change(grad_clip, grad_clip_mode="value"):
    images, labels = blobs(8, seed=4)
    one_batch = DataLoader(TensorDataset(images * 100, labels), batch_size=8)  # big inputs: big gradients
    model = tiny_model()
    with torch.no_grad():  # zero logits: the softmax is not saturated, so the gradients are ~ inputs
        for p in model.parameters():
            p.zero_()
    before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
    fit(1, 1.0, model, one_batch, one_batch, grad_clip=grad_clip, grad_clip_mode=grad_clip_mode, **QUIET)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before  # plain SGD with lr=1: the change is minus the (clipped) gradient


def test_grad_clip_by_value_limits_every_gradient_element():
    assert _one_step_change(None).abs().max() > 0.1  # unclipped gradients are big
    change = _one_step_change(0.01)
    assert change.abs().max() <= 0.01 + 1e-7
    assert change.abs().max() > 0.009  # clipped, not zeroed


def test_grad_clip_by_norm_limits_the_total_norm():
    assert _one_step_change(None).norm() > 1
    assert _one_step_change(0.5, "norm").norm() == pytest.approx(0.5, rel=1e-3)


def test_bad_options_give_clear_errors():
    train_dl, val_dl = loaders()
    with pytest.raises(ValueError, match="monitor"):
        fit(1, 0.1, tiny_model(), train_dl, val_dl, monitor="accuracy", **QUIET)
    with pytest.raises(ValueError, match="grad_clip_mode"):
        fit(1, 0.1, tiny_model(), train_dl, val_dl, grad_clip=1, grad_clip_mode="max", **QUIET)


# --- checkpoints, best weights, early stopping, Ctrl-C -----------------------------------------

def test_checkpoint_round_trip(tmp_path):
    model = tiny_cnn()
    path = save_checkpoint(tmp_path / "ckpts" / "model.pt", model, epoch=3, classes=["cat", "dog"])
    assert os.listdir(path.parent) == ["model.pt"]  # no .part left behind
    fresh = tiny_cnn(seed=1)
    assert not same_state(fresh.state_dict(), model.state_dict())
    ckpt = load_checkpoint(path, fresh)
    assert same_state(fresh.state_dict(), model.state_dict())
    assert ckpt["epoch"] == 3 and ckpt["classes"] == ["cat", "dog"] and ckpt["version"] == 1
    assert load_checkpoint(str(path))["format"] == "tlhelpers-checkpoint"  # model is optional


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model(), epoch=1)

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model(seed=1), epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["model.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(tiny_model().state_dict(), bare)
    with pytest.raises(ValueError, match="not a tlhelpers checkpoint.*bare state_dict"):
        load_checkpoint(bare, tiny_model())
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not a tlhelpers checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    future = tmp_path / "future.pt"
    torch.save({"format": "tlhelpers-checkpoint", "version": 99, "state_dict": {}}, future)
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(future)


def test_best_checkpoint_by_val_loss_is_what_restore_best_loads(tmp_path, capsys):
    train_dl, val_dl = loaders()
    model = ScriptedModel([0.5, 0.2, 0.4, 0.3])  # best: epoch 2
    path = tmp_path / "best.pt"
    history = fit(4, 0.1, model, train_dl, val_dl, checkpoint=path, restore_best=True, progress=False)
    assert len(history) == 4
    best = model.epoch_states[1]
    assert not same_state(best, model.epoch_states[-1])  # training did change the weights
    assert same_state(model.state_dict(), best)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and ckpt["val_loss"] == pytest.approx(0.2) and ckpt["monitor"] == "val_loss"
    assert same_state(ckpt["state_dict"], best)
    assert not (tmp_path / "best.pt.part").exists()
    assert "Restored the best weights: epoch 2" in capsys.readouterr().out


def test_checkpoint_by_val_acc(tmp_path):
    train_dl, val_dl = loaders()
    model = ScriptedModel([0.5, 0.2, 0.1, 0.3])  # val_acc = 1 - val_loss: best at epoch 3
    fit(4, 0.1, model, train_dl, val_dl, checkpoint=tmp_path / "acc.pt", monitor="val_acc",
        progress=False)  # verbose: ScriptedModel counts epochs in epoch_end
    assert load_checkpoint(tmp_path / "acc.pt")["epoch"] == 3
    assert same_state(model.state_dict(), model.epoch_states[-1])  # restore_best=False: last weights


def test_early_stopping(capsys):
    train_dl, val_dl = loaders()
    model = ScriptedModel([0.5, 0.2, 0.3, 0.4, 0.1, 0.1])
    history = fit(6, 0.1, model, train_dl, val_dl, early_stopping_patience=2, progress=False)
    assert len(history) == 4  # two epochs without improvement after epoch 2
    assert "Early stopping" in capsys.readouterr().out


def test_keyboard_interrupt_returns_history_and_keeps_best_weights(capsys):
    train_dl, val_dl = loaders()  # 8 steps per epoch
    model = ScriptedModel([0.3, 0.6, 0.9])
    interrupting = InterruptingLoader(train_dl, stop_at=2 * len(train_dl) + 3)  # epoch 3, step 3
    history = fit(3, 0.1, model, interrupting, val_dl, restore_best=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert same_state(model.state_dict(), model.epoch_states[0])  # best (epoch 1), not half of epoch 3
    assert "Interrupted at epoch 3 step 2; returning history so far" in capsys.readouterr().out


def test_keyboard_interrupt_without_restore_best_keeps_the_trained_weights(capsys):
    train_dl, val_dl = loaders()
    model = ScriptedModel([0.3, 0.6, 0.9])
    history = fit_one_cycle(3, 0.1, model, InterruptingLoader(train_dl, stop_at=5), val_dl, **QUIET)
    assert history == []
    assert model.training_steps == 4
    assert "Interrupted at epoch 1 step 4" in capsys.readouterr().out


# --- lr_find ---------------------------------------------------------------------------------

def test_lr_find_restores_model_and_optimizer_exactly():
    train_dl, _ = loaders()
    model = tiny_cnn()  # with BatchNorm buffers, which training also changes
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(1, 3e-3, model, train_dl, None, **QUIET)  # some training history ...
    images, labels = next(iter(train_dl))
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()  # ... and an optimizer with state
    optimizer.zero_grad()
    model.eval()
    model_before, opt_before = state_copy(model), optimizer.state_dict()
    opt_before = {"state": {k: {n: t.clone() for n, t in s.items()} for k, s in opt_before["state"].items()},
                  "param_groups": [dict(g) for g in opt_before["param_groups"]]}

    result = lr_find(model, train_dl, optimizer=optimizer, num_iter=20, progress=False)

    assert len(result.lrs) > 5
    assert same_state(model.state_dict(), model_before)
    assert not model.training  # eval mode restored
    opt_after = optimizer.state_dict()
    assert opt_after["param_groups"] == opt_before["param_groups"]  # learning rates included
    assert get_lr(optimizer) == 3e-3
    for key, state in opt_before["state"].items():
        assert same_state(opt_after["state"][key], state)


def test_lr_find_sweep_and_suggestion():
    train_dl, _ = loaders()
    model = tiny_model()
    before = state_copy(model)
    result = lr_find(model, train_dl, start_lr=1e-5, end_lr=10, num_iter=50, progress=False)
    assert same_state(model.state_dict(), before)
    lrs = result.lrs
    assert lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # exponential sweep
    assert len(result.losses) == len(result.raw_losses) == len(lrs)
    assert lrs[0] <= result.suggestion <= lrs[-1]
    assert lrs[0] <= result.steepest <= lrs[-1]
    assert result["suggestion"] == result.suggestion  # dict-style access for plot_lr_find


def test_lr_find_stops_when_the_loss_diverges():
    images, labels = blobs(64, seed=0, spread=3.0)  # overlapping classes: a huge lr blows the loss up
    train_dl = DataLoader(TensorDataset(images, labels), batch_size=8)
    result = lr_find(tiny_model(), train_dl, start_lr=1e-4, end_lr=1e4, num_iter=100, progress=False)
    assert result.diverged and len(result.lrs) < 100
    assert max(result.losses) <= 4 * min(result.losses)  # the diverging point itself is dropped
    assert 1e-4 <= result.suggestion <= result.lrs[-1]


def test_lr_find_rejects_bad_ranges():
    train_dl, _ = loaders()
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(tiny_model(), train_dl, start_lr=1, end_lr=0.1, progress=False)


# --- predictions and summaries ----------------------------------------------------------------

def test_get_predictions_returns_probabilities_and_targets_in_order():
    _, val_dl = loaders()
    model = tiny_model()
    probs, targets = get_predictions(model, val_dl)
    images, labels = blobs(30, seed=1)
    assert probs.shape == (30, 2) and torch.allclose(probs.sum(1), torch.ones(30))
    assert torch.equal(targets, labels)
    logits, _ = get_predictions(model, val_dl, as_probs=False)
    with torch.no_grad():
        assert torch.allclose(logits, model(images), atol=1e-6)
    unlabeled, none = get_predictions(model, DataLoader(images, batch_size=7))
    assert none is None and torch.allclose(unlabeled, probs)


def test_summarize_history():
    history = [{"epoch": 1, "val_loss": 0.5, "val_acc": 0.7, "epoch_time": 2.0},
               {"epoch": 2, "val_loss": 0.4, "val_acc": 0.9, "epoch_time": 3.0}]
    line = summarize_history(history)
    assert "2 epochs in 5.0 s" in line and "best val_acc 0.9000 at epoch 2" in line
    assert summarize_history([]) == "No finished epochs."


# --- training-curve plots ---------------------------------------------------------------------

@pytest.fixture
def history():
    train_dl, val_dl = loaders()
    model = tiny_model()
    start = [evaluate(model, val_dl)]  # the write-up's "before training" point
    return start + fit_one_cycle(2, 0.1, model, train_dl, val_dl, **QUIET)


def _labelled(ax):
    return ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_plot_losses_and_accuracies(history):
    ax = plotting.plot_losses(history)
    assert _labelled(ax) and len(ax.lines) == 2
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2]  # epoch 0 = before training
    ax = plotting.plot_accuracies(history)
    assert _labelled(ax) and list(ax.lines[0].get_ydata()) == [h["val_acc"] for h in history]
    plt.close("all")


def test_epoch_axes_have_whole_number_ticks(history):
    short = history[:2]  # epochs 0 and 1: matplotlib alone would put ticks at 0.2, 0.4, ...
    axes = [plotting.plot_losses(short), plotting.plot_accuracies(short),
            *plotting.plot_histories({"run": short}).axes]
    for ax in axes:
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    plt.close("all")


def test_plot_lrs(history):
    ax = plotting.plot_lrs(history)
    assert _labelled(ax) and len(ax.lines[0].get_ydata()) == 2 * 8
    plt.close("all")


def test_plot_lr_find():
    train_dl, _ = loaders()
    result = lr_find(tiny_model(), train_dl, num_iter=20, progress=False)
    ax = plotting.plot_lr_find(result)
    assert _labelled(ax) and ax.get_xscale() == "log"
    assert "suggested" in ax.get_legend().get_texts()[0].get_text()
    plt.close("all")


def test_plot_histories(history):
    fig = plotting.plot_histories({"frozen": history, "fine-tuned": history[1:]})
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert _labelled(ax)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["frozen", "fine-tuned"]
    plt.close("all")
