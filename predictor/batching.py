"""Micro-batching for stage 2: callers in many threads hand in one sequence each, one thread runs them together.

A predict worker runs one Celery task per video in each of its B pool threads. Each task reads its features,
hands them to the process's `MicroBatcher` and waits; the batcher takes the first waiting sequence, gathers
whatever else arrives within `max_wait_s` (up to `max_batch`), runs them as one padded ONNX batch and hands each
caller its own row. Each task then records its own result and returns, so each message is still acknowledged only
after its result is stored. Through the real queue the 3396-class Attention-LSTM records 2.8x more results per
second at batch 16 than at batch 1 on a 2-core CPU (`benchmarks/bench_predict_queue.py`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[np.ndarray], int], np.ndarray]  # ([T_i, D] sequences, batch size) -> [N, C]


class MicroBatcher:
    """`predict(sequences)` -> probabilities [N, C], from any thread; concurrent callers share model batches.

    `run(sequences, batch_size)` is the model call (`OnnxPredictor.predict`). When a mixed batch fails, each of its
    sequences is run again on its own, so one caller's bad input fails only that caller.
    """

    def __init__(self, run: Runner, max_batch: int = 16, max_wait_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max(0.0, max_wait_s)
        self._q: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="videotag-predict-batcher", daemon=True)
        self._thread.start()
        self.batches = 0  # model calls made
        self.sequences = 0  # sequences they held

    def predict(self, sequences: Sequence[np.ndarray], timeout: float | None = None) -> np.ndarray:
        """[T_i, D] sequences -> [N, C] probabilities; each is batched with whatever other callers hand in."""
        futures: list[Future] = []
        for s in sequences:
            f: Future = Future()
            self._q.put((s, f))
            futures.append(f)
        if not futures:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack([f.result(timeout) for f in futures])

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    item = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._q.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            probs = self.run([s for s, _ in batch], len(batch))
        except Exception as e:  # noqa: BLE001 - retried one by one below, or handed to its one caller
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            log.warning("a predict batch of %d failed (%s: %s); running its sequences one by one",
                        len(batch), type(e).__name__, e)  # fmt: skip
            for item in batch:
                self._run([item])
            return
        self.batches += 1
        self.sequences += len(batch)
        for (_, f), p in zip(batch, probs, strict=True):
            f.set_result(p)
