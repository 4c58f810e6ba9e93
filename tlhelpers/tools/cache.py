"""The fast Pets path: decode and resize every image once into a uint8 cache (introduced in notebook 05).

The per-image pipeline of notebooks 02-03 decodes a ~500x375 JPEG, resizes it, crops, flips
and normalises it, one image at a time, in every epoch. On 2 CPU cores that is slower than a
GPU can train, so the GPU waits. Most of that work is the same in every epoch: the decode
and the resize. So we do them **once**::

    images = build_image_cache(files, size=256)   # (N, 3, 256, 256) uint8, memory-mapped .npy

and afterwards only the cheap random part runs, for a whole batch at once, on the device
(``tlhelpers.tools.gpu_data.GPUBatchLoader``: random crop, flip, normalise)::

    train_dl, valid_dl, classes = cached_pets_loaders(pets_dir, size=256, crop=224, device=device)

**How an image becomes a square.** The short side is resized to ``size`` and the centre
``size`` x ``size`` square is kept (one PIL call: ``resize`` with a source ``box``). We chose
this over padding to a square because

- it is what ``pets.eval_transforms`` already does (short side to ``1.14 x 224``, then the
  centre), so the cached validation images show what the per-image path validates on;
- pets are photographed centred; padding a 4:3 photo to a square would spend a quarter of
  every cached image (and of every batch the GPU sees) on empty bars and make the animal
  smaller. What we lose is the outer 12.5% on each side of the long side.

**The cache on disk.** ``data_dir()/cache/<folder>-<hash>-<size>px.npy`` (a plain ``.npy``,
opened memory-mapped, so it costs no RAM until read) and a small JSON sidecar next to it. The
sidecar holds a fingerprint of the source files (names, sizes and modification times, in
order) and the cache version; a changed, added or removed image changes the fingerprint and
the cache is rebuilt in place. Both files are written to ``*.part`` files first and renamed
when complete (the sidecar last), so an interrupted build never leaves a cache that looks
finished.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlhelpers import config
from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.pets import PetsDataset, random_split_indices, stratified_split_indices
from tlhelpers.tools.fileio import atomic_path, write_text_atomic
from tlhelpers.tools.gpu_data import GPUBatchLoader
from tlhelpers.tools.images import load_rgb

__all__ = ["CACHE_VERSION", "load_square", "files_fingerprint", "cache_paths", "read_image_cache",
           "build_uint8_cache", "build_image_cache", "cache_build_seconds", "cached_pets_loaders", "images_per_second"]

#: Bump when ``load_square`` changes, so that every existing cache is rebuilt. 2: ``load_rgb``
#: applies EXIF orientation and scales 16-bit and float images.
CACHE_VERSION = 2
#: How ``load_square`` makes a square (recorded in the sidecar, for people reading it).
SQUARE_METHOD = "short side resized to size (PIL bilinear, antialiased), centre square kept"


# --- one image -----------------------------------------------------------------------------

def load_square(path, size: int) -> np.ndarray:
    """Decode an image as RGB, resize its short side to ``size`` and keep the centre square (notebook 05).

    Returns a ``(size, size, 3)`` uint8 array. Resizing only the centre square (the ``box``
    argument of ``PIL.Image.resize``) gives the picture of ``Resize(size)`` followed by
    ``CenterCrop(size)`` (up to torchvision rounding the resized width to whole pixels),
    without resizing the parts that are thrown away.
    """
    img = load_rgb(path)  # RGB whatever the file (grayscale, CMYK, palette, RGBA on white)
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    square = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(square, dtype=np.uint8)


# --- where the cache lives and what it depends on ------------------------------------------

def files_fingerprint(files: Sequence, size: int) -> str:
    """A hash of what the cache depends on: names, sizes, mtimes (in order), ``size``, version (notebook 05).

    Stat-ing a file is cheap (7,400 files take a few milliseconds), so the cache is checked on
    every use; reading the files' contents would take as long as decoding them.
    """
    digest = hashlib.sha1(f"tlhelpers-image-cache v{CACHE_VERSION} size={size}\n".encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"{Path(path).name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_paths(files: Sequence, size: int, cache_dir=None, name: str | None = None) -> tuple[Path, Path]:
    """``(images.npy, sidecar.json)`` of the cache for ``files`` at ``size`` (notebook 05).

    One cache per source folder and size: ``<folder>-<hash of its path>-<size>px``, so a changed
    folder overwrites its own cache instead of leaving an old one behind. ``name`` overrides
    ``<folder>-<hash>`` (for two different file lists from one folder).
    """
    folder = Path(cache_dir) if cache_dir is not None else config.data_dir() / "cache"
    if name is None:
        parent = Path(files[0]).resolve().parent
        if parent.name == "images":  # oxford-iiit-pet/images -> "oxford-iiit-pet"
            parent = parent.parent
        tag = hashlib.sha1(str(parent).encode()).hexdigest()[:10]
        name = f"{parent.name}-{tag}"
    stem = f"{name}-{size}px"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def read_image_cache(npy_path, json_path, fingerprint: str, count: int, size: int):
    """The cached array (memory-mapped) if the sidecar matches ``fingerprint`` and the file is whole (notebook 05).

    ``None`` when there is no cache, it is stale, or it is damaged: then it must be (re)built.
    A damaged cache (the sidecar matches, but the array cannot be read or has another shape or
    type than ``(count, 3, size, size)`` uint8) is reported by name before it is rebuilt.
    """
    try:
        meta = json.loads(Path(json_path).read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
    except (OSError, ValueError):
        return None  # no sidecar (never built, or an interrupted build): nothing to report
    expected = (count, 3, size, size)
    try:
        # "c" (copy-on-write): reads come straight from the file, and the array is writable,
        # so torch.from_numpy accepts it without a warning; writes never reach the file.
        images = np.load(npy_path, mmap_mode="c")
    except (OSError, ValueError) as err:
        print(f"The image cache {npy_path} cannot be read ({type(err).__name__}: {err}): rebuilding it.")
        return None
    if images.shape != expected or images.dtype != np.uint8:
        print(f"The image cache {npy_path} holds {tuple(images.shape)} {images.dtype}, expected {expected} uint8: "
              "rebuilding it.")
        return None
    return images


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


# --- building the cache --------------------------------------------------------------------

def build_uint8_cache(npy_path, json_path, fingerprint: str, count: int, size: int, decode_row, *,
                      progress: bool = True, num_threads: int | None = None, meta: dict | None = None) -> np.ndarray:
    """A memory-mapped ``(count, 3, size, size)`` uint8 array at ``npy_path``, built once (notebooks 05 and 07).

    ``decode_row(i)`` returns row ``i`` as a ``(size, size, 3)`` uint8 array. When the sidecar
    ``json_path`` holds ``fingerprint`` the existing file is opened and nothing is decoded;
    otherwise every row is decoded (with ``num_threads`` threads: PIL releases the GIL while it
    decodes and resizes, so threads use all cores without pickling anything), written to a
    ``.part`` file and renamed, and the sidecar (with ``meta``) is written last. An error or
    Ctrl-C leaves no partial file.
    """
    npy_path, json_path = Path(npy_path), Path(json_path)
    cached = read_image_cache(npy_path, json_path, fingerprint, count, size)
    if cached is not None:
        return cached

    start = time.perf_counter()
    # atomic_path: rows go to <npy>.<pid>.part, which is fsynced and renamed onto npy_path only if the
    # build succeeds; an error or Ctrl-C deletes it, and .part files of killed builds are swept first.
    with atomic_path(npy_path) as part:
        images = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
        try:
            def decode_into(i: int) -> None:
                row = np.asarray(decode_row(i))
                if row.shape != (size, size, 3) or row.dtype != np.uint8:  # numpy would broadcast a wrong shape
                    raise ValueError(f"Cannot cache row {i} into {npy_path}: it is {row.shape} {row.dtype}, "
                                     f"expected ({size}, {size}, 3) uint8.")
                images[i] = row.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)

            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=count, desc=f"caching {count:,} images at {size}x{size}", leave=False)
            pool = ThreadPoolExecutor(num_threads or _default_threads())
            try:
                for _ in pool.map(decode_into, range(count)):
                    if bar is not None:
                        bar.update()
            finally:  # after an error, do not decode the remaining files first
                pool.shutdown(wait=True, cancel_futures=True)
                if bar is not None:
                    bar.close()
            images.flush()
        finally:
            del images  # close the memory map before the file is renamed (or deleted, after an error)
        _remove(json_path)  # an old sidecar must never describe the new array
    meta = {"format": "tlhelpers-image-cache", "version": CACHE_VERSION, "fingerprint": fingerprint,
            "count": count, "size": size, "shape": [count, 3, size, size], "dtype": "uint8", **(meta or {}),
            "build_seconds": round(time.perf_counter() - start, 2)}
    write_text_atomic(json_path, json.dumps(meta, indent=1) + "\n")  # last: marks the cache complete
    return read_image_cache(npy_path, json_path, fingerprint, count, size)


def build_image_cache(files: Sequence, size: int = 256, cache_dir=None, progress: bool = True,
                      num_threads: int | None = None, name: str | None = None) -> np.ndarray:
    """Every image of ``files`` decoded and squared once: a memory-mapped (N, 3, size, size) uint8 array (notebook 05).

    Row ``i`` is ``files[i]`` (``load_square``, channels first). The first call decodes every
    file and writes the cache under ``cache_dir`` (default ``data_dir()/cache``; see
    ``build_uint8_cache``); later calls only check the fingerprint and open the file. A changed
    source file, or another ``size``, rebuilds it.
    An unreadable image raises ``OSError`` naming the file, and leaves no partial cache.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("build_image_cache: files is empty; pass the image paths to cache "
                         "(e.g. PetsDataset(pets_dir).files).")
    if int(size) < 1:
        raise ValueError(f"build_image_cache: size={size} must be a positive number of pixels, e.g. 256.")
    size = int(size)
    meta = {"square": SQUARE_METHOD, "source": str(files[0].resolve().parent),
            "first_file": files[0].name, "last_file": files[-1].name}
    return build_uint8_cache(*cache_paths(files, size, cache_dir, name), files_fingerprint(files, size), len(files),
                             size, lambda i: load_square(files[i], size), progress=progress,
                             num_threads=num_threads, meta=meta)


def cache_build_seconds(files: Sequence, size: int, cache_dir=None, name: str | None = None) -> float | None:
    """How long the cache of ``files`` took to build, as recorded in its sidecar (None if there is none)."""
    _, json_path = cache_paths([Path(f) for f in files], size, cache_dir, name)
    try:
        return float(json.loads(json_path.read_text())["build_seconds"])
    except (OSError, ValueError, KeyError):
        return None


# --- loaders -------------------------------------------------------------------------------

def _rows_on_device(images: np.ndarray, indices: Sequence[int], device: torch.device, chunk: int = 512) -> torch.Tensor:
    """``images[indices]`` as one uint8 tensor on ``device``, copied ``chunk`` rows at a time.

    Copying in chunks keeps host memory small on a GPU: never more than ``chunk`` images are
    in RAM at once, whatever the size of the data set.
    """
    indices = np.asarray(indices, dtype=np.int64)
    out = torch.empty((len(indices), *images.shape[1:]), dtype=torch.uint8, device=device)
    for start in range(0, len(indices), chunk):
        rows = indices[start:start + chunk]
        out[start:start + len(rows)] = torch.from_numpy(images[rows])  # fancy index: a copy of these rows
    return out


def cached_pets_loaders(pets_dir, size: int = 256, crop: int = 224, batch_size: int = 64, val_pct: float = 0.2,
                        seed: int = config.SEED, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu", *,
                        stratified: bool = True, valid_batch_size: int | None = None,
                        cache_dir=None, progress: bool = True):
    """``(train_dl, valid_dl, classes)`` for the Pets images from a uint8 cache, batches made on ``device`` (nb 05).

    The same files, labels and split as ``pets.make_pets_splits(pets_dir, size, val_pct, seed)``
    (``stratified=False``: ``pets.random_split_indices`` instead), so results are comparable with
    the per-image path. Images are
    cached at ``size`` x ``size`` (``build_image_cache``); training batches are random
    ``crop`` x ``crop`` crops with random horizontal flips, validation batches the centre
    crop, both normalised with ``mean``/``std``. Both loaders are ``GPUBatchLoader``s: the
    uint8 images live on ``device`` (``N * 3 * size**2`` bytes in all: 1.45 GB for the 7,390
    Pets images at 256). ``train_dl.files`` and ``valid_dl.files`` list their images in order.
    """
    if not 0 < crop <= size:
        raise ValueError(f"cached_pets_loaders: crop={crop} must be between 1 and size={size} "
                         "(the cached square); e.g. size=256, crop=224.")
    device = torch.device(device)
    dataset = PetsDataset(pets_dir)  # sorted files, sorted classes
    if stratified:
        train_idx, valid_idx = stratified_split_indices(dataset.targets, val_pct, seed)
    else:
        train_idx, valid_idx = random_split_indices(len(dataset), val_pct, seed)
    images = build_image_cache(dataset.files, size, cache_dir=cache_dir, progress=progress)
    targets = torch.as_tensor(dataset.targets, dtype=torch.int64)
    common = dict(crop=crop, mean=mean, std=std, seed=seed, device=device)
    train_dl = GPUBatchLoader(_rows_on_device(images, train_idx, device), targets[train_idx], batch_size,
                              train=True, flip=True, **common)
    valid_dl = GPUBatchLoader(_rows_on_device(images, valid_idx, device), targets[valid_idx],
                              valid_batch_size or 2 * batch_size, train=False, **common)
    # which files each loader holds, in order, for checks and for showing predictions later
    train_dl.files = [dataset.files[i] for i in train_idx]
    valid_dl.files = [dataset.files[i] for i in valid_idx]
    return train_dl, valid_dl, list(dataset.classes)


# --- measuring a loader --------------------------------------------------------------------

def _synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(loader, num_batches: int = 10, warmup_batches: int = 1, device=None) -> float:
    """Images per second that ``loader`` delivers, over ``num_batches`` batches after ``warmup_batches`` (notebook 05).

    Only the loading is timed: each batch is fetched (and, for a ``DataLoader``, moved to
    ``device`` as a training loop would) and dropped. The warm-up batches start the worker
    processes and fill their queues, which happens once per training run, not per batch.
    A loader with fewer batches is restarted, as the next epoch would be.
    """
    if num_batches < 1:
        raise ValueError(f"images_per_second: num_batches={num_batches} must be at least 1.")
    target = torch.device(device) if device is not None else None

    def batches():
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise ValueError("images_per_second: the loader yields no batches.")

    stream = batches()
    for _ in range(warmup_batches):
        next(stream)
    _synchronize(target)
    count, start = 0, time.perf_counter()
    for _ in range(num_batches):
        images, labels = next(stream)[:2]
        if target is not None:
            images, labels = images.to(target, non_blocking=True), labels.to(target, non_blocking=True)
        count += len(images)
    _synchronize(target)
    elapsed = time.perf_counter() - start
    return count / elapsed if elapsed > 0 else math.inf
