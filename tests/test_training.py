"""tlhelpers.training (notebook 05): accuracy, ImageClassificationBase, PretrainedClassifier, evaluate, fit,
get_predictions. Tiny synthetic data and models: seconds on a CPU."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.training import (
    ImageClassificationBase, PretrainedClassifier, accuracy, evaluate, fit, get_predictions,
)

torch.set_num_threads(1)  # tiny models on a shared CPU: one thread is fastest


def blobs(n=64, seed=0, spread=1.0):
    """Two Gaussian blobs as 1x4x4 'images': class 0 around -1, class 1 around +1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (labels.float() * 2 - 1).view(n, 1, 1, 1) + spread * torch.randn(n, 1, 4, 4, generator=g)
    return images, labels


def loaders(batch_size=8):
    return (DataLoader(TensorDataset(*blobs(64, seed=0)), batch_size, shuffle=False),
            DataLoader(TensorDataset(*blobs(30, seed=1)), batch_size))


class TinyNet(ImageClassificationBase):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


def test_accuracy():
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    result = accuracy(outputs, torch.tensor([0, 1, 1, 0]))
    assert result.dim() == 0 and result.item() == pytest.approx(0.5)


def test_training_and_validation_steps(capsys):
    model = TinyNet()
    batch = (torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1]))
    loss = model.training_step(batch)
    assert loss.dim() == 0 and loss.requires_grad
    out = model.validation_step(batch)
    assert not out["val_loss"].requires_grad and out["n"] == 6 and 0 <= out["val_acc"].item() <= 1
    assert out["val_loss"].item() == pytest.approx(loss.item())
    outputs = [{"val_loss": torch.tensor(1.0), "val_acc": torch.tensor(1.0), "n": 3},
               {"val_loss": torch.tensor(4.0), "val_acc": torch.tensor(0.0), "n": 1}]
    assert model.validation_epoch_end(outputs) == {"val_loss": pytest.approx(1.75), "val_acc": pytest.approx(0.75)}
    model.epoch_end(3, {"train_loss": 1.2, "val_loss": 1.75, "val_acc": 0.75})
    assert capsys.readouterr().out.strip() == "Epoch [3], train_loss: 1.2000, val_loss: 1.7500, val_acc: 0.7500"


def test_evaluate_weights_every_image_once():
    images, labels = blobs(10, seed=3, spread=2.0)
    model = TinyNet().train()
    with torch.no_grad():
        outputs = model(images)
    expected_loss = F.cross_entropy(outputs, labels).item()
    expected_acc = accuracy(outputs, labels).item()
    ds = TensorDataset(images, labels)
    for batch_size in (4, 3, 9):  # uneven last batches of 2, 1 and 1 images
        result = evaluate(model, DataLoader(ds, batch_size))
        assert result == {"val_loss": pytest.approx(expected_loss, rel=1e-5), "val_acc": pytest.approx(expected_acc)}
    assert not model.training  # evaluate switches to eval mode (Dropout off, BatchNorm frozen)
    # a mean of the per-batch means would differ
    per_batch = [F.cross_entropy(model(x), y).item() for x, y in DataLoader(ds, batch_size=9)]
    assert sum(per_batch) / len(per_batch) != pytest.approx(expected_loss, rel=1e-3)


def test_fit_lowers_the_loss_and_returns_a_history(capsys):
    train_dl, valid_dl = loaders()
    model = TinyNet()
    before = evaluate(model, train_dl)["val_loss"]
    history = fit(4, 0.2, model, train_dl, valid_dl)
    assert evaluate(model, train_dl)["val_loss"] < 0.5 * before
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(set(h) == {"val_loss", "val_acc", "train_loss", "epoch_time"} and h["epoch_time"] > 0 for h in history)
    assert history[-1]["val_acc"] > 0.8
    assert capsys.readouterr().out.count("Epoch [") == 4


def test_fit_uses_the_optimizer_it_is_given():
    train_dl, valid_dl = loaders()
    created = []

    def opt_func(params, lr):
        created.append(lr)
        return torch.optim.Adam(params, lr)

    model = TinyNet()
    before = model.net[1].weight.detach().clone()
    fit(1, 0.01, model, train_dl, valid_dl, opt_func=opt_func)
    assert created == [0.01] and not torch.equal(model.net[1].weight, before)
    frozen = TinyNet()
    frozen.requires_grad_(False)
    frozen.net[1].bias.requires_grad_(True)
    fit(1, 0.1, frozen, train_dl, valid_dl)
    assert torch.equal(frozen.net[1].weight, TinyNet().net[1].weight)  # frozen weights stay put


def test_get_predictions_shapes_and_order():
    _, valid_dl = loaders()
    model = TinyNet().train()
    probs, labels = get_predictions(model, valid_dl)
    images, expected = blobs(30, seed=1)
    assert probs.shape == (30, 2) and labels.shape == (30,) and probs.device.type == labels.device.type == "cpu"
    assert torch.allclose(probs.sum(dim=1), torch.ones(30)) and torch.equal(labels, expected)
    with torch.no_grad():
        assert torch.allclose(probs, model(images).softmax(dim=1), atol=1e-6)
    assert not model.training


# --- PretrainedClassifier: the course's one BatchNorm rule -------------------------------------

def _bn_modes(model):
    return [m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_pretrained_classifier_keeps_batchnorm_in_eval_mode():
    model = PretrainedClassifier("efficientnet_lite0", 3)  # ImageNet weights, offline
    assert model.backbone == "efficientnet_lite0" and model.pretrained
    model.unfreeze()
    assert model.train() is model and model.training and model.network._blocks[0].training
    assert _bn_modes(model) and not any(_bn_modes(model))
    before = model.network._bn0.running_mean.clone()
    model.training_step((torch.randn(2, 3, 32, 32), torch.tensor([0, 2])))
    assert torch.equal(model.network._bn0.running_mean, before)  # ImageNet statistics kept
    model.eval()
    model.train(False)
    assert not model.training


def test_scratch_classifier_trains_its_batchnorm():
    model = PretrainedClassifier("efficientnet_lite0", 3, pretrained=False).train()
    assert all(_bn_modes(model))
    before = model.network._bn0.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(model.network._bn0.running_mean, before)  # statistics learnt from the data


def test_pretrained_classifier_freeze_and_unfreeze():
    with torch.device("meta"):
        model = PretrainedClassifier("resnet18", 4, pretrained=False)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)

    def trainable():
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    total = sum(p.numel() for p in model.parameters())
    model.freeze()
    assert trainable() == 512 * 4 + 4
    model.unfreeze(1)
    assert trainable() == 512 * 4 + 4 + sum(p.numel() for p in model.network.layer4.parameters())
    model.unfreeze()
    assert trainable() == total


# --- the guards and the cap of the loop ---------------------------------------------------------

class CountingLoader:
    """A DataLoader stand-in that counts the batches it hands out."""

    def __init__(self, dl):
        self.dl, self.served = dl, 0

    def __len__(self):
        return len(self.dl)

    def __iter__(self):
        for batch in self.dl:
            self.served += 1
            yield batch


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0, -0.1, "0.1", None, True])
def test_fit_refuses_a_learning_rate_that_is_not_finite_and_positive(lr):
    train_dl, valid_dl = loaders()
    model = TinyNet()
    before = model.net[1].weight.detach().clone()
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got "):
        fit(1, lr, model, train_dl, valid_dl)
    assert torch.equal(model.net[1].weight, before)


def test_fit_stops_at_the_first_non_finite_loss_naming_epoch_and_step():
    images, labels = blobs(64, seed=0)
    images[40:48] = float("nan")  # batch 6 of 8
    train_dl = DataLoader(TensorDataset(images, labels), 8)
    model = TinyNet()
    with pytest.raises(FloatingPointError) as error:
        fit(3, 0.1, model, train_dl, loaders()[1])
    assert str(error.value) == ("training loss is nan in epoch 0, step 6: "
                                "lower the learning rate (lr) or check the data")
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was never taken


def test_max_steps_caps_training_evaluation_and_predictions(capsys):
    train_dl, valid_dl = (CountingLoader(dl) for dl in loaders())  # 8 and 4 batches
    history = fit(2, 0.1, TinyNet(), train_dl, valid_dl, max_steps=3)
    assert len(history) == 2 and train_dl.served == 2 * 3 and valid_dl.served == 2 * 3
    valid_dl.served = 0
    assert evaluate(TinyNet(), valid_dl, max_steps=2) and valid_dl.served == 2
    probs, labels = get_predictions(TinyNet(), valid_dl, max_steps=2)
    assert probs.shape == (16, 2) and torch.equal(labels, blobs(30, seed=1)[1][:16])
    fit(1, 0.1, TinyNet(), train_dl, valid_dl, max_steps=None)
    assert train_dl.served == 2 * 3 + 8  # None: every batch


def test_the_cap_comes_from_tlh_max_steps(monkeypatch):
    from tlhelpers import config
    monkeypatch.setenv("TLH_MAX_STEPS", "2")
    assert config._positive_int("TLH_MAX_STEPS") == 2
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("TLH_MAX_STEPS", bad)
        with pytest.raises(ValueError, match="TLH_MAX_STEPS"):
            config._positive_int("TLH_MAX_STEPS")
    monkeypatch.setenv("TLH_MAX_STEPS", "")
    assert config._positive_int("TLH_MAX_STEPS") is None
    for loop in (fit, evaluate, get_predictions):  # the loops' default is the setting
        assert inspect.signature(loop).parameters["max_steps"].default is config.MAX_STEPS
