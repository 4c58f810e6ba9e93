"""Train a classifier on your own folder of images from the command line (notebook 09).

    python -m tlhelpers.tools.train_folder DATA_DIR --backbone resnet34 --epochs 3 --out model.pt
    python -m tlhelpers.tools.train_folder DATA_DIR --offline --epochs 2 --out model.pt   # no downloads

``DATA_DIR`` holds one sub-folder per class (``DATA_DIR/<class>/*.jpg``), or ``train/`` and
``val/`` folders that each hold one sub-folder per class. Without ``val/``, ``--val-pct`` of
every class is held out for validation (reproducibly, by ``--seed``).

The recipe is that of notebooks 02-06 (``tlhelpers.tools.folder.train_on_folder``): ``--frozen-epochs``
of training the new head on the frozen backbone (feature extraction), then ``--epochs`` of
fine-tuning everything at a ten times lower learning rate, both with the one-cycle schedule.
The checkpoint is a ``tlhelpers.tools.export`` file: ``python -m tlhelpers.tools.predict CHECKPOINT IMAGE...``.

Mistakes in the input (a missing folder, a single class, an empty class, unreadable images,
an unknown backbone, weights that cannot be downloaded) end with a message and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tlhelpers import config

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its input: printed without a traceback, exit code 2."""


def _backbone_name(value: str) -> str:
    from tlhelpers.tools.folder import check_backbone

    try:
        return check_backbone(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number; use a fraction such as 0.2") from None
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1; use a fraction such as 0.2")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _positive(value: str) -> int:
    number = _count(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tlhelpers.tools.train_folder`` (notebook 09)."""
    from tlhelpers.models import BACKBONES

    parser = argparse.ArgumentParser(
        prog="python -m tlhelpers.tools.train_folder",
        description="Fine-tune an ImageNet-pretrained network on a folder of images (one sub-folder per class, "
                    "optionally inside train/ and val/) and export it for `python -m tlhelpers.tools.predict`.")
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path,
                        help="folder with one sub-folder of images per class, or with train/ and val/ folders")
    parser.add_argument("--out", metavar="CHECKPOINT", type=Path, required=True,
                        help="where to write the exported model (.pt)")
    parser.add_argument("--backbone", type=_backbone_name, default=None,
                        help=f"pretrained network, one of: {', '.join(BACKBONES)} "
                             "(default: resnet34, or efficientnet_lite0 with --offline)")
    parser.add_argument("--epochs", type=_count, default=2,
                        help="fine-tuning epochs with the whole network trainable (default: %(default)s; "
                             "0: feature extraction only)")
    parser.add_argument("--frozen-epochs", type=_count, default=1,
                        help="epochs that train only the new head, before fine-tuning (default: %(default)s)")
    parser.add_argument("--image-size", type=_positive, default=224,
                        help="images are cropped to this many pixels (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive, default=32, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="one-cycle max_lr while the backbone is frozen (default: %(default)s)")
    parser.add_argument("--finetune-lr", type=float, default=None, help="max_lr for fine-tuning (default: lr / 10)")
    parser.add_argument("--unfreeze-stages", type=_count, default=None,
                        help="fine-tune only the last N stages of the backbone (default: all)")
    parser.add_argument("--train-bn", action="store_true",
                        help="also fine-tune the BatchNorm layers (default: they keep their ImageNet statistics)")
    parser.add_argument("--val-pct", type=_fraction, default=0.2,
                        help="share of every class held out for validation when there is no val/ folder "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=config.SEED,
                        help="seed of the split, the new head and shuffling (default: %(default)s)")
    parser.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                        help="unreadable image files: stop and list them (fail, the default), or leave them out (skip)")
    parser.add_argument("--balance", choices=("none", "loss", "sampler"), default="none",
                        help="for imbalanced classes: weight the loss, or sample every class equally often "
                             "(default: none)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: use the bundled efficientnet_lite0 weights (or weights already cached)")
    parser.add_argument("--num-workers", type=_count, default=None,
                        help="DataLoader worker processes (default: up to 4, one per CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the epoch lines stay)")
    return parser


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


def train(argv=None):
    """Parse ``argv``, train, export; returns ``(FolderRun, checkpoint path)``. Raises ``UsageError`` (notebook 09)."""
    from tlhelpers.tools.folder import FolderError, format_metrics_table, train_on_folder
    from tlhelpers.models import PretrainedWeightsUnavailable

    args = build_parser().parse_args(argv)
    out = _check_out(args.out)
    backbone = args.backbone or ("efficientnet_lite0" if args.offline else "resnet34")
    start = time.perf_counter()
    try:
        run = train_on_folder(
            args.data_dir, backbone, frozen_epochs=args.frozen_epochs, epochs=args.epochs, max_lr=args.lr,
            finetune_lr=args.finetune_lr, unfreeze_stages=args.unfreeze_stages, train_bn=args.train_bn,
            offline=args.offline,
            device=args.device, seed=args.seed, progress=not args.no_progress, image_size=args.image_size,
            batch_size=args.batch_size, val_pct=args.val_pct, bad_images=args.bad_images,
            balance=None if args.balance == "none" else args.balance, num_workers=args.num_workers)
    except (FolderError, PretrainedWeightsUnavailable) as err:
        raise UsageError(str(err)) from None
    except ValueError as err:  # settings that do not fit the data, e.g. --unfreeze-stages too large
        raise UsageError(str(err)) from None
    path = run.export(out)
    total = time.perf_counter() - start
    print(f"\nValidation accuracy of {backbone} on {len(run.data.valid_ds)} images "
          f"({run.data.scan.layout}, {run.data.image_size} px):")
    print(format_metrics_table(run.metrics))
    print(f"total time: {total:.1f} s (including loading the data and the model)")
    print(f"\nWrote {path} ({len(run.classes)} classes). Predict with:\n"
          f"  python -m tlhelpers.tools.predict {path} IMAGE...")
    return run, path


def main(argv=None) -> int:
    """Command-line entry point; returns the exit code (notebook 09)."""
    import torch

    torch.set_flush_denormal(True)  # denormal floats are very slow on x86 CPUs (see tlhelpers.tools.notebook)
    try:
        train(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
