"""ONNX Runtime sessions: created once per process, on the providers the `device` setting asks for.

`device` maps to providers here and only here (`providers_for`):

- ``auto``: the `providers` setting (TensorRT -> CUDA -> CPU by default), whichever are usable; falls back to CPU
  and logs which it chose.
- ``cpu``: CPU only.
- ``cuda`` / ``tensorrt``: strict. Where ONNX Runtime has no such provider, no GPU is visible or the provider fails
  to start (CUDA/cuDNN libraries missing), `get_session` raises a `VideotagError` naming what is missing; it never
  runs on the CPU instead.

A provider list without ``CPUExecutionProvider`` is strict in the same way (that is what cuda/tensorrt map to).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import onnxruntime as ort

from videotag.core.errors import VideotagError

log = logging.getLogger(__name__)
_SESSIONS: dict[tuple, ort.InferenceSession] = {}
_LOCK = threading.Lock()

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEFAULT_PROVIDERS = (TENSORRT, CUDA, CPU)
DEVICE_PROVIDERS: dict[str, tuple[str, ...]] = {"cpu": (CPU,), "cuda": (CUDA,), "tensorrt": (TENSORRT, CUDA)}
_DEVICE_OF = {CUDA: "cuda", TENSORRT: "tensorrt"}


def providers_for(device: str, providers: list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """ONNX Runtime providers for a `device` setting: auto -> `providers` (default TensorRT, CUDA, CPU)."""
    if device == "auto":
        return tuple(providers or DEFAULT_PROVIDERS)
    try:
        return DEVICE_PROVIDERS[device]
    except KeyError:
        raise VideotagError(f"unknown device {device!r} (use auto, cpu, cuda or tensorrt)") from None


def is_strict(providers: list[str] | tuple[str, ...]) -> bool:
    """A request without the CPU provider must run on what it names, or fail."""
    return bool(providers) and CPU not in providers


def _gpu_usable() -> bool:
    # onnxruntime-gpu lists CUDA/TensorRT even on machines without a GPU or CUDA libs; asking for them then
    # logs errors and falls back. Only offer them where a GPU device node exists.
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def choose_providers(preferred: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The usable subset of `preferred`, in order (CPU when none is). Strict requests are returned as given."""
    preferred = list(preferred or DEFAULT_PROVIDERS)
    if is_strict(preferred):
        return preferred
    available = set(ort.get_available_providers())
    gpu = _gpu_usable()
    out = [p for p in preferred if p in available and (p == CPU or gpu)]
    return out or [CPU]


def _wanted_device(providers: tuple[str, ...]) -> str:
    return _DEVICE_OF.get(providers[0], providers[0])


def _check_strict(providers: tuple[str, ...]) -> None:
    """Fail before creating a session when a strict request cannot be met (saves ORT's CPU fallback)."""
    device = _wanted_device(providers)
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise VideotagError(
            f"device {device!r}: this ONNX Runtime ({ort.__version__}) has no {', '.join(missing)} "
            f"(it has: {', '.join(available)}); install onnxruntime-gpu, or use device 'auto' or 'cpu'"
        )
    if any(p in (CUDA, TENSORRT) for p in providers) and not _gpu_usable():
        raise VideotagError(
            f"device {device!r}: no NVIDIA GPU is visible (no /dev/nvidia0 or /dev/nvidiactl: no GPU, no driver, or "
            "a container started without GPU access); use device 'auto' or 'cpu'"
        )


def _fell_back(path: str, providers: tuple[str, ...], got: list[str] | None, error: BaseException | None):
    device = _wanted_device(providers)
    how = f"it failed: {error}" if error else f"ONNX Runtime fell back to {got[0] if got else '?'}"
    libs = "libcudart, libcublas(Lt), libcudnn" + (", libnvinfer (TensorRT)" if providers[0] == TENSORRT else "")
    return VideotagError(
        f"device {device!r}: {providers[0]} could not start for {_label(path)} ({how}). The CUDA/cuDNN libraries "
        f"onnxruntime-gpu {ort.__version__} was built for ({libs}) are probably missing or not on LD_LIBRARY_PATH; "
        "ONNX Runtime's log line above names the one it could not load. Use device 'auto' or 'cpu' to run on the CPU"
    )


def get_session(
    path: str | Path, providers: list[str] | tuple[str, ...] | None = None, intra_op_threads: int = 0
) -> ort.InferenceSession:
    """Cached per (path, providers, threads, pid): call freely, it is built once per process (after fork).

    Strict provider lists (no CPU: device cuda/tensorrt) raise VideotagError instead of falling back.
    """
    path = str(Path(path).resolve())
    chosen = tuple(choose_providers(providers))
    strict = is_strict(chosen)
    key = (path, chosen, intra_op_threads, os.getpid())
    with _LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            if strict:
                _check_strict(chosen)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if intra_op_threads:
                opts.intra_op_num_threads = intra_op_threads
            opts.log_severity_level = 3
            # Idle ORT threads must not spin: the decoder thread needs those cores between batches.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                sess = ort.InferenceSession(path, sess_options=opts, providers=list(chosen))
            except Exception as e:
                if strict:
                    raise _fell_back(path, chosen, None, e) from e
                raise
            got = sess.get_providers()
            if got[0] != chosen[0]:
                if strict:
                    raise _fell_back(path, chosen, got, None)
                log.warning("%s: asked for %s, ONNX Runtime is using %s", _label(path), chosen[0], got[0])
            asked = tuple(providers or DEFAULT_PROVIDERS)
            why = _why_cpu(asked) if not strict and got[0] == CPU and asked[0] != CPU else ""
            log.info("loaded %s on %s%s", _label(path), got[0], why)
            _SESSIONS[key] = sess
        return sess


def _label(path: str) -> str:
    """`model_dir/model.onnx`: which model a log line is about."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def _why_cpu(providers: list[str] | tuple[str, ...]) -> str:
    """Why device auto chose the CPU (for the log line)."""
    if not any(p in ort.get_available_providers() for p in providers if p != CPU):
        return " (device auto: this ONNX Runtime has no GPU provider)"
    if not _gpu_usable():
        return " (device auto: no NVIDIA GPU visible)"
    return " (device auto)"
