"""CIFAR-10 as uint8 tensors for notebook 07: where the images come from, a decode-once cache, the splits.

Course tooling. Three sources give the same thing, :class:`ImageArrays`: images ``(N, 3, 32, 32)``
uint8, labels ``(N,)`` int64 and the sorted class names, ready for
``tlhelpers.tools.gpu_data.GPUBatchLoader``:

- quick mode (``quick=True``): the 1,000 real CIFAR-10 images (100 per class) that ship with the
  course, ``tlhelpers/sample_data/cifar10/train/<class>/*.jpg`` (``samples.CIFAR10_SAMPLE``);
- an image-folder copy ``<root>/train/<class>/*.jpg`` (optionally with ``test/``), or a ``.zip`` of
  one (the ``train/`` level is found inside any nesting): the notebook passes
  ``config.CIFAR10_DIR`` (the ``TLH_CIFAR10_DIR`` setting) as ``source``;
- otherwise torchvision's ``CIFAR10(download=True)`` into ``data_dir()``.

Decoding 50,000 JPEGs takes a while on a CPU, so a folder or zip is decoded once into a
memory-mapped ``.npy`` in ``data_dir()/cache`` (``tlhelpers.tools.cache.build_uint8_cache``),
rebuilt when the source changes. :func:`load_cifar10_splits` makes the three sets of an honest
comparison: training, validation (for model selection) and test (reported once).
"""
from __future__ import annotations

import functools
import hashlib
import io
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import torch

from tlhelpers import config
from tlhelpers.pets import stratified_split_indices
from tlhelpers.tools import cache
from tlhelpers.tools.downloads import ArchiveError
from tlhelpers.tools.images import IMAGE_EXTENSIONS
from tlhelpers.tools.samples import CIFAR10_SAMPLE

#: The 10 CIFAR-10 classes, sorted (torchvision's order, and the folders' sorted names).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Per-channel statistics of the CIFAR-10 training images (0-1 units), for models trained from scratch.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: Images per class of the quick-mode sample (10 classes: 1,000 images, 32x32).
QUICK_IMAGES_PER_CLASS = 100
#: The largest zip member read as one image (a CIFAR-10 JPEG is about 1.5 kB, a phone photo a few MB).
MAX_MEMBER_BYTES = 64 * 1024 * 1024


class ImageArrays(NamedTuple):
    """Decoded images ``(N, 3, H, W)`` uint8, labels ``(N,)`` int64 and sorted class names (notebook 07)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list


def _checked(arrays: ImageArrays, size: int, where: str, fix: str) -> ImageArrays:
    """``arrays`` if images, labels and classes agree (shape, type, count, range); else a clear error."""
    images, labels, classes = arrays
    problems = []
    if tuple(images.shape[1:]) != (3, size, size) or images.dtype != torch.uint8:
        problems.append(f"images of shape {tuple(images.shape)} {images.dtype}, expected (N, 3, {size}, {size}) uint8")
    if labels.shape != (len(images),):
        problems.append(f"{tuple(labels.shape)} labels for {len(images)} images")
    elif len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        problems.append(f"labels from {int(labels.min())} to {int(labels.max())} for {len(classes)} classes")
    if problems:
        raise ValueError(f"{where} holds {'; '.join(problems)}. {fix}")
    return arrays


# --- where the data comes from -------------------------------------------------------------

def resolve_source(source=None, quick: bool = False):
    """Which CIFAR-10 to read: the shipped sample when ``quick``, else ``source`` (a folder or zip), else torchvision.

    Returns a ``Path`` or the string ``"torchvision"``.
    """
    if quick:
        return CIFAR10_SAMPLE
    if source is None or source == "torchvision":
        return "torchvision"
    return _existing_path(source)


def _existing_path(source) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"source={str(source)!r} does not exist. Give a folder holding train/<class>/*.jpg or a .zip of one "
            "(TLH_CIFAR10_DIR sets config.CIFAR10_DIR), or source=None to download CIFAR-10 with torchvision.")
    return path.resolve()


def _is_image_name(name: str) -> bool:
    leaf = name.rpartition("/")[2]
    return not leaf.startswith(".") and Path(leaf).suffix.lower() in IMAGE_EXTENSIONS


@functools.lru_cache(maxsize=8)
def _zip_names(zip_path: Path, size: int, mtime_ns: int) -> tuple[str, ...]:
    """The file names in a zip (reading the directory of 50,000 entries takes a second: done once)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return tuple(n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{zip_path} is a file but not a zip archive: "
                         "pass a folder or a .zip of train/<class>/*.jpg.") from err


def _zip_tree(zip_path: Path, split: str) -> dict[str, list[str]]:
    """``{class: [member names]}`` of the ``<prefix>/<split>/<class>/<image>`` entries of a zip."""
    st = zip_path.stat()
    trees: dict[str, dict[str, list[str]]] = {}
    for name in _zip_names(zip_path, st.st_size, st.st_mtime_ns):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and _is_image_name(name):
            trees.setdefault("/".join(parts[:-3]), {}).setdefault(parts[-2], []).append(name)
    if not trees:
        raise FileNotFoundError(f"{zip_path} holds no '{split}/<class>/<image>' files; "
                                f"expected a zip of a folder tree like cifar10/{split}/airplane/0000.jpg.")
    if len(trees) > 1:
        raise ValueError(f"{zip_path} holds several '{split}/' trees ({sorted(trees)}); "
                         "extract the one you want and pass its folder.")
    return next(iter(trees.values()))


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


def _folder_tree(root: Path, split: str) -> dict[str, list[Path]]:
    """``{class: [image paths]}`` of ``<root>/<split>/<class>/<image>``."""
    split_dir = _find_split_dir(root, split)
    tree = {d.name: [f for f in d.iterdir() if f.is_file() and _is_image_name(f.name)]
            for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")}
    tree = {cls: files for cls, files in tree.items() if files}
    if not tree:
        raise FileNotFoundError(f"{split_dir} holds no <class>/<image> files.")
    return tree


def has_split(source, split: str) -> bool:
    """True when a source (folder, zip or ``"torchvision"``) has a ``<split>/`` tree (notebook 07)."""
    if source == "torchvision":
        return split in ("train", "test")
    try:
        _zip_tree(Path(source), split) if Path(source).is_file() else _folder_tree(Path(source), split)
    except FileNotFoundError:
        return False
    return True


# --- decoding, cached -------------------------------------------------------------------------

def load_image_folder(source, split: str = "train", size: int = 32, classes=None, max_per_class: int | None = None,
                      progress: bool = True, max_member_bytes: int = MAX_MEMBER_BYTES) -> ImageArrays:
    """``<source>/<split>/<class>/*`` (a folder or a .zip) as uint8 arrays, decoded once and cached (notebook 07).

    ``classes`` fixes the class order (the training split's, when loading ``test``); by default
    the sorted folder names. ``max_per_class`` keeps the first files of each class (in name
    order), for small experiments. Each image becomes a ``size`` x ``size`` RGB square
    (``tlhelpers.tools.cache.load_square``: the identity for CIFAR-10's 32x32 images).
    A zip member bigger than ``max_member_bytes`` is refused before it is read.
    """
    source = _existing_path(source)
    is_zip = source.is_file()
    tree = _zip_tree(source, split) if is_zip else _folder_tree(source, split)
    classes = sorted(tree) if classes is None else list(classes)
    unknown = sorted(set(tree) - set(classes))
    if unknown:
        raise ValueError(f"{source}: the '{split}/' folder has classes {unknown} that are not in {classes}.")
    files = [(f, label) for label, cls in enumerate(classes) for f in sorted(tree.get(cls, []))[:max_per_class]]
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)

    limit = f"-max{max_per_class}" if max_per_class else ""
    name = f"{source.name.removesuffix('.zip')}-{hashlib.sha1(str(source).encode()).hexdigest()[:10]}-{split}{limit}"
    npy_path, json_path = cache.cache_paths([source], size, name=name)
    if is_zip:  # the zip's size and mtime stand for its contents
        st = source.stat()
        fingerprint = hashlib.sha1(f"{cache.CACHE_VERSION}|{st.st_size}|{st.st_mtime_ns}|{size}|{len(files)}|"
                                   f"{','.join(classes)}".encode()).hexdigest()
        zf = zipfile.ZipFile(source)  # reads from several threads are safe: ZipFile locks its file
        # Sizes first, from the zip's directory: a huge member is refused before a byte of it is read
        # (zipfile never returns more than the declared size, so this bounds what we read).
        sizes = [(n, zf.getinfo(n).file_size) for n, _ in files]
        too_big = [(n, nbytes) for n, nbytes in sizes if nbytes > max_member_bytes]
        if too_big:
            zf.close()
            member, nbytes = too_big[0]
            raise ArchiveError(
                f"{source}: member {member} is {nbytes:,} bytes, more than max_member_bytes={max_member_bytes:,} "
                f"({len(too_big)} such member(s)); an image of CIFAR-10 is about 1.5 kB. Remove it from the zip, "
                "or pass a larger max_member_bytes if your images really are that big.")

        def decode_row(i):
            member = files[i][0]
            try:
                data = zf.read(member)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise ArchiveError(f"{source}: cannot read member {member} ({type(err).__name__}: {err}); the zip "
                                   "is truncated or damaged. Delete it and download or copy it again.") from err
            try:
                return cache.load_square(io.BytesIO(data), size)
            except OSError as err:
                raise OSError(f"{source}: cannot read {member} ({err.__cause__ or err}). "
                              "Replace the zip, or extract it and delete that file.") from err
    else:
        fingerprint = cache.files_fingerprint([f for f, _ in files], size)

        def decode_row(i):
            return cache.load_square(files[i][0], size)
    try:
        images = cache.build_uint8_cache(npy_path, json_path, fingerprint, len(files), size, decode_row,
                                         progress=progress, meta={"source": str(source), "split": split})
    finally:
        if is_zip:
            zf.close()
    return _checked(ImageArrays(torch.from_numpy(images), labels, classes), size, f"The image cache {npy_path}",
                    "Delete it; it is rebuilt on the next run.")


def _load_torchvision(split: str, size: int) -> ImageArrays:
    import torch.nn.functional as F
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root=str(config.data_dir()), train=(split == "train"), download=True)
    except Exception as exc:  # no internet, a proxy, a broken mirror...
        raise RuntimeError(
            f"Could not download CIFAR-10 with torchvision into {config.data_dir()} ({exc}). "
            "Set TLH_CIFAR10_DIR to an image-folder copy (a folder or .zip of train/<class>/*.jpg), "
            "or run in quick mode with TLH_QUICK=1."
        ) from exc
    folder = config.data_dir() / "cifar-10-batches-py"
    data = ds.data
    if getattr(data, "ndim", 0) != 4 or tuple(data.shape[1:]) != (32, 32, 3) or str(data.dtype) != "uint8":
        raise ValueError(f"{folder} holds images of shape {getattr(data, 'shape', None)} "
                         f"{getattr(data, 'dtype', type(data).__name__)}, expected (N, 32, 32, 3) uint8. "
                         "Delete the folder; it is downloaded again on the next run.")
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    if size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return _checked(ImageArrays(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)), size,
                    str(folder), "Delete the folder; it is downloaded again on the next run.")


def load_cifar10(source=None, split: str = "train", size: int = 32, quick: bool = False, classes=None,
                 max_per_class: int | None = None, progress: bool = True) -> ImageArrays:
    """CIFAR-10 as ``(images uint8 (N, 3, size, size), labels int64 (N,), sorted class names)`` (notebook 07).

    ``source``: a folder or ``.zip`` of ``train/<class>/*.jpg`` (optionally ``test/``), or
    ``None``/``"torchvision"`` for torchvision's download; ``quick=True`` reads the generated
    sample instead (see :func:`resolve_source`). ``split`` is ``"train"`` or ``"test"``.
    ``max_per_class`` keeps the first images of each class (for small experiments).
    """
    source = resolve_source(source, quick)
    if source != "torchvision":
        return load_image_folder(source, split, size, classes, max_per_class, progress)
    arrays = _load_torchvision(split, size)
    if max_per_class:
        keep = torch.cat([torch.nonzero(arrays.labels == c).flatten()[:max_per_class]
                          for c in range(len(arrays.classes))]).sort().values
        arrays = ImageArrays(arrays.images[keep], arrays.labels[keep], arrays.classes)
    return arrays


# --- splits -----------------------------------------------------------------------------------

def hold_out(arrays: ImageArrays, pct: float, seed: int = config.SEED) -> tuple[ImageArrays, ImageArrays]:
    """``(rest, held_out)``: a seeded stratified split that holds out the fraction ``pct`` (notebook 07).

    ``pets.stratified_split_indices`` (scikit-learn's ``train_test_split``) decides; both parts
    keep the original order.
    """
    rest, held = stratified_split_indices(arrays.labels.tolist(), pct, seed)

    def take(indices):
        indices = torch.tensor(sorted(indices), dtype=torch.int64)
        return ImageArrays(arrays.images[indices], arrays.labels[indices], arrays.classes)

    return take(rest), take(held)


class CifarSplits(NamedTuple):
    """Training, validation and test arrays, the class names and where the test images come from (notebook 07)."""

    train: ImageArrays
    valid: ImageArrays
    test: ImageArrays
    classes: list
    source: object
    test_from: str  # in words


def load_cifar10_splits(source=None, quick: bool = False, valid_pct: float = 0.1, test_pct: float = 0.2,
                        seed: int = config.SEED, max_per_class: int | None = None,
                        progress: bool = True) -> CifarSplits:
    """Training, validation and test CIFAR-10 in one call (notebook 07).

    The test images are the source's ``test/`` split when it has one (torchvision, or a folder
    with ``test/``), else a seeded stratified hold-out of the fraction ``test_pct`` of the
    training images (the JPEG copy and the quick sample have no test split). The validation
    set, for early stopping and picking the best weights, is a stratified hold-out of the
    fraction ``valid_pct`` of the remaining training images, so the test set plays no part in
    model selection. ``max_per_class`` decodes only the first images of each class (small
    experiments).
    """
    source = resolve_source(source, quick)
    train = load_cifar10(source, "train", max_per_class=max_per_class, progress=progress)
    if has_split(source, "test"):
        test = load_cifar10(source, "test", classes=train.classes, progress=progress)
        test_from = f"the source's test split ({len(test.labels):,} images)"
    else:
        train, test = hold_out(train, test_pct, seed)
        test_from = f"a stratified hold-out of the training images ({len(test.labels):,} images, seed {seed})"
    train, valid = hold_out(train, valid_pct, seed)
    return CifarSplits(train, valid, test, train.classes, source, test_from)
