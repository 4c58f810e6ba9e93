"""Reading image files: one loader for the whole course (course tooling).

``load_rgb`` opens any image file as a 3-channel RGB PIL image; the Datasets, the folder tools,
``predict``, the widgets and the caches all read images through it, so an odd file is handled
the same way everywhere. ``IMAGE_EXTENSIONS`` are the file endings read as images (those of
``torchvision.datasets.ImageFolder``).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

from PIL import Image

#: File endings read as images (compared case-insensitively), as ``torchvision.datasets.ImageFolder``.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def load_rgb(path) -> Image.Image:
    """Open an image file as a 3-channel RGB PIL image, whatever its mode (notebook 02).

    Grayscale (L), CMYK and palette (P) images are converted. Images with transparency (RGBA, LA,
    P with a transparent colour) are composited on a white background: simply dropping the alpha
    channel would show whatever colour hides under the transparent pixels, often black.
    A file PIL cannot read raises an ``OSError`` that names it.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now, inside the try, so truncated files fail here
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds; we re-raise with the file name
        raise OSError(
            f"Cannot read image {str(path)!r} ({type(err).__name__}: {err}). Delete or replace the "
            "file."
        ) from err
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def find_bad_images(paths) -> list[Path]:
    """The files in ``paths`` that cannot be decoded (notebook 02). Decodes every file: slow-ish."""
    bad = []
    for path in paths:
        try:
            load_rgb(path)
        except OSError:
            bad.append(Path(path))
    return bad


def list_image_files(folder) -> list[Path]:
    """The image files directly in ``folder`` (hidden files left out), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images.")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


# --- DataLoader workers --------------------------------------------------------------------

def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def default_num_workers() -> int:
    """DataLoader worker processes that work here: 0 or ``min(4, CPUs)`` (notebook 03).

    Workers started by ``fork`` (Linux up to Python 3.13) inherit everything. Workers started by
    ``spawn`` (Windows, macOS) or ``forkserver`` (Linux from Python 3.14) must unpickle the
    dataset, and objects defined in a notebook cannot be pickled, so in a notebook we use 0
    there (images are loaded in the main process). With one CPU workers only add overhead.
    """
    cpus = _usable_cpus()
    if cpus < 2:
        return 0
    start_method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if start_method != "fork" and _in_notebook():
        return 0
    return min(4, cpus)
