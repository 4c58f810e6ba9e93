"""A GPU-resident batch loader: the whole dataset lives on the device as one uint8 tensor (notebook 07).

Small datasets (CIFAR-10 is 50,000 x 3 x 32 x 32 bytes = 150 MB) fit in GPU memory many
times over. Keeping them there as uint8 and doing the augmentation on the device, for a
whole batch at once, removes the usual bottleneck of a PIL pipeline in DataLoader
workers (decode, ``Resize(224)``, crop and flip one image at a time on 2 CPU cores)::

    loader = GPUBatchLoader(images, labels, batch_size=256, train=True, pad=4,
                            size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cuda")
    for xb, yb in loader:         # xb: (B, 3, 224, 224) float32 on the device, normalised
        ...

Per batch, in this order (all on the device, vectorised over the batch; on a CPU with NumPy,
see ``_numpy_on_cpu``):

1. gather the batch's uint8 images (a seeded shuffle when ``shuffle=True``);
2. training only: random crop of ``crop`` pixels from the image padded by ``pad``
   (``pad_mode`` "reflect" or "constant"), then a random horizontal flip, both on the uint8
   bytes (4x less memory traffic than on floats);
   evaluation: a centre crop (the identity when ``crop`` is the image size);
3. optional resize to ``size`` (bilinear; antialiasing only when shrinking);
4. float conversion and normalisation with ``mean``/``std`` (in 0-1 units);
5. optional ``channels_last`` memory format (faster convolutions with mixed precision).

The loader knows nothing about CIFAR: any fixed-size uint8 image tensor works, for
example a cache of Oxford-IIIT Pets images resized once to 144 px and cropped to 128.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tlhelpers import config
from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (for `mean=`, `std=`: re-exported)


def _as_uint8_images(images) -> torch.Tensor:
    """Accept a (N, C, H, W) uint8 tensor or NumPy array; refuse anything we would silently misread."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(
            "images must be a uint8 tensor or array of shape (N, C, H, W), got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
            " (convert with torch.as_tensor(array).permute(0, 3, 1, 2) for (N, H, W, C) data)."
        )
    return images


def _numpy_on_cpu(device: torch.device) -> bool:
    """Make CPU batches with NumPy (gather, crop, flip, normalise); GPU batches with PyTorch. Same values.

    On a CPU, a PyTorch gather computes an index for every pixel (~15x slower than copying
    B windows), and every PyTorch operation is split over a pool of threads that must all
    finish; when another program keeps a core busy, each operation waits for the slowest
    thread. NumPy does these few memory-bound passes in one thread, unaffected.
    """
    return device.type == "cpu"


def _pair(value, default) -> tuple[int, int]:
    if value is None:
        return default
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


class GPUBatchLoader:
    """Iterate ``(images, labels)`` batches made on the device from one uint8 tensor (notebook 07).

    Args:
        images: uint8 (N, C, H, W) tensor or array; copied to ``device`` once.
        labels: (N,) integer labels (int64 on the device).
        batch_size: examples per batch.
        train: True for augmentation and shuffling; False for a deterministic evaluation
            loader (no augmentation, no shuffle, centre crop).
        shuffle: shuffle each epoch (default: ``train``).
        pad: pixels of padding before the random crop (training only; 0 turns it off).
        pad_mode: "reflect" or "constant" (zero) padding.
        crop: crop size (int or (h, w)); default: the image size.
        flip: random horizontal flips (training only).
        size: resize the crop to this size (int or (h, w)), e.g. 224 for an ImageNet backbone.
        mean, std: per-channel statistics in 0-1 units; None keeps values in [0, 1].
        channels_last: return batches in ``torch.channels_last`` memory format.
        dtype: floating type of the batches (float32 by default; autocast handles mixed precision).
        drop_last: drop the last incomplete batch (keeps BatchNorm statistics stable).
        seed: seeds the shuffling and the augmentation, so runs repeat exactly.
        device: where the data lives and the batches are made.

    Every example appears exactly once per epoch (once at most with ``drop_last``); each
    new ``iter()`` is a new epoch with a new order.
    """

    def __init__(self, images, labels, batch_size: int = 256, *, train: bool = True,
                 shuffle: bool | None = None, pad: int = 0, pad_mode: str = "reflect",
                 crop: int | Sequence[int] | None = None, flip: bool = True,
                 size: int | Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 drop_last: bool = False, seed: int = 0, device="cpu"):
        images = _as_uint8_images(images)
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if len(images) == 0:
            raise ValueError("images is empty: there is nothing to load")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.device = torch.device(device)
        self.images = images.to(self.device)                # (N, C, H, W) uint8, stays here
        self.labels = labels.to(self.device, torch.int64)   # (N,)
        self.batch_size = config.capped_batch_size(int(batch_size))  # TLH_MAX_BATCH_SIZE: a capped test run
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.pad, self.pad_mode = int(pad), pad_mode
        height, width = images.shape[-2:]
        self.crop = _pair(crop, (height, width))
        if self.crop[0] > height + 2 * self.pad or self.crop[1] > width + 2 * self.pad:
            raise ValueError(f"crop {self.crop} is larger than the padded image ({height}+2*{pad}, {width}+2*{pad})")
        self.flip = bool(flip)
        self.size = _pair(size, None)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.drop_last = bool(drop_last)
        channels = images.shape[1]
        if mean is not None:
            if len(mean) != channels or len(std) != channels:
                raise ValueError(f"mean and std need {channels} values (one per channel)")
            # Fold /255 and the normalisation into one multiply-add: x * scale + shift.
            mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            self._scale = (1.0 / (255.0 * std_t)).to(self.device)
            self._shift = (-mean_t / std_t).to(self.device)
        else:
            self._scale = torch.full((1, 1, 1, 1), 1.0 / 255.0, device=self.device)
            self._shift = torch.zeros((1, 1, 1, 1), device=self.device)
        # Random numbers come from a CPU generator (the same on every device), then move over:
        # a few integers per batch, so the transfer costs nothing.
        self.generator = torch.Generator().manual_seed(seed)

    # --- sizes ------------------------------------------------------------------------

    @property
    def num_examples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_examples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the batches this loader yields."""
        return self.size or self.crop

    # --- one batch --------------------------------------------------------------------

    def _random_crop_flip(self, x: torch.Tensor, train_flip: bool) -> torch.Tensor:
        """Pad the batch, cut a differently placed crop out of every image, optionally mirror some."""
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)  # works on uint8 too, same values
        batch, channels, height, width = x.shape
        crop_h, crop_w = self.crop
        # Random numbers in a fixed order (tops, lefts, flips), whatever the device and code path.
        top = torch.randint(0, height - crop_h + 1, (batch,), generator=self.generator)
        left = torch.randint(0, width - crop_w + 1, (batch,), generator=self.generator)
        flip = torch.rand(batch, generator=self.generator) < 0.5 if train_flip else None
        if _numpy_on_cpu(x.device):
            # On a CPU: the B windows, mirrored where flipped, stacked by NumPy in one pass.
            pixels, tops, lefts = x.numpy(), top.tolist(), left.tolist()
            windows = [pixels[i, :, tops[i]:tops[i] + crop_h, lefts[i]:lefts[i] + crop_w] for i in range(batch)]
            flips = flip.tolist() if flip is not None else [False] * batch
            return torch.from_numpy(np.stack([w[..., ::-1] if f else w for w, f in zip(windows, flips)]))
        # On a GPU, one gather for the whole batch: rows[b] = top[b] + 0..crop_h-1, same for columns.
        top, left = top.to(x.device), left.to(x.device)
        rows = (top[:, None] + torch.arange(crop_h, device=x.device))[:, None, :, None]  # (B, 1, h, 1)
        cols = (left[:, None] + torch.arange(crop_w, device=x.device))[:, None, None, :]  # (B, 1, 1, w)
        batch_idx = torch.arange(batch, device=x.device)[:, None, None, None]
        chan_idx = torch.arange(channels, device=x.device)[None, :, None, None]
        x = x[batch_idx, chan_idx, rows, cols]                                            # (B, C, h, w)
        if flip is not None:
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        return x

    def _center_crop(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        crop_h, crop_w = self.crop
        if (crop_h, crop_w) == (height, width):
            return x
        if crop_h > height or crop_w > width:  # evaluation never pads, so pad symmetrically if needed
            ph, pw = max(0, crop_h - height), max(0, crop_w - width)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=self.pad_mode)
            height, width = x.shape[-2:]
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return x[:, :, top:top + crop_h, left:left + crop_w]

    def transform(self, images_uint8: torch.Tensor, train: bool | None = None) -> torch.Tensor:
        """Turn a (B, C, H, W) uint8 batch on the device into the model's float input."""
        train = self.train if train is None else train
        x = images_uint8                                # (B, C, H, W) uint8: cropping moves 4x fewer bytes
        if train:
            x = self._random_crop_flip(x, self.flip)
        else:
            x = self._center_crop(x)
        resize = self.size is not None and tuple(x.shape[-2:]) != self.size
        if _numpy_on_cpu(x.device) and not resize:
            pixels = np.multiply(x.numpy(), self._scale.numpy(), dtype=np.float32)  # (B, C, h, w) float32
            pixels += self._shift.numpy()              # /255 and (x - mean) / std, as below
            x = torch.from_numpy(pixels)
        else:
            x = x.float()                               # (B, C, h, w), values 0..255
            if resize:
                shrinking = self.size[0] < x.shape[-2] or self.size[1] < x.shape[-1]
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=shrinking)
            x = x.mul_(self._scale).add_(self._shift)   # /255 and (x - mean) / std, in place
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype)

    # --- one epoch --------------------------------------------------------------------

    def __iter__(self):
        n = self.num_examples
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.transform(self._gather(idx)), self.labels[idx]

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images ``idx`` of the batch, (B, C, H, W)."""
        if _numpy_on_cpu(self.device):
            return torch.from_numpy(self.images.numpy()[idx.numpy()])  # NumPy copies whole rows
        return self.images[idx]

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (f"GPUBatchLoader({self.num_examples} images {tuple(self.images.shape[1:])} uint8 on {self.device}, "
                f"{mode}, batch_size={self.batch_size}, {len(self)} batches, output {self.output_size})")
