"""Overlapped stage 1: a decoder thread feeds sampled crops to ONNX Runtime batches.

PyAV decoding/scaling and ONNX Runtime inference both release the GIL, so one decode thread running ahead of
the inference loop keeps both cores busy: while batch k runs through the CNN, frames of batch k+1 (or of the
next video) are being decoded. The queue between them is bounded, so memory does not grow with video length
or with the number of videos.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from extractor.backbone import FrameExtractor
from extractor.decode import SampledDecoder, SamplePlan, VideoInfo
from videotag.core.errors import VideoError

log = logging.getLogger(__name__)
_END = object()


@dataclass
class Extraction:
    """One video's stage-1 output: features [n, D] float32 in slot order (cyclic repeats included)."""

    source: str
    features: np.ndarray
    info: VideoInfo
    plan: SamplePlan
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Failed:
    source: str
    error: BaseException


def _produce(
    sources: list[str], out: queue.Queue, stop: threading.Event, num_frames: int, policy: str, transform
) -> None:
    """Decoder thread: per video put (i, frame_index, crop)... then (i, _END, decoder|_Failed)."""
    for i, src in enumerate(sources):
        if stop.is_set():
            return
        t0 = time.perf_counter()
        try:
            dec = SampledDecoder(src, num_frames=num_frames, policy=policy, transform=transform)
            for frame_index, crop in dec:
                if stop.is_set():
                    return
                out.put((i, frame_index, crop))
            dec.decode_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
            out.put((i, _END, dec))
        except BaseException as e:  # handed to the consumer, which reports it for this video only
            out.put((i, _END, _Failed(src, e)))


def extract_many(
    sources: Iterable[str],
    extractor: FrameExtractor,
    num_frames: int = 300,
    policy: str | None = None,
    batch_size: int = 32,
    prefetch_frames: int = 96,
) -> Iterator[Extraction | _Failed]:
    """Yield one Extraction (or _Failed with the exception) per source, in order, decoding ahead."""
    sources = list(sources)
    policy = policy or extractor.sampling
    q: queue.Queue = queue.Queue(maxsize=max(prefetch_frames, batch_size))
    stop = threading.Event()
    th = threading.Thread(
        target=_produce,
        args=(sources, q, stop, num_frames, policy, extractor.preprocess),
        name="videotag-decode",
        daemon=True,
    )
    th.start()
    try:
        current, feats, pending_idx, pending = 0, {}, [], []
        infer_s, t_start = 0.0, time.perf_counter()

        def flush() -> None:
            nonlocal infer_s
            if not pending:
                return
            t = time.perf_counter()
            out = extractor(np.stack(pending))
            infer_s += time.perf_counter() - t
            feats.update(zip(pending_idx, out, strict=True))
            pending.clear()
            pending_idx.clear()

        while current < len(sources):
            i, frame_index, payload = q.get()
            assert i == current, "decoder thread is ahead of the consumer's video index"
            if frame_index is not _END:
                pending_idx.append(frame_index)
                pending.append(payload)
                if len(pending) >= batch_size:
                    flush()
                continue
            if isinstance(payload, _Failed):
                pending.clear()
                pending_idx.clear()
                yield payload
            else:
                flush()
                plan: SamplePlan = payload.plan
                missing = [int(j) for j in np.unique(plan.indices) if int(j) not in feats]
                if missing:
                    yield _Failed(sources[i], RuntimeError(f"decoder did not deliver frames {missing[:5]}..."))
                else:
                    features = np.stack([feats[int(j)] for j in plan.indices]).astype(np.float32)
                    now = time.perf_counter()
                    timings = {
                        "decode_s": round(getattr(payload, "decode_seconds", 0.0), 4),
                        "infer_s": round(infer_s, 4),
                        "total_s": round(now - t_start, 4),
                    }
                    yield Extraction(sources[i], features, payload.info, plan, timings)
            feats, current, infer_s, t_start = {}, current + 1, 0.0, time.perf_counter()
    finally:
        stop.set()
        while th.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(timeout=0.05)


__all__ = ["Extraction", "VideoError", "extract_many"]
