"""Reading image files: one loader for the whole course (course tooling).

``load_rgb`` opens any image file as an 8-bit, 3-channel RGB PIL image, upright; the Datasets,
the folder tools, ``predict``, the widgets and the caches all read images through it, so an odd
file is handled the same way everywhere. ``IMAGE_EXTENSIONS`` are the file endings read as images
(those of ``torchvision.datasets.ImageFolder``). ``MAX_IMAGE_PIXELS`` is the course's one limit
on the size of an image; ``ImageError`` is what ``load_rgb`` raises for a file it cannot use.
"""
from __future__ import annotations

import multiprocessing
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: File endings read as images (compared case-insensitively), as ``torchvision.datasets.ImageFolder``.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: The most pixels (width x height) an image may have, for every reader in the course: 120
#: megapixels, e.g. 12,000 x 10,000, which a 108-megapixel phone photo fits (360 MB as 8-bit
#: RGB). A larger file is refused before its pixels are decoded, so a small "decompression bomb"
#: (a PNG of a few kB that decodes to gigabytes) cannot fill the memory. PIL's own limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``: a warning above about 89 megapixels, an error above twice
#: that) is replaced by this one inside ``load_rgb``.
MAX_IMAGE_PIXELS = 120_000_000

#: 16-bit values 0..65535 to 8-bit 0..255: ``round(v * 255 / 65535)``, as a lookup table.
_TO_8_BIT = np.round(np.arange(65536) * (255 / 65535)).astype(np.uint8)
_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(OSError):
    """An image file ``load_rgb`` cannot use: the message names the file and says what to do.

    ``reason`` is the short cause without the file name (for lists of files).
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _name(path, name) -> str:
    """What messages call ``path``: ``name``, the path, or an open file's ``name``."""
    if name is not None:
        return str(name)
    if isinstance(path, (str, os.PathLike)):
        return os.fsdecode(path)
    return str(getattr(path, "name", None) or f"an in-memory {type(path).__name__}")


def _unreadable(label: str, err: Exception) -> str:
    return f"Cannot read image {label!r} ({type(err).__name__}: {err}). Delete or replace the file."


def _too_large(label: str, reason: str) -> str:
    return (f"Image {label!r} is too large: {reason} (the course's limit, "
            "tlhelpers.tools.images.MAX_IMAGE_PIXELS). Downscale it, or leave it out.")


def _open_checked(path, label: str) -> Image.Image:
    """Open and decode ``path``, refusing a file that is not a regular file or has too many pixels."""
    if isinstance(path, (str, os.PathLike)):
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            raise ImageError(f"Cannot read image {label!r} ({type(err).__name__}: {err}). "
                             "Check the path.", f"{type(err).__name__}: {err}") from err
        if not stat.S_ISREG(mode):  # reading a FIFO or a device would block or never end
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else \
                "a device or socket"
            raise ImageError(f"{label!r} is {kind}, not a regular file: pass image files only.",
                             f"{kind}, not a regular file")
    try:
        with warnings.catch_warnings():  # PIL's size warning: our own limit follows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:  # PIL's error, above twice its own limit
        reason = f"more than {MAX_IMAGE_PIXELS:,} pixels ({err})"
        raise ImageError(_too_large(label, reason), reason) from err
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds; we re-raise with the file name
        raise ImageError(_unreadable(label, err), f"{type(err).__name__}: {err}") from err
    with img:
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            reason = f"{width} x {height} = {width * height:,} pixels, more than {MAX_IMAGE_PIXELS:,}"
            raise ImageError(_too_large(label, reason), reason)
        try:
            img.load()  # decode now, inside the try, so truncated files fail here
        except Exception as err:  # noqa: BLE001
            raise ImageError(_unreadable(label, err), f"{type(err).__name__}: {err}") from err
    return img


def _to_8_bit(img: Image.Image, label: str) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image as an 8-bit "L" image, scaled, or ImageError.

    16-bit values (``I;16*``; ``I`` in 0..65535, as PIL reads 16-bit PGM files) map 0..65535
    to 0..255. Float (``F``) images hold 0..1 (mapped to 0..255) or whole numbers 0..65535 (a
    16-bit image stored as floats); any other range, and NaN or infinity, is refused: there is no
    way to tell which brightness such values mean.
    """
    values = np.asarray(img)

    def refuse(what: str) -> ImageError:
        reason = f"mode {img.mode} ({values.dtype}) with pixel values {what}"
        return ImageError(f"Image {label!r} is {reason}: the course cannot tell how bright they are. Save it "
                          "as an 8-bit or 16-bit PNG.", reason)

    if img.mode in _16_BIT_MODES:
        return Image.fromarray(_TO_8_BIT[values.astype(np.uint16)], mode="L")
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if img.mode == "I":
        if low < 0 or high > 65535:
            raise refuse(f"from {low} to {high}, not 0 to 65535")
        return Image.fromarray(_TO_8_BIT[values.astype(np.uint16)], mode="L")
    # "F": 32-bit float
    if not np.isfinite(values).all():
        raise refuse("that are NaN or infinite")
    if low >= 0 and high <= 1:
        return Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")
    if low >= 0 and high <= 65535 and np.array_equal(values, np.round(values)):
        return Image.fromarray(_TO_8_BIT[values.astype(np.uint16)], mode="L")
    raise refuse(f"from {low:g} to {high:g}, neither 0 to 1 nor whole numbers 0 to 65535")


def load_rgb(path, name=None) -> Image.Image:
    """Open an image file as an upright 8-bit RGB PIL image, whatever it holds (notebook 02).

    - EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): phone photos are stored
      sideways with a tag that says how to turn them.
    - Grayscale (L), CMYK and palette (P) images are converted. Images with transparency (RGBA,
      LA, P with a transparent colour) are composited on a white background: simply dropping the
      alpha channel would show whatever colour hides under the transparent pixels, often black.
    - 16-bit images are scaled to 8 bits (65535 -> 255), float images in 0..1 too (1.0 -> 255);
      other value ranges are refused (see ``_to_8_bit``).
    - Images with more than ``MAX_IMAGE_PIXELS`` pixels are refused before they are decoded, and
      so are paths that are not regular files (a FIFO named ``x.jpg`` would block forever).

    ``path`` is a file path or an open binary file; ``name`` is what messages call it (default:
    the path, or the file object's ``name``). Every failure is an ``ImageError`` (an ``OSError``)
    that names the file and says what to do.
    """
    label = _name(path, name)
    img = _open_checked(path, label)
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy for the usual upright image
    except Exception as err:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        warnings.warn(f"{label!r}: cannot apply its EXIF orientation ({type(err).__name__}: {err}); "
                      "using the image as stored.", stacklevel=2)
    if img.mode in (*_16_BIT_MODES, "I", "F"):
        img = _to_8_bit(img, label)
    if img.mode == "RGB":
        return img
    try:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        reason = f"mode {img.mode}, which cannot be converted to RGB ({err})"
        raise ImageError(f"Image {label!r} is {reason}. Save it as an 8-bit RGB PNG or JPEG.", reason) from err


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
