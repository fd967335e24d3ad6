"""MicroBatcher: concurrent callers share model batches, each gets its own row, a bad input fails only its caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from predictor.batching import MicroBatcher

W = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)


class Model:
    """Mean over time, then a linear layer: [T_i, 8] -> [5]; records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, seqs: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        for s in seqs:
            if s.shape[1] != 8:
                raise ValueError(f"sequence of shape {s.shape}, want [T, 8]")
        self.sizes.append(len(seqs))
        time.sleep(self.delay)
        return np.stack([s.mean(0) @ W for s in seqs])


def _concurrently(batcher: MicroBatcher, seqs: list[np.ndarray]) -> dict[int, np.ndarray | BaseException]:
    out: dict[int, np.ndarray | BaseException] = {}
    start = threading.Barrier(len(seqs))

    def call(i: int) -> None:
        start.wait()
        try:
            out[i] = batcher.predict([seqs[i]], timeout=30)[0]
        except Exception as e:  # noqa: BLE001 - recorded for the assertions
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_concurrent_callers_share_batches_and_get_their_own_rows():
    rng = np.random.default_rng(1)
    seqs = [rng.normal(size=(int(rng.integers(5, 40)), 8)).astype(np.float32) for _ in range(32)]
    model = Model(delay=0.02)
    batcher = MicroBatcher(model, max_batch=16, max_wait_s=0.05)
    try:
        out = _concurrently(batcher, seqs)
    finally:
        batcher.close()
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(out[i], s.mean(0) @ W, rtol=1e-5)
    assert max(model.sizes) <= 16 and sum(model.sizes) == 32
    assert len(model.sizes) <= 8, model.sizes  # 32 callers at once: a few batches, not 32 calls


def test_bad_input_fails_only_its_caller():
    rng = np.random.default_rng(2)
    seqs = [rng.normal(size=(10, 8)).astype(np.float32) for _ in range(8)]
    seqs[3] = rng.normal(size=(10, 7)).astype(np.float32)
    batcher = MicroBatcher(Model(), max_batch=8, max_wait_s=0.05)
    try:
        out = _concurrently(batcher, seqs)
    finally:
        batcher.close()
    assert isinstance(out[3], ValueError) and "want [T, 8]" in str(out[3])
    for i in (0, 1, 2, 4, 5, 6, 7):
        np.testing.assert_allclose(out[i], seqs[i].mean(0) @ W, rtol=1e-5)


def test_a_lone_caller_waits_at_most_max_wait():
    model = Model()
    batcher = MicroBatcher(model, max_batch=16, max_wait_s=0.05)
    try:
        t0 = time.perf_counter()
        got = batcher.predict([np.ones((4, 8), np.float32), np.zeros((3, 8), np.float32)])
        took = time.perf_counter() - t0
    finally:
        batcher.close()
    assert got.shape == (2, 5) and model.sizes == [2]
    assert took < 1.0


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Model(), max_batch=0)
