"""Course-wide settings, read once from the environment (introduced in every notebook's setup cell).

- ``TLH_QUICK=1`` selects quick mode: small generated sample data in the real on-disk layouts,
  few epochs, small images. Full mode (real data, real sizes) is the default.
- ``TLH_DATA_DIR`` sets the data folder (default: ``data/`` in the repository, or ``./data``
  when the package is installed without the repository, as on Colab).
- ``TLH_PETS_DIR`` points the course at an Oxford-IIIT Pet folder you already have (``images/``,
  ``annotations/`` optional) or at its downloaded archive: used in every mode, never downloaded
  again, never written to.
- ``TLH_MAX_STEPS`` caps the batches of every epoch (training, validation, predictions) in the
  course's loops, and ``TLH_MAX_BATCH_SIZE`` the images per batch of its loaders: the capped test
  run of full mode (``scripts/run_course.sh --smoke``) sets both, and ``TLH_SMOKE=1``: its weights are
  random, so ``tools.checks.expect`` reports the notebooks' checks of what was learned instead of failing.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

#: The public repository of the course. PUBLICATION: set this once to the real address, then
#: run ``python -m tlhelpers.tools.notebook --sync`` to stamp it into every notebook's badge and setup cell.
REPO_URL = "https://github.com/tl-course/transfer-learning-pytorch"

#: Default seed; notebooks re-seed right before each random step.
SEED = 42

#: Channel mean and std (0-1 units) of ImageNet: what torchvision's pretrained weights expect.
#: Re-exported by ``pets``, ``models`` and ``gpu_data``; defined once, here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable; a value we do not understand is an error, not a guess."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not understood: use 1 (on) or 0 (off).")


def _positive_int(name: str) -> int | None:
    """Read a whole number >= 1 from the environment; unset or empty means None (no limit)."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r} is not understood: use a whole number >= 1, or leave it unset.")
    return value


def _find_repo_root() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() and (here / "notebooks").is_dir() else None


REPO_ROOT: Path | None = _find_repo_root()


def is_quick() -> bool:
    """True when ``TLH_QUICK`` asks for quick mode (read each call, so tests can change it)."""
    return _flag("TLH_QUICK", default=False)


def data_dir() -> Path:
    """The data folder: ``TLH_DATA_DIR`` if set, else ``<repo>/data`` (or ``./data`` outside the repo)."""
    env = os.environ.get("TLH_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / "data") if REPO_ROOT else Path.cwd() / "data"


def build_dir() -> Path:
    """Where the course runner writes executed notebooks and figures (``TLH_BUILD_DIR`` overrides)."""
    env = os.environ.get("TLH_BUILD_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / "build") if REPO_ROOT else Path.cwd() / "build"


#: The switches, read once here (the only place the package reads the environment):
QUICK: bool = is_quick()                                 # TLH_QUICK=1
DATA_DIR: Path = data_dir()                              # TLH_DATA_DIR
OFFLINE: bool = _flag("TLH_OFFLINE", default=False)      # never download torchvision weights
NO_WIDGETS: bool = _flag("TLH_NO_WIDGETS", default=False)  # plain figures instead of ipywidgets
CIFAR10_DIR: str | None = os.environ.get("TLH_CIFAR10_DIR") or None  # a CIFAR-10 image folder or .zip
PETS_DIR: str | None = os.environ.get("TLH_PETS_DIR") or None  # an Oxford-IIIT Pet folder (images/) or archive
MAX_STEPS: int | None = _positive_int("TLH_MAX_STEPS")   # batches per epoch at most (None: all of them)
MAX_BATCH_SIZE: int | None = _positive_int("TLH_MAX_BATCH_SIZE")  # images per batch at most (None: as asked)
SMOKE: bool = _flag("TLH_SMOKE", default=False)  # the smoke run: random weights, so results are not checked


def capped_batch_size(batch_size: int) -> int:
    """``batch_size``, or ``MAX_BATCH_SIZE`` when that is smaller: the capped test run's small batches."""
    return batch_size if MAX_BATCH_SIZE is None else min(batch_size, MAX_BATCH_SIZE)


def seed_everything(seed: int = SEED) -> int:
    """Seed Python, NumPy and PyTorch (CPU and CUDA). Call it right before a random step."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed
