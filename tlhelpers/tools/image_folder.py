"""Your own folder of images as torchvision ``ImageFolder`` datasets: layout, checks, split (notebook 09).

The folder uses ``ImageFolder``'s layout, one sub-folder per class, with or without ``train/``
and ``val/`` (or ``valid/``, ``validation/``) folders; images may sit in deeper sub-folders::

    my_photos/                  my_photos/
      cat/ a.jpg b.jpg ...        train/ cat/ ...  dog/ ...
      dog/ c.jpg ...              val/   cat/ ...  dog/ ...

API (used by notebook 09 and ``python -m tlhelpers.tools.train_folder``):

- ``scan_image_folder(root, bad_images="fail", check_images=True) -> FolderScan``: finds the
  layout and the classes, decodes every image, and stops with a ``FolderError`` that names the
  problem and says what to do (missing folder, fewer than two classes, a class without images,
  a ``val/`` class that ``train/`` lacks, unreadable images; ``bad_images="skip"`` leaves those out).
  ``FolderScan``: ``root``, ``layout``, ``classes``, ``train`` and ``val`` (``VisibleImageFolder``
  or ``None``), ``skipped``, ``ignored_files``, ``notes``.
- ``folder_splits(scan, size, mean, std, val_pct=0.2, seed=42) -> (train_ds, valid_ds)``: two
  ``torch.utils.data.Subset``s of ``VisibleImageFolder``s, training images augmented with
  ``tlhelpers.pets.train_transforms``, validation images with ``eval_transforms``. Without a
  ``val/`` folder ``tlhelpers.pets.stratified_split_indices`` holds out ``val_pct`` of every class.
- ``subset_samples(ds) -> [(path, target), ...]``: the files of such a split, in its order.
- ``split_summary(scan, train_ds, valid_ds) -> str``: layout, images per class, notes.
- ``pets_image_folder(pets_dir) -> Path``: the Oxford-IIIT Pet photos as one folder per breed.

``VisibleImageFolder`` is ``torchvision.datasets.ImageFolder`` reading through
``tlhelpers.tools.images.load_rgb`` (odd modes become RGB) and blind to hidden files and folders:
``.ipynb_checkpoints`` is not a class and macOS ``._IMG_1.jpg`` or ``__MACOSX/`` files are not images.
"""
from __future__ import annotations

import copy
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Subset
from torchvision.datasets import ImageFolder, VisionDataset
from torchvision.datasets.vision import StandardTransform

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD, SEED
from tlhelpers.pets import eval_transforms, stratified_split_indices, train_transforms
from tlhelpers.tools.images import IMAGE_EXTENSIONS, load_rgb

#: Names accepted for the validation folder next to ``train/``.
VAL_DIR_NAMES = ("val", "valid", "validation")


class FolderError(ValueError):
    """A problem with an image folder; the message names it and says what to do (notebook 09)."""


class FolderWarning(UserWarning):
    """Something in an image folder that works but is probably a mistake, e.g. classes ``Cat`` and ``cat``."""


def printable(path) -> str:
    """``path`` as text that can always be printed: bytes that are not UTF-8 are shown as ``\\xNN`` (notebook 09).

    Python reads such bytes in file names (e.g. a folder named ``café`` in Latin-1) as "surrogate"
    characters, which cannot be printed or saved as UTF-8 text.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_class_names(folder: Path, classes, case: bool = True) -> list[str]:
    """FolderError for a class folder whose name is not UTF-8; notes (and warnings) for names that differ only in case."""
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            guess = os.fsencode(name).decode("latin-1")
            raise FolderError(
                f"{printable(folder)}: the class folder '{printable(name)}' has a name that is not UTF-8 text "
                f"(it was probably made on a system that writes names in another encoding). The class name "
                f"goes into the exported model and its predictions, so rename the folder, e.g. to {guess!r} "
                "(the name read as Latin-1).") from None
    by_case = {}
    for name in classes if case else ():
        by_case.setdefault(name.casefold(), []).append(name)
    notes = [f"class folders {' and '.join(f'{n}/' for n in same)} differ only in upper/lower case: they are "
             f"{len(same)} different classes here (and would be one folder on Windows or macOS). Merge them if "
             "they are the same class." for same in by_case.values() if len(same) > 1]
    for note in notes:
        warnings.warn(f"{printable(folder)}: {note}", FolderWarning, stacklevel=3)
    return notes


def _hidden(path, root) -> bool:
    """True for files and folders below ``root`` whose path has a hidden part (".x") or ``__MACOSX``."""
    return any(part.startswith(".") or part == "__MACOSX" for part in Path(path).relative_to(root).parts)


def _class_dirs(folder: Path) -> list[str]:
    """The visible sub-folder names of ``folder``, sorted like ``ImageFolder``'s classes."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p, folder))


def _short_list(items, limit: int = 5) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


class VisibleImageFolder(ImageFolder):
    """``ImageFolder`` read with ``load_rgb``, ignoring hidden files and folders (notebook 09).

    ``classes``: use these class names (e.g. ``train/``'s for ``val/``) instead of the sub-folders
    found, so the same class has the same index in both. ``ignored`` lists visible files that are
    not images (their ending is not in ``IMAGE_EXTENSIONS``).
    """

    def __init__(self, root, transform=None, classes=None):
        self.given_classes, self.ignored = classes, []
        super().__init__(root, transform, loader=load_rgb, is_valid_file=self._is_image, allow_empty=True)

    def _is_image(self, path: str) -> bool:
        if _hidden(path, self.root):
            return False
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            return True
        self.ignored.append(Path(path))
        return False

    def find_classes(self, directory):
        classes = list(self.given_classes) if self.given_classes is not None else _class_dirs(Path(directory))
        return classes, {name: i for i, name in enumerate(classes)}

    def drop(self, paths) -> None:
        """Leave the files ``paths`` out."""
        paths = {str(p) for p in paths}
        self.samples = self.imgs = [s for s in self.samples if s[0] not in paths]
        self.targets = [target for _, target in self.samples]


@dataclass
class FolderScan:
    """What ``scan_image_folder`` found: layout, sorted classes, the train (and val) folder (notebook 09).

    ``val`` is ``None`` when the folder has no ``val/``: then ``folder_splits`` holds images out.
    ``skipped`` lists unreadable images left out; ``notes`` are remarks worth printing.
    """

    root: Path
    layout: str                       # "class folders", "train/ + val/" or "train/ only"
    classes: list[str]
    train: VisibleImageFolder
    val: VisibleImageFolder | None = None
    skipped: list[Path] = field(default_factory=list)
    ignored_files: int = 0            # visible files that are not images (.txt, .csv, ...)
    notes: list[str] = field(default_factory=list)


def _find_layout(root: Path):
    """(layout, class root, validation folder or None), or a FolderError saying what is wrong."""
    if not root.exists():
        raise FolderError(f"{root} does not exist. Pass the folder that holds one sub-folder per class "
                          "(<folder>/<class>/*.jpg), or train/ and val/ folders with one sub-folder per class each.")
    if not root.is_dir():
        raise FolderError(f"{root} is a file, not a folder. Pass the folder that holds one sub-folder per class.")
    val_dir = next((root / name for name in VAL_DIR_NAMES if (root / name).is_dir()), None)
    if (root / "train").is_dir():
        return ("train/ + val/" if val_dir else "train/ only"), root / "train", val_dir
    if val_dir is not None:
        raise FolderError(f"{root} has a {val_dir.name}/ folder but no train/ folder. Put the training "
                          f"images in {root / 'train'}/<class>/, or remove {val_dir.name}/ and keep one "
                          "sub-folder per class directly in the folder.")
    return "class folders", root, None


def _unreadable(paths) -> list[tuple[Path, str]]:
    """(path, reason) for every file that does not decode as an image."""
    bad = []
    for path in paths:
        try:
            load_rgb(path)
        except OSError as err:  # load_rgb's ImageError: a short reason without the file name
            bad.append((Path(path), getattr(err, "reason", f"{type(err).__name__}: {err}")))
    return bad


def scan_image_folder(root, bad_images: str = "fail", check_images: bool = True) -> FolderScan:
    """Find the classes and images of an ``ImageFolder``-style folder and check them (notebook 09).

    ``bad_images``: ``"fail"`` raises a ``FolderError`` listing every unreadable image; ``"skip"``
    leaves them out (listed in ``scan.skipped``). ``check_images=False`` skips decoding every
    image (fast, but a broken file then stops training when it is loaded).
    """
    if bad_images not in ("fail", "skip"):
        raise ValueError(f"bad_images={bad_images!r}: use 'fail' (stop and list them) or 'skip' (leave them out).")
    root = Path(root).expanduser()
    layout, class_root, val_dir = _find_layout(root)
    notes = [f"ignored the folder {name}/ next to train/ (only train/ and val/ are used)"
             for name in _class_dirs(root) if class_root != root and name not in ("train", *VAL_DIR_NAMES)]
    classes = _class_dirs(class_root)
    notes += _check_class_names(class_root, classes)
    if len(classes) < 2:
        loose = VisibleImageFolder(class_root.parent, classes=[class_root.name]) if not classes else None
        found = f"found 1 class folder ({classes[0]}/)" if classes else "found no class folders"
        hint = f"; its {len(loose)} images must be sorted into one sub-folder per class" if loose else ""
        raise FolderError(f"{class_root}: {found}{hint}. A classifier needs at least two classes: make one "
                          f"sub-folder per class, e.g. {class_root / 'cat'}/ and {class_root / 'dog'}/.")
    prefix = "train/" if class_root != root else ""
    train = VisibleImageFolder(class_root, classes=classes)
    empty = [f"{prefix}{classes[i]}/" for i in sorted(set(range(len(classes))) - set(train.targets))]
    val = None
    if val_dir is not None:
        val_classes = _class_dirs(val_dir)
        _check_class_names(val_dir, val_classes, case=False)  # val/ classes are train/'s (checked above)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise FolderError(f"{val_dir} has class folders that train/ lacks: {_short_list(unknown)}. "
                              "The model can only learn classes it trains on: add them to train/ or remove them.")
        val = VisibleImageFolder(val_dir, classes=classes)
        empty += [f"{val_dir.name}/{classes[i]}/" for i in sorted(set(range(len(classes))) - set(val.targets))
                  if classes[i] in val_classes]
        missing = [name for name in classes if name not in val_classes]
        if missing:
            notes.append(f"{val_dir.name}/ has no folder for {_short_list(missing)}: "
                         "their accuracy cannot be measured")
    if empty:
        raise FolderError(f"{root}: class folder(s) with no images: {_short_list(empty)}. Add images "
                          f"(files ending in {', '.join(IMAGE_EXTENSIONS)}) or delete the empty folder(s).")
    folders = [train] + ([val] if val is not None else [])
    skipped = []
    if check_images:
        bad = _unreadable([path for folder in folders for path, _ in folder.samples])
        if bad:
            named = _short_list([f"{p.relative_to(root)} ({reason})" for p, reason in bad], limit=10)
            if bad_images == "fail":
                raise FolderError(f"{len(bad)} unreadable image(s) in {root}: {named}. Delete or replace them, "
                                  "or leave them out with bad_images='skip' (command line: --bad-images skip).")
            skipped = [p for p, _ in bad]
            notes.append(f"skipped {len(bad)} unreadable image(s): {named}")
            for folder in folders:
                folder.drop(skipped)
            gone = [f"{prefix}{classes[i]}/" for i in sorted(set(range(len(classes))) - set(train.targets))]
            if gone:
                raise FolderError(f"{root}: after skipping unreadable images these classes have no images "
                                  f"left to train on: {_short_list(gone)}. Add readable images.")
    ignored = sum(len(folder.ignored) for folder in folders)
    if ignored:
        notes.append(f"ignored {ignored} file(s) that are not images (only {', '.join(IMAGE_EXTENSIONS)} are read)")
    return FolderScan(root, layout, classes, train, val, skipped, ignored, notes)


def _view(folder: VisionDataset, transform) -> VisionDataset:
    """The same files and labels as ``folder``, read with ``transform``."""
    view = copy.copy(folder)
    view.transform, view.transforms = transform, StandardTransform(transform)
    return view


def folder_splits(scan: FolderScan, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, val_pct: float = 0.2,
                  seed: int = SEED) -> tuple[Subset, Subset]:
    """(train_ds, valid_ds): the ``val/`` folder, or ``val_pct`` of every class held out (notebook 09).

    Like ``tlhelpers.pets.make_pets_splits``: training images augmented, validation images not.
    """
    train_view = _view(scan.train, train_transforms(size, mean, std))
    if scan.val is not None:
        return (Subset(train_view, range(len(scan.train))),
                Subset(_view(scan.val, eval_transforms(size, mean, std)), range(len(scan.val))))
    try:
        train_idx, valid_idx = stratified_split_indices(scan.train.targets, val_pct, seed)
    except ValueError as err:
        raise FolderError(f"{scan.root}: {err} Or give the folder train/ and val/ sub-folders.") from err
    if scan.layout == "train/ only":
        scan.notes.append(f"no val/ folder: held out {val_pct:.0%} of every class in train/ for validation")
    return (Subset(train_view, sorted(train_idx)),
            Subset(_view(scan.train, eval_transforms(size, mean, std)), sorted(valid_idx)))


def subset_samples(ds: Subset) -> list[tuple[Path, int]]:
    """``(path, target)`` of every image in a split made by ``folder_splits``, in its order (notebook 09)."""
    return [(Path(ds.dataset.samples[i][0]), ds.dataset.samples[i][1]) for i in ds.indices]


def split_summary(scan: FolderScan, train_ds: Subset, valid_ds: Subset) -> str:
    """A few lines: folder, layout, images per class in each split, notes (notebook 09)."""
    counts = {name: Counter(target for _, target in subset_samples(ds))
              for name, ds in (("train", train_ds), ("valid", valid_ds))}
    split = "from the val/ folder" if scan.val is not None else "held out from every class"
    lines = [f"{scan.root}: {scan.layout}, {len(scan.classes)} classes, "
             f"{len(train_ds)} training and {len(valid_ds)} validation images ({split})"]
    width = max(len(c) for c in scan.classes)
    lines += [f"  {name:<{width}}  train {counts['train'][i]:>5}  valid {counts['valid'][i]:>5}"
              for i, name in enumerate(scan.classes)]
    sizes = [counts["train"][i] for i in range(len(scan.classes))]
    if max(sizes) >= 2 * min(sizes):
        lines.append(f"  note: the largest class has {max(sizes) / min(sizes):.1f}x the images of the smallest; "
                     "consider balancing (balance='loss' or 'sampler', command line: --balance)")
    return "\n".join(lines + [f"  note: {note}" for note in scan.notes])


# --- a real folder for full mode -------------------------------------------------------------------

def pets_image_folder(pets_dir, root=None) -> Path:
    """The Oxford-IIIT Pet photos as an ``ImageFolder`` tree, ``<root>/pets_by_breed/<breed>/*.jpg`` (notebook 09).

    ``pets_dir``: the folder holding ``images/`` (``tlhelpers.tools.samples.ensure_pets(quick=QUICK)``),
    or the images folder itself; it is only read (it may be a folder you gave with ``TLH_PETS_DIR``).
    The tree is made in ``root`` (default ``config.DATA_DIR``), once per ``pets_dir``, of hard links
    to the originals (copies where links are impossible), in a ``.part`` folder renamed when complete.
    """
    from tlhelpers import config
    from tlhelpers.pets import parse_breed
    from tlhelpers.tools.images import list_image_files

    pets_dir = Path(pets_dir)
    images_dir = pets_dir / "images" if (pets_dir / "images").is_dir() else pets_dir
    out = Path(root if root is not None else config.DATA_DIR) / "pets_by_breed"
    stamp = f"made by tlhelpers.tools.image_folder.pets_image_folder from {images_dir.resolve()}\n"
    if (out / ".complete").is_file() and (out / ".complete").read_text() == stamp:
        return out
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    for path in list_image_files(images_dir):
        target = part / parse_breed(path.name) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another drive, or a file system without hard links
            shutil.copy2(path, target)
    (part / ".complete").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(part, out)
    return out
