"""Stage-1 engine: N decoder threads feed one inference session with batches drawn across videos.

                  submit(video) ─► jobs ─► decoder 1 ─┐
                                           decoder 2 ─┼─► frames (bounded queue) ─► inference thread ─► Future
                                           decoder N ─┘     (video, frame index, crop)   CNN batch of B crops

PyAV decoding/scaling and ONNX Runtime inference release the GIL, so threads run them in parallel. A batch
takes the next B crops whatever video they belong to: short videos do not leave the CNN with half-empty
batches, and a slow video (long, high resolution, a second decoding pass) occupies one decoder while the others
keep the CNN fed. Each video gets its own Future: its features in slot order, or its own error.

Memory is bounded, whatever the number or length of the videos:
  - the frame queue holds at most `prefetch_frames` crops (3 x 224 x 224 float32 = 0.6 MB each; 96 -> 58 MB),
    plus one crop held by each decoder waiting to put it;
  - each decoder holds one FFmpeg decoder (its reference frames: ~20-60 MB at 1080p H.264) and one frame;
  - each video in flight holds its features until it completes (unique sampled frames x D x 4 bytes:
    300 x 1280 -> 1.5 MB; 300 x 2048 -> 2.5 MB);
  - callers bound how many videos are in flight: `extract_many` runs at most `window` videos ahead of the one
    it yields next; the Celery extract worker has one video per pool thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from extractor.backbone import FrameExtractor
from extractor.decode import SampledDecoder, SamplePlan, VideoInfo
from videotag.core.errors import VideoError

log = logging.getLogger(__name__)
_END = object()  # in place of a frame index: the decoder is done with this video (payload: decoder or error)
_STOP = object()  # in place of a job or a frame: the engine is closing


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
    """A video whose extraction failed: what `extract_many` yields in its place (the error is the video's own)."""

    source: str
    error: BaseException


class Cancelled(Exception):
    """The video was cancelled (its caller stopped waiting, or the engine closed) before it completed."""


class Ticket:
    """One submitted video: `result(timeout)` -> Extraction (raises the video's error); `cancel()` stops it."""

    def __init__(self, source: str, policy: str, num_frames: int) -> None:
        self.source, self.policy, self.num_frames = source, policy, num_frames
        self.future: Future[Extraction] = Future()
        self.cancelled = threading.Event()
        self.feats: dict[int, np.ndarray] = {}  # frame index -> feature [D]; written by the inference thread only
        self.pending = 0  # crops of this video waiting in the current batch
        self.submitted = time.perf_counter()
        self.started = 0.0
        self.infer_s = 0.0

    def result(self, timeout: float | None = None) -> Extraction:
        """Block until the video completes; its own error is raised here (TimeoutError after `timeout` s)."""
        return self.future.result(timeout)

    def cancel(self) -> None:
        """Stop decoding this video and drop its frames; a caller that no longer waits must call this."""
        self.cancelled.set()
        self._settle(exc=Cancelled(f"{self.source}: cancelled"))

    def _settle(self, result: Extraction | None = None, exc: BaseException | None = None) -> None:
        """Complete the future once (the first outcome wins: completion, failure or cancellation)."""
        self.feats = {}
        try:
            if exc is not None:
                self.future.set_exception(exc)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - InvalidStateError: already settled, e.g. cancelled meanwhile
            pass

    @property
    def done(self) -> bool:
        return self.future.done()


class ExtractionEngine:
    """N decoder threads -> one bounded frame queue -> one thread running `extractor` on batches of B crops.

    `submit(path)` returns a Ticket at once; decoders take videos in submission order. Thread-safe: many callers
    (the threads of a Celery worker, or `extract_many`) share one engine and so one inference session. `close()`
    cancels what is still in flight and joins the threads.
    """

    def __init__(
        self,
        extractor: FrameExtractor,
        num_frames: int = 300,
        policy: str | None = None,
        batch_size: int = 8,
        decoders: int = 1,
        prefetch_frames: int = 96,
    ) -> None:
        if decoders < 1:
            raise ValueError(f"decoders must be >= 1, got {decoders}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.extractor = extractor
        self.num_frames, self.policy = num_frames, policy or extractor.sampling
        self.batch_size, self.decoders = batch_size, decoders
        # FFmpeg's own threads per decoder: all cores for one decoder; shared out among several, so N decoders
        # do not start N x cores threads on a small machine
        self.decode_threads = 0 if decoders == 1 else max(1, (os.cpu_count() or 1) // decoders)
        self._jobs: queue.Queue = queue.Queue()  # unbounded: callers bound the videos in flight
        self._frames: queue.Queue = queue.Queue(maxsize=max(prefetch_frames, batch_size))
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._live: set[Ticket] = set()  # submitted, not settled: what close() must cancel
        self._threads = [
            threading.Thread(target=self._decode_loop, name=f"videotag-decode-{i}", daemon=True)
            for i in range(decoders)
        ]
        self._threads.append(threading.Thread(target=self._infer_loop, name="videotag-infer", daemon=True))
        self.batches = 0  # CNN calls made (for benchmarks and tests)
        self.mixed_batches = 0  # ... of which held crops of more than one video
        for t in self._threads:
            t.start()

    # ---- callers -----------------------------------------------------------------------------------------
    def submit(self, source: str, policy: str | None = None, num_frames: int | None = None) -> Ticket:
        """Queue one local video file; returns its Ticket (never raises for bad input: the ticket does)."""
        ticket = Ticket(str(source), policy or self.policy, num_frames or self.num_frames)
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the extraction engine is closed")
            self._live.add(ticket)
            self._jobs.put(ticket)
        ticket.future.add_done_callback(lambda _f: self._forget(ticket))
        return ticket

    def _forget(self, ticket: Ticket) -> None:
        with self._lock:
            self._live.discard(ticket)

    def extract(self, source: str, policy: str | None = None, timeout: float | None = None) -> Extraction:
        """One video, blocking: its Extraction, or its error raised. TimeoutError `timeout` s after its decoding
        started (time queued behind other videos does not count); the video is then cancelled."""
        ticket = self.submit(source, policy)
        try:
            if timeout is None:
                return ticket.result()
            while not ticket.started:  # time spent queued behind other videos does not count
                try:
                    return ticket.result(min(timeout, 0.5))
                except TimeoutError:
                    continue
            return ticket.result(max(0.0, ticket.started + timeout - time.perf_counter()))
        except BaseException:  # timeout, or the caller interrupted (soft time limit, Ctrl-C): stop the video
            ticket.cancel()
            raise

    def close(self) -> None:
        """Cancel every video still queued or in flight and stop the threads (idempotent)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            live = list(self._live)
        for ticket in live:  # queued or in flight: their callers get Cancelled, their decoders stop
            ticket.cancel()
        for _ in range(self.decoders):
            self._jobs.put(_STOP)
        self._put_frame((None, _STOP, None), force=True)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)

    def __enter__(self) -> ExtractionEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- decoder threads ---------------------------------------------------------------------------------
    def _put_frame(self, item: tuple, force: bool = False) -> bool:
        """Put into the bounded frame queue, giving up when the engine closes (unless `force`: the stop mark)."""
        while True:
            if self._closed.is_set() and not force:
                return False
            try:
                self._frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                if force:  # make room: everything queued is being thrown away anyway
                    try:
                        self._frames.get_nowait()
                    except queue.Empty:
                        pass

    def _decode_loop(self) -> None:
        while True:
            ticket = self._jobs.get()
            if ticket is _STOP:
                return
            if ticket.cancelled.is_set() or ticket.done:
                continue
            ticket.started = time.perf_counter()
            try:
                dec = SampledDecoder(
                    ticket.source,
                    num_frames=ticket.num_frames,
                    policy=ticket.policy,
                    transform=self.extractor.preprocess,
                    threads=self.decode_threads,
                )
                for frame_index, crop in dec:
                    if ticket.cancelled.is_set():
                        break
                    if not self._put_frame((ticket, frame_index, crop)):
                        return
                else:
                    dec.decode_seconds = time.perf_counter() - ticket.started  # type: ignore[attr-defined]
                    self._put_frame((ticket, _END, dec))
            except BaseException as e:  # noqa: BLE001 - the video's own error, reported on its ticket only
                self._put_frame((ticket, _END, e))

    # ---- inference thread --------------------------------------------------------------------------------
    def _infer_loop(self) -> None:
        try:
            self._infer()
        except BaseException as e:  # a bug here would leave every caller waiting: fail them all, refuse new work
            log.exception("the extraction engine's inference loop died")
            with self._lock:
                self._closed.set()
                live = list(self._live)
            for ticket in live:
                ticket.cancelled.set()
                ticket._settle(exc=RuntimeError(f"extraction engine failed: {type(e).__name__}: {e}"))

    def _infer(self) -> None:
        batch: list[tuple[Ticket, int, np.ndarray]] = []
        ended: list[tuple[Ticket, object]] = []  # decoders are done with these; their last crops are in `batch`
        while True:
            if ended and batch:  # a video waits on this partial batch: top it up only with crops already queued
                try:
                    item = self._frames.get_nowait()
                except queue.Empty:
                    self._run(batch, ended)
                    continue
            else:
                item = self._frames.get()
            ticket, index, payload = item
            if index is _STOP:
                for t in [t for t, _, _ in batch] + [t for t, _ in ended]:
                    t.cancel()
                return
            if ticket.done:  # failed or cancelled: drop what its decoder still sends
                continue
            if index is not _END:
                batch.append((ticket, index, payload))
                ticket.pending += 1
                if len(batch) >= self.batch_size:
                    self._run(batch, ended)
            elif ticket.pending:
                ended.append((ticket, payload))
            else:
                self._complete(ticket, payload)

    def _run(self, batch: list[tuple[Ticket, int, np.ndarray]], ended: list[tuple[Ticket, object]]) -> None:
        """One CNN call on the batch; features go to their videos, then the `ended` videos complete. A failing
        call fails the videos in it."""
        tickets = {id(t): t for t, _, _ in batch}
        t0 = time.perf_counter()
        try:
            out = self.extractor(np.stack([crop for _, _, crop in batch]))
        except Exception as e:  # noqa: BLE001 - reported on each video of the batch; the engine goes on
            log.error("backbone failed on a batch of %d crops from %d video(s): %s", len(batch), len(tickets), e)
            for t in tickets.values():
                t.cancelled.set()
                t._settle(exc=e)
        else:
            share = (time.perf_counter() - t0) / len(batch)
            for (t, index, _), feat in zip(batch, out, strict=True):
                t.feats[int(index)] = feat
                t.infer_s += share
            self.batches += 1
            self.mixed_batches += len(tickets) > 1
        for t in tickets.values():
            t.pending = 0
        batch.clear()
        for t, payload in ended:
            self._complete(t, payload)
        ended.clear()

    def _complete(self, ticket: Ticket, payload: object) -> None:
        if ticket.done:  # failed (its batch) or cancelled meanwhile
            return
        if isinstance(payload, BaseException):
            ticket._settle(exc=payload)
            return
        dec: SampledDecoder = payload  # type: ignore[assignment]
        plan = dec.plan
        assert plan is not None
        missing = [int(j) for j in np.unique(plan.indices) if int(j) not in ticket.feats]
        if missing:
            ticket._settle(exc=RuntimeError(f"{ticket.source}: decoder did not deliver frames {missing[:5]}..."))
            return
        features = np.stack([ticket.feats[int(j)] for j in plan.indices]).astype(np.float32)
        now = time.perf_counter()
        timings = {
            "decode_s": round(getattr(dec, "decode_seconds", 0.0), 4),
            "infer_s": round(ticket.infer_s, 4),
            "wait_s": round(ticket.started - ticket.submitted, 4),  # queued behind other videos
            "total_s": round(now - ticket.started, 4),
        }
        ticket._settle(Extraction(ticket.source, features, dec.info, plan, timings))


def extract_many(
    sources: Iterable[str],
    extractor: FrameExtractor,
    num_frames: int = 300,
    policy: str | None = None,
    batch_size: int = 8,
    decoders: int = 1,
    prefetch_frames: int = 96,
    window: int | None = None,
) -> Iterator[Extraction | _Failed]:
    """Yield one Extraction (or _Failed with the video's error) per source, in input order.

    At most `window` videos (default: 2 x decoders + 1) are submitted ahead of the one yielded next, which bounds
    the finished-but-not-yet-yielded features held while a slow video completes.
    """
    sources = list(sources)
    window = max(1, window or 2 * decoders + 1)
    engine = ExtractionEngine(extractor, num_frames, policy, batch_size, decoders, prefetch_frames)
    tickets: list[Ticket] = []
    try:
        for i, src in enumerate(sources):
            while len(tickets) < min(len(sources), i + window):
                tickets.append(engine.submit(sources[len(tickets)]))
            try:
                yield tickets[i].result()
            except Exception as e:  # noqa: BLE001 - the video's own error, reported in its place
                yield _Failed(src, e)
            tickets[i] = None  # type: ignore[call-overload]  # its features are the caller's now
    finally:
        engine.close()


__all__ = ["Cancelled", "Extraction", "ExtractionEngine", "Ticket", "VideoError", "extract_many"]
