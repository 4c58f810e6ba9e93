"""Training: evaluate, fit, fit_one_cycle, checkpoints and the learning-rate finder (notebooks 05-06).

Every function works for any ``nn.Module`` that maps a batch of images to logits. A model
that defines ``training_step(batch)`` / ``validation_step(batch)`` (like
``tlhelpers.models.ImageClassificationBase``) is trained with those methods; any other model
is trained with ``loss_fn(model(images), labels)`` (cross entropy by default).

``fit`` (constant learning rate, notebook 05) and ``fit_one_cycle`` (one-cycle schedule,
notebook 06) keep the call signatures of the original write-up, and both run the one loop
in ``train_model``: mixed precision on CUDA, gradient clipping, progress bars, the best
checkpoint, early stopping, and a Ctrl-C that returns the history instead of losing it.

A ``history`` is a list with one dict per epoch::

    {"epoch": 1, "train_loss": 0.91, "val_loss": 0.62, "val_acc": 0.81,
     "lrs": [0.0004, 0.0005, ...],   # the learning rate used at each batch step
     "epoch_time": 12.3}             # seconds, training and validation
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlhelpers.device import to_device
from tlhelpers.tools.fileio import atomic_path
from tlhelpers.models import accuracy, set_frozen_bn_eval

CHECKPOINT_FORMAT = "tlhelpers-checkpoint"
CHECKPOINT_VERSION = 1

__all__ = [
    "accuracy", "evaluate", "fit", "fit_one_cycle", "train_model", "get_lr",
    "save_checkpoint", "load_checkpoint", "lr_find", "LRFindResult",
    "get_predictions", "summarize_history",
]


# --- small pieces -------------------------------------------------------------------------

def get_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate of the first parameter group (notebook 06)."""
    return optimizer.param_groups[0]["lr"]


def _train_mode(model: nn.Module, mode: bool = True) -> None:
    """``model.train(mode)``, keeping frozen BatchNorm layers in eval mode (the rule of notebook 04)."""
    model.train(mode)
    if mode:
        set_frozen_bn_eval(model)


def _resolve_device(device, model: nn.Module, dl=None) -> torch.device:
    """``device`` if given, else the loader's (a ``DeviceDataLoader``), else the model's."""
    if device is not None:
        return torch.device(device)
    if getattr(dl, "device", None) is not None:
        return torch.device(dl.device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _precision(device: torch.device, amp):
    """Mixed-precision settings: (autocast context factory, GradScaler or None).

    ``amp=None`` means automatic: on for CUDA (bfloat16 where the GPU has it natively,
    else float16 with a GradScaler), off elsewhere. ``amp=True`` forces it on; a dtype
    (``torch.bfloat16`` / ``torch.float16``) picks the precision.
    """
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return contextlib.nullcontext, None
    if isinstance(amp, torch.dtype):
        dtype = amp
    elif device.type == "cuda":
        try:  # emulated bfloat16 (e.g. a Colab T4) is slow: ask for native support only
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4
            native_bf16 = torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if native_bf16 else torch.float16
    else:
        dtype = torch.bfloat16  # CPU autocast supports bfloat16
    scaler = None
    if dtype == torch.float16 and device.type == "cuda":
        # float16 gradients can underflow to zero; the scaler multiplies the loss to keep them.
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()

    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype)

    return autocast, scaler


def _prepare_batch(batch, device: torch.device, channels_last: bool):
    """Move a batch to ``device``; images (4-D tensors) optionally in channels-last layout."""
    batch = to_device(batch, device)
    if channels_last and isinstance(batch, (list, tuple)) and batch and _is_images(batch[0]):
        batch = (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
    return batch


def _is_images(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4


def _batch_size(batch) -> int:
    """Number of examples in a batch: ``(images, labels, ...)`` or a bare tensor."""
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first)


def _split(batch):
    """``(images, labels)`` from a batch; a batch may carry extra items after the labels."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError("Expected batches of (images, labels); got "
                         f"{type(batch).__name__}. Return (image, label) pairs from the Dataset.")
    return batch[0], batch[1]


def _training_loss(model: nn.Module, batch, loss_fn):
    """The loss of one batch: ``model.training_step`` if the model has one and no ``loss_fn`` is given."""
    if loss_fn is None and hasattr(model, "training_step"):
        return model.training_step(batch)
    images, labels = _split(batch)
    return (loss_fn or F.cross_entropy)(model(images), labels)


def _validation_metrics(model: nn.Module, batch, loss_fn):
    """(val_loss, val_acc) of one batch, as tensors, averaged over the batch."""
    if loss_fn is None and hasattr(model, "validation_step"):
        out = model.validation_step(batch)
        return out["val_loss"], out["val_acc"]
    images, labels = _split(batch)
    outputs = model(images)
    return (loss_fn or F.cross_entropy)(outputs, labels), accuracy(outputs, labels)


def _train_step(model, batch, optimizer, loss_fn, autocast, scaler, grad_clip, grad_clip_mode):
    """One optimisation step (forward, backward, optional clipping, update); returns the loss.

    Shared by ``train_model`` and ``lr_find`` so both train exactly the same way.
    """
    with autocast():
        loss = _training_loss(model, batch, loss_fn)
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if grad_clip_mode == "value":
            nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        else:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _progress_bar(iterable, enabled: bool, desc: str, total=None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def _safe_len(dl):
    try:
        return len(dl)
    except TypeError:
        return None


# --- evaluation -----------------------------------------------------------------------------

def evaluate(model: nn.Module, val_dl, *, loss_fn=None, device=None, amp=None,
             channels_last=None, progress: bool = False) -> dict:
    """Mean validation loss and accuracy over ``val_dl``, weighted by batch size (notebook 05).

    The original write-up averaged the per-batch means, which over-weights a small last
    batch; here every example counts once. Returns ``{"val_loss": float, "val_acc": float}``.
    """
    device = _resolve_device(device, model, val_dl)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    autocast, _ = _precision(device, amp)
    was_training = model.training
    model.eval()
    loss_sum = acc_sum = 0.0
    count = 0
    try:
        with torch.inference_mode():
            for batch in _progress_bar(val_dl, progress, "validate", _safe_len(val_dl)):
                batch = _prepare_batch(batch, device, channels_last)
                n = _batch_size(batch)
                with autocast():
                    loss, acc = _validation_metrics(model, batch, loss_fn)
                loss_sum += float(loss) * n
                acc_sum += float(acc) * n
                count += n
    finally:
        _train_mode(model, was_training)
    if count == 0:
        raise ValueError("evaluate: val_dl produced no batches; check the validation split is not empty.")
    return {"val_loss": loss_sum / count, "val_acc": acc_sum / count}


@torch.inference_mode()
def get_predictions(model: nn.Module, dl, *, as_probs: bool = True, device=None, amp=None,
                    channels_last=None, progress: bool = False):
    """All predictions and targets of a loader, on the CPU, for confusion matrices (notebook 06).

    Returns ``(probs, targets)``: softmax probabilities of shape ``(N, num_classes)``
    (raw logits with ``as_probs=False``) and the labels of shape ``(N,)``; ``targets`` is
    ``None`` when the batches are bare image tensors.
    """
    device = _resolve_device(device, model, dl)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    autocast, _ = _precision(device, amp)
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    try:
        for batch in _progress_bar(dl, progress, "predict", _safe_len(dl)):
            batch = _prepare_batch(batch, device, channels_last)
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            with autocast():
                logits = model(images)
            outputs.append(logits.float().cpu())
            if isinstance(batch, (list, tuple)) and len(batch) > 1:
                targets.append(batch[1].cpu())
    finally:
        _train_mode(model, was_training)
    logits = torch.cat(outputs)
    preds = logits.softmax(dim=1) if as_probs else logits
    return preds, (torch.cat(targets) if targets else None)


# --- checkpoints ----------------------------------------------------------------------------

def save_checkpoint(path, model: nn.Module, **extra) -> Path:
    """Save ``model``'s weights plus ``extra`` values (epoch, metrics, class names) atomically (notebook 06).

    The file is written to ``path + ".part"`` and then renamed, so an interrupted save never
    leaves a truncated checkpoint. ``extra`` values should be plain Python values or
    tensors (e.g. ``optimizer=optimizer.state_dict()``) so the file loads with ``weights_only``.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
               "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as part:
        torch.save(payload, part)
    return Path(path)


def load_checkpoint(path, model: nn.Module | None = None, map_location="cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint``; with ``model``, also load its weights (notebook 06).

    Returns the checkpoint dict (``state_dict`` plus the extra values).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: check the path, or train first with checkpoint={str(path)!r}.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a tlhelpers checkpoint (torch.load failed: {exc}). "
                         "Save checkpoints with tlhelpers.train.save_checkpoint.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        hint = (" It looks like a bare state_dict: load it with model.load_state_dict(torch.load(path))."
                if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()) else "")
        raise ValueError(f"{path} is not a tlhelpers checkpoint (no format tag {CHECKPOINT_FORMAT!r}).{hint} "
                         "Save checkpoints with tlhelpers.train.save_checkpoint.")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{path} is a version {ckpt['version']} checkpoint; this tlhelpers reads up to "
                         f"version {CHECKPOINT_VERSION}. Update the course package.")
    if model is not None:
        model.load_state_dict(ckpt["state_dict"])
    return ckpt


# --- the training loop ------------------------------------------------------------------------

_MONITORS = {"val_loss": min, "val_acc": max}


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if monitor == "val_loss" else value > best)


def _print_epoch(model: nn.Module, result: dict, epochs: int) -> None:
    """The end-of-epoch line: ``model.epoch_end`` if the model has one, else a standard line."""
    if hasattr(model, "epoch_end"):
        model.epoch_end(result["epoch"], result)
        return
    print(f"Epoch [{result['epoch']}/{epochs}], last_lr: {result['lrs'][-1]:.5f}, "
          f"train_loss: {result['train_loss']:.4f}, val_loss: {result['val_loss']:.4f}, "
          f"val_acc: {result['val_acc']:.4f}, time: {result['epoch_time']:.1f}s")


def train_model(model: nn.Module, train_dl, val_dl, optimizer: torch.optim.Optimizer, epochs: int,
                scheduler=None, *, grad_clip: float | None = None, grad_clip_mode: str = "value",
                loss_fn=None, device=None, amp=None, channels_last=None, progress: bool = True,
                verbose: bool = True, checkpoint=None, monitor: str = "val_loss",
                restore_best: bool = False, early_stopping_patience: int | None = None) -> list:
    """The one training loop behind ``fit`` and ``fit_one_cycle`` (notebooks 05-06).

    - ``scheduler`` (optional) is stepped after every batch, as ``OneCycleLR`` expects.
    - ``grad_clip``: clip each gradient element to ``[-grad_clip, grad_clip]``
      (``nn.utils.clip_grad_value_``, as in the write-up), or the total gradient norm with
      ``grad_clip_mode="norm"`` (``nn.utils.clip_grad_norm_``).
    - ``loss_fn``: used instead of ``model.training_step``/``validation_step``; the default for
      models without those methods is cross entropy.
    - ``device``: default is the loader's (``DeviceDataLoader``) or the model's; model and
      batches are moved there.
    - ``amp``: mixed precision; ``None`` = on for CUDA (bfloat16, or float16 with a GradScaler
      on GPUs without native bfloat16), off on CPU. ``channels_last``: ``None`` = on for CUDA.
    - ``progress``: a tqdm bar per epoch; ``verbose``: one line per epoch.
    - ``checkpoint``: a path; the best model by ``monitor`` ("val_loss" or "val_acc") is saved
      there (atomically) whenever it improves. ``restore_best=True`` loads the best weights
      back at the end. ``early_stopping_patience``: stop after that many epochs without improvement.
    - Ctrl-C (KeyboardInterrupt) stops training and returns the history of the finished epochs.
    - Frozen BatchNorm layers stay in eval mode (``tlhelpers.models.set_frozen_bn_eval``).

    Returns the history: one dict per epoch (see the module docstring).
    """
    if monitor not in _MONITORS:
        raise ValueError(f"monitor={monitor!r} is not supported: use 'val_loss' or 'val_acc'.")
    if grad_clip_mode not in ("value", "norm"):
        raise ValueError(f"grad_clip_mode={grad_clip_mode!r} is not supported: use 'value' or 'norm'.")
    if val_dl is None and (checkpoint or restore_best or early_stopping_patience):
        raise ValueError("checkpoint, restore_best and early_stopping_patience need val_dl to monitor.")

    device = _resolve_device(device, model, train_dl)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    model.to(device)  # moves parameters in place, so the optimizer still holds the same tensors
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast, scaler = _precision(device, amp)
    eval_options = dict(loss_fn=loss_fn, device=device, amp=amp, channels_last=channels_last)

    history: list = []
    best_value, best_epoch, best_state = None, None, None
    epochs_without_improvement = 0
    epoch, step, bar = 1, 0, None
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            _train_mode(model)
            loss_sum, count, lrs = torch.zeros((), device=device), 0, []
            bar = _progress_bar(train_dl, progress, f"epoch {epoch}/{epochs}", _safe_len(train_dl))
            for step, batch in enumerate(bar, start=1):
                batch = _prepare_batch(batch, device, channels_last)
                lrs.append(get_lr(optimizer))  # the rate this step uses
                loss = _train_step(model, batch, optimizer, loss_fn, autocast, scaler, grad_clip, grad_clip_mode)
                n = _batch_size(batch)
                loss_sum += loss.float() * n  # stays on the device: no sync per step
                count += n
                if scheduler is not None:
                    scheduler.step()
                if progress and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            if progress:
                bar.close()
            step = 0  # the interrupt message counts steps of an unfinished epoch only
            result = {"epoch": epoch, "train_loss": (loss_sum / max(count, 1)).item()}
            result.update(evaluate(model, val_dl, **eval_options) if val_dl is not None
                          else {"val_loss": float("nan"), "val_acc": float("nan")})
            result["lrs"] = lrs
            result["epoch_time"] = time.perf_counter() - start
            history.append(result)
            if verbose:
                _print_epoch(model, result, epochs)

            if val_dl is None:
                continue
            if _improved(result[monitor], best_value, monitor):
                best_value, best_epoch, epochs_without_improvement = result[monitor], epoch, 0
                if restore_best:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if checkpoint:
                    save_checkpoint(checkpoint, model, epoch=epoch, monitor=monitor,
                                    **{k: result[k] for k in ("train_loss", "val_loss", "val_acc")})
            else:
                epochs_without_improvement += 1
                if early_stopping_patience is not None and epochs_without_improvement >= early_stopping_patience:
                    print(f"Early stopping: {monitor} has not improved for {epochs_without_improvement} "
                          f"epochs (best {best_value:.4f} at epoch {best_epoch}).")
                    break
    except KeyboardInterrupt:
        if progress and hasattr(bar, "close"):
            bar.close()
        where = f"epoch {epoch} step {step}" if step else f"the end of epoch {epoch}"
        print(f"Interrupted at {where}; returning history so far ({len(history)} finished epochs).")
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
        if verbose:
            print(f"Restored the best weights: epoch {best_epoch}, {monitor} {best_value:.4f}.")
    return history


def fit(epochs: int, lr: float, model: nn.Module, train_dl, val_dl, opt_func=torch.optim.SGD,
        weight_decay: float = 0, grad_clip: float | None = None, **options) -> list:
    """Train with a constant learning rate: the simple loop of notebook 05.

    ``options`` are those of ``train_model`` (device, amp, progress, checkpoint, ...).
    """
    optimizer = opt_func(model.parameters(), lr, weight_decay=weight_decay)
    return train_model(model, train_dl, val_dl, optimizer, epochs, grad_clip=grad_clip, **options)


def fit_one_cycle(epochs: int, max_lr: float, model: nn.Module, train_dl, val_dl,
                  weight_decay: float = 0, grad_clip: float | None = None,
                  opt_func=torch.optim.SGD, pct_start: float = 0.3, param_groups=None, **options) -> list:
    """Train with the one-cycle policy, stepped every batch (notebook 06).

    The rate warms up from ``max_lr / 25`` to ``max_lr`` over the first ``pct_start`` of the
    steps, then anneals to almost zero (``max_lr / 25e4``). ``options`` are those of ``train_model``.
    ``param_groups``: optimizer parameter groups, each with its own peak rate in ``"lr"``
    (discriminative learning rates, e.g. ``tlhelpers.models.stage_param_groups``); a group
    without ``"lr"`` peaks at ``max_lr``. Default: all of ``model.parameters()`` at ``max_lr``.
    """
    steps_per_epoch = _safe_len(train_dl)
    if not steps_per_epoch:
        raise ValueError("fit_one_cycle needs len(train_dl) > 0 to plan the schedule; "
                         "pass a DataLoader (or DeviceDataLoader) over a non-empty dataset.")
    if param_groups is None:
        optimizer = opt_func(model.parameters(), max_lr, weight_decay=weight_decay)
        peak_lrs = max_lr
    else:
        param_groups = [dict(group) for group in param_groups]
        if not param_groups or not all(isinstance(g, dict) and "params" in g for g in param_groups):
            raise ValueError("fit_one_cycle: param_groups must be a non-empty list of dicts with 'params' "
                             "(and optionally 'lr'), e.g. tlhelpers.models.stage_param_groups(model, max_lr).")
        optimizer = opt_func(param_groups, max_lr, weight_decay=weight_decay)
        peak_lrs = [group["lr"] for group in optimizer.param_groups]  # each group's own peak
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, peak_lrs, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct_start)
    return train_model(model, train_dl, val_dl, optimizer, epochs, scheduler, grad_clip=grad_clip, **options)


def summarize_history(history: list) -> str:
    """One line about a finished training run: epochs, time, best and final accuracy (notebook 06)."""
    if not history:
        return "No finished epochs."
    total = sum(h.get("epoch_time", 0.0) for h in history)
    best = max(range(len(history)), key=lambda i: history[i].get("val_acc", float("-inf")))
    return (f"{len(history)} epochs in {total:.1f} s ({total / len(history):.1f} s/epoch); "
            f"best val_acc {history[best]['val_acc']:.4f} at epoch {history[best].get('epoch', best + 1)}; "
            f"final val_loss {history[-1]['val_loss']:.4f}, val_acc {history[-1]['val_acc']:.4f}")


# --- learning-rate finder ---------------------------------------------------------------------

@dataclass
class LRFindResult:
    """What ``lr_find`` measured: rates, smoothed losses and the suggested ``max_lr`` (notebook 06)."""

    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)      # smoothed (exponential moving average)
    raw_losses: list = field(default_factory=list)
    suggestion: float = float("nan")                # the rate at the loss minimum / 10
    steepest: float = float("nan")                  # the rate where the loss falls fastest
    diverged: bool = False

    def __getitem__(self, key):  # result["lrs"] works too
        return getattr(self, key)


def _suggest(lrs: list, losses: list):
    """(minimum/10, steepest descent) from a smoothed loss curve, clipped to the swept range."""
    lrs_np, losses_np = np.asarray(lrs), np.asarray(losses)
    i_min = int(np.argmin(losses_np))
    suggestion = float(np.clip(lrs_np[i_min] / 10, lrs_np[0], lrs_np[-1]))
    skip = max(1, len(lrs_np) // 10)  # the first points are noisy: the average is still warming up
    if i_min - skip >= 2:
        slopes = np.gradient(losses_np[skip: i_min + 1], np.log10(lrs_np[skip: i_min + 1]))
        steepest = float(lrs_np[skip + int(np.argmin(slopes))])
    else:
        steepest = float(lrs_np[i_min])
    return suggestion, steepest


def lr_find(model: nn.Module, train_dl, opt_func=torch.optim.SGD, start_lr: float = 1e-7,
            end_lr: float = 10, num_iter: int = 100, weight_decay: float = 0, *,
            optimizer: torch.optim.Optimizer | None = None, smoothing: float = 0.98,
            diverge_factor: float = 4.0, grad_clip: float | None = None, grad_clip_mode: str = "value",
            loss_fn=None, device=None, amp=None, channels_last=None, progress: bool = True) -> LRFindResult:
    """Sweep the learning rate exponentially from ``start_lr`` to ``end_lr`` and record the loss (notebook 06).

    Trains for up to ``num_iter`` batches (cycling through ``train_dl`` if needed) and stops
    early once the smoothed loss exceeds ``diverge_factor`` x its best. The suggestion is
    the rate at the smoothed-loss minimum divided by 10: the loss still falls fast there
    and it is safely below where training blows up; use it as ``max_lr`` for
    ``fit_one_cycle``. The rate of steepest descent is reported as ``steepest``.

    The model's weights and buffers, its train/eval mode, and the state of ``optimizer`` (if
    you pass one instead of ``opt_func``) are restored afterwards, so the sweep leaves no trace.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Need 0 < start_lr < end_lr; got start_lr={start_lr}, end_lr={end_lr}.")
    if num_iter < 2:
        raise ValueError(f"num_iter={num_iter} is too small for a sweep: use at least 2 (100 is typical).")
    device = _resolve_device(device, model, train_dl)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast, scaler = _precision(device, amp)

    model_state = copy.deepcopy(model.state_dict())
    was_training = model.training
    if optimizer is None:
        optimizer = opt_func(model.parameters(), start_lr, weight_decay=weight_decay)
    optimizer_state = copy.deepcopy(optimizer.state_dict())

    result = LRFindResult()
    gamma = (end_lr / start_lr) ** (1 / (num_iter - 1))
    avg_loss, best_loss = 0.0, float("inf")
    bar = _progress_bar(range(num_iter), progress, "lr_find")
    batches = iter(())
    _train_mode(model)
    try:
        for i in bar:
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(train_dl)
                batch = next(batches)
            lr = start_lr * gamma ** i
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = _prepare_batch(batch, device, channels_last)
            loss = _train_step(model, batch, optimizer, loss_fn, autocast, scaler, grad_clip, grad_clip_mode).item()
            avg_loss = smoothing * avg_loss + (1 - smoothing) * loss
            smoothed = avg_loss / (1 - smoothing ** (i + 1))  # bias correction for the first steps
            result.lrs.append(lr)
            result.raw_losses.append(loss)
            result.losses.append(smoothed)
            best_loss = min(best_loss, smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge_factor * best_loss:
                result.diverged = True
                break
    except KeyboardInterrupt:
        print(f"lr_find interrupted after {len(result.lrs)} steps; restoring the model.")
    finally:
        if progress:
            bar.close()
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        _train_mode(model, was_training)
    if result.diverged and len(result.lrs) > 1:  # the diverging point would dominate the plot
        for name in ("lrs", "losses", "raw_losses"):
            getattr(result, name).pop()
    if result.lrs:
        result.suggestion, result.steepest = _suggest(result.lrs, result.losses)
    return result
