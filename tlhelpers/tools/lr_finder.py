"""The learning-rate range test (Smith 2017), as popularised by fastai's ``lr_find`` (notebook 06 uses it).

Course tooling built on the lesson's training step: it trains with ``model.training_step`` exactly
as ``fit_one_cycle`` does, while the rate grows exponentially, and restores the model afterwards.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tlhelpers import config


@dataclass
class LRFindResult:
    """What ``lr_find`` measured: rates, smoothed losses and the suggested ``max_lr``."""

    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)      # smoothed (exponential moving average)
    raw_losses: list = field(default_factory=list)
    suggestion: float = float("nan")                # the rate at the loss minimum / 10
    steepest: float = float("nan")                  # the rate where the loss falls fastest
    diverged: bool = False

    def __getitem__(self, key):  # result["lrs"] too, as plotting.plot_lr_find reads it
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


def lr_find(model: nn.Module, train_dl, opt_func=torch.optim.AdamW, start_lr: float = 1e-7, end_lr: float = 10,
            num_iter: int = 100, weight_decay: float = 0, grad_clip: float | None = None,
            smoothing: float = 0.98, diverge_factor: float = 4.0,
            max_steps: int | None = config.MAX_STEPS) -> LRFindResult:
    """Sweep the rate from ``start_lr`` to ``end_lr`` over ``num_iter`` batches and record the loss.

    Stops early once the smoothed loss exceeds ``diverge_factor`` x its best. The suggestion is
    the rate at the smoothed-loss minimum divided by 10: the loss still falls fast there and it
    is safely below where training blows up. The model's weights and train/eval mode are
    restored afterwards, so the sweep leaves no trace. ``max_steps`` (default ``config.MAX_STEPS``,
    the capped test run's ``TLH_MAX_STEPS``) shortens the sweep to that many steps (2 at least).
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Need 0 < start_lr < end_lr; got start_lr={start_lr}, end_lr={end_lr}.")
    if num_iter < 2:
        raise ValueError(f"num_iter={num_iter} is too small for a sweep: use at least 2 (100 is typical).")
    if max_steps is not None:
        num_iter = max(2, min(num_iter, max_steps))
    saved_state, was_training = copy.deepcopy(model.state_dict()), model.training
    optimizer = opt_func([p for p in model.parameters() if p.requires_grad], start_lr, weight_decay=weight_decay)
    gamma = (end_lr / start_lr) ** (1 / (num_iter - 1))
    result, avg_loss, best_loss = LRFindResult(), 0.0, float("inf")
    batches = iter(())
    model.train()
    try:
        for i in range(num_iter):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(train_dl)
                batch = next(batches)
            lr = start_lr * gamma ** i
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model.training_step(batch)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_value_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            avg_loss = smoothing * avg_loss + (1 - smoothing) * loss.item()
            smoothed = avg_loss / (1 - smoothing ** (i + 1))  # bias correction for the first steps
            result.lrs.append(lr)
            result.raw_losses.append(loss.item())
            result.losses.append(smoothed)
            best_loss = min(best_loss, smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge_factor * best_loss:
                result.diverged = True
                break
    except KeyboardInterrupt:
        print(f"lr_find interrupted after {len(result.lrs)} steps; restoring the model.")
    finally:
        model.load_state_dict(saved_state)
        model.train(was_training)
    if result.diverged and len(result.lrs) > 1:  # the diverging point would dominate the plot
        for name in ("lrs", "losses", "raw_losses"):
            getattr(result, name).pop()
    if result.lrs:
        result.suggestion, result.steepest = _suggest(result.lrs, result.losses)
    return result
