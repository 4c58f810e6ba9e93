"""The device helpers of tlhelpers.training (notebook 05): get_default_device, to_device, DeviceDataLoader."""
import torch
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.training import DeviceDataLoader, get_default_device, to_device

# "meta" tensors have shapes but no data: a second device that every machine has, so a move is
# visible on a CPU-only machine.
META = torch.device("meta")


def test_get_default_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_default_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_default_device() == torch.device("cuda")  # CUDA first, even where MPS exists


def test_to_device_moves_nested_batches():
    data = {"pair": (torch.zeros(2), [torch.ones(3), {"labels": torch.tensor([0, 1])}]), "mask": torch.ones(1)}
    moved = to_device(data, META)
    images, (ones, inner) = moved["pair"]
    assert set(moved) == {"pair", "mask"} and set(inner) == {"labels"}
    assert all(t.device == META for t in (images, ones, inner["labels"], moved["mask"]))
    assert ones.shape == (3,) and inner["labels"].dtype == torch.int64
    assert to_device(torch.zeros(1), META).device == META
    assert data["pair"][0].device.type == "cpu"  # the input is left as it was


def _loader(n=10, batch_size=4):
    return DataLoader(TensorDataset(torch.randn(n, 3), torch.arange(n)), batch_size=batch_size)


def test_device_data_loader_len_and_iteration():
    dl = _loader()
    ddl = DeviceDataLoader(dl, torch.device("cpu"))
    assert len(ddl) == len(dl) == 3
    batches = list(ddl)
    assert [len(xb) for xb, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([yb for _, yb in batches]), torch.arange(10))
    assert len(list(ddl)) == 3  # iterable again: once per epoch


def test_device_data_loader_moves_every_batch():
    batches = list(DeviceDataLoader(_loader(), META))
    assert len(batches) == 3 and all(xb.device == META and yb.device == META for xb, yb in batches)
