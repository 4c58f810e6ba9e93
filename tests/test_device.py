"""Tests for tlhelpers.device: default device, to_device on nested batches, DeviceDataLoader."""
from collections import namedtuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers import device as device_mod
from tlhelpers.device import DeviceDataLoader, get_default_device, to_device

# "meta" tensors have shapes but no data: a cheap, always-available second device, so moving
# to it is visible on a CPU-only machine.
META = torch.device("meta")

Batch = namedtuple("Batch", ["images", "labels"])


def test_get_default_device_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_default_device() == torch.device("cpu")


def test_get_default_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_default_device() == torch.device("cuda")


def test_get_default_device_uses_mps_when_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_default_device().type == "mps"


def test_get_default_device_here_is_cpu():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert get_default_device().type == "cpu"


def test_to_device_moves_nested_structures_and_keeps_their_types():
    data = {
        "pair": (torch.zeros(2), [torch.ones(3), "name", 7]),
        "batch": Batch(torch.zeros(2, 3), torch.tensor([0, 1])),
    }
    moved = to_device(data, META)
    images, rest = moved["pair"]
    assert isinstance(moved["pair"], tuple) and isinstance(rest, list)
    assert images.device == META and rest[0].device == META
    assert rest[1:] == ["name", 7]  # non-tensors pass through unchanged
    assert isinstance(moved["batch"], Batch)
    assert moved["batch"].images.device == META and moved["batch"].labels.device == META
    assert moved["batch"].images.shape == (2, 3)


def test_to_device_on_a_plain_tensor_and_non_tensors():
    assert to_device(torch.zeros(1), META).device == META
    assert to_device("text", META) == "text"
    assert to_device(None, META) is None


def _loader(n=10, batch_size=4):
    ds = TensorDataset(torch.randn(n, 3), torch.arange(n))
    return DataLoader(ds, batch_size=batch_size)


def test_device_data_loader_len_and_iteration_on_cpu():
    dl = _loader()
    ddl = DeviceDataLoader(dl, "cpu")
    assert len(ddl) == len(dl) == 3
    batches = list(ddl)
    assert [len(xb) for xb, _ in batches] == [4, 4, 2]
    assert all(xb.device.type == "cpu" for xb, _ in batches)
    assert torch.equal(torch.cat([yb for _, yb in batches]), torch.arange(10))
    assert ddl.dataset is dl.dataset and ddl.batch_size == 4
    assert list(ddl) and len(list(ddl)) == 3  # can be iterated again (once per epoch)


def test_device_data_loader_moves_batches():
    batches = list(DeviceDataLoader(_loader(), META))
    assert all(xb.device == META and yb.device == META for xb, yb in batches)


def test_device_data_loader_default_device(monkeypatch):
    monkeypatch.setattr(device_mod, "get_default_device", lambda: META)
    assert DeviceDataLoader(_loader()).device == META
    assert "meta" in repr(DeviceDataLoader(_loader()))


def test_device_data_loader_non_blocking_only_for_pinned_cuda():
    assert not DeviceDataLoader(_loader(), "cpu").non_blocking
    pinned = DataLoader(TensorDataset(torch.zeros(2)), pin_memory=True)
    assert DeviceDataLoader(pinned, "cuda").non_blocking
    assert not DeviceDataLoader(pinned, "cpu").non_blocking
