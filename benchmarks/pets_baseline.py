"""The original write-up's Pets pipeline and training loop, reimplemented as the benchmark baseline.

What the write-up this course grew from did, step for step (only the names are ours):

- a ``PetsDataset`` that opens every JPEG with PIL when an item is asked for;
- per image, in the DataLoader worker processes: ``Resize(224)`` (short side), ``Pad(8,
  padding_mode="reflect")``, ``RandomCrop(224)``, ``ToTensor()``, ``Normalize(imagenet_stats)``;
  we add ``RandomHorizontalFlip()`` so that both pipelines do the same augmentation;
- ``random_split`` of that one dataset, ``DataLoader(shuffle=True, num_workers=4,
  pin_memory=True)`` (``num_workers`` capped at the number of CPUs, as ``pets.make_loaders``);
- a ``DeviceDataLoader`` that moves every batch to the device with ``.to(device)``;
- ResNet34 with a new 37-class ``fc``, trained in float32 (no autocast, no channels_last) with
  Adam, ``grad_clip=0.1`` (clip by value) and ``weight_decay=1e-4``, one optimiser step per batch.

For timing, the ResNet34 is built with ``weights=None``: the speed does not depend on the
weights, and a benchmark must not need a download.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import transforms as T

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.pets import PetsDataset
from tlhelpers.tools.images import default_num_workers
from tlhelpers.training import DeviceDataLoader

IMG_SIZE = 224


def original_train_transforms(img_size: int = IMG_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The write-up's per-image training transform (plus a horizontal flip)."""
    return T.Compose([
        T.Resize(img_size),
        T.Pad(8, padding_mode="reflect"),
        T.RandomCrop(img_size),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def original_train_loader(pets_dir, device, img_size: int = IMG_SIZE, batch_size: int = 64, val_pct: float = 0.2,
                          seed: int = 42, num_workers: int | None = None) -> DeviceDataLoader:
    """The write-up's training batches: per-image PIL work in DataLoader workers, ``.to(device)`` per batch."""
    dataset = PetsDataset(pets_dir, original_train_transforms(img_size))
    n_valid = round(len(dataset) * val_pct)
    train_ds, _ = random_split(dataset, [len(dataset) - n_valid, n_valid],
                               generator=torch.Generator().manual_seed(seed))
    device = torch.device(device)
    num_workers = default_num_workers() if num_workers is None else num_workers
    train_dl = DataLoader(train_ds, batch_size, shuffle=True, num_workers=num_workers,
                          pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                          generator=torch.Generator().manual_seed(seed))
    return DeviceDataLoader(train_dl, device)


def original_model(num_classes: int = 37) -> nn.Module:
    """ResNet34 with a new ``fc`` head; random weights (``weights=None``) for timing."""
    model = torchvision.models.resnet34(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def original_optimizer(model: nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """Adam with the write-up's weight decay."""
    return torch.optim.Adam(model.parameters(), lr, weight_decay=1e-4)


def original_train_steps(model: nn.Module, batches, optimizer: torch.optim.Optimizer, grad_clip: float = 0.1) -> float:
    """The write-up's inner loop in float32: forward, cross entropy, backward, clip by value, step; the last loss."""
    model.train()
    loss = torch.zeros(())
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()  # like the write-up's per-epoch logging, this waits for the device
