"""CIFAR-10 for notebook 07: data sources as uint8 tensors, a fast CNN from scratch, gradual unfreezing.

Data, three sources behind one function, :func:`load_cifar10`:

- **quick mode** (``TLH_QUICK=1``): a generated CIFAR-like 10-class sample at 32x32, written
  by ``tlhelpers.tools.samples.make_image_folder_sample`` to ``data_dir()/quick/cifar10/train/<class>/``;
- **an image-folder tree** ``<root>/train/<class>/*.jpg`` (optionally ``<root>/test/...``), or a
  ``.zip`` of one (the ``train/`` level is found inside any nesting), given as ``source=`` or
  through the environment variable ``TLH_CIFAR10_DIR``;
- **torchvision** ``CIFAR10(download=True)`` into ``data_dir()`` (full mode, the default).

Every source gives the same thing: ``images`` (N, 3, 32, 32) uint8, ``labels`` (N,) int64 and
the sorted class names, ready for ``tlhelpers.tools.gpu_data.GPUBatchLoader``. Decoding 50,000 JPEGs
takes a while on a CPU, so the decoded arrays are cached as ``.npy`` files in
``data_dir()/cache/``, keyed by the source's path, size and modification times.

Models: :class:`ScratchCNN`, a ResNet-9-style network for 32x32 inputs trained with label
smoothing and one-cycle; :func:`fit_gradual_unfreezing` fine-tunes a pretrained backbone in
phases, unfreezing more stages each phase.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tlhelpers import config
from tlhelpers.tools.fileio import atomic_path, write_text_atomic
from tlhelpers.models import ImageClassificationBase

#: The 10 CIFAR-10 classes, sorted (torchvision's order, and the folders' sorted names).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Per-channel statistics of the CIFAR-10 training images (0-1 units), for models trained from scratch.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: The environment variable that points at an image-folder copy of CIFAR-10 (a folder or a .zip).
ENV_VAR = "TLH_CIFAR10_DIR"
#: Images per class of the quick-mode sample (10 classes: 400 images, 32x32).
QUICK_IMAGES_PER_CLASS = 40

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
_CACHE_VERSION = 1  # bump when the decoding changes, so old caches are rebuilt


class ImageArrays(NamedTuple):
    """Decoded images ``(N, 3, H, W)`` uint8, labels ``(N,)`` int64 and sorted class names (notebook 07)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list


# --- where the data comes from -------------------------------------------------------------

def quick_cifar10_sample(root=None, images_per_class: int = QUICK_IMAGES_PER_CLASS) -> Path:
    """Write (once) the generated CIFAR-like quick-mode sample and return its root folder (notebook 07).

    The layout is that of the real copy: ``data_dir()/quick/cifar10/train/<class>/*.jpg`` (or
    ``<root>/train/...``), 32x32, with the ten CIFAR-10 class names (the pictures are coloured
    shapes, not photos).
    """
    from tlhelpers.tools.samples import make_image_folder_sample

    folder = Path(root) if root is not None else config.data_dir() / "quick" / "cifar10"
    make_image_folder_sample(folder / "train", classes=CIFAR10_CLASSES, images_per_class=images_per_class,
                             size=(32, 32), seed=0)
    return folder


def resolve_cifar10_source(source=None, quick: bool | None = None):
    """Which CIFAR-10 to use: a folder/zip ``Path``, or the string ``"torchvision"`` (notebook 07).

    In order: ``source`` if given; the quick-mode sample when quick mode is on; the folder or
    zip named by ``TLH_CIFAR10_DIR``; else torchvision's download.
    """
    if source is not None:
        return source if source == "torchvision" else _existing_path(source, "source")
    quick = config.is_quick() if quick is None else quick
    if quick:
        return quick_cifar10_sample()
    env = os.environ.get(ENV_VAR)
    if env:
        return _existing_path(env, ENV_VAR)
    return "torchvision"


def _existing_path(path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{what}: {path} does not exist. Give a folder holding train/<class>/*.jpg (or a .zip of one), "
            f"set {ENV_VAR} to such a path, or unset it to download CIFAR-10 with torchvision."
        )
    return path.resolve()


def _is_image_name(name: str) -> bool:
    leaf = name.rpartition("/")[2]
    return not leaf.startswith(".") and leaf[leaf.rfind("."):].lower() in IMAGE_EXTENSIONS


@functools.lru_cache(maxsize=8)
def _zip_names(zip_path: Path, size: int, mtime_ns: int) -> tuple[str, ...]:
    """The file names in a zip (reading the directory of 50,000 entries takes a second: done once)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return tuple(n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{zip_path} is a file but not a zip archive: "
                         "pass a folder or a .zip of train/<class>/*.jpg.") from err


def _zip_split_files(zip_path: Path, split: str) -> tuple[str, dict[str, list[str]]]:
    """Find ``<prefix>/<split>/<class>/<image>`` entries in a zip; return (prefix, {class: [names]})."""
    st = zip_path.stat()
    trees: dict[str, dict[str, list[str]]] = {}
    for name in _zip_names(zip_path, st.st_size, st.st_mtime_ns):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and _is_image_name(name):
            prefix = "/".join(parts[:-3])
            trees.setdefault(prefix, {}).setdefault(parts[-2], []).append(name)
    if not trees:
        raise FileNotFoundError(f"{zip_path} holds no '{split}/<class>/<image>' files; "
                                f"expected a zip of a folder tree like cifar10/{split}/airplane/0000.jpg.")
    if len(trees) > 1:
        raise ValueError(f"{zip_path} holds several '{split}/' trees ({sorted(trees)}); "
                         "extract the one you want and pass its folder.")
    return next(iter(trees.items()))


def _find_split_dir(root: Path, split: str, max_depth: int = 3) -> Path:
    """The ``<split>/`` folder at ``root`` or nested up to ``max_depth`` levels below it (or ``root`` itself)."""
    if (root / split).is_dir():
        return root / split
    if root.name == split:  # the user passed .../train itself
        return root
    found, level = [], [root]
    for _ in range(max_depth):
        level = [d for parent in level for d in sorted(parent.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        found = [d / split for d in level if (d / split).is_dir()]
        if found:
            break
    if not found:
        raise FileNotFoundError(f"{root} has no '{split}/' folder (looked {max_depth} levels deep); "
                                f"expected {root}/{split}/<class>/<image>.jpg.")
    if len(found) > 1:
        raise ValueError(f"{root} holds several '{split}/' folders ({[str(f) for f in found]}); pass the one you want.")
    return found[0]


def _folder_split_files(root: Path, split: str) -> tuple[Path, dict[str, list[Path]]]:
    split_dir = _find_split_dir(root, split)
    tree = {}
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and _is_image_name(f.name))
        if files:
            tree[class_dir.name] = files
    if not tree:
        raise FileNotFoundError(f"{split_dir} holds no <class>/<image> files.")
    return split_dir, tree


def has_split(source, split: str) -> bool:
    """True when an image-folder source (folder or zip) has a ``<split>/`` tree, or torchvision (notebook 07)."""
    if source == "torchvision":
        return split in ("train", "test")
    try:
        if Path(source).is_file():
            _zip_split_files(Path(source), split)
        else:
            _folder_split_files(Path(source), split)
    except FileNotFoundError:
        return False
    return True


# --- decoding, with a cache ----------------------------------------------------------------

def _decode(data, size: int) -> np.ndarray:
    """One image file (path or bytes) -> (size, size, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _progress(items, enabled: bool):
    if not enabled or len(items) < 5000:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="decode", unit="img", mininterval=1.0)


def _fingerprint(source: Path, split: str, size: int) -> str:
    """What the cache depends on: the path, the size asked for, and the files' sizes and mtimes."""
    h = hashlib.sha1(f"v{_CACHE_VERSION}|{source}|{split}|{size}".encode())
    if source.is_file():  # a zip: its own size and mtime stand for its contents
        st = source.stat()
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    else:  # a folder: every image file, so an edited, added or removed file invalidates the cache
        split_dir, tree = _folder_split_files(source, split)
        for cls, files in tree.items():
            for f in files:
                st = f.stat()
                h.update(f"{cls}/{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        h.update(str(split_dir).encode())
    return h.hexdigest()


def cache_paths(source, split: str = "train", size: int = 32, max_per_class: int | None = None) -> dict[str, Path]:
    """The cache files of one source/split/size: ``images``, ``labels`` (.npy) and ``meta`` (.json) (notebook 07)."""
    source = Path(source).resolve()
    tag = hashlib.sha1(str(source).encode()).hexdigest()[:10]
    limit = f"-max{max_per_class}" if max_per_class else ""
    stem = f"{source.name.removesuffix('.zip')}-{tag}-{split}-{size}px{limit}"
    folder = config.data_dir() / "cache"
    return {"images": folder / f"{stem}.images.npy", "labels": folder / f"{stem}.labels.npy",
            "meta": folder / f"{stem}.json"}


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as part, open(part, "wb") as f:  # a file object: np.save adds no ".npy"
        np.save(f, array)


def _read_cache(paths: dict, fingerprint: str):
    try:
        meta = json.loads(paths["meta"].read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
        images, labels = np.load(paths["images"]), np.load(paths["labels"])
    except (OSError, ValueError):
        return None
    if len(images) != meta.get("count") or len(labels) != meta.get("count"):
        return None
    return ImageArrays(torch.from_numpy(images), torch.from_numpy(labels).long(), list(meta["classes"]))


def load_image_folder(source, split: str = "train", size: int = 32, classes=None, max_per_class: int | None = None,
                      use_cache: bool = True, verbose: bool = True) -> ImageArrays:
    """Decode ``<source>/<split>/<class>/*`` (a folder or a .zip) into uint8 arrays, cached (notebook 07).

    ``classes`` fixes the class order (e.g. the training split's, when loading ``test``); by
    default it is the sorted folder names. ``max_per_class`` keeps only the first files of each
    class (in name order), for small experiments. Images are converted to RGB and, if needed,
    resized to ``size`` x ``size``. The first call decodes every file and writes the cache
    (``data_dir()/cache``); later calls load it in a fraction of a second, until the source
    changes (path, size, modification time) and the cache is rebuilt.
    """
    source = _existing_path(source, "source")
    fingerprint = _fingerprint(source, split, size) + (f"|max{max_per_class}" if max_per_class else "")
    paths = cache_paths(source, split, size, max_per_class)
    if use_cache:
        cached = _read_cache(paths, fingerprint)
        if cached is not None and (classes is None or list(classes) == cached.classes):
            return cached

    is_zip = source.is_file()
    _, tree = _zip_split_files(source, split) if is_zip else _folder_split_files(source, split)
    classes = sorted(tree) if classes is None else list(classes)
    unknown = sorted(set(tree) - set(classes))
    if unknown:
        raise ValueError(f"{source}: the '{split}/' folder has classes {unknown} that are not in {classes}.")
    files = [(f, classes.index(cls)) for cls in classes for f in sorted(tree.get(cls, []))[:max_per_class]]
    if verbose:
        print(f"Decoding {len(files):,} images from {source} ({split}/, {len(tree)} classes); cached afterwards.")
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    progress = _progress(files, verbose)
    if is_zip:
        with zipfile.ZipFile(source) as zf:
            for i, (name, _) in enumerate(progress):
                images[i] = _decode(zf.read(name), size)
    else:
        for i, (path, _) in enumerate(progress):
            images[i] = _decode(path, size)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, H, W, 3) -> (N, 3, H, W)
    labels = np.array([label for _, label in files], dtype=np.int64)

    if use_cache:
        paths["meta"].parent.mkdir(parents=True, exist_ok=True)
        _save_npy_atomic(paths["images"], images)
        _save_npy_atomic(paths["labels"], labels)
        meta = {"fingerprint": fingerprint, "source": str(source), "split": split, "size": size,
                "count": len(labels), "classes": classes}
        write_text_atomic(paths["meta"], json.dumps(meta, indent=1) + "\n")  # last: marks the cache complete
    return ImageArrays(torch.from_numpy(images), torch.from_numpy(labels), classes)


def _load_torchvision(split: str, size: int) -> ImageArrays:
    import torch.nn.functional as F
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root=str(config.data_dir()), train=(split == "train"), download=True)
    except Exception as exc:  # no internet, a proxy, a broken mirror...
        raise RuntimeError(
            f"Could not download CIFAR-10 with torchvision into {config.data_dir()} ({exc}). "
            f"Set {ENV_VAR} to an image-folder copy (a folder or .zip of train/<class>/*.jpg), "
            "or run in quick mode with TLH_QUICK=1."
        ) from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    if size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return ImageArrays(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))


def load_cifar10(source=None, split: str = "train", size: int = 32, quick: bool | None = None,
                 max_per_class: int | None = None, verbose: bool = True) -> ImageArrays:
    """CIFAR-10 as ``(images uint8 (N, 3, size, size), labels int64 (N,), sorted class names)`` (notebook 07).

    ``source``: a folder or ``.zip`` of ``train/<class>/*.jpg`` (optionally ``test/``), or
    ``"torchvision"``; by default see :func:`resolve_cifar10_source` (quick sample,
    ``TLH_CIFAR10_DIR``, torchvision). ``split`` is ``"train"`` or ``"test"``.
    ``max_per_class`` keeps the first images of each class (for small experiments).
    """
    source = resolve_cifar10_source(source, quick)
    if source == "torchvision":
        arrays = _load_torchvision(split, size)
        if max_per_class:
            keep = torch.cat([torch.nonzero(arrays.labels == c).flatten()[:max_per_class]
                              for c in range(len(arrays.classes))]).sort().values
            arrays = ImageArrays(arrays.images[keep], arrays.labels[keep], arrays.classes)
        return arrays
    return load_image_folder(source, split, size, max_per_class=max_per_class, verbose=verbose)


# --- splits ---------------------------------------------------------------------------------

def _count(value, n: int, what: str) -> int:
    """An int is a count, a float in (0, 1) a fraction of ``n``."""
    if isinstance(value, float):
        if not 0 < value < 1:
            raise ValueError(f"{what}={value}: a fraction must be between 0 and 1 (or pass a count).")
        return int(round(value * n))
    return int(value)


def _interleaved_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """All indices, shuffled with ``seed`` and interleaved by class so that any prefix is stratified."""
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    shuffled = labels[perm]
    # Rank each example within its class (in random order) as a fraction of the class size;
    # sorting by that fraction deals the classes out in proportion, like cards.
    order = torch.argsort(shuffled, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = (torch.arange(n) - starts[shuffled[order]]).double()
    return perm[torch.argsort((rank + 0.5) / counts[shuffled].double(), stable=True)]


def stratified_split(labels, val_size=0.1, train_size=None, seed: int = config.SEED):
    """Seeded stratified hold-out split: ``(train_idx, val_idx)``, each class in proportion (notebook 07).

    ``val_size`` / ``train_size``: counts or fractions; ``train_size=None`` takes all the rest,
    a smaller value a stratified subset (handy for quick experiments). The two index sets never
    overlap, and the same seed gives the same split.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = len(labels)
    n_val = _count(val_size, n, "val_size")
    n_train = n - n_val if train_size is None else _count(train_size, n, "train_size")
    if n_val < 1 or n_train < 1 or n_val + n_train > n:
        raise ValueError(f"Cannot split {n} examples into {n_train} training and {n_val} held-out ones.")
    order = _interleaved_order(labels, seed)
    return order[n_val:n_val + n_train].sort().values, order[:n_val].sort().values


def stratified_subset(labels, size, seed: int = config.SEED) -> torch.Tensor:
    """Indices of a seeded stratified subset of ``size`` examples (a count or a fraction) (notebook 07)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    count = _count(size, len(labels), "size")
    if not 0 < count <= len(labels):
        raise ValueError(f"Cannot take {count} of {len(labels)} examples.")
    return _interleaved_order(labels, seed)[:count].sort().values


class CifarSplits(NamedTuple):
    """Training and held-out arrays plus class names, as made by :func:`load_cifar10_splits` (notebook 07)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    classes: list
    source: object
    held_out: str  # where the held-out images come from, in words


def load_cifar10_splits(source=None, val_size=5000, train_size=None, size: int = 32, seed: int = config.SEED,
                        quick: bool | None = None, max_per_class: int | None = None,
                        verbose: bool = True) -> CifarSplits:
    """Training and held-out CIFAR-10 in one call (notebook 07).

    The held-out images are the source's ``test/`` split when it has one (torchvision, or a
    folder with ``test/``), else a seeded stratified hold-out of ``val_size`` training images
    (the JPEG copy and the quick sample have no test split; ``val_size`` is not used otherwise).
    ``train_size`` picks a stratified subset of the training images; ``max_per_class`` decodes
    only the first images of each class of the training split (small experiments).
    """
    source = resolve_cifar10_source(source, quick)
    train = load_cifar10(source, "train", size, max_per_class=max_per_class, verbose=verbose)
    if has_split(source, "test"):
        test = (_load_torchvision("test", size) if source == "torchvision"
                else load_image_folder(source, "test", size, classes=train.classes, verbose=verbose))
        images, labels = train.images, train.labels
        if train_size is not None:
            keep = stratified_subset(labels, train_size, seed)
            images, labels = images[keep], labels[keep]
        return CifarSplits(images, labels, test.images, test.labels, train.classes, source,
                           f"the source's test split ({len(test.labels):,} images)")
    train_idx, val_idx = stratified_split(train.labels, val_size, train_size, seed)
    return CifarSplits(train.images[train_idx], train.labels[train_idx], train.images[val_idx],
                       train.labels[val_idx], train.classes, source,
                       f"a stratified hold-out of the training images ({len(val_idx):,} images, seed {seed})")


# --- a fast CNN from scratch -----------------------------------------------------------------

def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 convolution, optional 2x2 max-pool, batch norm, GELU: the one building block of ``ScratchCNN`` (notebook 07).

    The convolution has no bias (batch norm adds one). Pooling right after the convolution,
    before normalisation and activation, gives nearly the same network at a quarter of their cost.
    """
    layers = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.GELU()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + body(x)``: a shortcut around a few layers, so gradients reach early layers directly (notebook 07)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


class ScratchCNN(ImageClassificationBase):
    """A ResNet-9-style CNN for 32x32 images, trained from random weights (notebook 07).

    Four widths, three 2x2 poolings (32 -> 16 -> 8 -> 4 pixels) and two residual blocks::

        conv_bn(3, w0)                          (B, w0, 32, 32)
        conv_bn(w0, w1, pool) + Residual(2x)    (B, w1, 16, 16)
        conv_bn(w1, w2, pool)                   (B, w2,  8,  8)
        conv_bn(w2, w3, pool) + Residual(2x)    (B, w3,  4,  4)
        global max-pool, Linear, x logit_scale  (B, num_classes)

    The design follows published ideas for fast CIFAR-10 training (David Page's DAWNBench
    ResNet-9, Keller Jordan's airbench): few layers at full resolution, wide layers at low
    resolution, batch norm everywhere, max-pooling, and logits scaled down by 1/8 so the
    softmax starts unsaturated. ``label_smoothing`` (training loss only) keeps it from
    becoming over-confident on the training images.
    """

    def __init__(self, num_classes: int = 10, widths=(64, 128, 256, 512), label_smoothing: float = 0.2,
                 logit_scale: float = 0.125):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            conv_bn(3, w0),
            conv_bn(w0, w1, pool=True),
            Residual(conv_bn(w1, w1), conv_bn(w1, w1)),
            conv_bn(w1, w2, pool=True),
            conv_bn(w2, w3, pool=True),
            Residual(conv_bn(w3, w3), conv_bn(w3, w3)),
        )
        self.classifier = nn.Linear(w3, num_classes, bias=False)
        self.label_smoothing = label_smoothing
        self.logit_scale = logit_scale

    def forward(self, images):
        x = self.features(images)              # (B, w3, H/8, W/8)
        x = torch.amax(x, dim=(2, 3))          # global max-pool: (B, w3)
        return self.classifier(x) * self.logit_scale


def sgd_nesterov(params, lr, weight_decay=0.0):
    """SGD with Nesterov momentum 0.9, as ``opt_func`` for ``fit_one_cycle`` (notebook 07)."""
    return torch.optim.SGD(params, lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


class _Mirrored:
    """A loader whose images are flipped left-right (for test-time augmentation)."""

    def __init__(self, dl):
        self.dl, self.device = dl, getattr(dl, "device", None)

    def __iter__(self):
        for images, labels, *rest in self.dl:
            yield (images.flip(-1), labels, *rest)

    def __len__(self):
        return len(self.dl)


def predict_with_flip_tta(model: nn.Module, dl, **options):
    """Class probabilities averaged over each image and its mirror image, and the targets (notebook 07).

    Test-time augmentation: a left-right flip is as plausible a photo as the original, so
    averaging the two predictions removes some of the model's noise (about +0.5 point on
    CIFAR-10) for twice the inference cost. ``options`` go to ``tlhelpers.train.get_predictions``.
    """
    from tlhelpers.train import get_predictions

    logits, targets = get_predictions(model, dl, as_probs=False, **options)
    mirrored, _ = get_predictions(model, _Mirrored(dl), as_probs=False, **options)
    return ((logits + mirrored) / 2).softmax(dim=1), targets


# --- fine-tuning a pretrained backbone in phases ----------------------------------------------

@dataclass
class Phase:
    """One phase of gradual unfreezing: which stages train, for how long, how fast (notebook 07).

    ``stages``: how many of the backbone's last stages train with the head (0: the head only,
    ``None``: everything).
    """

    stages: int | None
    epochs: int
    max_lr: float


def fit_gradual_unfreezing(model: nn.Module, phases, train_dl, val_dl, *, opt_func=torch.optim.AdamW,
                           weight_decay: float = 0.01, early_stopping_patience: int | None = 1,
                           **options) -> list:
    """Fine-tune in phases, unfreezing more stages each phase; one-cycle within each phase (notebook 07).

    Each phase runs ``fit_one_cycle`` with early stopping on the validation loss and restores
    the phase's best weights. A phase that does not beat the best validation loss of the
    earlier phases is undone (the earlier best weights come back) and training stops there.
    ``model`` is built by ``tlhelpers.models`` (``PetsModel`` or ``create_model``), so that
    ``unfreeze`` knows its stages. ``options`` go to ``fit_one_cycle`` (grad_clip, amp, ...).
    Returns the joined history; each entry has a ``"phase"`` number.
    """
    from tlhelpers.models import get_stages, parameter_summary, unfreeze
    from tlhelpers.train import fit_one_cycle

    stage_names = [name for name, _ in get_stages(model)]
    history, best_loss, best_state = [], math.inf, None
    for number, phase in enumerate(phases, start=1):
        unfreeze(model, phase.stages)
        trained = stage_names if phase.stages is None else stage_names[len(stage_names) - phase.stages:]
        print(f"Phase {number}/{len(phases)}: training the head{' + ' + ', '.join(trained) if trained else ' only'} "
              f"({parameter_summary(model)['trainable']:,} parameters), {phase.epochs} epoch{'s' if phase.epochs != 1 else ''}, "
              f"max_lr {phase.max_lr:g}")
        phase_history = fit_one_cycle(phase.epochs, phase.max_lr, model, train_dl, val_dl,
                                      weight_decay=weight_decay, opt_func=opt_func, monitor="val_loss",
                                      restore_best=True, early_stopping_patience=early_stopping_patience, **options)
        for entry in phase_history:
            entry["phase"] = number
        history += phase_history
        phase_best = min((entry["val_loss"] for entry in phase_history), default=math.inf)
        if phase_best < best_loss:
            best_loss = phase_best
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            print(f"Phase {number} did not improve the validation loss ({phase_best:.4f} >= {best_loss:.4f}): "
                  "restoring the best weights of the earlier phases and stopping.")
            model.load_state_dict(best_state)
            break
    return history
