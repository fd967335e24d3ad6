"""Stage-1 engine: N decoders feed one CNN with batches drawn across videos; per-video results, order and errors.

Real generated videos and a real exported (tiny) ONNX backbone; nothing is mocked but a failing backbone call.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from extractor.backbone import FrameExtractor, export_backbone
from extractor.engine import Cancelled, Extraction, ExtractionEngine, _Failed, extract_many
from extractor.preprocess import Preprocess
from videotag.core.errors import VideoError


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> FrameExtractor:
    torch.manual_seed(0)
    out = export_backbone(
        _Tiny().eval(), tmp_path_factory.mktemp("bb") / "tiny", architecture="tiny", feature_dim=8,
        preprocess=Preprocess(crop=32, resize=36), mean=(0.5,) * 3, std=(0.5,) * 3, source={"package": "test"},
    )  # fmt: skip
    return FrameExtractor(out, ["CPUExecutionProvider"], 1)


@pytest.fixture(scope="module")
def clips(video_factory) -> list[str]:
    """Seven videos of different lengths and sizes (6 to 90 frames), so batches mix videos."""
    specs = [
        (30, (64, 48)),
        (6, (48, 32)),
        (90, (96, 64)),
        (12, (64, 48)),
        (45, (80, 60)),
        (7, (32, 32)),
        (20, (64, 48)),
    ]
    return [str(video_factory(f"e{i}.mp4", frames=n, size=s)) for i, (n, s) in enumerate(specs)]


class Slow:
    """The real extractor, but every CNN call takes at least `delay` s: a video of 300 frames then takes >= 1.9 s,
    whatever the machine, so timeouts and cancellation land mid-video."""

    def __init__(self, inner: FrameExtractor, delay: float = 0.05) -> None:
        self.inner, self.delay = inner, delay
        self.preprocess, self.sampling = inner.preprocess, inner.sampling

    def __call__(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return self.inner(x)


def _run(extractor: FrameExtractor, sources: list[str], decoders: int, batch: int = 8) -> list:
    return list(extract_many(sources, extractor, num_frames=16, policy="uniform", batch_size=batch, decoders=decoders))


def test_decoders_give_the_same_features_in_input_order(tiny, clips):
    one = _run(tiny, clips, decoders=1)
    for n in (2, 4):
        many = _run(tiny, clips, decoders=n)
        assert [r.source for r in many] == clips
        for a, b in zip(one, many, strict=True):
            assert isinstance(a, Extraction) and isinstance(b, Extraction)
            assert a.features.shape == (16, 8)
            np.testing.assert_array_equal(a.plan.indices, b.plan.indices)
            np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)  # same crops, other batches


def test_batches_are_drawn_across_videos(tiny, clips):
    """Short videos (6 sampled frames each) fill batches of 16 together: 42 crops in a few calls, not 7. (A slow
    CNN, as on a loaded machine: crops queue up meanwhile, so batches fill; with nothing queued a video that ended
    is not kept waiting, which may add a partial batch.)"""
    with ExtractionEngine(Slow(tiny), num_frames=6, policy="uniform", batch_size=16, decoders=3) as engine:  # type: ignore[arg-type]
        tickets = [engine.submit(c) for c in clips]
        results = [t.result(60) for t in tickets]
        assert all(r.features.shape == (6, 8) for r in results)
        assert engine.mixed_batches >= 1
        assert engine.batches <= 5  # one video per batch would take 7 calls


def test_bad_video_fails_alone(tiny, clips, tmp_path):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"this is text, not a video" * 40)
    missing = str(tmp_path / "missing.mp4")
    sources = [clips[0], str(bad), clips[1], missing, clips[2]]
    for decoders in (1, 3):
        out = _run(tiny, sources, decoders)
        assert [r.source for r in out] == sources
        assert [type(r).__name__ for r in out] == ["Extraction", "_Failed", "Extraction", "_Failed", "Extraction"]
        assert isinstance(out[1].error, VideoError) and out[1].error.code == "not_a_video"
        assert isinstance(out[3].error, VideoError) and out[3].error.code == "missing"


def test_a_slow_video_does_not_stall_the_others(tiny, video_factory, clips):
    """With 2 decoders, short videos submitted after a long one complete while the long one is still decoding."""
    long = str(video_factory("long.mp4", frames=1500, size=(320, 240), gop=250))
    with ExtractionEngine(tiny, num_frames=300, policy="uniform", batch_size=8, decoders=2) as engine:
        slow = engine.submit(long)
        quick = [engine.submit(c) for c in clips[:4]]
        for t in quick:
            t.result(120)
        assert not slow.done, "the long video finished before the short ones: nothing was shown"
        assert slow.result(300).features.shape == (300, 8)


def test_timeout_cancels_the_video_and_the_engine_goes_on(tiny, video_factory, clips):
    long = str(video_factory("long2.mp4", frames=400, size=(64, 48), gop=50))
    with ExtractionEngine(Slow(tiny), num_frames=300, policy="uniform", batch_size=8, decoders=1) as engine:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError):
            engine.extract(long, timeout=0.2)
        assert time.perf_counter() - t0 < 5
        assert engine.extract(clips[1], timeout=60).features.shape == (300, 8)  # its decoder moved on


def test_backbone_failure_fails_only_the_videos_in_that_batch(tiny, clips):
    class Flaky:
        """The real extractor, but its second call raises (as a GPU out-of-memory would)."""

        def __init__(self, inner: FrameExtractor) -> None:
            self.inner, self.calls = inner, 0
            self.preprocess, self.sampling = inner.preprocess, inner.sampling

        def __call__(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("CUDA out of memory (simulated)")
            return self.inner(x)

    out = _run(Flaky(tiny), clips[:3], decoders=1, batch=8)  # type: ignore[arg-type]
    failed = [r for r in out if isinstance(r, _Failed)]
    assert [r.source for r in out] == clips[:3]
    assert len(failed) >= 1 and all("out of memory" in str(r.error) for r in failed)
    assert any(isinstance(r, Extraction) for r in out)
    # and the engine goes on: the same videos again, all fine
    assert all(isinstance(r, Extraction) for r in _run(tiny, clips[:3], decoders=1))


def test_close_cancels_what_is_in_flight(tiny, video_factory):
    long = str(video_factory("long3.mp4", frames=400, size=(64, 48), gop=50))
    engine = ExtractionEngine(Slow(tiny), num_frames=300, policy="uniform", batch_size=8, decoders=2)  # type: ignore[arg-type]
    tickets = [engine.submit(long) for _ in range(4)]
    time.sleep(0.3)
    engine.close()
    for t in tickets:
        with pytest.raises(Cancelled):
            t.result(10)
    assert not [th.name for th in engine._threads if th.is_alive()]  # its decoders and inference thread ended
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(long)


def test_many_threads_share_one_engine(tiny, clips):
    """What the extract worker does: one thread per video in flight, all on one engine; each gets its own video."""
    with ExtractionEngine(tiny, num_frames=16, policy="uniform", batch_size=8, decoders=3) as engine:
        got: dict[int, Extraction] = {}

        def work(i: int) -> None:
            got[i] = engine.extract(clips[i], timeout=60)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    ref = _run(tiny, clips, decoders=1)
    for i, r in enumerate(ref):
        assert got[i].source == clips[i]
        np.testing.assert_allclose(got[i].features, r.features, rtol=1e-5, atol=1e-6)
