"""The Oxford-IIIT Pet data set as PyTorch sees it (introduced in notebooks 02-03).

- ``parse_breed``, ``is_cat``            the label is in the file name
- ``load_rgb``                           open any image as RGB (grayscale, RGBA, palette, CMYK)
- ``PetsDataset``                        a ``Dataset`` over ``images/``, with sorted classes
- ``train_transforms``, ``eval_transforms``
- ``random_split_indices``, ``stratified_split_indices``, ``make_pets_splits``
- ``make_loaders``, ``default_num_workers``
- ``class_counts``                       for the class-balance figures

A fix over the write-up this course grew from: there, ``random_split`` subsets of one dataset
shared its *training* transform, so validation images were randomly cropped and flipped and
the validation accuracy jittered from run to run. ``make_pets_splits`` builds two views of the
same sorted file list, one per transform, and takes the subsets from the matching view.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402  (for torchvision's pretrained weights)

#: File endings treated as images (compared case-insensitively); anything else in images/ is skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# --- labels from file names ----------------------------------------------------------------

def parse_breed(filename) -> str:
    """The breed in a file name: ``"great_pyrenees_173.jpg"`` -> ``"great_pyrenees"`` (notebook 02).

    Breed names contain underscores themselves, so we split on the *last* one only.
    """
    stem = Path(filename).stem
    breed, sep, number = stem.rpartition("_")
    if not sep or not breed:
        raise ValueError(f"{filename!r} is not named <Breed_Name>_<number>.<ext> like the Oxford-IIIT Pet images.")
    return breed


def is_cat(breed: str) -> bool:
    """True for cat breeds: the data set writes cats Capitalised and dogs in lower case (notebook 02)."""
    return breed[:1].isupper()


def class_sort_key(name: str) -> str:
    """Sort classes alphabetically ignoring case, the order of the official CLASS-IDs (notebook 02)."""
    return name.lower()


# --- reading images ------------------------------------------------------------------------

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
            "file, or build the dataset with on_bad_image='skip'."
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


def _images_dir(root) -> Path:
    """Accept the ``oxford-iiit-pet`` folder or its ``images/`` folder."""
    root = Path(root)
    if (root / "images").is_dir():
        return root / "images"
    if root.is_dir():
        return root
    raise FileNotFoundError(
        f"{root} does not exist. Pass the oxford-iiit-pet folder (or its images/ folder), "
        "e.g. tlhelpers.tools.samples.ensure_pets()."
    )


def list_image_files(root) -> list[Path]:
    """The image files of ``root`` (``oxford-iiit-pet`` or its ``images/``), sorted by name (notebook 02)."""
    folder = _images_dir(root)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# --- the Dataset ---------------------------------------------------------------------------

class PetsDataset(Dataset):
    """The Oxford-IIIT Pet images with breed labels parsed from their file names (notebook 02).

    ``root``: the ``oxford-iiit-pet`` folder or its ``images/`` folder. ``files``: optional file
    names or paths to use instead of every image there. ``classes``: optional class list (by
    default the breeds found, sorted ignoring case, so index = official CLASS-ID - 1).
    ``on_bad_image``: ``"raise"`` (default) fails when an unreadable file is loaded, naming it;
    ``"skip"`` decodes every file once up front and leaves out the unreadable ones
    (listed in ``self.skipped``).

    Items are ``(transform(image), target)``; images are always RGB (see ``load_rgb``).
    """

    def __init__(self, root, transform=None, files=None, classes=None, on_bad_image: str = "raise"):
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image={on_bad_image!r}: use 'raise' or 'skip'.")
        self.images_dir = _images_dir(root)
        if files is None:
            paths = list_image_files(self.images_dir)
        else:
            paths = sorted(self.images_dir / Path(f).name for f in files)
        self.skipped: list[Path] = []
        if on_bad_image == "skip":
            self.skipped = find_bad_images(paths)
            if self.skipped:
                skipped = set(self.skipped)
                paths = [p for p in paths if p not in skipped]
                names = ", ".join(p.name for p in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
                print(f"PetsDataset: skipped {len(self.skipped)} unreadable image(s): {names}")
        self.files: list[Path] = paths
        self.transform = transform
        breeds = [parse_breed(p.name) for p in self.files]
        self.classes: list[str] = list(classes) if classes is not None else sorted(set(breeds), key=class_sort_key)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted(set(breeds) - set(self.class_to_idx))
        if unknown:
            raise ValueError(f"breeds {unknown} found in {self.images_dir} are not in classes={self.classes}")
        self.targets: list[int] = [self.class_to_idx[b] for b in breeds]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx):
        img = load_rgb(self.files[idx])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[idx]

    def __repr__(self) -> str:
        return (f"PetsDataset({len(self)} images, {len(self.classes)} classes, "
                f"folder={str(self.images_dir)!r}, transform={self.transform})")


class LabeledSubset(Subset):
    """A ``Subset`` that keeps ``classes``, ``class_to_idx`` and its own ``targets`` (notebook 03)."""

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.dataset.class_to_idx

    @property
    def targets(self) -> list[int]:
        return [self.dataset.targets[i] for i in self.indices]

    @property
    def transform(self):
        return self.dataset.transform


# --- transforms ----------------------------------------------------------------------------

def train_transforms(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=(0.35, 1.0)):
    """Augmenting transform for training: random crop and flip, light colour jitter (notebook 02).

    ``mean``/``std`` must match the backbone: ImageNet statistics for torchvision weights,
    ``tlhelpers.tools.efficientnet_lite.LITE0_MEAN``/``LITE0_STD`` (about 0.5/0.5) for EfficientNet-Lite0.
    """
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transforms(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Deterministic transform for validation and prediction: resize, centre crop (notebook 02).

    The shorter side goes to ``size * 1.14`` (256 for 224), then the central ``size`` square.
    """
    return T.Compose([
        T.Resize(int(size * 1.14), antialias=True),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# --- splits --------------------------------------------------------------------------------

def _n_valid(n: int, val_pct: float) -> int:
    if not 0 < val_pct < 1:
        raise ValueError(f"val_pct={val_pct}: use a fraction between 0 and 1, e.g. 0.2.")
    n_valid = round(n * val_pct)
    if not 0 < n_valid < n:
        raise ValueError(f"val_pct={val_pct} of {n} items leaves the training or validation set empty.")
    return n_valid


def random_split_indices(n: int, val_pct: float = 0.2, seed: int = 42) -> tuple[list[int], list[int]]:
    """Shuffle ``range(n)`` and cut off ``val_pct`` for validation: ``(train_idx, valid_idx)`` (notebook 03).

    Uses ``torch.utils.data.random_split`` with its own seeded generator, so the split does not
    depend on (or disturb) the global random state.
    """
    n_valid = _n_valid(n, val_pct)
    generator = torch.Generator().manual_seed(seed)
    train, valid = torch.utils.data.random_split(range(n), [n - n_valid, n_valid], generator=generator)
    return list(train.indices), list(valid.indices)


def stratified_split_indices(targets: Sequence[int], val_pct: float = 0.2, seed: int = 42):
    """Like ``random_split_indices``, but every class keeps its share in both parts (notebook 03)."""
    from sklearn.model_selection import train_test_split

    targets = list(targets)
    n_valid = _n_valid(len(targets), val_pct)
    try:
        train, valid = train_test_split(range(len(targets)), test_size=n_valid, stratify=targets,
                                        random_state=seed)
    except ValueError as err:
        raise ValueError(f"Cannot stratify {len(targets)} items with val_pct={val_pct}: {err} "
                         "Use more images per class or random_split_indices.") from err
    return [int(i) for i in train], [int(i) for i in valid]


def make_pets_splits(root, val_pct: float = 0.2, size: int = 224, stratified: bool = True, seed: int = 42,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, on_bad_image: str = "raise"):
    """Training and validation subsets of the pet images: ``(train_ds, valid_ds)`` (notebook 03).

    Two ``PetsDataset`` views share one sorted file list: the training subset uses the augmenting
    ``train_transforms``, the validation subset the deterministic ``eval_transforms``.
    Both are ``LabeledSubset``s (they keep ``classes`` and ``targets``).
    """
    train_view = PetsDataset(root, train_transforms(size, mean, std), on_bad_image=on_bad_image)
    valid_view = PetsDataset(root, eval_transforms(size, mean, std), files=train_view.files,
                             classes=train_view.classes)
    if stratified:
        train_idx, valid_idx = stratified_split_indices(train_view.targets, val_pct, seed)
    else:
        train_idx, valid_idx = random_split_indices(len(train_view), val_pct, seed)
    return LabeledSubset(train_view, train_idx), LabeledSubset(valid_view, valid_idx)


# --- DataLoaders ---------------------------------------------------------------------------

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


def make_loaders(train_ds, valid_ds, batch_size: int = 64, num_workers: int | None = None,
                 pin_memory: bool | None = None, seed: int = 42, valid_batch_size: int | None = None):
    """``(train_dl, valid_dl)``: shuffled, seeded training batches; validation in order (notebook 03).

    ``num_workers`` defaults to ``default_num_workers()``; workers are kept alive between epochs
    (``persistent_workers``). ``pin_memory`` defaults to ``torch.cuda.is_available()``: pinned
    host memory speeds up copies to a GPU and is useless without one. Validation needs no
    gradients, so its batches can be twice as large (``valid_batch_size`` default).
    """
    num_workers = default_num_workers() if num_workers is None else num_workers
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": num_workers > 0}
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed), **common)
    valid_dl = DataLoader(valid_ds, batch_size=valid_batch_size or 2 * batch_size, shuffle=False, **common)
    return train_dl, valid_dl


def class_counts(targets: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    """Images per class, in class order, zeros included: ``{"Abyssinian": 160, ...}`` (notebook 03)."""
    counts = [0] * len(classes)
    for t in targets:
        counts[int(t)] += 1
    return dict(zip(classes, counts))
