"""ONNX Runtime sessions: created once per process, providers TensorRT -> CUDA -> CPU, whichever exist."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)
_SESSIONS: dict[tuple, ort.InferenceSession] = {}
_LOCK = threading.Lock()

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _gpu_usable() -> bool:
    # onnxruntime-gpu lists CUDA/TensorRT even on machines without a GPU or CUDA libs; asking for them then
    # logs errors and falls back. Only offer them where a GPU device node exists.
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def choose_providers(preferred: list[str] | tuple[str, ...] | None = None) -> list[str]:
    preferred = list(preferred or DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    gpu = _gpu_usable()
    out = [p for p in preferred if p in available and (p == "CPUExecutionProvider" or gpu)]
    return out or ["CPUExecutionProvider"]


def get_session(
    path: str | Path, providers: list[str] | tuple[str, ...] | None = None, intra_op_threads: int = 0
) -> ort.InferenceSession:
    """Cached per (path, providers, threads, pid): call freely, it is built once per process (after fork)."""
    path = str(Path(path).resolve())
    chosen = tuple(choose_providers(providers))
    key = (path, chosen, intra_op_threads, os.getpid())
    with _LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if intra_op_threads:
                opts.intra_op_num_threads = intra_op_threads
            opts.log_severity_level = 3
            # Idle ORT threads must not spin: the decoder thread needs those cores between batches.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(path, sess_options=opts, providers=list(chosen))
            got = sess.get_providers()
            if got[0] != chosen[0]:
                log.warning("%s: asked for %s, ONNX Runtime is using %s", Path(path).name, chosen[0], got[0])
            log.info("loaded %s on %s", Path(path).name, got[0])
            _SESSIONS[key] = sess
        return sess
