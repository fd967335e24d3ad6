"""Sampling rules (extractor/sampling.py): hand-computed cases, short videos, n > N, n == N, VFR timestamps."""

from __future__ import annotations

import numpy as np
import pytest
from videogen import vfr_times

from extractor.sampling import frames_at_times, segment_indices, timestamp_indices, timestamp_targets


def videotag_loop(num_frames: int, n: int) -> list[int]:
    """REFERENCE.md's rule written out as a plain loop (the oracle for the vectorised version)."""
    avg = num_frames // n
    out = []
    for i in range(n):
        out.append((avg - 1) // 2 + i * avg if avg >= 1 else i % num_frames)
    return out


@pytest.mark.parametrize(
    ("num_frames", "n", "expected"),
    [
        (9, 3, [1, 4, 7]),  # avg 3: centre of each run of 3
        (10, 3, [1, 4, 7]),  # avg 3, the tail frame 9 is never used
        (8, 2, [1, 5]),  # avg 4: (4-1)//2 = 1
        (6, 3, [0, 2, 4]),  # avg 2: (2-1)//2 = 0
        (5, 5, [0, 1, 2, 3, 4]),  # n == N
        (7, 5, [0, 1, 2, 3, 4]),  # avg 1: the first n frames
        (3, 7, [0, 1, 2, 0, 1, 2, 0]),  # n > N: cyclic repeat
        (1, 4, [0, 0, 0, 0]),  # a one-frame video
    ],
)
def test_segment_indices_hand_computed(num_frames: int, n: int, expected: list[int]) -> None:
    got = segment_indices(num_frames, n)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_segment_indices_videotag_300() -> None:
    # 10 s at 30 fps: exactly one frame per slot
    assert segment_indices(300, 300).tolist() == list(range(300))
    # 30 s at 30 fps: avg 3 -> 1, 4, 7, ..., 898
    got = segment_indices(900, 300)
    assert got[0] == 1 and got[-1] == 898 and np.all(np.diff(got) == 3)
    # 599 frames: avg is still 1, so the first 300 frames (VideoTag's behaviour, however odd)
    assert segment_indices(599, 300).tolist() == list(range(300))
    # 32 frames (the short shared clip): 0..31 repeated, 300 slots
    short = segment_indices(32, 300)
    assert short.shape == (300,) and short[:32].tolist() == list(range(32)) and short[32] == 0 and short[-1] == 299 % 32


@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_segment_indices_matches_reference_loop(n: int) -> None:
    for num_frames in [1, 2, 3, 5, 31, 299, 300, 301, 599, 600, 601, 1234, 108_000]:
        got = segment_indices(num_frames, n)
        assert got.tolist() == videotag_loop(num_frames, n), (num_frames, n)
        assert got.min() >= 0 and got.max() < num_frames


def test_segment_indices_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        segment_indices(0, 300)
    with pytest.raises(ValueError):
        segment_indices(10, 0)


def test_timestamp_targets_are_segment_centres() -> None:
    assert timestamp_targets(0.0, 10.0, 5).tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert np.allclose(timestamp_targets(2.0, 1.0, 4), [2.125, 2.375, 2.625, 2.875])
    assert timestamp_targets(0.0, 0.0, 3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        timestamp_targets(0.0, -1.0, 3)
    with pytest.raises(ValueError):
        timestamp_targets(0.0, float("nan"), 3)


def test_frames_at_times_picks_the_frame_on_screen() -> None:
    pts = np.array([0.0, 0.1, 0.5, 0.6, 2.0])
    targets = [-1.0, 0.0, 0.05, 0.1, 0.55, 1.9, 2.0, 5.0]
    # before the first frame -> frame 0; exactly on a pts -> that frame; between -> the earlier one
    assert frames_at_times(pts, targets).tolist() == [0, 0, 0, 1, 2, 3, 4, 4]
    # duplicate pts resolve to the last of them
    assert frames_at_times(np.array([0.0, 1.0, 1.0, 2.0]), [1.0, 1.5]).tolist() == [2, 2]


def test_frames_at_times_rejects_bad_pts() -> None:
    with pytest.raises(ValueError):
        frames_at_times(np.array([0.0, 0.2, 0.1]), [0.1])
    with pytest.raises(ValueError):
        frames_at_times(np.array([]), [0.1])


def test_vfr_timestamp_sampling_hand_computed() -> None:
    # vfr_times(20, 25): ten frames 80 ms apart (0..720 ms), then ten 20 ms apart (800..980 ms); 1 s in all
    pts = vfr_times(20, 25)
    assert np.allclose(pts[:3], [0.0, 0.08, 0.16]) and np.allclose(pts[10:12], [0.8, 0.82])
    duration = pts[-1] + 0.02 - pts[0]
    # targets 0.1, 0.3, 0.5, 0.7, 0.9 s -> frames at 0.08, 0.24, 0.48, 0.64, 0.90 s
    assert timestamp_indices(pts, duration, 5).tolist() == [1, 3, 6, 8, 15]
    # the index rule ignores time: half its samples fall in the fast last 20% of the video
    assert segment_indices(20, 5).tolist() == [1, 5, 9, 13, 17]


def test_timestamp_indices_constant_rate_equals_segment_rule_when_divisible() -> None:
    # At a constant rate with N a multiple of n, the segment centre frame is the frame on screen at the time
    # centre (for odd runs) -> the two policies agree.
    pts = np.arange(900) / 30.0
    assert timestamp_indices(pts, 30.0, 300).tolist() == segment_indices(900, 300).tolist()
    # n > N at constant rate: each frame used for consecutive slots, in order (no cyclic wrap-around)
    got = timestamp_indices(np.arange(10) / 10.0, 1.0, 30)
    assert got.tolist() == sorted(got.tolist()) and set(got.tolist()) == set(range(10))


# ------------------------------------------------------------------------------------------- uniform (default)


@pytest.mark.parametrize(
    ("num_frames", "n", "expected"),
    [
        (9, 3, [1, 4, 7]),  # spans of 3: their centres
        (10, 3, [1, 5, 8]),  # spans of 3.33: floor(1.67), floor(5), floor(8.33)
        (599, 300, None),  # checked by the property test below
        (3, 7, [0, 1, 2, 0, 1, 2, 0]),  # n > N: cyclic repeat, as VideoTag's rule
        (1, 4, [0, 0, 0, 0]),
        (5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_uniform_indices_hand_computed(num_frames: int, n: int, expected: list[int] | None) -> None:
    from extractor.sampling import uniform_indices

    got = uniform_indices(num_frames, n)
    assert got.dtype == np.int64 and got.shape == (n,)
    if expected is not None:
        assert got.tolist() == expected


def test_uniform_indices_cover_the_whole_video() -> None:
    """For any N >= n: the first sample lies in the first n-th of the video, the last in the last n-th, indices
    strictly increase and every gap is within one frame of N / n; short videos repeat cyclically."""
    from extractor.sampling import count_indices, uniform_indices

    rng = np.random.default_rng(0)
    cases = [(int(rng.integers(1, 400)), 0) for _ in range(300)]
    cases = [(n, n + int(rng.integers(0, 5000))) for n, _ in cases] + [(300, 599), (32, 60), (300, 300), (1, 1)]
    for n, num in cases:
        idx = uniform_indices(num, n)
        assert idx[0] * n < num, (num, n)  # in the first n-th
        assert (idx[-1] + 1) * n > num * (n - 1), (num, n)  # in the last n-th
        assert idx.min() >= 0 and idx.max() < num
        if n > 1:
            gaps = np.diff(idx)
            assert gaps.min() >= 1 and gaps.max() <= num / n + 1, (num, n)
        assert count_indices("uniform", num, n).tolist() == idx.tolist()
    for num in range(1, 40):
        n = num + int(rng.integers(1, 50))
        assert uniform_indices(num, n).tolist() == [i % num for i in range(n)]
    # VideoTag's rule never looks past frame n * (N // n): a 599-frame video at 300 stops at frame 299
    assert segment_indices(599, 300).max() == 299 and uniform_indices(599, 300).max() >= 597
