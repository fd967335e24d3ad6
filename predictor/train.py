"""`videotag train`: train or fine-tune a registered sequence model on HDF5 feature stores + a label file.

Run directory (`--out DIR`):
    run_config.json             the resolved run configuration (recipe included); a resume with another is refused
    last.pt                     full state of the latest epoch: weights + optimiser (what --resume continues from)
    best.pt                     weights of the epoch with the best validation GAP@20 + what export/evaluate need
                                (no optimiser state; what `videotag export DIR` exports)
    checkpoint_epoch{N}.pt      full per-epoch checkpoints, only with --keep-checkpoints N|all (last.pt is then
                                a hard link to the newest)
    history.json                {"epochs": [per-epoch train loss, lr, validation metrics], "warnings": [...],
                                 "best", "stopped_early", "constant_predictor_gap@20", ...}
    curves.png                  train loss, validation GAP@20 and mAP, learning rate per epoch

Recipes (predictor/recipes.py): `default` (AdamW, batch-scaled lr, warm-up, decay on plateau, clipping, early stopping,
batch capped by the data size) or `videotag` (VideoTag's centered RMSProp recipe); explicit options override.

Not learning (NaN/inf loss, validation GAP@20 at the level of a constant predictor, train loss not falling, every
video getting the same scores) is reported as a warning in the log and in history.json; TrainResult.warnings
lists them and `videotag train --fail-if-not-learning` exits with code 3.

Reproducibility: the model is initialised under `seed`; every epoch's shuffling and dropout are seeded from
(seed, epoch) alone and the learning rate is a pure function of the step, so a run resumed after epoch k ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from predictor.checkpoint import (
    CheckpointError,
    checkpoint_vocab,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_only,
)
from predictor.data import (
    DatasetError,
    SequenceDataset,
    load_labelled,
    pad_collate,
    sequence_shape,
    split_by_id,
    store_backbone,
)
from predictor.evaluate import check_backbone, predict_torch
from predictor.metrics import evaluate_all, gap
from predictor.models import SequenceModel, create_model, get_model_class
from predictor.recipes import RecipeError, lr_factor, plateau_scale, resolve_recipe, warmup_steps
from videotag.core.feature_store import FeatureStore
from videotag.core.hashing import sha256_file
from videotag.core.manifest import now_iso
from videotag.core.vocab import Vocabulary

RUN_CONFIG = "run_config.json"
HISTORY = "history.json"
CURVES = "curves.png"
# Keys a resume may change: everything else must equal the saved run_config.json.
RESUMABLE_CHANGES = ("epochs",)
CACHE_LIMIT_BYTES = 4 << 30  # keep features in RAM when the dataset is smaller than this (as float16)
KEEP_ALL = -1  # keep_checkpoints: every epoch's full checkpoint


class TrainError(DatasetError):
    """The run cannot start or continue as asked (existing run dir, config change, bad options)."""


class NotLearningError(TrainError):
    """Training finished but did not learn (see TrainResult.warnings); raised only when asked to fail."""

    exit_code = 3


@dataclass
class TrainConfig:
    """Everything that defines a training run (CLI options map 1:1 onto these)."""

    features: list[str]
    labels: str
    vocab: str
    model: str | None = None  # default: the fine-tune checkpoint's model, else "attention_lstm"
    model_config: dict[str, Any] = field(default_factory=dict)
    val_labels: str | None = None
    val_fraction: float = 0.1
    epochs: int = 20
    recipe: str = "default"  # predictor/recipes.py; every None below takes the recipe's value
    batch_size: int | None = None
    cap_batch: bool | None = None  # cap the batch by len(train) / 16 (default: default recipe, no --batch-size)
    optimizer: str | None = None
    lr: float | None = None
    schedule: str | None = None  # plateau | cosine | step | constant
    warmup_steps: int | None = None
    lr_step: int | None = None
    lr_gamma: float | None = None
    weight_decay: float | None = None
    clip_grad: float | None = None  # 0 = no clipping
    patience: int | None = None  # early stopping on validation GAP@20 (0 = never)
    seed: int = 0
    init_from: str | None = None  # fine-tune: checkpoint whose weights (all but the output layer) start the run


@dataclass
class TrainResult:
    out_dir: Path
    epochs_run: int
    history: list[dict[str, Any]]
    best: dict[str, Any]
    metrics: dict[str, Any]  # validation metrics of the last epoch
    warnings: list[str] = field(default_factory=list)  # "not learning" findings (empty = fine)
    stopped_early: bool = False


def _abs(p: str | Path) -> str:
    return str(Path(p).expanduser().resolve())


def _resolve(
    cfg: TrainConfig,
    vocab: Vocabulary,
    backbone: dict[str, Any],
    init: dict | None,
    num_train: int,
    sampling: str,
) -> dict[str, Any]:
    """The run's identity: the config with the recipe resolved, paths absolute and inputs hashed."""
    model = cfg.model or (init["model"] if init else "attention_lstm")
    get_model_class(model)  # unknown name -> clear error now, not after loading data
    if init is not None:
        if model != init["model"]:
            raise TrainError(f"--init-from is a {init['model']} checkpoint but --model is {model}")
        base = {k: v for k, v in init["model_config"].items() if k not in ("feature_dim", "num_classes")}
        model_config = {**base, **cfg.model_config}
    else:
        model_config = dict(cfg.model_config)
    for bad in ("feature_dim", "num_classes"):
        if bad in model_config:
            raise TrainError(f"model config must not set {bad}: it comes from the features / vocabulary")
    if cfg.epochs < 1 or (cfg.batch_size is not None and cfg.batch_size < 1):
        raise TrainError("epochs and batch size must be positive")
    if cfg.lr is not None and not cfg.lr > 0:
        raise TrainError(f"learning rate must be positive, got {cfg.lr}")
    overrides = {
        k: getattr(cfg, k)
        for k in ("batch_size", "optimizer", "lr", "schedule", "warmup_steps", "lr_step", "lr_gamma",
                  "weight_decay", "clip_grad", "patience")
    }  # fmt: skip
    if cfg.clip_grad == 0:
        overrides["clip_grad"] = None
        recipe_clip_off = True
    else:
        recipe_clip_off = False
    try:
        opt = resolve_recipe(cfg.recipe, model, num_train, overrides, cfg.cap_batch, model_config)
    except RecipeError as e:
        raise TrainError(str(e)) from None
    if recipe_clip_off:
        opt["clip_grad"] = None
    d = asdict(cfg)
    d.update(
        model=model,
        model_config=model_config,
        features=[_abs(f) for f in cfg.features],
        labels=_abs(cfg.labels),
        labels_sha256=sha256_file(cfg.labels),
        val_labels=_abs(cfg.val_labels) if cfg.val_labels else None,
        val_labels_sha256=sha256_file(cfg.val_labels) if cfg.val_labels else None,
        vocab=_abs(cfg.vocab),
        vocab_sha256=vocab.sha256,
        num_classes=len(vocab),
        backbone=backbone,
        sampling=sampling,
        num_train=num_train,
        init_from=_abs(cfg.init_from) if cfg.init_from else None,
        **opt,
    )
    return d


def _sampling_policy(store: FeatureStore, ids: Sequence[str]) -> str:
    """The frame-sampling policy all given videos were extracted with; refuses a mix (models depend on it)."""
    counts: dict[str, int] = {}
    for v in ids:
        pol = str(store.attrs(v).get("sampling", "") or "unknown")
        counts[pol] = counts.get(pol, 0) + 1
    if len(counts) > 1:
        desc = ", ".join(f"{n} video(s) {p!r}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        raise TrainError(
            f"the training and validation features were extracted with different frame-sampling policies ({desc}); "
            "a model learns one policy: re-extract them with one `--sampling` (or train on one policy's videos)"
        )
    return next(iter(counts)) if counts else "unknown"


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(RESUMABLE_CHANGES))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _make_optimizer(model: nn.Module, rc: dict[str, Any]) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), rc["lr"], rc["weight_decay"]
    if rc["optimizer"] == "rmsprop":
        # Centered RMSProp as Paddle's (rho 0.95, epsilon 1e-6, no momentum).
        return torch.optim.RMSprop(params, lr=lr, alpha=0.95, eps=1e-6, centered=True, weight_decay=wd)
    if rc["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if rc["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


def _init_from(model: SequenceModel, init: dict[str, Any], vocab: Vocabulary) -> list[str]:
    """Load a checkpoint's weights for fine-tuning; with another vocabulary the output layer stays fresh."""
    state = dict(init["state_dict"])
    dropped: list[str] = []
    if checkpoint_vocab(init).sha256 != vocab.sha256:
        prefixes = tuple(model.output_layer_names())
        if not prefixes:
            raise TrainError(f"{model.name} does not name its output layer; cannot fine-tune to a new vocabulary")
        dropped = sorted(k for k in state if k.startswith(prefixes))
        for k in dropped:
            del state[k]
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise TrainError(f"checkpoint {init['path']} does not fit this model: " + "; ".join(wrong[:5]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = sorted(set(missing) - set(dropped))
    if unexpected or bad:
        raise TrainError(f"checkpoint {init['path']} does not fit: missing {bad[:5]}, unexpected {unexpected[:5]}")
    return dropped


def _dataset_bytes(store: FeatureStore, ids: Sequence[str]) -> int:
    total = 0
    for v in ids:
        s = sequence_shape(store, v)
        total += int(s[0]) * int(s[1]) * 2
    return total


def _check_sequences(store: FeatureStore, ids: Sequence[str], dim: int) -> None:
    bad = [
        f"{v!r} {sequence_shape(store, v)}"
        for v in ids
        if len(s := sequence_shape(store, v)) != 2 or s[0] == 0 or s[1] != dim
    ]
    if bad:
        raise DatasetError(
            f"{len(bad)} sequence(s) are empty or not [T, {dim}]: {', '.join(bad[:5])} (run `videotag check-dataset`)"
        )


def _fmt_metrics(m: dict[str, Any]) -> str:
    keys = ("gap@20", "hit@1", "perr", "mAP")
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _constant_gap(train_targets: np.ndarray, val_targets: np.ndarray) -> float:
    """GAP@20 of a constant predictor: every validation video scored with the training set's class frequencies."""
    prior = train_targets.mean(axis=0, dtype=np.float64)
    return gap(np.broadcast_to(prior, val_targets.shape), val_targets, 20)


def _constant_loss(train_targets: np.ndarray) -> float:
    """Mean BCE of the constant predictor (class frequencies) on the training targets [N, C]: what a network
    that ignores its input converges to (ln 2 per class for a balanced binary label)."""
    p = np.clip(train_targets.mean(axis=0, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def _learned_bar(constant_gap: float, num_val: int) -> float:
    """Validation GAP@20 a model must beat to count as having learned anything: the constant predictor's plus a
    margin that covers the noise of a small validation set (a 10-video set passes 0.6 on a coin flip)."""
    noise = (1.0 - constant_gap) / math.sqrt(max(num_val, 1))
    return constant_gap + max(0.02 + 0.03 * (1.0 - constant_gap), noise)


def _learning_warnings(
    history: list[dict[str, Any]],
    best: dict[str, Any],
    constant_gap: float | None,
    nonfinite: str | None,
    same_scores: bool,
    constant_loss: float | None = None,
    num_val: int = 1000,
) -> list[str]:
    """What says this run did not learn (empty list: nothing did)."""
    out = []
    if nonfinite:
        out.append(nonfinite)
    if constant_gap is not None and history:
        bar = _learned_bar(constant_gap, num_val)
        b = float(best.get("gap@20") or -1.0)
        if b <= bar:
            out.append(
                f"not learning: best validation GAP@20 {max(b, 0.0):.4f} is not clearly above a constant predictor's "
                f"that scores every video with the training set's class frequencies ({constant_gap:.4f}; it needs > "
                f"{bar:.4f} on {num_val} validation videos). Try more epochs, another learning rate, more "
                "(validation) videos, or check the labels"
            )
    if same_scores:
        out.append("collapsed: every validation video gets the same scores (the network ignores its input)")
    losses = [float(h["train_loss"]) for h in history]
    if constant_loss is not None and len(losses) >= 2 and min(losses) >= 0.98 * constant_loss:
        out.append(
            f"not learning: the training loss (lowest {min(losses):.4f}) never fell below the loss of a constant "
            f"predictor of the class frequencies ({constant_loss:.4f})"
        )
    elif len(losses) >= 2 and min(losses[1:]) >= losses[0]:
        out.append(
            f"not learning: the training loss never fell below its first epoch's ({losses[0]:.4f}; "
            f"lowest later {min(losses[1:]):.4f})"
        )
    return out


def _parse_keep(keep: int | str) -> int:
    if isinstance(keep, str):
        if keep.strip().lower() == "all":
            return KEEP_ALL
        try:
            keep = int(keep)
        except ValueError:
            raise TrainError(f"--keep-checkpoints must be a number or 'all', got {keep!r}") from None
    if keep < KEEP_ALL:
        raise TrainError(f"--keep-checkpoints must be >= 0 or 'all', got {keep}")
    return int(keep)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    threads: int = 0,
    keep_checkpoints: int | str = 0,
    fail_if_not_learning: bool = False,
    plots: bool = True,
) -> TrainResult:
    """Train `cfg` into `out_dir` (see module doc); returns the history. Raises DatasetError/TrainError on bad input.

    keep_checkpoints: full per-epoch checkpoints to keep besides last.pt/best.pt: N newest, "all" (or -1), 0 none.
    fail_if_not_learning: raise NotLearningError (after writing everything) when the run did not learn.
    threads: torch intra-op threads (0 = torch's default). Small models train much faster on 1 thread,
    especially on a busy machine, where idle-spinning OpenMP workers cost more than they add.
    """
    keep = _parse_keep(keep_checkpoints)
    old_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals in saturated LSTM gates slow CPU training down many times
    try:
        res = _train(cfg, Path(out_dir), resume, progress, log, keep, plots)
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(False)  # torch's default; leave the process as we found it
    if res.warnings and fail_if_not_learning:
        raise NotLearningError(f"training did not learn ({len(res.warnings)} finding(s)): {res.warnings[0]}")
    return res


def _write_history(out: Path, history: list[dict[str, Any]], extra: dict[str, Any], plots: bool) -> None:
    doc = {"epochs": history, **extra}
    tmp = out / f".{HISTORY}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / HISTORY)
    if plots and history:
        from predictor.plots import training_curves

        training_curves(history, out / CURVES)


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None],
    keep: int,
    plots: bool,
) -> TrainResult:
    vocab = Vocabulary.load(cfg.vocab)
    store = FeatureStore(cfg.features)
    init = load_checkpoint(cfg.init_from) if cfg.init_from else None
    train_l = load_labelled(cfg.labels, vocab, store, "labels")
    if cfg.val_labels:
        val_l = load_labelled(cfg.val_labels, vocab, store, "validation labels")
        overlap = set(train_l.video_ids) & set(val_l.video_ids)
        if overlap:
            raise DatasetError(
                f"{len(overlap)} video(s) are in both the training and validation labels, e.g. {sorted(overlap)[:3]}"
            )
        train_ids, train_y = train_l.video_ids, train_l.labels
        val_ids, val_y = val_l.video_ids, val_l.labels
    else:
        tr, va = split_by_id(train_l.video_ids, cfg.val_fraction, cfg.seed)
        lab = dict(zip(train_l.video_ids, train_l.labels, strict=True))
        train_ids, train_y = tr, [lab[v] for v in tr]
        val_ids, val_y = va, [lab[v] for v in va]
    if not train_ids:
        raise TrainError("no training videos left after the validation split (lower --val-fraction)")
    backbone = store_backbone(store)  # every video of every given store: never mix backbones
    if init is not None:
        check_backbone(init["path"], init["backbone"], backbone)
    all_ids = list(train_ids) + list(val_ids)
    _check_sequences(store, all_ids, int(backbone["feature_dim"]))
    sampling = _sampling_policy(store, all_ids)
    rc = _resolve(cfg, vocab, backbone, init, len(train_ids), sampling)
    # Build (and fine-tune-load) the model before touching the run dir: a bad model config fails cleanly.
    torch.manual_seed(rc["seed"])
    model = create_model(rc["model"], feature_dim=backbone["feature_dim"], num_classes=len(vocab), **rc["model_config"])
    if init is not None and not resume:
        dropped = _init_from(model, init, vocab)
        log(
            f"fine-tuning from {init['path']} (epoch {init['epoch']}); "
            + (f"new output layer ({len(dropped)} tensors re-initialised)" if dropped else "same vocabulary")
        )
    optimizer = _make_optimizer(model, rc)

    out.mkdir(parents=True, exist_ok=True)
    rc_path = out / RUN_CONFIG
    if rc_path.is_file():
        if not resume:
            raise TrainError(f"{out} already holds a training run; pass --resume to continue it or use a new --out")
        old = json.loads(rc_path.read_text(encoding="utf-8"))
        diff = _config_diff(old, rc)
        if diff:
            raise TrainError(
                f"refusing to resume {out}: the run config differs from {rc_path} in "
                f"{len(diff)} key(s):\n  " + "\n  ".join(diff) + "\n(start a new run dir to train with another config)"
            )
    elif resume:
        raise TrainError(f"nothing to resume: {rc_path} does not exist")
    if not resume:
        rc_path.write_text(json.dumps(rc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    elif rc["epochs"] != old.get("epochs"):
        rc_path.write_text(json.dumps(rc, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    start, history, best, stopped = 1, [], {"epoch": 0, "gap@20": -1.0}, False
    if resume:
        try:
            last = load_checkpoint(out / "last.pt")
        except CheckpointError as e:
            raise TrainError(f"cannot resume {out}: {e}") from None
        if "optimizer" not in last:
            raise TrainError(f"cannot resume {out}: {last['path']} holds weights only, no optimiser state")
        model.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        start, history, best = int(last["epoch"]) + 1, list(last["history"]), dict(last["best"])
        stopped = bool(last.get("stopped_early"))
        log(f"resuming {out} after epoch {last['epoch']}")
        if stopped:
            log(f"nothing to do: the run stopped early after epoch {last['epoch']} (no better validation GAP)")
        elif start > rc["epochs"]:
            log(f"nothing to do: {last['epoch']} of {rc['epochs']} epochs already done")

    cache = _dataset_bytes(store, all_ids) <= CACHE_LIMIT_BYTES
    train_ds = SequenceDataset(store, train_ids, train_y, len(vocab), cache=cache)
    val_ds = SequenceDataset(store, val_ids, val_y, len(vocab), cache=cache) if val_ids else None
    bs = rc["batch_size"]
    drop_last = len(train_ds) % bs == 1 and len(train_ds) > 1  # batch norm can't train on 1 sample
    steps_per_epoch = len(train_ds) // bs if drop_last else math.ceil(len(train_ds) / bs)
    total_steps = steps_per_epoch * rc["epochs"]
    warm = warmup_steps(rc, steps_per_epoch, total_steps)
    if start == 1:
        capped = (
            f" (capped from {rc['batch_size_requested']} by the {len(train_ds)} training videos)"
            if bs < rc["batch_size_requested"]
            else ""
        )
        log(
            f"training {rc['model']} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) on "
            f"{len(train_ds)} videos, validating on {len(val_ds) if val_ds else 0}; {backbone['feature_dim']}-d "
            f"{backbone['name'] or 'unknown'} features ({sampling} sampling), {len(vocab)} classes"
        )
        log(
            f"recipe {rc['recipe']}: {rc['optimizer']} lr {rc['lr']:.3g}, batch {bs}{capped}, {rc['schedule']} lr"
            + (f" after {warm} warm-up steps" if warm else "")
            + f", weight decay {rc['weight_decay']:g}"
            + (f", clip {rc['clip_grad']:g}" if rc["clip_grad"] else "")
            + (f", early stop after {rc['patience']} epochs without a better val GAP@20" if rc["patience"] else "")
        )
    loss_fn = nn.BCEWithLogitsLoss()
    show = sys.stderr.isatty() if progress is None else progress
    metrics: dict[str, Any] = history[-1]["val"] if history else {}
    constant_gap = _constant_gap(train_ds.targets, val_ds.targets) if val_ds else None
    nonfinite: str | None = None
    same_scores = False
    vocab_d = {"names": list(vocab.names), "sha256": vocab.sha256}

    for epoch in range(start, rc["epochs"] + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        # Every epoch's randomness depends on (seed, epoch) only: resuming reproduces an uninterrupted run.
        torch.manual_seed(rc["seed"] * 1_000_003 + epoch)
        gen = torch.Generator().manual_seed(rc["seed"] * 1_000_003 + epoch)
        loader = torch.utils.data.DataLoader(
            train_ds, batch_size=bs, shuffle=True, generator=gen, collate_fn=pad_collate, drop_last=drop_last
        )
        model.train()
        total, count = 0.0, 0
        lr_first = None
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{rc['epochs']}", unit="batch", leave=False, disable=not show, file=sys.stderr
        )
        plateau = plateau_scale(
            [h["val"].get("gap@20", -math.inf) for h in history if h.get("val")],
            _learned_bar(constant_gap, len(val_ds)) if val_ds and constant_gap is not None else None,
            int(rc.get("plateau_patience") or 0),
            float(rc.get("lr_gamma") or 1.0),
            float(rc.get("min_lr_ratio") or 0.0),
        )
        for i, batch in enumerate(bar):
            step = (epoch - 1) * steps_per_epoch + i
            lr_now = rc["lr"] * lr_factor(step, rc, steps_per_epoch, total_steps, plateau)
            for g in optimizer.param_groups:
                g["lr"] = lr_now
            lr_first = lr_now if lr_first is None else lr_first
            logits = model(batch["features"], batch["lengths"])
            loss = loss_fn(logits, batch["targets"])
            if not torch.isfinite(loss):
                nonfinite = (
                    f"diverged: the training loss became {loss.item()} at epoch {epoch}, step {i + 1} "
                    f"(lr {lr_now:.2e}); training stopped there, best.pt/last.pt hold the last finite epoch. "
                    "Lower the learning rate"
                )
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if rc["clip_grad"]:
                nn.utils.clip_grad_norm_(model.parameters(), rc["clip_grad"])
            optimizer.step()
            n = batch["targets"].shape[0]
            total, count = total + loss.item() * n, count + n
            bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{lr_now:.1e}")
        bar.close()
        if nonfinite:
            log(f"warning: {nonfinite}")
            break
        train_loss = total / max(count, 1)
        probs = predict_torch(model, val_ds, bs) if val_ds else None
        if probs is not None and not np.isfinite(probs).all():
            nonfinite = f"diverged: the network's validation scores became NaN/inf at epoch {epoch}"
            log(f"warning: {nonfinite}")
            break
        metrics = evaluate_all(probs, val_ds.targets) if probs is not None else {}
        same_scores = probs is not None and len(probs) > 1 and float(np.ptp(probs, axis=0).max()) < 1e-5
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": lr_first if lr_first is not None else rc["lr"],
            "lr_end": lr_now if count else rc["lr"],
            "seconds": time.perf_counter() - t0,
            "val": metrics,
        }
        history.append(entry)
        gap20 = metrics.get("gap@20", -math.inf) if metrics else -math.inf
        improved = val_ds is None or gap20 > best["gap@20"]
        if improved:
            best = {"epoch": epoch, "gap@20": gap20 if val_ds else None}
        patience = int(rc["patience"] or 0)
        stale, floor = epoch - int(best["epoch"]), math.ceil(rc["epochs"] * float(rc.get("min_epochs_fraction") or 0))
        # Stop early only once the model has learned something: a model still on its initial plateau (recurrent
        # ones sit there for epochs) may yet take off, and the not-learning guard reports it if it never does.
        learned = constant_gap is not None and best["gap@20"] > _learned_bar(constant_gap, len(val_ds))
        stopped = learned and patience > 0 and stale >= patience and floor <= epoch < rc["epochs"]
        ckpt = {
            "model": rc["model"],
            "model_config": model.config,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"step": epoch * steps_per_epoch, "steps_per_epoch": steps_per_epoch, "total": total_steps},
            "epoch": epoch,
            "train_loss": train_loss,
            "metrics": metrics,
            "history": history,
            "best": best,
            "stopped_early": stopped,
            "vocab": vocab_d,
            "backbone": dict(backbone),
            "sampling": sampling,
            "run_config": rc,
            "created": now_iso(),
        }
        if keep == 0:
            save_checkpoint(out / "last.pt", ckpt)
        else:
            path = save_checkpoint(out / f"checkpoint_epoch{epoch}.pt", ckpt)
            copy_checkpoint(path, out / "last.pt")
            if keep > 0:  # last.pt is a link of its own: it survives this
                for old_ep in range(1, epoch - keep + 1):
                    (out / f"checkpoint_epoch{old_ep}.pt").unlink(missing_ok=True)
        if improved:
            save_checkpoint(out / "best.pt", weights_only(ckpt))
        del ckpt
        extra = {"best": best, "stopped_early": stopped, "constant_predictor_gap@20": constant_gap, "warnings": []}
        _write_history(out, history, extra, plots)
        log(
            f"epoch {epoch}/{rc['epochs']}  loss {train_loss:.4f}  "
            + (f"val {_fmt_metrics(metrics)}" if metrics else "(no validation set)")
            + f"  lr {entry['lr']:.2e}  {entry['seconds']:.1f}s"
            + ("  *best*" if improved and val_ds else "")
        )
        if stopped:
            log(
                f"early stop: no better validation GAP@20 for {rc['patience']} epochs "
                f"(best {best['gap@20']:.4f} at epoch {best['epoch']})"
            )
    store.close()
    const_loss = _constant_loss(train_ds.targets)
    warnings = _learning_warnings(
        history, best, constant_gap, nonfinite, same_scores, const_loss, len(val_ds) if val_ds else 0
    )
    for w in warnings:
        log(f"warning: {w}")
    if history or warnings:
        extra = {"best": best, "stopped_early": stopped, "constant_predictor_gap@20": constant_gap,
                 "constant_predictor_loss": const_loss, "warnings": warnings}  # fmt: skip
        _write_history(out, history, extra, plots)
    epochs_run = sum(1 for h in history if h["epoch"] >= start)
    return TrainResult(out, epochs_run, history, best, metrics, warnings, stopped)


__all__ = ["NotLearningError", "TrainConfig", "TrainError", "TrainResult", "train"]
