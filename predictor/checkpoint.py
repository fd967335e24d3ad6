"""Training checkpoints: what they hold, how they are written (atomically) and read (safely), and export.

A checkpoint (`torch.save` of plain data, loaded with `weights_only=True`) holds:
    format, format_version, kind ("full" | "weights"), model (registry name), model_config (incl. feature_dim,
    num_classes), state_dict, epoch, train_loss, metrics (validation, this epoch), history, best,
    vocab {names, sha256}, backbone {name, sha256, feature_dim}, sampling (frame-sampling policy of the
    training features), run_config, created
    and, in "full" checkpoints only (last.pt, checkpoint_epoch*.pt: what a resume needs), optimizer, scheduler,
    stopped_early. "weights" checkpoints (best.pt) leave the optimiser state out: a third of the size with Adam.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from predictor.models import SequenceModel, create_model
from videotag.core.errors import VideotagError
from videotag.core.vocab import Vocabulary

FORMAT = "videotag.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(VideotagError):
    """A checkpoint is missing, unreadable, or does not fit what it is used for."""


FULL_ONLY = ("optimizer", "scheduler", "stopped_early")


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write atomically (tmp + rename) so an interrupted save never leaves a half checkpoint behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    kind = "full" if "optimizer" in ckpt else "weights"
    try:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **ckpt}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def weights_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without its optimiser/scheduler state: what export, evaluate and --init-from need."""
    return {k: v for k, v in ckpt.items() if k not in FULL_ONLY}


def checkpoint_sampling(ckpt: dict[str, Any]) -> str | None:
    """Frame-sampling policy the checkpoint's training features were extracted with (None: not recorded)."""
    return ckpt.get("sampling") or (ckpt.get("run_config") or {}).get("sampling")


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Make `dst` the same checkpoint as `src`: a hard link (checkpoints are never modified, only replaced),
    or a copy where links are not possible; swapped in atomically either way."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint file, or a run directory -> its best.pt (falls back to last.pt) or last.pt."""
    p = Path(path)
    if p.is_dir():
        order = ["best.pt", "last.pt"] if which == "best" else ["last.pt"]
        for name in order:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: no {' or '.join(order)} in this directory (not a `videotag train` run dir?)")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint (a file, or a run dir: its best.pt) as the dict it was saved as, its format checked."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling/zip error means: not a checkpoint we wrote
        raise CheckpointError(f"{p}: not a readable videotag checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a videotag training checkpoint (no format={FORMAT!r})")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format {ckpt['format_version']} is newer than this code's")
    ckpt["path"] = str(p)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> SequenceModel:
    """Rebuild the model with its weights, in eval mode."""
    model = create_model(ckpt["model"], **ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def checkpoint_vocab(ckpt: dict[str, Any]) -> Vocabulary:
    """The vocabulary a checkpoint was trained on."""
    return Vocabulary(tuple(ckpt["vocab"]["names"]))


def export_checkpoint(path: str | Path, out_dir: str | Path, which: str = "best") -> Path:
    """Export a checkpoint (or a run dir's best/last) to an ONNX predictor dir with its validation metrics."""
    from predictor.export import export_predictor

    ckpt = load_checkpoint(resolve_checkpoint(path, which))
    model = model_from_checkpoint(ckpt)
    extra = {
        "training": {
            "checkpoint": ckpt["path"],
            "epoch": int(ckpt["epoch"]),
            "train_loss": ckpt.get("train_loss"),
            "run_config": ckpt.get("run_config", {}),
        }
    }
    return export_predictor(
        model,
        out_dir,
        checkpoint_vocab(ckpt),
        dict(ckpt["backbone"]),
        metrics=ckpt.get("metrics") or {},
        extra=extra,
        sampling=checkpoint_sampling(ckpt),
    )
