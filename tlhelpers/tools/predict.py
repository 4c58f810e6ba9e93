"""Predict the classes of image files with an exported model: in a notebook or from the command line (notebook 08).

In a notebook (the model and meta from ``tlhelpers.tools.export.load_exported``)::

    predictions = predict_images(model, meta, ["my_cat.jpg"], k=5)
    predictions[0].top     # [("Bengal", 0.91), ("Egyptian_Mau", 0.04), ...]

From a terminal, in a fresh process::

    python -m tlhelpers.tools.predict data/models/pets_best.pt my_cat.jpg my_dog.png --top-k 3
    python -m tlhelpers.tools.predict MODEL IMAGE... --json             # JSON: every probability, full precision
    python -m tlhelpers.tools.predict MODEL IMAGE... --output out.json  # the text, plus that JSON in a file

Both go through the same ``predict_images``. The command exits with code 2 and a message naming
the file for a missing or unreadable image and for a checkpoint that is not an exported model
(a training checkpoint, a bare state_dict, any other file).
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tlhelpers.tools.fileio import write_text_atomic

__all__ = ["Prediction", "PredictError", "check_device", "check_image_paths", "printable_output", "load_images", "predict_images",
           "format_predictions", "main", "run_in_fresh_process"]

#: Exit status for bad input (the same as argparse uses for bad arguments).
EXIT_BAD_INPUT = 2


class PredictError(Exception):
    """Bad input for prediction (missing/unreadable image, not an exported model); names the file (notebook 08)."""


@dataclass
class Prediction:
    """The prediction for one image file (notebook 08)."""

    path: str
    top: list          # the k most likely classes, most likely first: [(class name, probability), ...]
    probs: list        # the probability of every class, in the export's class order

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.top[0][0]

    @property
    def probability(self) -> float:
        """The probability of the most likely class."""
        return self.top[0][1]


def check_image_paths(paths) -> list[Path]:
    """The paths as ``Path`` objects; ``PredictError`` naming the first that is not a regular file (notebook 08).

    Only regular files are accepted: reading a FIFO (named pipe) or a device named ``x.jpg``
    would wait forever.
    """
    checked = []
    for path in map(Path, paths):
        try:
            mode = path.stat().st_mode  # stat never opens the file, so it cannot block
        except FileNotFoundError:
            raise PredictError(f"image not found: {path}") from None
        except OSError as err:
            raise PredictError(f"cannot read image {path} ({err.strerror or err})") from None
        if stat.S_ISDIR(mode):
            raise PredictError(f"{path} is a folder, not an image file: pass the image files (e.g. {path}/*.jpg).")
        if not stat.S_ISREG(mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
            raise PredictError(f"{path} is {kind}, not a regular file: pass image files only.")
        checked.append(path)
    return checked


def load_images(paths, meta: dict) -> torch.Tensor:
    """Read image files as one ``(B, 3, size, size)`` batch, preprocessed as recorded in ``meta`` (notebook 08)."""
    from tlhelpers.tools.export import preprocess
    from tlhelpers.tools.images import load_rgb

    transform = preprocess(meta)
    tensors = []
    for path in check_image_paths(paths):
        try:
            image = load_rgb(path)
        except OSError as err:  # load_rgb's ImageError names the file and says what to do
            raise PredictError(str(err)) from err
        tensors.append(transform(image))
    return torch.stack(tensors)


@torch.no_grad()
def predict_images(model: nn.Module, meta: dict, paths, k: int = 5, batch_size: int = 32,
                   device=None) -> list[Prediction]:
    """Top-``k`` classes with probabilities for each image file: the one code path of notebook and CLI (notebook 08).

    ``meta`` is the dict from ``load_exported`` (``classes``, ``image_size``, ``mean``, ``std``).
    Images are read and preprocessed like the validation images (resize, centre crop,
    normalise), ``batch_size`` at a time, on ``device`` (default: where the model is).
    Raises ``PredictError`` naming a missing or unreadable file.
    """
    paths = check_image_paths(paths)  # all of them first: fail before any work
    classes = list(meta["classes"])
    k = max(1, min(int(k), len(classes)))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modes = {module: module.training for module in model.modules()}  # e.g. frozen BatchNorm layers in eval
    model.eval()
    results = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            logits = model(load_images(chunk, meta).to(device)).float()
            probs = logits.softmax(dim=1).cpu()
            top_p, top_i = probs.topk(k, dim=1)
            for path, p_row, tp, ti in zip(chunk, probs, top_p, top_i):
                results.append(Prediction(str(path), [(classes[i], float(p)) for p, i in zip(tp.tolist(), ti.tolist())],
                                          p_row.tolist()))
    finally:
        for module, training in modes.items():  # every layer back in the mode it was in
            module.training = training
    return results


def format_predictions(predictions, width: int | None = None) -> str:
    """The text the command line prints: each path, then its top-k classes and probabilities (notebook 08)."""
    names = [name for pred in predictions for name, _ in pred.top]
    width = width or max((len(n) for n in names), default=10)
    lines = []
    for pred in predictions:
        lines.append(pred.path)
        lines += [f"  {rank}. {name:<{width}}  {prob:.4f}" for rank, (name, prob) in enumerate(pred.top, start=1)]
    return "\n".join(lines)


def _load_model(checkpoint: Path, device: str):
    """``load_exported`` with every failure turned into a ``PredictError`` that names the file."""
    from tlhelpers.tools.export import load_exported

    if not checkpoint.exists():
        raise PredictError(f"checkpoint not found: {checkpoint}")
    if checkpoint.is_dir():
        raise PredictError(f"{checkpoint} is a folder, not an exported model file.")
    if not checkpoint.is_file():  # a FIFO or a device: torch.load would wait forever
        raise PredictError(f"{checkpoint} is not a regular file: pass the exported model file (.pt).")
    try:
        return load_exported(checkpoint, map_location=device)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        message = str(err)
        if str(checkpoint) not in message:  # our messages name the file; others get it in front
            message = f"{checkpoint} is not an exported model this tool can use ({type(err).__name__}: {message})"
        raise PredictError(message) from err


def check_device(name: str, option: str = "--device") -> torch.device:
    """``torch.device(name)`` when this machine has that device, else a ``ValueError`` naming ``option`` (notebook 08).

    The command lines (``predict``, ``train_folder``) call it before any slow step, so a missing
    GPU is a one-line message rather than a traceback from deep inside PyTorch.
    """
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{option} {name}: not a device name ({err}); use cpu, cuda or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: there is no CUDA GPU on this machine (or PyTorch was installed "
                             f"without CUDA support); leave {option} out to use what is here.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {name}: MPS (Apple GPU) is not available here; leave {option} out to use "
                         "what is here.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option} {name}: the course runs on cpu, cuda or mps, not {device.type}.")
    return device


def printable_output() -> None:
    """Command lines: a file name that is not UTF-8 (a Latin-1 ``café``) prints as ``caf\\udce9`` instead of failing.

    Python reads such bytes as "surrogate" characters, which a strict UTF-8 output (e.g.
    ``PYTHONIOENCODING=utf-8``) refuses to print; ``backslashreplace`` prints them as escapes.
    """
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tlhelpers.tools.predict",
        description="Print the most likely classes of image files, with an exported model "
                    "(tlhelpers.tools.export.export_model, e.g. data/models/pets_best.pt from notebook 06).")
    parser.add_argument("checkpoint", type=Path, help="the exported model (.pt)")
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--top-k", type=_positive_int, default=5, help="how many classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON with every probability, full precision")
    parser.add_argument("--output", type=Path, metavar="FILE.json",
                        help="also write that JSON to FILE.json (for scripts; the text still goes to the screen)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps ...")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    return parser


def main(argv=None) -> int:
    """The command line: ``python -m tlhelpers.tools.predict CHECKPOINT IMAGE... [--top-k 5]`` (notebook 08)."""
    printable_output()
    args = _parser().parse_args(argv)
    try:
        try:
            check_device(args.device)
        except ValueError as err:
            raise PredictError(str(err)) from None
        check_image_paths(args.images)  # cheap checks before loading the model
        model, meta = _load_model(args.checkpoint, args.device)
        predictions = predict_images(model, meta, args.images, k=args.top_k, batch_size=args.batch_size,
                                     device=args.device)
    except PredictError as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    as_json = json.dumps([asdict(pred) for pred in predictions])
    if args.output is not None:
        try:
            write_text_atomic(args.output, as_json + "\n")
        except OSError as err:
            print(f"predict: error: cannot write {args.output} ({err})", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(as_json if args.json else format_predictions(predictions))
    return 0


def run_in_fresh_process(checkpoint, images, *options: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the command line in a new Python process, with this ``tlhelpers`` on its path (notebook 08).

    Returns the ``CompletedProcess`` (``returncode``, ``stdout``, ``stderr`` as text). A fresh
    process shares nothing with the notebook: what it predicts comes from the file alone.
    """
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds tlhelpers/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "tlhelpers.tools.predict", str(checkpoint), *map(str, images), *options]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
