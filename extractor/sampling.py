"""Uniform frame sampling rules: pure functions of frame counts / timestamps (no decoding here).

- `uniform_indices`: the default for our own models: the centre of each of n equal spans of the decoded frames, so
  the samples cover the whole video (first and last n-th included); short videos repeat cyclically.
- `segment_indices`: VideoTag's index rule (kept bit-exact for its imported model): spans of `N // n` frames, so
  it never looks past frame `n * (N // n)` (a 599-frame video sampled at 300 is seen up to frame 299).
- `timestamp_targets` + `frames_at_times`: uniform in *time*, for variable-frame-rate video: the centre of each of
  n equal time segments, mapped to the frame on screen at that instant.
"""

from __future__ import annotations

import numpy as np

POLICIES = ("uniform", "segment", "timestamp")
COUNT_POLICIES = ("uniform", "segment")  # rules that need only the decoded frame count
DEFAULT_POLICY = "uniform"


def _check_counts(num_frames: int, n: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


def uniform_indices(num_frames: int, n: int) -> np.ndarray:
    """[n] int64 frame indices: slot i takes frame floor((i + 0.5) * N / n), the centre of the i-th of n equal spans.

    Covers the whole video for any N >= n (slot 0 lies in the first n-th, slot n-1 in the last); for N < n slot i
    takes frame i % N (short videos repeat cyclically, as VideoTag's rule does).
    """
    _check_counts(num_frames, n)
    i = np.arange(n, dtype=np.int64)
    if num_frames < n:
        return i % num_frames
    return ((2 * i + 1) * num_frames) // (2 * n)


def count_indices(policy: str, num_frames: int, n: int) -> np.ndarray:
    """[n] int64 indices of a count-based rule ("uniform" or "segment")."""
    if policy == "uniform":
        return uniform_indices(num_frames, n)
    if policy == "segment":
        return segment_indices(num_frames, n)
    raise ValueError(f"{policy!r} is not a frame-count sampling rule; choose from {COUNT_POLICIES}")


def segment_indices(num_frames: int, n: int) -> np.ndarray:
    """VideoTag's rule: [n] int64 frame indices into `num_frames` decoded frames.

    avg = N // n; if avg >= 1 slot i takes frame (avg - 1) // 2 + i * avg (centre-ish of each run of avg frames,
    tail frames beyond n * avg are never used); otherwise (N < n) slot i takes frame i % N.
    """
    _check_counts(num_frames, n)
    i = np.arange(n, dtype=np.int64)
    avg = num_frames // n
    if avg >= 1:
        return (avg - 1) // 2 + i * avg
    return i % num_frames


def timestamp_targets(start: float, duration: float, n: int) -> np.ndarray:
    """[n] float64 times (s): the centres of n equal segments of [start, start + duration)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not duration >= 0:  # also rejects NaN
        raise ValueError(f"duration must be >= 0, got {duration}")
    return start + (np.arange(n, dtype=np.float64) + 0.5) * (duration / n)


def frames_at_times(pts_seconds_sorted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[len(targets)] int64: for each target time, the index of the frame on screen then.

    That is the last frame whose pts <= t; the first frame for targets before it. `pts_seconds_sorted` [N] must
    be non-decreasing (presentation order); equal pts resolve to the last of them.
    """
    pts = np.asarray(pts_seconds_sorted, dtype=np.float64)
    if pts.ndim != 1 or pts.size == 0:
        raise ValueError("need a non-empty 1-D array of frame timestamps")
    if np.any(np.diff(pts) < 0):
        raise ValueError("frame timestamps must be sorted (non-decreasing)")
    idx = np.searchsorted(pts, np.asarray(targets, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, None).astype(np.int64)


def timestamp_indices(pts_seconds_sorted: np.ndarray, duration: float, n: int) -> np.ndarray:
    """[n] int64: uniform-in-time sampling of frames with these pts; duration = last pts + its length - first."""
    pts = np.asarray(pts_seconds_sorted, dtype=np.float64)
    if pts.size == 0:
        raise ValueError("need at least one frame timestamp")
    return frames_at_times(pts, timestamp_targets(float(pts[0]), duration, n))
