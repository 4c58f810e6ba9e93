"""Fine-tune a classifier on your own folder of images, from Python or the command line (notebook 09).

    python -m tlhelpers.tools.train_folder DATA_DIR --out model.pt             # resnet34 (weights downloaded once)
    python -m tlhelpers.tools.train_folder DATA_DIR --offline --out model.pt   # efficientnet_lite0, no download
    torchrun --standalone --nproc_per_node=2 -m tlhelpers.tools.train_folder DATA_DIR --out model.pt  # 2 processes

Under ``torchrun`` (notebook 10) every process trains on its share of each batch with
``DistributedDataParallel`` (Gloo on CPUs, NCCL on GPUs); ``--batch-size`` is the global batch;
process 0 prints and writes ``--out``, only after every process finished well.

``DATA_DIR`` holds one sub-folder per class, or ``train/`` and ``val/`` folders that each hold one
sub-folder per class (``tlhelpers.tools.image_folder``). Without ``val/``, ``--val-pct`` of every
class is held out for validation (reproducibly, by ``--seed``).

Training is notebook 06's recipe and nothing else: ``tlhelpers.finetune.fine_tune`` with a
``FineTuneConfig`` on a ``tlhelpers.training.PretrainedClassifier``. Phase 1 (``--frozen-epochs``
at ``--lr``) trains the new head on the frozen backbone; phase 2 (``--epochs`` at
``--finetune-lr``) unfreezes all stages (or ``--unfreeze-stages``) with discriminative rates.
Optimizer, weight decay, ``lr_ratio`` and gradient clipping are ``FineTuneConfig``'s defaults,
so the command line and notebook 06 build the same parameter groups for the same settings.
Each phase runs at least ``--min-steps`` optimizer steps (``FineTuneConfig.min_steps``): a small
folder gets more epochs, a large one the epochs asked for. The checkpoint is a
``tlhelpers.tools.export`` file: ``python -m tlhelpers.tools.predict CHECKPOINT IMAGE...``.

Python API (notebook 09):

- ``FolderConfig(backbone, image_size, batch_size, val_pct, bad_images, balance, num_workers,
  device, seed, out)``: the settings that are not the fine-tuning recipe.
- ``train_on_folder(root, folder_cfg=None, cfg=None) -> FolderRun``: scan and check the folder,
  split it, build the model and loaders, ``fine_tune(model, train_dl, valid_dl, cfg)`` (default
  ``FineTuneConfig(min_steps=MIN_STEPS)``), measure, and export when ``folder_cfg.out`` is set.
  ``FolderRun``: ``model``, ``history``, ``metrics``, ``classes``, ``scan``, ``train_ds``,
  ``valid_ds``, ``folder_cfg``, ``cfg``, ``train_time_s``, ``path``.
- ``folder_loaders(train_ds, valid_ds, folder_cfg) -> (train_dl, valid_dl)``; ``balance="sampler"``
  draws every class equally often (``WeightedRandomSampler``).
- ``WeightedLossClassifier(backbone, num_classes, class_weights)``: ``balance="loss"``, a
  ``PretrainedClassifier`` whose training loss (not the validation loss) weights rare classes up.
- ``class_weights(targets, num_classes)``: scikit-learn's ``compute_class_weight("balanced")``.
- ``validation_metrics(probs, labels, classes) -> dict``: accuracy, balanced accuracy, confusion
  matrix and ``classification_report`` (scikit-learn).
- ``export_run(run, path) -> Path``; ``config_from_args(args) -> FineTuneConfig``;
  ``folder_config_from_args(args) -> FolderConfig``; ``build_parser()``; ``main(argv) -> exit code``.

Mistakes in the input (a missing folder, a single class, an empty class, unreadable images,
weights that cannot be downloaded, settings that do not fit, a ``--device`` this machine lacks)
end with a message and exit code 2. A loss that becomes NaN or infinite stops training with the
loop's message (epoch and step) and exit code 1; nothing is written. Ctrl-C ends with exit code
130 and never touches ``--out``: the model of the finished epochs goes to
``interrupted_path(out)`` (``model.pt`` -> ``model.interrupted.pt``), and the message says how far
training got (``progress(run)``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, confusion_matrix
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, WeightedRandomSampler

from tlhelpers.config import SEED, seed_everything
from tlhelpers.distributed import (DistributedClassifier, all_succeeded, cleanup_distributed, distributed_loaders,
                                   gather_tensors, setup_distributed)
from tlhelpers.finetune import FineTuneConfig, Phase, fine_tune
from tlhelpers.pets import make_loaders
from tlhelpers.tools.backbones import BACKBONES, PretrainedWeightsUnavailable, get_stages
from tlhelpers.tools.export import ExportError
from tlhelpers.tools.predict import check_device, printable_output
from tlhelpers.tools.image_folder import FolderError, FolderScan, folder_splits, scan_image_folder, split_summary
from tlhelpers.tools.images import default_num_workers
from tlhelpers.training import (DeviceDataLoader, PretrainedClassifier, get_default_device, get_predictions,
                                is_main_process)

#: Optimizer steps each phase runs at least (``FineTuneConfig.min_steps``). On 222 real Oxford-IIIT
#: Pet photos (6 per breed, 177 to train on: 6 steps an epoch) one frozen epoch reached 22%;
#: 60 steps a phase (10 epochs each) reach 71-76% on 45 held-out photos (4 split seeds), at
#: 160 px with efficientnet_lite0 in about 2 minutes on 2 CPU cores.
MIN_STEPS = 60
#: The fine-tuning rate as a share of ``--lr`` when ``--finetune-lr`` is not given: FineTuneConfig's ratio.
_RECIPE = FineTuneConfig()
FINETUNE_LR_FACTOR = _RECIPE.phases[1].max_lr / _RECIPE.phases[0].max_lr
BALANCE_OPTIONS = (None, "loss", "sampler")
EXIT_USAGE = 2
#: Exit code when training stopped because the loss became NaN or infinite.
EXIT_DIVERGED = 1
#: Exit code after Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class SettingError(ValueError):
    """A setting that cannot work with this folder or on this machine; the message names it (notebook 09)."""


@dataclass
class FolderConfig:
    """The settings of a folder run that are not the fine-tuning recipe (notebook 09)."""

    backbone: str = "resnet34"
    image_size: int = 224
    batch_size: int = 32
    val_pct: float = 0.2              # held out from every class when there is no val/ folder
    bad_images: str = "fail"          # unreadable images: "fail" (stop and list them) or "skip"
    balance: str | None = None        # imbalanced classes: None, "loss" or "sampler"
    num_workers: int | None = None    # DataLoader workers; None: tools.images.default_num_workers()
    device: str | None = None         # None: training.get_default_device()
    seed: int = SEED
    out: Path | None = None           # export the model here (tools.export), or None

    def check(self) -> None:
        """A ``SettingError`` (a ValueError) naming the setting that cannot work, before any slow step."""
        if self.backbone not in BACKBONES:
            raise SettingError(f"backbone={self.backbone!r} is unknown; use one of {', '.join(BACKBONES)}.")
        if self.balance not in BALANCE_OPTIONS:
            raise SettingError(f"balance={self.balance!r}: use None, 'loss' (weighted loss) or 'sampler'.")
        if self.device is not None:
            try:
                check_device(self.device)
            except ValueError as err:  # e.g. --device cuda on a machine without a GPU
                raise SettingError(str(err)) from None


class WeightedLossClassifier(PretrainedClassifier):
    """A PretrainedClassifier whose training loss weights each class; validation stays unweighted (notebook 09)."""

    def __init__(self, backbone, num_classes, class_weights, pretrained=True):
        super().__init__(backbone, num_classes, pretrained)
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32), persistent=False)

    def training_step(self, batch):
        images, labels = batch
        return F.cross_entropy(self(images), labels, weight=self.class_weights)


def class_weights(targets, num_classes: int) -> torch.Tensor:
    """``N / (C * n_c)`` per class (scikit-learn's "balanced"): rare classes count more (notebook 09)."""
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=np.asarray(targets))
    return torch.tensor(weights, dtype=torch.float32)


def under_torchrun() -> bool:
    """True in a process that torchrun started and ``setup_distributed`` joined to the others (notebook 10)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def folder_loaders(train_ds, valid_ds, folder_cfg: FolderConfig) -> tuple[DataLoader, DataLoader]:
    """``tlhelpers.pets.make_loaders``; with ``balance="sampler"`` every class is drawn equally often (notebook 09)."""
    workers = default_num_workers() if folder_cfg.num_workers is None else folder_cfg.num_workers
    if under_torchrun():  # this process's share; batch_size is the global batch (notebook 10)
        if folder_cfg.balance == "sampler":
            raise SettingError("balance='sampler' (--balance sampler) cannot be split over processes under "
                               "torchrun; use --balance loss, or run a single process.")
        return distributed_loaders(train_ds, valid_ds, folder_cfg.batch_size, workers, folder_cfg.seed)
    train_dl, valid_dl = make_loaders(train_ds, valid_ds, folder_cfg.batch_size, workers, folder_cfg.seed)
    if folder_cfg.balance == "sampler":
        targets = [train_ds.dataset.targets[i] for i in train_ds.indices]
        weights = class_weights(targets, len(train_ds.dataset.classes))[targets]
        sampler = WeightedRandomSampler(weights, len(targets), generator=torch.Generator().manual_seed(folder_cfg.seed))
        train_dl = DataLoader(train_ds, folder_cfg.batch_size, sampler=sampler, num_workers=workers,
                              persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    return train_dl, valid_dl


def validation_metrics(probs, labels, classes) -> dict:
    """Accuracy, balanced accuracy, confusion matrix and per-class report, with scikit-learn (notebook 09).

    ``probs``: (N, C) probabilities or logits, or N predicted class indices. The confusion matrix
    is a list of rows (actual class) of counts per predicted class, in class order.
    """
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels).numpy()
    preds = (probs.argmax(dim=1) if probs.ndim == 2 else probs).numpy()
    every = list(range(len(classes)))
    return {"val_acc": float(accuracy_score(labels, preds)),
            "balanced_acc": float(balanced_accuracy_score(labels, preds)),
            "confusion_matrix": confusion_matrix(labels, preds, labels=every).tolist(),
            "report": classification_report(labels, preds, labels=every, target_names=list(classes),
                                            zero_division=0)}


@dataclass
class FolderRun:
    """The result of ``train_on_folder`` (notebook 09)."""

    model: PretrainedClassifier
    history: list
    metrics: dict
    classes: list
    scan: FolderScan
    train_ds: object
    valid_ds: object
    folder_cfg: FolderConfig
    cfg: FineTuneConfig
    train_time_s: float
    path: Path | None = None
    interrupted: bool = False          # Ctrl-C stopped training: the model is not finished
    planned_epochs: list | None = None  # epochs per phase as run (min_steps can add some)


def export_run(run: FolderRun, path) -> Path:
    """Export the model with its classes, preprocessing, metrics and settings (``tools.export``) (notebook 09)."""
    from tlhelpers.tools.export import export_model

    backbone = BACKBONES[run.model.backbone]
    settings = {**dataclasses.asdict(run.folder_cfg), "out": str(path), **dataclasses.asdict(run.cfg),
                "opt_func": run.cfg.opt_func.__name__, "layout": run.scan.layout,
                "train_images": len(run.train_ds), "valid_images": len(run.valid_ds), "epochs_run": len(run.history),
                "interrupted": run.interrupted}
    run.path = export_model(path, run.model, run.classes, run.folder_cfg.image_size, backbone=backbone.name,
                            mean=backbone.mean, std=backbone.std, metrics=run.metrics, training=settings)
    return run.path


def _check_phases(model, cfg: FineTuneConfig) -> None:
    stages = get_stages(model)
    for phase in cfg.phases:
        if phase.unfreeze is not None and not 0 <= phase.unfreeze <= len(stages):
            raise SettingError(f"unfreeze={phase.unfreeze} (--unfreeze-stages): {model.backbone} has {len(stages)} "
                             f"stages ({', '.join(name for name, _ in stages)}); use 0..{len(stages)}, or None for all.")


def train_on_folder(root, folder_cfg: FolderConfig | None = None, cfg: FineTuneConfig | None = None) -> FolderRun:
    """Notebook 06's fine_tune on any image folder; the command line's driver (notebook 09)."""
    folder_cfg = folder_cfg or FolderConfig()
    cfg = cfg or FineTuneConfig(min_steps=MIN_STEPS)
    folder_cfg.check()
    backbone = BACKBONES[folder_cfg.backbone]
    scan = scan_image_folder(root, folder_cfg.bad_images)
    train_ds, valid_ds = folder_splits(scan, folder_cfg.image_size, backbone.mean, backbone.std,
                                       folder_cfg.val_pct, folder_cfg.seed)
    if is_main_process():
        print(split_summary(scan, train_ds, valid_ds), flush=True)
    train_dl, valid_dl = folder_loaders(train_ds, valid_ds, folder_cfg)
    device = torch.device(folder_cfg.device) if folder_cfg.device else get_default_device()
    seed_everything(folder_cfg.seed)  # the new head's initial weights
    if folder_cfg.balance == "loss":
        weights = class_weights([scan.train.targets[i] for i in train_ds.indices], len(scan.classes))
        model = WeightedLossClassifier(backbone.name, len(scan.classes), weights)
    else:
        model = PretrainedClassifier(backbone.name, len(scan.classes))
    _check_phases(model, cfg)
    model.to(device)
    seed_everything(folder_cfg.seed)  # augmentation
    start = time.perf_counter()
    wrap = DistributedClassifier if under_torchrun() else None  # DDP in every phase (notebook 10)
    history = fine_tune(model, DeviceDataLoader(train_dl, device), DeviceDataLoader(valid_dl, device), cfg, wrap)
    train_time = time.perf_counter() - start
    planned = [max(phase.epochs, math.ceil(cfg.min_steps / len(train_dl))) for phase in cfg.phases]  # as fine_tune
    if history.interrupted:  # Ctrl-C (fine_tune's History): no final measurement, never the real --out
        last = {key: history[-1][key] for key in ("val_loss", "val_acc") if key in history[-1]} if history else {}
        run = FolderRun(model, history, {"last_epoch": last}, list(scan.classes), scan, train_ds, valid_ds,
                        folder_cfg, cfg, train_time, interrupted=True, planned_epochs=planned)
        if folder_cfg.out is not None and history and is_main_process():
            export_run(run, interrupted_path(folder_cfg.out))
        return run
    probs, labels = gather_tensors(*get_predictions(model, DeviceDataLoader(valid_dl, device)))  # every process's share
    metrics = validation_metrics(probs, labels, scan.classes)
    run = FolderRun(model, history, metrics, list(scan.classes), scan, train_ds, valid_ds, folder_cfg, cfg, train_time,
                    planned_epochs=planned)
    if folder_cfg.out is not None and all_succeeded() and is_main_process():  # one writer, after all finished well
        export_run(run, folder_cfg.out)
    return run


def interrupted_path(out) -> Path:
    """Where an interrupted run's model goes instead of ``out``: ``model.pt`` -> ``model.interrupted.pt`` (notebook 09)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.interrupted{out.suffix or '.pt'}")


def progress(run: FolderRun) -> str:
    """How far a run got, e.g. ``phase 1: 3 of 3 epochs, phase 2: 1 of 4 epochs`` (notebook 09)."""
    done = [sum(1 for entry in run.history if entry.get("phase") == number)
            for number in range(1, len(run.cfg.phases) + 1)]
    planned = run.planned_epochs or [phase.epochs for phase in run.cfg.phases]
    return ", ".join(f"phase {number}: {d} of {p} epochs" for number, (d, p) in enumerate(zip(done, planned), 1))


# --- the command line ----------------------------------------------------------------------------

class UsageError(Exception):
    """A mistake in the command line or its input: printed without a traceback, exit code 2."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training: printed without a traceback, exit code 130; ``--out`` was not written."""


def _interrupted_message(run: FolderRun, out: Path) -> str:
    where = (f"The model as it was after the last finished epoch is in {interrupted_path(out)} "
             f"(validation accuracy then: {run.metrics['last_epoch']['val_acc']:.1%}); it is not the finished model."
             if run.path is not None and "val_acc" in run.metrics["last_epoch"] else
             "No epoch had finished, so no model was written.")
    kept = f"{out} was left as it was" if out.exists() else f"{out} was not written"
    return f"training interrupted (Ctrl-C) after {progress(run)}. {kept}. {where}"


def _number(kind, low, low_ok=True, high=None):
    """An argparse type: a number of ``kind`` at least ``low`` (or above it) and below ``high``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value):  # float("inf"), float("nan") parse, and would train to NaN weights
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or (value == low and not low_ok) or (high is not None and value >= high):
            bounds = f"between {low} and {high}" if high is not None else f"{'at least' if low_ok else 'above'} {low}"
            raise argparse.ArgumentTypeError(f"{text} is not {bounds}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tlhelpers.tools.train_folder`` (notebook 09)."""
    first, second = _RECIPE.phases
    parser = argparse.ArgumentParser(
        prog="python -m tlhelpers.tools.train_folder",
        description="Fine-tune an ImageNet-pretrained network on a folder of images (one sub-folder per class, "
                    "optionally inside train/ and val/) with notebook 06's recipe, and export it for "
                    "`python -m tlhelpers.tools.predict`.")
    add = parser.add_argument
    add("data_dir", metavar="DATA_DIR", type=Path,
        help="folder with one sub-folder of images per class, or with train/ and val/ folders")
    add("--out", metavar="CHECKPOINT", type=Path, required=True, help="where to write the exported model (.pt)")
    add("--backbone", choices=list(BACKBONES), default=None,
        help="pretrained network (default: resnet34, or efficientnet_lite0 with --offline)")
    add("--offline", action="store_true",
        help="never download: use efficientnet_lite0, whose ImageNet weights come with its pip package")
    add("--frozen-epochs", type=_number(int, 0), default=first.epochs,
        help="phase 1: epochs that train only the new head (default: %(default)s; 0 skips it)")
    add("--epochs", type=_number(int, 0), default=second.epochs,
        help="phase 2: epochs of fine-tuning the unfrozen network (default: %(default)s; 0 skips it)")
    add("--min-steps", type=_number(int, 0), default=MIN_STEPS,
        help="optimizer steps each phase runs at least: more epochs for a small folder (default: %(default)s)")
    add("--lr", type=_number(float, 0, low_ok=False), default=first.max_lr,
        help="phase 1 one-cycle max_lr (default: %(default)s)")
    add("--finetune-lr", type=_number(float, 0, low_ok=False), default=None,
        help=f"phase 2 one-cycle max_lr of the head (default: {FINETUNE_LR_FACTOR:g} x --lr)")
    add("--unfreeze-stages", type=_number(int, 0), default=second.unfreeze,
        help="phase 2 trains only the last N backbone stages (default: all)")
    add("--lr-ratio", type=_number(float, 1), default=_RECIPE.lr_ratio,
        help="discriminative rates: the first stage trains at max_lr / lr-ratio (default: %(default)s)")
    add("--weight-decay", type=_number(float, 0), default=_RECIPE.weight_decay, help="(default: %(default)s)")
    add("--grad-clip", type=_number(float, 0), default=_RECIPE.grad_clip,
        help="clip gradients to this value; 0: no clipping (default: %(default)s)")
    add("--image-size", type=_number(int, 1), default=FolderConfig.image_size,
        help="images are cropped to this many pixels (default: %(default)s)")
    add("--batch-size", type=_number(int, 1), default=FolderConfig.batch_size, help="(default: %(default)s)")
    add("--val-pct", type=_number(float, 0, low_ok=False, high=1), default=FolderConfig.val_pct,
        help="share of every class held out for validation when there is no val/ folder (default: %(default)s)")
    add("--bad-images", choices=("fail", "skip"), default=FolderConfig.bad_images,
        help="unreadable image files: stop and list them (fail, the default), or leave them out (skip)")
    add("--balance", choices=("none", "loss", "sampler"), default="none",
        help="imbalanced classes: weight the loss, or sample every class equally often (default: none)")
    add("--num-workers", type=_number(int, 0), default=None,
        help="DataLoader worker processes (default: up to 4, one per CPU)")
    add("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    add("--seed", type=int, default=SEED, help="seed of the split, the new head and shuffling (default: %(default)s)")
    return parser


def config_from_args(args) -> FineTuneConfig:
    """The ``FineTuneConfig`` of parsed arguments: one phase per non-zero epoch count (notebook 09)."""
    phases = []
    if args.frozen_epochs:
        phases.append(Phase(args.frozen_epochs, args.lr, unfreeze=0))
    if args.epochs:
        finetune_lr = args.finetune_lr if args.finetune_lr is not None else args.lr * FINETUNE_LR_FACTOR
        phases.append(Phase(args.epochs, finetune_lr, unfreeze=args.unfreeze_stages))
    if not phases:
        raise UsageError("--frozen-epochs 0 and --epochs 0: nothing to train; give at least one epoch.")
    return FineTuneConfig(phases, lr_ratio=args.lr_ratio, weight_decay=args.weight_decay,
                          grad_clip=args.grad_clip or None, min_steps=args.min_steps)


def folder_config_from_args(args) -> FolderConfig:
    """The ``FolderConfig`` of parsed arguments (notebook 09)."""
    if args.offline and args.backbone not in (None, "efficientnet_lite0"):
        raise UsageError(f"--offline trains efficientnet_lite0 (its weights come with pip), not {args.backbone}: "
                         "drop --backbone, or drop --offline to download the weights once.")
    backbone = args.backbone or ("efficientnet_lite0" if args.offline else FolderConfig.backbone)
    return FolderConfig(backbone, args.image_size, args.batch_size, args.val_pct, args.bad_images,
                        None if args.balance == "none" else args.balance, args.num_workers, args.device,
                        args.seed, _check_out(args.out))


def _check_out(path: Path) -> Path:
    """Fail before training, not after, when the checkpoint cannot be written."""
    path = path.expanduser()
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name, e.g. {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {path}: cannot create the folder {path.parent} ({err})") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"--out {path}: the folder {path.parent} is not writable")
    return path


def train(argv=None) -> FolderRun:
    """Parse ``argv``, train, export, print the report; raises ``UsageError`` (notebook 09)."""
    args = build_parser().parse_args(argv)
    cfg, folder_cfg = config_from_args(args), folder_config_from_args(args)
    start = time.perf_counter()
    try:
        run = train_on_folder(args.data_dir, folder_cfg, cfg)
    except (FolderError, PretrainedWeightsUnavailable, SettingError) as err:  # not any ValueError: bugs stay loud
        raise UsageError(str(err)) from None
    if run.interrupted:
        raise TrainingInterrupted(_interrupted_message(run, folder_cfg.out))
    if not is_main_process():  # under torchrun, process 0 reports
        return run
    print(f"\nValidation of {folder_cfg.backbone} on {len(run.valid_ds)} images ({run.scan.layout}, "
          f"{folder_cfg.image_size} px):\n{run.metrics['report']}")
    print(f"accuracy {run.metrics['val_acc']:.1%}, balanced accuracy {run.metrics['balanced_acc']:.1%}")
    device = next(run.model.parameters()).device.type
    print(f"time: {run.train_time_s:.1f} s training on {device}, {time.perf_counter() - start:.1f} s in all")
    print(f"\nWrote {run.path} ({len(run.classes)} classes). Predict with:\n"
          f"  python -m tlhelpers.tools.predict {run.path} IMAGE...")
    return run


def main(argv=None) -> int:
    """Command-line entry point; returns the exit code (notebook 09).

    0: trained and exported; 2: a mistake in the command line or the folder (nothing trained);
    1: the loss became NaN or infinite (nothing written); 130: Ctrl-C (``--out`` never written).
    """
    torch.set_flush_denormal(True)  # denormal floats are very slow on x86 CPUs (see tlhelpers.tools.notebook)
    printable_output()
    try:
        setup_distributed()  # under torchrun: join the other processes (notebook 10); otherwise nothing
        train(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as err:  # the loop stopped on a NaN/inf loss: nothing is exported
        print(f"error: {err}. Nothing was written.", file=sys.stderr)
        return EXIT_DIVERGED
    except ExportError as err:  # e.g. NaN weights: export_model refuses to write them
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (scanning, measuring, writing)
        print("\ninterrupted (Ctrl-C); no model was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
