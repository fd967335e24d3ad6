"""Backbone precision for ONNX Runtime: static INT8 (QDQ) for the CPU provider, FP16 for CUDA/TensorRT.

Calibration frames come from real clips through the backbone's own decoding and preprocessing (`SampledDecoder`
with the model's sampling rule and `Preprocess`), so the ranges the quantiser sees are those of the uint8 crops the
model will really get. The graph keeps its interface: `frames` uint8 [B, S, S, 3] -> `features` float32 [B, D].

    clips = [sample_clip(p, preprocess, 32, "uniform") for p in paths]
    q = Int8Quantizer(src_onnx, work_dir, calibration_frames)
    for name, exclude in q.exclusion_ladder():          # none, first conv, first + last conv
        q.quantize(out_onnx, exclude)                    # calibrates once, reuses the ranges
    convert_fp16(src_onnx, out_onnx)

Everything here is ONNX Runtime's own tooling (`onnxruntime.quantization`, `onnxruntime.transformers.float16`);
nothing new to install.
"""

from __future__ import annotations

import inspect
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractor.decode import SampledDecoder
from extractor.preprocess import Preprocess

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# ------------------------------------------------------------------------------------------------ frames
@dataclass
class ClipFrames:
    """One clip's sampled crops: `frames` [n_unique, S, S, 3] uint8 in decode order, `slots` [n] indices into it
    (the plan's slot order, cyclic repeats included) so a sequence model sees what `videotag tag` would give it."""

    source: str
    frames: np.ndarray
    slots: np.ndarray

    @property
    def name(self) -> str:
        return Path(self.source).name


def sample_clip(path: str | Path, preprocess: Preprocess, num_frames: int, policy: str) -> ClipFrames:
    """Decode `num_frames` slots of `path` with `policy`, as stage 1 does; raises VideoError for bad input."""
    dec = SampledDecoder(str(path), num_frames=num_frames, policy=policy, transform=preprocess)
    got: dict[int, np.ndarray] = {}
    for index, crop in dec:
        got[int(index)] = crop
    assert dec.plan is not None
    order = sorted(int(i) for i in np.unique(dec.plan.indices))
    pos = {j: k for k, j in enumerate(order)}
    missing = [j for j in order if j not in got]
    if missing:
        raise RuntimeError(f"{path}: decoder did not deliver frames {missing[:5]}")
    frames = np.stack([got[j] for j in order])
    slots = np.array([pos[int(j)] for j in dec.plan.indices], dtype=np.int64)
    return ClipFrames(str(path), frames, slots)


def split_holdout(n_clips: int) -> list[int]:
    """Indices of the clips held back from calibration: every third clip (2, 5, 8, ...), at least one when there
    are two or more clips; none for a single clip (its frames are split instead, see `split_frames`)."""
    if n_clips < 2:
        return []
    held = [i for i in range(n_clips) if i % 3 == 2]
    return held or [n_clips - 1]


def split_frames(clip: ClipFrames) -> tuple[ClipFrames, ClipFrames]:
    """One clip -> (even sampled frames for calibration, odd ones held back), when there is a single clip."""
    n = len(clip.frames)
    if n < 2:
        raise ValueError(f"{clip.source}: one decoded frame cannot be split into calibration and held-back frames")
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)
    cal = ClipFrames(clip.source, clip.frames[even], np.arange(len(even)))
    held = ClipFrames(clip.source + " (odd frames)", clip.frames[odd], np.arange(len(odd)))
    return cal, held


def even_subsample(frames: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` frames, evenly spread over the array (all of them when there are fewer)."""
    if len(frames) <= limit:
        return frames
    idx = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(np.int64))
    return frames[idx]


# ------------------------------------------------------------------------------------------------ sessions
def cpu_session(path: str | Path, threads: int = 0, providers: list[str] | None = None):
    """A plain ONNX Runtime session (not the process-wide cache: candidates are temporary files)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or [CPU])


def run_backbone(session, frames: np.ndarray, batch: int = 8) -> tuple[np.ndarray, float]:
    """features [n, D] float32 for uint8 frames [n, S, S, 3], and the seconds spent in `session.run`."""
    out, spent = [], 0.0
    for i in range(0, len(frames), batch):
        x = np.ascontiguousarray(frames[i : i + batch])
        t = time.perf_counter()
        out.append(session.run(["features"], {"frames": x})[0])
        spent += time.perf_counter() - t
    return np.concatenate(out).astype(np.float32), spent


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [n, D] arrays (1.0 where both rows are zero)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-30))


# ------------------------------------------------------------------------------------------------ int8
def cpu_has_vnni() -> bool | None:
    """True where the x86 CPU has a VNNI dot-product instruction (AVX512-VNNI, AVX-VNNI, AMX-INT8), False on x86
    without it, None elsewhere (ARM etc.: not an x86 question)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def default_reduce_range() -> bool:
    """ONNX Runtime's advice for U8S8 on x86: 7-bit weights where there is no VNNI (avoids int16 saturation)."""
    return cpu_has_vnni() is False


class FrameReader:
    """CalibrationDataReader over uint8 frames, in batches (ONNX Runtime calls `get_next` until None)."""

    def __init__(self, frames: np.ndarray, batch: int = 8, input_name: str = "frames") -> None:
        self.frames, self.batch, self.input_name = frames, batch, input_name
        self.rewind()

    def rewind(self) -> None:
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.frames):
            return None
        x = np.ascontiguousarray(self.frames[self._pos : self._pos + self.batch])
        self._pos += self.batch
        return {self.input_name: x}

    def __len__(self) -> int:
        return -(-len(self.frames) // self.batch)

    def __iter__(self):
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def _as_reader(frames: np.ndarray, batch: int):
    """FrameReader as an ORT CalibrationDataReader subclass (isinstance checks in some ORT versions)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(FrameReader, CalibrationDataReader):
        pass

    return _Reader(frames, batch)


def conv_nodes(model_path: str | Path) -> list[str]:
    """Names of the Conv nodes of a graph, in graph (topological) order."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in m.graph.node if n.op_type == "Conv"]


class Int8Quantizer:
    """Static INT8 quantisation of one backbone, calibrated once on `calibration` frames, then quantised with any
    set of excluded nodes (the exclusion ladder) without calibrating again.

    QDQ format, per-channel int8 weights (symmetric), uint8 activations (asymmetric): ONNX Runtime's recommended
    setting for its x86 CPU kernels (U8S8); `reduce_range` (7-bit weights) defaults on only for x86 without VNNI.
    """

    def __init__(
        self,
        src: str | Path,
        work_dir: str | Path,
        calibration: np.ndarray,
        *,
        per_channel: bool = True,
        reduce_range: bool | None = None,
        method: str = "minmax",
        batch: int = 8,
    ) -> None:
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose from {CALIBRATION_METHODS}")
        if len(calibration) == 0:
            raise ValueError("no calibration frames")
        self.src = Path(src)
        self.work = Path(work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.calibration = calibration
        self.per_channel = per_channel
        self.reduce_range = default_reduce_range() if reduce_range is None else reduce_range
        self.method = method
        self.batch = batch
        self.prepared = self.work / "prepared.onnx"
        self._cache = self.work / "calibration.json"
        self.seconds: dict[str, float] = {}
        self._prepare()

    def _prepare(self) -> None:
        """Shape inference + ONNX Runtime's basic graph optimisation (folds the exporter's shape arithmetic and
        BatchNorms), the quantiser's recommended pre-processing; falls back to the plain graph if it fails."""
        from onnxruntime.quantization.shape_inference import quant_pre_process

        t = time.perf_counter()
        try:
            quant_pre_process(str(self.src), str(self.prepared), skip_symbolic_shape=False)
        except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation, never a requirement
            log.warning("quantisation pre-processing failed (%s); quantising the graph as exported", e)
            shutil.copyfile(self.src, self.prepared)
        self.seconds["prepare_s"] = round(time.perf_counter() - t, 2)

    def exclusion_ladder(self) -> list[tuple[str, list[str]]]:
        """What to keep in float, in the order to try: nothing; the first conv (it sees the raw, normalised
        pixels); the first and the last conv (the last one writes the features everything downstream reads)."""
        convs = conv_nodes(self.prepared)
        ladder: list[tuple[str, list[str]]] = [("none", [])]
        if convs:
            ladder.append(("first conv", [convs[0]]))
        if len(convs) > 1:
            ladder.append(("first and last conv", [convs[0], convs[-1]]))
        return ladder

    def resolve_exclusions(self, spec: list[str]) -> list[str]:
        """`first` / `last` -> those Conv node names; other names must be nodes of the prepared graph."""
        import onnx

        names = {n.name for n in onnx.load(str(self.prepared), load_external_data=False).graph.node}
        convs = conv_nodes(self.prepared)
        out: list[str] = []
        for item in spec:
            if item == "first" and convs:
                out.append(convs[0])
            elif item == "last" and convs:
                out.append(convs[-1])
            elif item in names:
                out.append(item)
            else:
                some = ", ".join(convs[:3] + (["..."] if len(convs) > 3 else []) + convs[-1:])
                raise ValueError(f"no node named {item!r} in the graph (use first, last or Conv names like {some})")
        return list(dict.fromkeys(out))

    def settings(self, exclude: list[str]) -> dict[str, Any]:
        """What the manifest records about how the weights were quantised."""
        import onnxruntime as ort

        return {
            "format": "QDQ",
            "weights": "int8, symmetric, " + ("per-channel" if self.per_channel else "per-tensor"),
            "activations": "uint8, asymmetric (static ranges)",
            "reduce_range": self.reduce_range,
            "calibration_method": self.method,
            "calibration_frames": int(len(self.calibration)),
            "excluded_nodes": list(exclude),
            "cpu_vnni": cpu_has_vnni(),
            "onnxruntime": ort.__version__,
        }

    def quantize(self, out: str | Path, exclude: list[str] | None = None) -> dict[str, Any]:
        """Write the quantised graph to `out`; returns `settings(exclude)` plus timings."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.method]  # fmt: skip
        kwargs: dict[str, Any] = {}
        cacheable = "calibration_cache_path" in inspect.signature(quantize_static).parameters
        if cacheable:  # ONNX Runtime >= 1.25: calibrate once for the whole ladder
            kwargs["calibration_cache_path"] = str(self._cache)
        reader = None if cacheable and self._cache.is_file() else _as_reader(self.calibration, self.batch)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="videotag-quant-") as tmp:
            tmp_out = Path(tmp) / "int8.onnx"
            quantize_static(
                str(self.prepared),
                str(tmp_out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=self.per_channel,
                reduce_range=self.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude or []),
                calibrate_method=method,
                calibration_providers=[CPU],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                **kwargs,
            )
            shutil.move(str(tmp_out), str(out))
        return {**self.settings(list(exclude or [])), "quantize_s": round(time.perf_counter() - t, 2)}


# ------------------------------------------------------------------------------------------------ fp16
def convert_fp16(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Half-precision weights and arithmetic, same interface (uint8 frames in, float32 features out), for the
    CUDA/TensorRT providers (ONNX Runtime's CPU provider runs it too, slower: agreement can be measured there)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    t = time.perf_counter()
    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(out))
    return {
        "format": "float16",
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)",
        "io": "unchanged (uint8 frames in, float32 features out)",
        "onnxruntime": ort.__version__,
        "convert_s": round(time.perf_counter() - t, 2),
    }


# ------------------------------------------------------------------------------------------------ predictors
def quantize_predictor_int8(src: str | Path, out: str | Path) -> dict[str, Any]:
    """A sequence model's MatMul/Gemm weights to int8 with dynamic activation ranges (ONNX Runtime's advice for
    recurrent and attention models, whose activation ranges vary per sequence); LSTM/Scan cells stay float."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    return {"format": "dynamic int8 (MatMul/Gemm weights)", "onnxruntime": ort.__version__}


def convert_predictor_fp16(src: str | Path, out: str | Path) -> dict[str, Any]:
    info = convert_fp16(src, out)
    info["io"] = "unchanged (float32 features and int64 lengths in, float32 probabilities out)"
    return info


def is_quantized(model_path: str | Path) -> bool:
    """True when a graph already holds QuantizeLinear/DequantizeLinear or integer ops (do not quantise twice)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                       "DynamicQuantizeLinear", "QLinearMatMul"})  # fmt: skip
