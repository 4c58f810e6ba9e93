"""GPU utilities: pick a device and move data to it (introduced in notebook 05)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def get_default_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU (notebook 05)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_device(data, device, non_blocking: bool = False):
    """Move a tensor, or tensors nested in lists/tuples/dicts, to ``device`` (notebook 05).

    ``non_blocking=True`` lets a copy from pinned host memory overlap with GPU work.
    """
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a namedtuple
        return type(data)(*(to_device(x, device, non_blocking) for x in data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        moved = [to_device(x, device, non_blocking) for x in data]
        return tuple(moved) if isinstance(data, tuple) else moved
    return data


class DeviceDataLoader:
    """Wrap a DataLoader so every batch arrives on ``device`` (notebook 05).

    Copies are non-blocking when the loader pins memory, so the next batch's transfer can
    overlap with the current step. ``device=None`` picks ``get_default_device()``.
    """

    def __init__(self, dl, device=None):
        self.dl = dl
        self.device = torch.device(device) if device is not None else get_default_device()
        self.non_blocking = bool(getattr(dl, "pin_memory", False)) and self.device.type == "cuda"

    def __iter__(self):
        for batch in self.dl:
            yield to_device(batch, self.device, self.non_blocking)

    def __len__(self):
        return len(self.dl)

    def __repr__(self):
        return f"DeviceDataLoader({self.dl!r}, device={str(self.device)!r})"

    @property
    def dataset(self):
        return self.dl.dataset

    @property
    def batch_size(self):
        return getattr(self.dl, "batch_size", None)
