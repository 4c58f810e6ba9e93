"""Transfer learning on your own folder of images (notebook 09, and ``python -m tlhelpers.tools.train_folder``).

The folder uses torchvision's ``ImageFolder`` layout, one sub-folder per class, with or without
``train/`` and ``val/`` sub-folders::

    my_photos/                  my_photos/
      cat/ a.jpg b.jpg ...        train/ cat/ ...  dog/ ...
      dog/ c.jpg ...              val/   cat/ ...  dog/ ...

- ``scan_image_folder``   finds the layout, the classes (sorted, like ``ImageFolder``) and the
  images, checks every one can be decoded, and stops with a ``FolderError`` that names the problem
  (missing folder, fewer than two classes, a class without images, unreadable images).
- ``split_per_class``     a stratified split for folders without ``val/``: every class gets its
  share of validation images (at least one), reproducibly for a seed.
- ``load_image_folder``   all of it: a ``FolderData`` with datasets, DataLoaders, class weights.
- ``class_weights``, ``balanced_sampler``   two answers to class imbalance.
- ``train_on_folder``     the recipe of notebooks 02-06: a frozen one-cycle phase that trains the
  new head, then an unfrozen one with a lower rate; returns a ``FolderRun`` (model, history, metrics).

Differences from ``torchvision.datasets.ImageFolder``, on purpose: hidden files and folders are
ignored (``.ipynb_checkpoints`` is not a class and macOS ``._IMG_1.jpg`` files are not images),
and unreadable images are found before training, not in the middle of epoch 3.
"""
from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from tlhelpers import config
from tlhelpers.models import BACKBONES, PetsModel, get_head
from tlhelpers.pets import class_counts, default_num_workers, eval_transforms, load_rgb, make_loaders, train_transforms

__all__ = [
    "IMAGE_EXTENSIONS", "VAL_DIR_NAMES", "FolderError", "FolderScan", "scan_image_folder", "split_per_class",
    "ImageFileDataset", "FolderData", "load_image_folder", "class_weights", "balanced_sampler",
    "check_backbone", "FolderModel", "create_folder_model", "FolderRun", "train_on_folder",
    "validation_metrics", "format_metrics_table", "pets_image_folder",
]

#: File endings read as images (case-insensitive): the same as ``torchvision.datasets.ImageFolder``.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Names accepted for the validation folder next to ``train/``.
VAL_DIR_NAMES = ("val", "valid", "validation")
#: The ways of handling class imbalance: none, a weighted loss, or a balanced sampler.
BALANCE_OPTIONS = (None, "loss", "sampler")


class FolderError(ValueError):
    """A problem with an image folder; the message names it and says what to do (notebook 09)."""


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name != "__MACOSX"


def _class_dirs(folder: Path) -> list[Path]:
    """The class sub-folders of ``folder``, sorted by name (``ImageFolder``'s order)."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """(image files under ``folder``, at any depth, sorted; number of other visible files)."""
    images, others = [], 0
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(folder).parts)
        if hidden or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            others += 1
    return images, others


def _short_list(items, limit: int = 5) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# --- finding the images ------------------------------------------------------------------------

@dataclass
class FolderScan:
    """What ``scan_image_folder`` found: layout, sorted classes, files and labels per split (notebook 09).

    ``val_files`` is empty when the folder has no ``val/``: then ``split_per_class`` makes one.
    ``skipped`` lists unreadable images left out; ``notes`` are remarks worth printing.
    """

    root: Path
    layout: str                      # "class folders" or "train/ + val/" or "train/ only"
    classes: list[str]
    train_files: list[Path]
    train_targets: list[int]
    val_files: list[Path] = field(default_factory=list)
    val_targets: list[int] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    ignored_files: int = 0           # visible files that are not images (.txt, .csv, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def has_val_folder(self) -> bool:
        return self.layout == "train/ + val/"


def _collect(split_dir: Path, classes: list[str], where: str):
    """Files and targets of the class folders ``classes`` in ``split_dir``; empty classes listed."""
    files, targets, empty, others = [], [], [], 0
    for idx, name in enumerate(classes):
        class_dir = split_dir / name
        found, other = _image_files(class_dir) if class_dir.is_dir() else ([], 0)
        others += other
        if class_dir.is_dir() and not found:
            empty.append(f"{where}{name}/")
        files += found
        targets += [idx] * len(found)
    return files, targets, empty, others


def _check_readable(paths: list[Path], progress: bool) -> list[tuple[Path, str]]:
    """(path, reason) for every file that does not decode as an image."""
    bad = []
    iterable = paths
    if progress and len(paths) >= 500:
        from tqdm.auto import tqdm

        iterable = tqdm(paths, desc="checking images", leave=False)
    for path in iterable:
        try:
            load_rgb(path)
        except OSError as err:
            cause = err.__cause__ or err
            bad.append((path, f"{type(cause).__name__}: {cause}"))
    return bad


def scan_image_folder(root, bad_images: str = "fail", check_images: bool = True,
                      progress: bool = True) -> FolderScan:
    """Find the classes and images of an ``ImageFolder``-style folder and check them (notebook 09).

    Layouts: ``<root>/<class>/*.jpg``; or ``<root>/train/<class>/`` with ``<root>/val/<class>/``
    (``valid/`` and ``validation/`` work too); or ``train/`` alone. Classes are the sorted
    sub-folder names (of ``train/`` when there is one). Images may sit in deeper sub-folders.
    ``bad_images``: ``"fail"`` raises a ``FolderError`` listing every unreadable image;
    ``"skip"`` leaves them out (listed in ``scan.skipped``). ``check_images=False`` skips the
    decoding check (fast, but a broken file then stops training when it is loaded).
    """
    if bad_images not in ("fail", "skip"):
        raise ValueError(f"bad_images={bad_images!r}: use 'fail' (stop and list them) or 'skip' (leave them out).")
    root = Path(root).expanduser()
    if not root.exists():
        raise FolderError(f"{root} does not exist. Pass the folder that holds one sub-folder per class "
                          "(<folder>/<class>/*.jpg), or train/ and val/ folders with one sub-folder per class each.")
    if not root.is_dir():
        raise FolderError(f"{root} is a file, not a folder. Pass the folder that holds one sub-folder per class.")

    notes: list[str] = []
    train_dir = root / "train"
    val_dir = next((root / name for name in VAL_DIR_NAMES if (root / name).is_dir()), None)
    if train_dir.is_dir():
        layout = "train/ + val/" if val_dir is not None else "train/ only"
        class_root, where = train_dir, "train/"
        for other in _class_dirs(root):
            if other.name not in ("train", *VAL_DIR_NAMES):
                notes.append(f"ignored the folder {other.name}/ next to train/ (only train/ and val/ are used)")
    else:
        if val_dir is not None:
            raise FolderError(f"{root} has a {val_dir.name}/ folder but no train/ folder. Put the training "
                              f"images in {root / 'train'}/<class>/, or remove {val_dir.name}/ and keep one "
                              "sub-folder per class directly in the folder.")
        layout, class_root, where, val_dir = "class folders", root, "", None

    classes = [p.name for p in _class_dirs(class_root)]
    if len(classes) < 2:
        loose, _ = _image_files(class_root) if not classes else ([], 0)
        found = (f"found {len(classes)} class folder ({classes[0]}/)" if classes else "found no class folders")
        hint = (f"; its {len(loose)} images must be sorted into one sub-folder per class" if loose else "")
        raise FolderError(f"{class_root}: {found}{hint}. A classifier needs at least two classes: make one "
                          f"sub-folder per class, e.g. {class_root / 'cat'}/ and {class_root / 'dog'}/.")

    train_files, train_targets, empty, ignored = _collect(class_root, classes, where)
    val_files, val_targets = [], []
    if val_dir is not None:
        val_classes = [p.name for p in _class_dirs(val_dir)]
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise FolderError(f"{val_dir} has class folders that train/ lacks: {_short_list(unknown)}. "
                              "The model can only learn classes it trains on: add them to train/ or remove them.")
        val_files, val_targets, val_empty, val_ignored = _collect(val_dir, classes, f"{val_dir.name}/")
        empty += val_empty
        ignored += val_ignored
        missing = [name for name in classes if name not in val_classes]
        if missing:
            notes.append(f"{val_dir.name}/ has no folder for {_short_list(missing)}: "
                         "their accuracy cannot be measured")
    if empty:
        raise FolderError(f"{root}: class folder(s) with no images: {_short_list(empty)}. Add images "
                          f"(files ending in {', '.join(IMAGE_EXTENSIONS)}) or delete the empty folder(s).")

    skipped: list[Path] = []
    if check_images:
        bad = _check_readable(train_files + val_files, progress)
        if bad:
            named = _short_list([f"{p.relative_to(root)} ({reason})" for p, reason in bad], limit=10)
            if bad_images == "fail":
                raise FolderError(f"{len(bad)} unreadable image(s) in {root}: {named}. Delete or replace them, "
                                  "or leave them out with bad_images='skip' (command line: --bad-images skip).")
            skipped = [p for p, _ in bad]
            notes.append(f"skipped {len(bad)} unreadable image(s): {named}")
            drop = set(skipped)
            train_files, train_targets = _drop(train_files, train_targets, drop)
            val_files, val_targets = _drop(val_files, val_targets, drop)
            left = set(train_targets)
            gone = [f"{where}{name}/" for i, name in enumerate(classes) if i not in left]
            if gone:
                raise FolderError(f"{root}: after skipping unreadable images these classes have no images "
                                  f"left to train on: {_short_list(gone)}. Add readable images.")
    if ignored:
        notes.append(f"ignored {ignored} file(s) that are not images (only {', '.join(IMAGE_EXTENSIONS)} are read)")
    return FolderScan(root, layout, classes, train_files, train_targets, val_files, val_targets,
                      skipped, ignored, notes)


def _drop(files, targets, drop: set):
    kept = [(f, t) for f, t in zip(files, targets) if f not in drop]
    return [f for f, _ in kept], [t for _, t in kept]


# --- the split ---------------------------------------------------------------------------------

def split_per_class(targets: Sequence[int], val_pct: float = 0.2, seed: int = config.SEED,
                    classes: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Stratified ``(train_idx, valid_idx)``: ``val_pct`` of every class, at least one image each (notebook 09).

    Unlike ``tlhelpers.pets.stratified_split_indices`` (which matches the shares overall), every
    class gets ``round(n * val_pct)`` validation images, but at least 1 and at most ``n - 1``, so
    even a class of 3 photos is both trained on and measured. Each class is shuffled by its own
    generator, seeded by ``seed`` and the class name, so adding images to one class or adding a
    class leaves the other classes' splits as they were. Both lists are sorted.
    """
    if not 0 < val_pct < 1:
        raise ValueError(f"val_pct={val_pct}: use a fraction between 0 and 1, e.g. 0.2.")
    targets = np.asarray(list(targets), dtype=np.int64)
    train_idx, valid_idx = [], []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        name = classes[label] if classes is not None else str(label)
        if len(members) < 2:
            raise FolderError(f"class {name!r} has only {len(members)} image: a split needs at least 2 "
                              "(one to train on, one to validate). Add images, or use train/ and val/ folders.")
        n_valid = min(max(1, round(len(members) * val_pct)), len(members) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        order = rng.permutation(len(members))
        valid_idx += members[order[:n_valid]].tolist()
        train_idx += members[order[n_valid:]].tolist()
    return sorted(train_idx), sorted(valid_idx)


# --- datasets and loaders ------------------------------------------------------------------------

class ImageFileDataset(Dataset):
    """Images from a list of files with integer labels; keeps ``classes`` and ``targets`` (notebook 09)."""

    def __init__(self, files: Sequence, targets: Sequence[int], classes: Sequence[str], transform=None):
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets.")
        self.files = [Path(f) for f in files]
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx):
        img = load_rgb(self.files[idx])
        return (self.transform(img) if self.transform is not None else img), self.targets[idx]

    def __repr__(self) -> str:
        return f"ImageFileDataset({len(self)} images, {len(self.classes)} classes, transform={self.transform})"


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weights ``N / (C * n_c)``: rare classes count more, and a balanced set gets all ones (notebook 09)."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).float()
    if (counts == 0).any():
        raise ValueError(f"class(es) {torch.nonzero(counts == 0).flatten().tolist()} have no training images: "
                         "a class weight would be infinite.")
    return counts.sum() / (num_classes * counts)


def balanced_sampler(targets: Sequence[int], seed: int = config.SEED,
                     num_samples: int | None = None) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` that draws every class equally often, with replacement (notebook 09).

    An epoch still has ``len(targets)`` draws (``num_samples``): rare images appear several times,
    some common ones not at all. Seeded by its own generator.
    """
    targets_t = torch.as_tensor(list(targets), dtype=torch.long)
    counts = torch.bincount(targets_t).double()
    weights = (1.0 / counts)[targets_t]
    return WeightedRandomSampler(weights, num_samples or len(targets_t), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def check_backbone(name: str) -> str:
    """``name`` if it is a key of ``tlhelpers.models.BACKBONES``, else a ``ValueError`` listing them (notebook 09)."""
    if isinstance(name, str) and name.lower() in BACKBONES:
        return name.lower()
    raise ValueError(f"Unknown backbone {name!r}. Valid names: {', '.join(BACKBONES)}.")


@dataclass
class FolderData:
    """Everything ``load_image_folder`` prepared: datasets, loaders, classes, preprocessing (notebook 09)."""

    scan: FolderScan
    classes: list[str]
    train_ds: ImageFileDataset
    valid_ds: ImageFileDataset
    train_dl: DataLoader
    valid_dl: DataLoader
    backbone: str
    image_size: int
    mean: tuple
    std: tuple
    batch_size: int
    balance: str | None = None
    class_weights: torch.Tensor | None = None   # set when balance == "loss"
    seed: int = config.SEED

    @property
    def root(self) -> Path:
        return self.scan.root

    def counts(self) -> dict:
        """``{"train": {class: n}, "valid": {class: n}}``."""
        return {"train": class_counts(self.train_ds.targets, self.classes),
                "valid": class_counts(self.valid_ds.targets, self.classes)}

    def summary(self) -> str:
        """A few lines: folder, layout, classes with their image counts, notes."""
        counts = self.counts()
        split = ("from the val/ folder" if self.scan.has_val_folder
                 else f"held out per class with seed {self.seed}")
        lines = [f"{self.root}: {self.scan.layout}, {len(self.classes)} classes, "
                 f"{len(self.train_ds)} training and {len(self.valid_ds)} validation images ({split})"]
        width = max(len(c) for c in self.classes)
        lines += [f"  {name:<{width}}  train {counts['train'][name]:>5}  valid {counts['valid'][name]:>5}"
                  for name in self.classes]
        train_counts = [n for n in counts["train"].values()]
        ratio = max(train_counts) / max(1, min(train_counts))
        if ratio >= 2 and self.balance is None:
            lines.append(f"  note: the largest class has {ratio:.1f}x the images of the smallest; "
                         "consider balance='loss' or 'sampler'")
        lines += [f"  note: {note}" for note in self.scan.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"FolderData({str(self.root)!r}, {len(self.classes)} classes, train={len(self.train_ds)}, "
                f"valid={len(self.valid_ds)}, backbone={self.backbone!r}, image_size={self.image_size})")


def load_image_folder(root, backbone: str = "efficientnet_lite0", image_size: int = 224, batch_size: int = 32,
                      val_pct: float = 0.2, seed: int = config.SEED, bad_images: str = "fail",
                      balance: str | None = None, num_workers: int | None = None, check_images: bool = True,
                      progress: bool = True) -> FolderData:
    """Scan, check and split an image folder; datasets and DataLoaders for ``backbone`` (notebook 09).

    - The backbone decides the normalisation (``BACKBONES[backbone].mean``/``std``).
    - Training images get ``train_transforms(image_size)`` (random crops, flips, colour jitter),
      validation images the deterministic ``eval_transforms(image_size)``.
    - Without a ``val/`` folder, ``split_per_class(val_pct, seed)`` holds out images of every class.
    - ``balance``: ``None``; ``"loss"`` computes ``class_weights`` for a weighted loss (used by
      ``create_folder_model``); ``"sampler"`` draws training batches with ``balanced_sampler``.
    """
    backbone = check_backbone(backbone)
    if balance not in BALANCE_OPTIONS:
        raise ValueError(f"balance={balance!r}: use None, 'loss' (weighted loss) or 'sampler' (balanced sampler).")
    scan = scan_image_folder(root, bad_images=bad_images, check_images=check_images, progress=progress)
    if scan.val_files:
        train_files, train_targets = scan.train_files, scan.train_targets
        val_files, val_targets = scan.val_files, scan.val_targets
    else:
        train_idx, val_idx = split_per_class(scan.train_targets, val_pct, seed, scan.classes)
        train_files = [scan.train_files[i] for i in train_idx]
        train_targets = [scan.train_targets[i] for i in train_idx]
        val_files = [scan.train_files[i] for i in val_idx]
        val_targets = [scan.train_targets[i] for i in val_idx]
        if scan.layout == "train/ only":
            scan.notes.append(f"no val/ folder: held out {val_pct:.0%} of every class in train/ for validation")
    mean, std = BACKBONES[backbone].mean, BACKBONES[backbone].std
    train_ds = ImageFileDataset(train_files, train_targets, scan.classes, train_transforms(image_size, mean, std))
    valid_ds = ImageFileDataset(val_files, val_targets, scan.classes, eval_transforms(image_size, mean, std))
    train_dl, valid_dl = make_loaders(train_ds, valid_ds, batch_size=batch_size, num_workers=num_workers, seed=seed)
    weights = None
    if balance == "loss":
        weights = class_weights(train_targets, len(scan.classes))
    elif balance == "sampler":
        workers = default_num_workers() if num_workers is None else num_workers
        train_dl = DataLoader(train_ds, batch_size=batch_size, sampler=balanced_sampler(train_targets, seed),
                              num_workers=workers, pin_memory=torch.cuda.is_available(),
                              persistent_workers=workers > 0)
    return FolderData(scan, list(scan.classes), train_ds, valid_ds, train_dl, valid_dl, backbone, int(image_size),
                      tuple(mean), tuple(std), batch_size, balance, weights, seed)


# --- the model -----------------------------------------------------------------------------------

class FolderModel(PetsModel):
    """``PetsModel`` for any folder, with optional class weights in the *training* loss (notebook 09).

    Validation loss and accuracy stay unweighted, so runs with and without weights compare directly.
    """

    def __init__(self, num_classes: int, backbone: str = "efficientnet_lite0", class_weights=None,
                 pretrained: bool = True, dropout: float = 0.0, label_smoothing: float = 0.0,
                 offline: bool | None = None):
        super().__init__(num_classes, backbone, pretrained=pretrained, dropout=dropout,
                         label_smoothing=label_smoothing, offline=offline)
        self.dropout = float(dropout)
        self.register_buffer("class_weights", None, persistent=False)
        self.set_class_weights(class_weights)

    def set_class_weights(self, weights) -> None:
        """Use ``weights`` (one per class) in the training loss; ``None`` for plain cross entropy."""
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.shape != (self.meta["num_classes"],):
                raise ValueError(f"class_weights has shape {tuple(weights.shape)}; expected "
                                 f"({self.meta['num_classes']},), one weight per class.")
            device = next(self.parameters()).device
            weights = weights.to(device)
        self.class_weights = weights

    def training_step(self, batch) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)

    #: Printed in front of every epoch line ("frozen", "unfrozen"); set by ``train_on_folder``.
    phase_name: str = ""
    phase_epochs: int = 0

    def epoch_end(self, epoch: int, result: dict) -> None:
        """One line per epoch: phase, epoch, train loss, validation loss and accuracy, time."""
        total = f"/{self.phase_epochs}" if self.phase_epochs else ""
        prefix = f"{self.phase_name} " if self.phase_name else ""
        print(f"{prefix}epoch {epoch}{total}: train_loss {result['train_loss']:.4f}, "
              f"val_loss {result['val_loss']:.4f}, val_acc {result['val_acc']:.4f}, "
              f"{result.get('epoch_time', float('nan')):.1f} s", flush=True)


def create_folder_model(data: FolderData, backbone: str | None = None, dropout: float = 0.0,
                        offline: bool | None = None, seed: int = config.SEED) -> FolderModel:
    """A pretrained ``FolderModel`` with a new head for ``data.classes`` (and its class weights) (notebook 09)."""
    backbone = check_backbone(backbone or data.backbone)
    if BACKBONES[backbone].mean != tuple(data.mean) or BACKBONES[backbone].std != tuple(data.std):
        raise ValueError(f"The images were normalised for {data.backbone!r}, which {backbone!r} does not share: "
                         f"load the folder again with backbone={backbone!r}.")
    config.seed_everything(seed)  # the new head's initial weights
    return FolderModel(len(data.classes), backbone, class_weights=data.class_weights, dropout=dropout,
                       offline=offline)


# --- metrics -----------------------------------------------------------------------------------

def validation_metrics(probs, targets, classes: Sequence[str]) -> dict:
    """Accuracy overall, balanced and per class, and the confusion matrix, as plain values (notebook 09).

    ``probs``: predicted class indices, or probabilities/logits of shape (N, C), e.g. from
    ``tlhelpers.train.get_predictions``. Returns ``{"val_acc", "balanced_acc", "per_class":
    {name: {"images", "correct", "accuracy"}}, "confusion_matrix": [[...]]}`` in class order
    (rows = actual class, columns = predicted; ``tlhelpers.interpret.confusion_matrix``), ready
    to print with ``format_metrics_table`` or store in an export. ``balanced_acc`` is the mean of
    the per-class accuracies over classes that have images: with imbalanced classes it shows
    what plain accuracy hides.
    """
    from tlhelpers.interpret import confusion_matrix

    cm = confusion_matrix(targets, probs, len(classes))
    per_class = {}
    for i, name in enumerate(classes):
        images, correct = int(cm[i].sum()), int(cm[i, i])
        per_class[name] = {"images": images, "correct": correct,
                           "accuracy": correct / images if images else float("nan")}
    total = int(cm.sum())
    measured = [v["accuracy"] for v in per_class.values() if v["images"]]
    return {"val_acc": float(np.trace(cm)) / total if total else float("nan"),
            "balanced_acc": float(np.mean(measured)) if measured else float("nan"),
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def format_metrics_table(metrics: dict) -> str:
    """The final table of ``train_on_folder``: images, correct and accuracy per class, then overall (notebook 09)."""
    per_class = metrics["per_class"]
    width = max([len("balanced (mean of classes)")] + [len(name) for name in per_class])
    header = f"{'class':<{width}}  {'images':>6}  {'correct':>7}  {'accuracy':>8}"
    lines = [header, "-" * len(header)]
    for name, row in per_class.items():
        acc = f"{100 * row['accuracy']:.1f}%" if row["images"] else "-"
        lines.append(f"{name:<{width}}  {row['images']:>6}  {row['correct']:>7}  {acc:>8}")
    total = sum(r["images"] for r in per_class.values())
    correct = sum(r["correct"] for r in per_class.values())
    lines.append("-" * len(header))
    lines.append(f"{'overall':<{width}}  {total:>6}  {correct:>7}  {100 * metrics['val_acc']:>7.1f}%")
    lines.append(f"{'balanced (mean of classes)':<{width}}  {'':>6}  {'':>7}  {100 * metrics['balanced_acc']:>7.1f}%")
    if "train_time_s" in metrics:
        lines.append(f"time: {metrics['train_time_s']:.1f} s training on {metrics.get('device', '?')}")
    return "\n".join(lines)


# --- the recipe ----------------------------------------------------------------------------------

@dataclass
class FolderRun:
    """The result of ``train_on_folder``: model, history (with a "phase" per epoch), metrics, data (notebook 09)."""

    model: FolderModel
    history: list
    metrics: dict
    data: FolderData
    settings: dict

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    def phase(self, name: str) -> list:
        """The epochs of one phase: ``run.phase("frozen")`` or ``run.phase("unfrozen")``."""
        return [h for h in self.history if h.get("phase") == name]

    def export(self, path):
        """Write an ``export_model`` file (weights, classes, preprocessing, metrics) for ``load_exported``."""
        from tlhelpers.tools.export import export_model

        metrics = {k: v for k, v in self.metrics.items() if k != "confusion_matrix"}
        return export_model(path, self.model, self.classes, self.data.image_size, backbone=self.data.backbone,
                            mean=self.data.mean, std=self.data.std, dropout=getattr(self.model, "dropout", 0.0),
                            metrics=metrics, training=dict(self.settings))


def _reseed_loader(dl, seed: int) -> None:
    """Reseed the generator behind a loader's shuffling or sampling, if it has one."""
    for generator in (getattr(dl, "generator", None), getattr(getattr(dl, "sampler", None), "generator", None)):
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)


def _phase_header(text: str, verbose: bool) -> None:
    if verbose:
        print(text, flush=True)


def train_on_folder(data, backbone: str | None = None, *, frozen_epochs: int = 1, epochs: int = 2,
                    max_lr: float = 1e-3, finetune_lr: float | None = None, unfreeze_stages: int | None = None,
                    weight_decay: float = 1e-4, grad_clip: float | None = 0.1, opt_func=torch.optim.Adam,
                    train_bn: bool = False, model: nn.Module | None = None, dropout: float = 0.0,
                    offline: bool | None = None,
                    device=None, seed: int = config.SEED, progress: bool = True, verbose: bool = True,
                    image_size: int | None = None, batch_size: int | None = None, val_pct: float | None = None,
                    bad_images: str | None = None, balance: str | None = None,
                    num_workers: int | None = None) -> FolderRun:
    """The recipe of notebooks 02-06 on any image folder; used by notebook 09 and the command line.

    1. ``data``: a ``FolderData`` from ``load_image_folder``, or a folder path (then ``image_size``,
       ``batch_size``, ``val_pct``, ``bad_images``, ``balance`` and ``num_workers`` are passed on to
       ``load_image_folder``; with a ``FolderData`` they are already decided and must stay ``None``).
    2. ``model``: default ``create_folder_model(data, backbone)`` (ImageNet weights, new head).
    3. Feature extraction: backbone frozen, ``frozen_epochs`` of one-cycle training at ``max_lr``.
    4. Fine-tuning: ``unfreeze(unfreeze_stages)`` (``None``: everything), ``epochs`` of one-cycle at
       ``finetune_lr`` (default ``max_lr / 10``: the pretrained weights need small steps).
       ``epochs=0`` stops after feature extraction. BatchNorm layers stay frozen, with their
       ImageNet statistics, unless ``train_bn=True``: switching them to the statistics of small
       batches of a small data set undoes much of what the head learned (on notebook 09's quick
       folder the training loss jumped from 0.24 to 1.5 in the first fine-tuning epoch).
    5. Metrics on the validation images: overall, balanced and per-class accuracy, confusion matrix.

    Optimiser settings follow the original write-up: Adam, ``weight_decay=1e-4``, ``grad_clip=0.1``.
    """
    data_options = dict(image_size=image_size, batch_size=batch_size, val_pct=val_pct, bad_images=bad_images,
                        balance=balance, num_workers=num_workers)
    if isinstance(data, FolderData):
        given = sorted(k for k, v in data_options.items() if v is not None)
        if given:
            raise ValueError(f"train_on_folder: {', '.join(given)} were already decided by load_image_folder; "
                             "pass them there, or pass the folder path instead of a FolderData.")
    else:
        options = {k: v for k, v in data_options.items() if v is not None}
        data = load_image_folder(data, backbone=backbone or "efficientnet_lite0", seed=seed,
                                 progress=progress, **options)
        if verbose:
            print(data.summary(), flush=True)
    if frozen_epochs < 0 or epochs < 0 or frozen_epochs + epochs == 0:
        raise ValueError(f"frozen_epochs={frozen_epochs}, epochs={epochs}: need at least one epoch in total "
                         "and no negative counts.")
    if model is None:
        model = create_folder_model(data, backbone, dropout=dropout, offline=offline, seed=seed)
    else:
        num_out = get_head(model).out_features if hasattr(get_head(model), "out_features") else None
        if num_out is not None and num_out != len(data.classes):
            raise ValueError(f"The model's head has {num_out} outputs but the folder has {len(data.classes)} classes.")
        if data.class_weights is not None and hasattr(model, "set_class_weights"):
            model.set_class_weights(data.class_weights)
        elif data.class_weights is not None:
            raise ValueError("balance='loss' needs a FolderModel (create_folder_model) to weight the loss.")
    if unfreeze_stages is not None and epochs:
        from tlhelpers.models import get_stages

        stages = get_stages(model)
        if not 0 <= unfreeze_stages <= len(stages):
            raise ValueError(f"unfreeze_stages={unfreeze_stages}: {data.backbone} has {len(stages)} stages "
                             f"({', '.join(name for name, _ in stages)}); use 0..{len(stages)} or None for all.")
    if device is None:
        from tlhelpers.device import get_default_device

        device = get_default_device()
    device = torch.device(device)
    model.to(device)
    finetune_lr = max_lr / 10 if finetune_lr is None else finetune_lr
    fit_options = dict(weight_decay=weight_decay, grad_clip=grad_clip, opt_func=opt_func, device=device,
                       progress=progress, verbose=verbose)

    from tlhelpers.models import freeze_backbone, unfreeze
    from tlhelpers.train import fit_one_cycle, get_predictions

    def run_phase(name: str, num_epochs: int, lr: float, phase_seed: int) -> bool:
        """One one-cycle phase; False if it was interrupted (Ctrl-C ends ``train_model`` early)."""
        model.phase_name, model.phase_epochs = name, num_epochs
        config.seed_everything(phase_seed)  # augmentation, dropout
        _reseed_loader(data.train_dl, phase_seed)  # shuffling: the same batches when a cell is re-run
        entries = fit_one_cycle(num_epochs, lr, model, data.train_dl, data.valid_dl, **fit_options)
        history.extend({**entry, "phase": name} for entry in entries)
        return len(entries) == num_epochs

    history: list = []
    finished = True
    start = time.perf_counter()
    if frozen_epochs:
        freeze_backbone(model)
        _phase_header(f"Phase 1, feature extraction: backbone frozen, training the head for {frozen_epochs} "
                      f"epoch(s), one-cycle max_lr={max_lr:g}", verbose)
        finished = run_phase("frozen", frozen_epochs, max_lr, seed)
    if epochs and finished:
        unfreeze(model, unfreeze_stages)
        what = "everything" if unfreeze_stages is None else f"the last {unfreeze_stages} stage(s) and the head"
        if not train_bn:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)  # train_model keeps frozen BatchNorm layers in eval mode
            what += " except the BatchNorm layers"
        _phase_header(f"Phase 2, fine-tuning: training {what} for {epochs} epoch(s), "
                      f"one-cycle max_lr={finetune_lr:g}", verbose)
        finished = run_phase("unfrozen", epochs, finetune_lr, seed + 1)
    if not finished:
        _phase_header("Training was interrupted: the metrics below are those of the model as it is now.", verbose)
    model.phase_name, model.phase_epochs = "", 0
    train_time = time.perf_counter() - start

    probs, targets = get_predictions(model, data.valid_dl, device=device)
    metrics = validation_metrics(probs, targets, data.classes)
    metrics["val_loss"] = history[-1]["val_loss"] if history else float("nan")
    metrics["train_time_s"] = train_time
    metrics["device"] = str(device)
    settings = {"backbone": data.backbone, "image_size": data.image_size, "batch_size": data.batch_size,
                "frozen_epochs": frozen_epochs, "epochs": epochs, "max_lr": max_lr, "finetune_lr": finetune_lr,
                "unfreeze_stages": unfreeze_stages, "train_bn": train_bn, "weight_decay": weight_decay,
                "grad_clip": grad_clip,
                "balance": data.balance, "seed": seed, "layout": data.scan.layout,
                "train_images": len(data.train_ds), "valid_images": len(data.valid_ds), "interrupted": not finished}
    return FolderRun(model, history, metrics, data, settings)


# --- a real folder for full mode -------------------------------------------------------------------

def pets_image_folder(pets_dir=None) -> Path:
    """The Oxford-IIIT Pet photos as an ``ImageFolder`` tree, ``<data>/pets_by_breed/<breed>/*.jpg`` (notebook 09).

    Full mode of notebook 09 uses it as "your own folder": 37 breed folders of real photos.
    ``pets_dir`` defaults to ``tlhelpers.tools.samples.ensure_pets()`` (the download, or the quick-mode
    sample); the tree is made next to it. The files are hard links to the originals (no extra
    disk space), or copies where links are impossible. Made once, in a ``.part`` folder renamed
    when complete.
    """
    import os
    import shutil

    from tlhelpers.pets import list_image_files, parse_breed
    from tlhelpers.tools.samples import ensure_pets

    pets_dir = Path(pets_dir) if pets_dir is not None else ensure_pets()
    out = pets_dir.parent / "pets_by_breed"
    if (out / ".complete").is_file():
        return out
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    for path in list_image_files(pets_dir):
        target = part / parse_breed(path.name) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another drive, or a file system without hard links
            shutil.copy2(path, target)
    (part / ".complete").write_text("made by tlhelpers.tools.folder.pets_image_folder\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(part, out)
    return out
