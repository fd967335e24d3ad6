"""Training recipes: named sets of optimiser / schedule / stopping defaults that `videotag train` resolves.

default     Learns on a hundred videos and on millions with the same command:
            AdamW (weight decay 1e-2, decoupled); lr = base_lr(model, width) * sqrt(batch / 64) (square-root
            scaling suits Adam-type optimisers; batches under 16 count as 16; DEFAULT_BASE_LR has the width
            rule); linear warm-up over ~1 epoch (at most 300 steps and at most 10% of all steps), then the peak
            lr until validation GAP@20 stalls for 2 epochs, then x0.3 per stall (floor 1% of the peak);
            gradient-norm clipping at 1.0; early stopping when validation GAP@20 has not improved for 5 epochs,
            never before a quarter of the planned epochs; neither decay nor stop while the model is still at the
            level of a constant predictor (recurrent models often sit on a plateau for several epochs before
            they take off); batch size capped at len(train) / 16 (at least 2) so
            tiny sets still take several steps per epoch.
videotag    Baidu VideoTag's attention-LSTM recipe (PaddleVideo config): centered RMSProp lr 1e-3, x0.1 every
            5 epochs, L2 weight decay 8e-4, batch 1024 (set for 5 million videos; capped by the data size
            only when asked), no warm-up, no clipping, no early stopping.

Explicit options (`--lr`, `--batch-size`, `--optimizer`, ...) always override the recipe. The resolved values are
what `run_config.json` records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine", "step", "constant")
MIN_SCALED_BATCH = 16


@dataclass(frozen=True)
class Recipe:
    """Defaults of one recipe. `lr` is the peak learning rate at `lr_ref_batch` videos per batch."""

    name: str
    optimizer: str
    lr: float
    batch_size: int
    weight_decay: float
    # plateau (x lr_gamma once validation GAP@20 stalls for plateau_patience epochs, after learning began) |
    # cosine (per step, after warm-up) | step (x lr_gamma every lr_step epochs) | constant
    schedule: str
    lr_ref_batch: int | None = None  # scale lr by sqrt(batch / lr_ref_batch); None = no scaling
    warmup_epochs: float = 0.0  # linear warm-up length in epochs ...
    warmup_max_steps: int = 0  # ... capped at this many steps ...
    warmup_max_fraction: float = 0.1  # ... and at this share of all steps
    min_lr_ratio: float = 0.0  # cosine floor, as a share of the peak lr
    lr_step: int = 0
    lr_gamma: float = 1.0
    clip_grad: float | None = None
    patience: int = 0  # early stopping: epochs without a better validation GAP@20 (0 = never stop early) ...
    min_epochs_fraction: float = 0.5  # ... never before this share of the planned epochs (slow starters plateau)
    batch_cap_divisor: int = 0  # batch <= len(train) // divisor (0 = no cap unless asked)
    plateau_patience: int = 2  # plateau schedule: epochs without a better validation GAP@20 before a decay


# Peak lr of the default recipe per model at batch 64 (AdamW) and at the model's default width, and the config key
# of that width: wider models want a smaller lr (for Adam, roughly 1/sqrt(fan-in) of the widest hidden layer), so
# the lr is scaled by sqrt(reference width / actual width), clamped to [1/4, 16]. attention_lstm at its default
# size (fc1 8192, 50M parameters) gets 4e-4 (2e-4 at batch <= 16: on 150 real videos whose label is the order of
# three scenes it took off in epoch 4 and reached held-out GAP 1.0 in epoch 5; 1e-4 needed 7 epochs, VideoTag's
# RMSProp 1e-3 collapsed); its 64-wide test-size variant gets ~4.5e-3. NeXtVLAD's paper: Adam 2e-4
# at batch 80.
DEFAULT_BASE_LR: dict[str, tuple[float, str | None, int | None]] = {
    "attention_lstm": (4e-4, "fc1_size", 8192),
    "nextvlad": (2.5e-4, "hidden", 2048),
    "frame_pool": (1e-2, None, None),  # a linear classifier on pooled frames: 3e-3 left it far from converged
}
DEFAULT_BASE_LR_FALLBACK = (1e-3, None, None)


def base_lr(model: str, model_config: dict[str, Any] | None = None) -> float:
    """The default recipe's lr at batch 64 for `model` with `model_config` (missing keys: the model's defaults)."""
    lr, key, ref = DEFAULT_BASE_LR.get(model, DEFAULT_BASE_LR_FALLBACK)
    if key is None or ref is None:
        return lr
    width = (model_config or {}).get(key)
    if width is None:
        width = _model_default(model, key)
    if not width or int(width) <= 0:
        return lr
    return lr * min(16.0, max(0.25, math.sqrt(ref / int(width))))


def _model_default(model: str, key: str) -> Any:
    import inspect

    from predictor.models import get_model_class

    param = inspect.signature(get_model_class(model).__init__).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        name="default",
        optimizer="adamw",
        lr=DEFAULT_BASE_LR_FALLBACK[0],
        batch_size=64,
        weight_decay=1e-2,
        # Constant lr until validation stalls, then x0.3: recurrent models sit on a plateau for several epochs
        # before they take off, and a cosine decay that has run its course by then leaves them there (measured
        # on real videos: attention_lstm reached held-out GAP 0.66 in 10 epochs with cosine, 1.0 by epoch 7 at
        # a constant lr). No decay while the model is still at the constant predictor's level.
        schedule="plateau",
        lr_gamma=0.3,
        plateau_patience=2,
        lr_ref_batch=64,
        warmup_epochs=1.0,
        warmup_max_steps=300,
        warmup_max_fraction=0.1,
        min_lr_ratio=0.01,
        clip_grad=1.0,
        patience=5,
        min_epochs_fraction=0.25,
        batch_cap_divisor=16,  # ~16 steps per epoch on small sets: plateaus need steps to escape
    ),
    "videotag": Recipe(
        name="videotag",
        optimizer="rmsprop",
        lr=1e-3,
        batch_size=1024,
        weight_decay=8e-4,
        schedule="step",
        lr_step=5,
        lr_gamma=0.1,
    ),
}


class RecipeError(ValueError):
    """Unknown recipe or option values a recipe cannot run with."""


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def resolve_recipe(
    name: str,
    model: str,
    num_train: int,
    overrides: dict[str, Any],
    cap_batch: bool | None = None,
    model_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The recipe's values for this model and data size, with explicit `overrides` (None = not given) applied.

    Returns the keys run_config.json records: recipe, optimizer, lr, lr_base, batch_size, batch_size_requested,
    weight_decay, schedule, warmup_steps_max..., clip_grad, patience. `num_train`: training videos.
    """
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(recipe_names())}")
    r = RECIPES[name]
    given = {k: v for k, v in overrides.items() if v is not None}
    out = asdict(r)
    out["recipe"] = out.pop("name")
    if name == "default":
        out["lr"] = base_lr(model, model_config)
    requested = int(given.get("batch_size", r.batch_size))
    # Cap the batch by the data (default recipe, unless the batch size was given; cap_batch forces either way).
    divisor = r.batch_cap_divisor or 16
    do_cap = cap_batch if cap_batch is not None else bool(r.batch_cap_divisor) and "batch_size" not in given
    bs = requested
    if do_cap and num_train > 0:
        bs = max(1, min(requested, max(2, num_train // divisor)))
    bs = max(1, min(bs, max(num_train, 1)))
    out["batch_size_requested"] = requested
    out["batch_size"] = bs
    for key in ("optimizer", "weight_decay", "schedule", "lr_step", "lr_gamma", "clip_grad", "patience"):
        if key in given:
            out[key] = given[key]
    if "lr" in given:  # an explicit lr is used as given: no batch scaling
        out["lr_base"] = None
        out["lr"] = float(given["lr"])
    else:
        base = float(out["lr"])
        out["lr_base"] = base
        if r.lr_ref_batch:  # batches below 16 are scaled as 16: tiny sets have few steps to learn in
            out["lr"] = base * math.sqrt(max(bs, MIN_SCALED_BATCH) / r.lr_ref_batch)
    if "warmup_steps" in given:
        out["warmup_max_steps"] = int(given["warmup_steps"])
        out["warmup_epochs"] = math.inf if int(given["warmup_steps"]) > 0 else 0.0
        out["warmup_max_fraction"] = 1.0
    if out["lr_step"] and out["schedule"] != "step" and "lr_step" in given and "schedule" not in given:
        out["schedule"] = "step"  # --lr-step N alone means step decay
    if out["optimizer"] not in OPTIMIZERS:
        raise RecipeError(f"unknown optimizer {out['optimizer']!r}; choose one of {', '.join(OPTIMIZERS)}")
    if out["schedule"] not in SCHEDULES:
        raise RecipeError(f"unknown lr schedule {out['schedule']!r}; choose one of {', '.join(SCHEDULES)}")
    if not out["lr"] > 0 or not math.isfinite(out["lr"]):
        raise RecipeError(f"learning rate must be positive and finite, got {out['lr']}")
    if out["weight_decay"] < 0 or (out["clip_grad"] is not None and out["clip_grad"] < 0) or out["patience"] < 0:
        raise RecipeError("weight decay, gradient clipping and patience must not be negative")
    out.pop("lr_ref_batch")
    out["lr_ref_batch"] = r.lr_ref_batch if "lr" not in given else None
    if math.isinf(out["warmup_epochs"]):
        out["warmup_epochs"] = None  # JSON-safe: "warm-up given in steps"
    return out


def warmup_steps(rc: dict[str, Any], steps_per_epoch: int, total_steps: int) -> int:
    """Linear warm-up length in optimiser steps for a resolved recipe."""
    cap = int(rc.get("warmup_max_steps") or 0)
    if cap <= 0:
        return 0
    epochs = rc.get("warmup_epochs")
    n = cap if epochs is None else min(cap, int(math.ceil(float(epochs) * steps_per_epoch)))
    frac = float(rc.get("warmup_max_fraction") or 1.0)
    return max(0, min(n, int(total_steps * frac)))


def plateau_scale(val_gaps: list[float], learned_bar: float | None, patience: int, gamma: float, floor: float) -> float:
    """The plateau schedule's lr multiplier after these epochs' validation GAP@20s: x`gamma` each time `patience`
    epochs pass without a better value, counted only once the best beats `learned_bar` (None: no validation set,
    no decay). A pure function of the history, so a resumed run decays exactly as an uninterrupted one."""
    scale, best, stale = 1.0, -math.inf, 0
    if learned_bar is None or patience <= 0:
        return scale
    for g in val_gaps:
        if g > best:
            best, stale = g, 0
            continue
        stale += 1
        if best > learned_bar and stale >= patience:
            scale, stale = max(floor, scale * gamma), 0
    return scale


def lr_factor(
    step: int, rc: dict[str, Any], steps_per_epoch: int, total_steps: int, plateau: float = 1.0
) -> float:
    """Multiplier of the peak lr for optimiser step `step` (0-based): a pure function (of the step and, for the
    plateau schedule, of `plateau` = `plateau_scale(...)` of the epochs so far), so resuming is exact."""
    warm = warmup_steps(rc, steps_per_epoch, total_steps)
    if warm and step < warm:
        return (step + 1) / (warm + 1)
    sched = rc["schedule"]
    if sched == "plateau":
        return plateau
    if sched == "cosine":
        span = max(1, total_steps - warm)
        t = min(1.0, (step - warm) / span)
        floor = float(rc.get("min_lr_ratio") or 0.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if sched == "step" and rc.get("lr_step"):
        epoch0 = step // max(1, steps_per_epoch)  # epochs completed before this step
        return float(rc["lr_gamma"]) ** (epoch0 // int(rc["lr_step"]))
    return 1.0


__all__ = [
    "RECIPES", "Recipe", "RecipeError", "base_lr", "lr_factor", "plateau_scale", "recipe_names", "resolve_recipe",
    "warmup_steps",
]  # fmt: skip
