"""The worker's threads share one model, one stage-1 engine and one stage-2 batcher per process, even when they
all ask for them at the same moment (a bare lru_cache would build one per thread)."""

from __future__ import annotations

import threading

from videotag import pipeline
from videotag.core.settings import Settings


def _all_at_once(fn, n: int = 12) -> list:
    got: list = [None] * n
    start = threading.Barrier(n)

    def call(i: int) -> None:
        start.wait()
        got[i] = fn()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return got


def test_concurrent_first_calls_build_one_of_each(default_weights):
    # values no other test uses, so the cache entries are new here
    s = Settings(weights_dir=default_weights, frames=37, decoders=2, predict_batch=3, predict_wait_ms=7.25)
    batchers = _all_at_once(lambda: pipeline.get_batcher(s))
    engines = _all_at_once(lambda: pipeline.get_engine(s))
    assert len({id(b) for b in batchers}) == 1 and batchers[0].max_batch == 3
    assert len({id(e) for e in engines}) == 1 and engines[0].decoders == 2 and engines[0].num_frames == 37
    predictors = _all_at_once(lambda: pipeline.get_predictor(s))
    assert len({id(p) for p in predictors}) == 1
    assert sum(t.name == "videotag-predict-batcher" for t in threading.enumerate()) >= 1
