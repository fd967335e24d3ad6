"""`videotag train`: train or fine-tune a registered sequence model on HDF5 feature stores + a label file.

Run directory (`--out DIR`):
    run_config.json             the resolved run configuration; a resume with a different one is refused
    checkpoint_epoch{N}.pt      one per epoch (see predictor/checkpoint.py for the contents)
    last.pt                     copy of the latest epoch (what --resume continues from)
    best.pt                     the epoch with the best validation GAP (what `videotag export DIR` exports)
    history.json                per-epoch train loss + validation metrics

Reproducibility: the model is initialised under `seed`; every epoch's shuffling and dropout are seeded from
(seed, epoch) alone, so a run resumed at epoch k ends with the same weights as an uninterrupted one.
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

import torch
from torch import nn
from tqdm import tqdm

from predictor.checkpoint import (
    CheckpointError,
    checkpoint_vocab,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
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
from predictor.metrics import evaluate_all
from predictor.models import SequenceModel, create_model, get_model_class
from videotag.hashing import sha256_file
from videotag.manifest import now_iso
from videotag.store import FeatureStore
from videotag.vocab import Vocabulary

RUN_CONFIG = "run_config.json"
# Optimiser defaults of the reference implementations (PaddleVideo / VideoTag configs, NeXtVLAD paper).
OPTIM_DEFAULTS: dict[str, dict[str, Any]] = {
    # centered RMSProp, lr 1e-3, step decay x0.1 every 5 epochs
    "attention_lstm": {"optimizer": "rmsprop", "lr": 1e-3, "lr_step": 5, "lr_gamma": 0.1},
    # Adam 2e-4, decayed x0.8 per epoch (the paper decays x0.8 every 2M samples)
    "nextvlad": {"optimizer": "adam", "lr": 2e-4, "lr_step": 1, "lr_gamma": 0.8},
}
OPTIM_FALLBACK: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "lr_step": 0, "lr_gamma": 1.0}
OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
# Keys a resume may change: everything else must equal the saved run_config.json.
RESUMABLE_CHANGES = ("epochs",)
CACHE_LIMIT_BYTES = 4 << 30  # keep features in RAM when the dataset is smaller than this (as float16)


class TrainError(DatasetError):
    """The run cannot start or continue as asked (existing run dir, config change, bad options)."""


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
    epochs: int = 10
    batch_size: int = 64
    optimizer: str | None = None
    lr: float | None = None
    lr_step: int | None = None
    lr_gamma: float | None = None
    weight_decay: float = 0.0
    clip_grad: float | None = None
    seed: int = 0
    init_from: str | None = None  # fine-tune: checkpoint whose weights (all but the output layer) start the run


@dataclass
class TrainResult:
    out_dir: Path
    epochs_run: int
    history: list[dict[str, Any]]
    best: dict[str, Any]
    metrics: dict[str, Any]  # validation metrics of the last epoch


def _abs(p: str | Path) -> str:
    return str(Path(p).expanduser().resolve())


def _resolve(cfg: TrainConfig, vocab: Vocabulary, backbone: dict[str, Any], init: dict | None) -> dict[str, Any]:
    """The run's identity: the config with defaults filled, paths absolute and inputs hashed."""
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
    opt = dict(OPTIM_DEFAULTS.get(model, OPTIM_FALLBACK))
    for key in ("optimizer", "lr", "lr_step", "lr_gamma"):
        if getattr(cfg, key) is not None:
            opt[key] = getattr(cfg, key)
    if opt["optimizer"] not in OPTIMIZERS:
        raise TrainError(f"unknown optimizer {opt['optimizer']!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or not opt["lr"] > 0:
        raise TrainError("epochs, batch size and learning rate must be positive")
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
        init_from=_abs(cfg.init_from) if cfg.init_from else None,
        **opt,
    )
    return d


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


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    threads: int = 0,
    keep_checkpoints: int = 0,
) -> TrainResult:
    """Train `cfg` into `out_dir` (see module doc); returns the history. Raises DatasetError/TrainError on bad input.

    keep_checkpoints: keep only the newest N checkpoint_epoch*.pt (0 = all; last.pt and best.pt always stay).
    threads: torch intra-op threads (0 = torch's default). Small models train much faster on 1 thread,
    especially on a busy machine, where idle-spinning OpenMP workers cost more than they add.
    """
    old_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals in saturated LSTM gates slow CPU training down many times
    try:
        return _train(cfg, Path(out_dir), resume, progress, log, keep_checkpoints)
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(False)  # torch's default; leave the process as we found it


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None],
    keep_checkpoints: int,
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
    backbone = store_backbone(store)  # every video of every given store: never mix backbones
    if init is not None:
        check_backbone(init["path"], init["backbone"], backbone)
    _check_sequences(store, list(train_ids) + list(val_ids), int(backbone["feature_dim"]))
    rc = _resolve(cfg, vocab, backbone, init)
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
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=rc["lr_step"], gamma=rc["lr_gamma"])
        if rc["lr_step"] and rc["lr_step"] > 0
        else None
    )

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

    start, history, best = 1, [], {"epoch": 0, "gap@20": -1.0}
    if resume:
        try:
            last = load_checkpoint(out / "last.pt")
        except CheckpointError as e:
            raise TrainError(f"cannot resume {out}: {e}") from None
        model.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        if scheduler is not None and last.get("scheduler"):
            scheduler.load_state_dict(last["scheduler"])
        start, history, best = int(last["epoch"]) + 1, list(last["history"]), dict(last["best"])
        log(f"resuming {out} after epoch {last['epoch']}")
        if start > rc["epochs"]:
            log(f"nothing to do: {last['epoch']} of {rc['epochs']} epochs already done")

    all_ids = list(train_ids) + list(val_ids)
    cache = _dataset_bytes(store, all_ids) <= CACHE_LIMIT_BYTES
    train_ds = SequenceDataset(store, train_ids, train_y, len(vocab), cache=cache)
    val_ds = SequenceDataset(store, val_ids, val_y, len(vocab), cache=cache) if val_ids else None
    if start == 1:
        log(
            f"training {rc['model']} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) on "
            f"{len(train_ds)} videos, validating on {len(val_ds) if val_ds else 0}; {backbone['feature_dim']}-d "
            f"{backbone['name'] or 'unknown'} features, {len(vocab)} classes; {rc['optimizer']} lr {rc['lr']:g}"
        )
    loss_fn = nn.BCEWithLogitsLoss()
    bs = rc["batch_size"]
    show = sys.stderr.isatty() if progress is None else progress
    metrics: dict[str, Any] = history[-1]["val"] if history else {}

    for epoch in range(start, rc["epochs"] + 1):
        t0 = time.perf_counter()
        # Every epoch's randomness depends on (seed, epoch) only: resuming reproduces an uninterrupted run.
        torch.manual_seed(rc["seed"] * 1_000_003 + epoch)
        gen = torch.Generator().manual_seed(rc["seed"] * 1_000_003 + epoch)
        loader = torch.utils.data.DataLoader(
            train_ds,
            batch_size=bs,
            shuffle=True,
            generator=gen,
            collate_fn=pad_collate,
            drop_last=len(train_ds) % bs == 1 and len(train_ds) > 1,  # batch norm can't train on 1 sample
        )
        model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{rc['epochs']}", leave=False, disable=not show, file=sys.stderr)
        for batch in bar:
            logits = model(batch["features"], batch["lengths"])
            loss = loss_fn(logits, batch["targets"])
            if not torch.isfinite(loss):
                raise TrainError(f"epoch {epoch}: loss became {loss.item()} (lower the learning rate?)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if rc["clip_grad"]:
                nn.utils.clip_grad_norm_(model.parameters(), rc["clip_grad"])
            optimizer.step()
            n = batch["targets"].shape[0]
            total, count = total + loss.item() * n, count + n
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        lr_now = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        train_loss = total / max(count, 1)
        metrics = evaluate_all(predict_torch(model, val_ds, bs), val_ds.targets) if val_ds else {}
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": lr_now,
            "seconds": time.perf_counter() - t0,
            "val": metrics,
        }
        history.append(entry)
        gap = metrics.get("gap@20", -math.inf) if metrics else -math.inf
        improved = val_ds is None or gap > best["gap@20"]
        if improved:
            best = {"epoch": epoch, "gap@20": gap if val_ds else None}
        ckpt = {
            "model": rc["model"],
            "model_config": model.config,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "train_loss": train_loss,
            "metrics": metrics,
            "history": history,
            "best": best,
            "vocab": {"names": list(vocab.names), "sha256": vocab.sha256},
            "backbone": dict(backbone),
            "run_config": rc,
            "created": now_iso(),
        }
        path = save_checkpoint(out / f"checkpoint_epoch{epoch}.pt", ckpt)
        copy_checkpoint(path, out / "last.pt")
        if improved:
            copy_checkpoint(path, out / "best.pt")
        if keep_checkpoints > 0:  # last.pt / best.pt are links of their own: they survive this
            (out / f"checkpoint_epoch{epoch - keep_checkpoints}.pt").unlink(missing_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
        log(
            f"epoch {epoch}/{rc['epochs']}  loss {train_loss:.4f}  "
            + (f"val {_fmt_metrics(metrics)}" if metrics else "(no validation set)")
            + f"  lr {lr_now:.2e}  {entry['seconds']:.1f}s"
            + ("  *best*" if improved and val_ds else "")
        )
    store.close()
    return TrainResult(out, max(0, rc["epochs"] - start + 1), history, best, metrics)


__all__ = ["TrainConfig", "TrainError", "TrainResult", "train"]
