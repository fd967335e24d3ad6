"""Decoding + sampling (extractor/decode.py) on generated clips of every container/codec, and on the real clips.

Generated frame k shows k as a block pattern (tests/videogen.py), so each test checks WHICH frame came out.
"""

from __future__ import annotations

import os
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import videogen
from videogen import display_rotation, frame_index, make_video, render_frame, vfr_times

from extractor.decode import SampledDecoder, probe
from extractor.preprocess import Preprocess
from extractor.sampling import segment_indices, timestamp_indices

# clip name in conftest.SAMPLE_SPECS -> (FFmpeg decoder name, a word of FFmpeg's demuxer name)
CLIPS = {
    "h264.mp4": ("h264", "mp4"),
    "h264.mov": ("h264", "mov"),
    "h264.mkv": ("h264", "matroska"),
    "hevc.mp4": ("hevc", "mp4"),
    "hevc.mkv": ("hevc", "matroska"),
    "vp8.webm": ("vp8", "webm"),
    "vp9.webm": ("vp9", "webm"),
    "mpeg4.avi": ("mpeg4", "avi"),
    "h264_audio.mp4": ("h264", "mp4"),
}


def decode_all(dec: SampledDecoder) -> dict[int, np.ndarray]:
    """Run the decoder; assert each index comes once; return {frame index: output}."""
    out: dict[int, np.ndarray] = {}
    for k, img in dec:
        assert k not in out, f"frame {k} yielded twice"
        out[k] = img
    assert dec.plan is not None
    return out


@pytest.mark.parametrize("name", list(CLIPS))
def test_every_container_and_codec_samples_the_right_frames(name: str, sample_videos: dict[str, Path]) -> None:
    if name not in sample_videos:
        pytest.skip(f"{name}: encoder not in this FFmpeg build")
    codec, container = CLIPS[name]
    dec = SampledDecoder(str(sample_videos[name]), num_frames=10)
    assert dec.info.codec == codec and container in dec.info.container
    assert (dec.info.width, dec.info.height, dec.info.rotation) == (160, 120, 0)
    out = decode_all(dec)
    info, plan = dec.info, dec.plan
    assert info.decoded_frames == 40
    assert abs(info.duration - 1.6) < 1e-6 and abs(info.fps - 25) < 1e-6
    assert plan.policy == "segment" and plan.indices.tolist() == segment_indices(40, 10).tolist()
    assert np.allclose(plan.timestamps, plan.indices / 25.0)
    assert sorted(out) == plan.indices.tolist() and dec.passes == 1, "estimate was right: one pass, no extras"
    for k, img in out.items():
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
        assert frame_index(img, rotation=0) == k
    assert info.warnings == []


def test_header_frame_count_absent_is_counted(sample_videos: dict[str, Path]) -> None:
    for name in ("h264.mkv", "vp9.webm"):
        info = probe(str(sample_videos[name]))
        assert info.header_frames == 0, "mkv/webm carry no frame count"
        dec = SampledDecoder(str(sample_videos[name]), num_frames=300)
        out = decode_all(dec)
        assert dec.info.decoded_frames == 40 and dec.passes == 1
        assert sorted(out) == list(range(40))
        assert dec.plan.indices.tolist() == [i % 40 for i in range(300)]  # cyclic repeat, n > N


@pytest.mark.parametrize("claimed", [400, 20])
def test_wrong_header_frame_count_is_corrected_by_decoding(tmp_path: Path, claimed: int) -> None:
    path = videogen.set_avi_frame_count(make_video(tmp_path / "lying.avi", frames=40), claimed)
    dec = SampledDecoder(str(path), num_frames=10)
    assert dec.info.header_frames == claimed
    out = decode_all(dec)
    assert dec.info.decoded_frames == 40 and dec.passes == 2
    assert dec.plan.indices.tolist() == segment_indices(40, 10).tolist()
    assert set(dec.plan.indices.tolist()) <= set(out)
    for k, img in out.items():
        assert frame_index(img, rotation=0) == k
    said = (
        f"decoded 40 of {claimed} frames the header promised: the file looks truncated"
        if claimed > 40
        else f"header claims {claimed} frames, decoding found 40"
    )
    assert said in dec.info.warnings, dec.info.warnings
    assert any("estimate" in w and "decoding again" in w for w in dec.info.warnings)
    first_warnings = list(dec.info.warnings)
    again = decode_all(dec)  # iterating again gives the same, and does not pile up warnings
    assert sorted(again) == sorted(out) and dec.info.warnings == first_warnings


def test_frames_stream_out_while_decoding(tmp_path: Path) -> None:
    """The first sampled frame arrives before the others are converted (the consumer's CNN can start)."""
    path = make_video(tmp_path / "stream.mp4", frames=200, size=(96, 64))
    calls: list[int] = []

    def transform(rgb: np.ndarray) -> np.ndarray:
        calls.append(frame_index(rgb, 0))
        return rgb

    dec = SampledDecoder(str(path), num_frames=10, transform=transform)
    it = iter(dec)
    k, img = next(it)
    assert (k, calls) == (9, [9]) and dec.plan is None, "converted one frame, plan not final yet"
    rest = list(it)
    assert [k for k, _ in rest] == list(range(29, 200, 20)) and len(calls) == 10
    assert dec.plan is not None and dec.info.decoded_frames == 200


def test_n_equal_to_frame_count_takes_every_frame(sample_videos: dict[str, Path]) -> None:
    dec = SampledDecoder(str(sample_videos["h264.mp4"]), num_frames=40)
    out = decode_all(dec)
    assert dec.plan.indices.tolist() == list(range(40)) == sorted(out)


def test_short_video_repeats_cyclically(sample_videos: dict[str, Path]) -> None:
    dec = SampledDecoder(str(sample_videos["short.mp4"]), num_frames=300)
    out = decode_all(dec)
    assert dec.info.decoded_frames == 7 and sorted(out) == list(range(7))
    assert dec.plan.indices.tolist() == [i % 7 for i in range(300)]
    assert [frame_index(out[k], 0) for k in dec.plan.indices[:9]] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


@pytest.mark.parametrize(
    ("suffix", "rotation"), [(".mp4", 90), (".mp4", 180), (".mp4", 270), (".mov", 90), (".webm", 90)]
)
def test_rotation_metadata_is_honoured(tmp_path: Path, suffix: str, rotation: int) -> None:
    path = make_video(tmp_path / f"rot{rotation}{suffix}", frames=12, rotation=rotation)
    dec = SampledDecoder(str(path), num_frames=4)
    portrait = rotation in (90, 270)
    assert dec.info.rotation == rotation
    assert (dec.info.width, dec.info.height) == ((120, 160) if portrait else (160, 120))
    out = decode_all(dec)
    for k, img in out.items():
        assert img.shape == ((160, 120, 3) if portrait else (120, 160, 3))
        assert display_rotation(img) == rotation, "frame not in display orientation"
        assert frame_index(img, rotation) == k
        # and it is the stored picture turned clockwise, not mirrored
        expected = np.rot90(render_frame(k), k=-(rotation // 90))
        assert np.abs(img.astype(int) - expected).mean() < 6


def test_legacy_rotate_tag_in_mkv_is_honoured(tmp_path: Path) -> None:
    path = make_video(tmp_path / "tagged.mkv", frames=6, rotate_tag=90)
    dec = SampledDecoder(str(path), num_frames=3)
    assert dec.info.rotation == 90 and (dec.info.width, dec.info.height) == (120, 160)
    for k, img in decode_all(dec).items():
        assert display_rotation(img) == 90 and frame_index(img, 90) == k


def test_preprocess_resize_in_decoder_matches_preprocess_on_full_frame(sample_videos: dict[str, Path]) -> None:
    pre = Preprocess()  # resize short side to 256 (swscale here), centre crop 224
    fused = decode_all(SampledDecoder(str(sample_videos["h264.mp4"]), num_frames=5, transform=pre))
    full = decode_all(SampledDecoder(str(sample_videos["h264.mp4"]), num_frames=5))
    assert sorted(fused) == sorted(full)
    for k in fused:
        assert fused[k].shape == (224, 224, 3) and fused[k].dtype == np.uint8
        reference = pre(full[k])  # cv2 resize of the full RGB frame
        assert np.abs(fused[k].astype(int) - reference).mean() < 2.0


def test_preprocess_on_rotated_video_resizes_display_size(tmp_path: Path) -> None:
    # 320x180 stored, shown portrait 180x320: the short side (180 -> 256) is the display width
    path = make_video(tmp_path / "wide_rot.mp4", frames=8, size=(320, 180), rotation=90)
    seen: list[tuple[int, int]] = []

    class Spy(Preprocess):
        def __call__(self, rgb: np.ndarray) -> np.ndarray:
            seen.append(rgb.shape[:2])
            return super().__call__(rgb)

    pre = Spy()
    out = decode_all(SampledDecoder(str(path), num_frames=4, transform=pre))
    assert seen and all(s == (455, 256) for s in seen), seen  # (h, w): already scaled, portrait
    full = decode_all(SampledDecoder(str(path), num_frames=4))
    for k in out:
        assert np.abs(out[k].astype(int) - Preprocess()(full[k])).mean() < 2.0


def test_plain_callable_and_videotag_preset_get_full_display_frames(sample_videos: dict[str, Path]) -> None:
    shapes: list[tuple[int, ...]] = []

    def spy(rgb: np.ndarray) -> np.ndarray:
        shapes.append(rgb.shape)
        return rgb[:2, :2].copy()

    out = decode_all(SampledDecoder(str(sample_videos["rot90.mp4"]), num_frames=3, transform=spy))
    assert shapes == [(160, 120, 3)] * 3 and all(v.shape == (2, 2, 3) for v in out.values())
    vt = decode_all(SampledDecoder(str(sample_videos["h264.mp4"]), num_frames=3, transform=Preprocess("videotag")))
    assert all(v.shape == (224, 224, 3) for v in vt.values())


def test_vfr_timestamp_policy_samples_uniformly_in_time(sample_videos: dict[str, Path]) -> None:
    path = str(sample_videos["vfr.mp4"])  # 60 frames: 30 at 12.5 fps, then 30 at 50 fps
    times = vfr_times(60, 25)
    dec = SampledDecoder(path, num_frames=12, policy="timestamp")
    out = decode_all(dec)
    assert dec.info.decoded_frames == 60 and dec.passes == 1
    # last pts 2.98 s + the last frame's duration as the muxer stored it (20 ms, or 40 ms = 1/encoder rate)
    duration = dec.info.duration
    assert 3.0 - 1e-6 <= duration <= 3.02 + 1e-6
    expected = timestamp_indices(times, duration, 12)
    assert dec.plan.policy == "timestamp" and dec.plan.indices.tolist() == expected.tolist()
    assert np.allclose(dec.plan.timestamps, times[expected])
    for k, img in out.items():
        assert frame_index(img, 0) == k
    # uniform in time: the slow first half (2.4 s of 3 s) gets ~80% of the slots
    assert np.sum(dec.plan.indices < 30) == 10
    seg = SampledDecoder(path, num_frames=12, policy="segment")
    decode_all(seg)
    assert np.sum(seg.plan.indices < 30) == 6, "index rule: half the slots in the short fast half"
    assert np.allclose(seg.plan.timestamps, times[seg.plan.indices])


def test_timestamp_policy_on_mkv_with_no_count(sample_videos: dict[str, Path]) -> None:
    dec = SampledDecoder(str(sample_videos["h264.mkv"]), num_frames=8, policy="timestamp")
    out = decode_all(dec)
    assert dec.passes == 1 and sorted(out) == dec.plan.indices.tolist()
    # constant 25 fps, 1.6 s: targets at 0.1 + 0.2 i s -> frames 2, 7, 12, ...
    assert dec.plan.indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]


def _rss() -> int:
    """Resident set size of this process, bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc for RSS")
def test_memory_does_not_grow_with_video_length(tmp_path: Path) -> None:
    """A 20x longer video must not need more memory: only sampled frames are converted, none are kept.

    Measured two ways: RSS (sees FFmpeg's frame buffers too) sampled at every yielded frame, and tracemalloc
    (Python/numpy allocations). Holding every decoded frame of the long clip would add ~74 MB (37 KB RGB each).
    """
    short = make_video(tmp_path / "short.mp4", frames=100, size=(128, 96), gop=50)
    long = make_video(tmp_path / "long.mp4", frames=2000, size=(128, 96), gop=50)

    def growth(path: Path) -> tuple[int, int]:
        tracemalloc.start()
        base = peak = _rss()
        dec = SampledDecoder(str(path), num_frames=20)
        for _, img in dec:  # the consumer takes each frame and lets it go
            assert img.shape == (96, 128, 3)
            peak = max(peak, _rss())
        peak = max(peak, _rss())
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert dec.info.decoded_frames == (2000 if path == long else 100)
        return peak - base, traced

    growth(short)  # warm-up: codec, thread pools, allocator arenas
    short_rss, short_traced = growth(short)
    long_rss, long_traced = growth(long)
    assert long_rss - short_rss < 16 * 2**20, (short_rss, long_rss)
    # Python-side: the 8-byte pts per decoded frame is all that may grow (+ slack)
    assert long_traced - short_traced < 1900 * 8 + 64 * 1024, (short_traced, long_traced)


# ---------------------------------------------------------------------------------------------- real clips

README_ROW = re.compile(r"^\| (\S+\.(?:mp4|mkv|webm|avi)) \|[^|]*\| (\d+)x(\d+)[^|]*\|[^|]*\| (~?)(\d+) \|")


def shared_table(shared: Path) -> list[tuple[str, int, int, int, bool]]:
    """(file, stored width, height, frames, approximate?) rows of ../shared/videos/README.md."""
    rows = []
    for line in (shared / "README.md").read_text().splitlines():
        m = README_ROW.match(line)
        if m:
            rows.append((m[1], int(m[2]), int(m[3]), int(m[5]), m[4] == "~"))
    return rows


@pytest.mark.shared_videos
def test_real_clips_decode_with_readme_frame_counts(shared_videos: Path) -> None:
    rows = shared_table(shared_videos)
    assert len(rows) >= 10, "README table not parsed"
    pre = Preprocess()
    for name, w, h, frames, approx in rows:
        dec = SampledDecoder(str(shared_videos / name), num_frames=300, transform=pre)
        out = decode_all(dec)
        n = dec.info.decoded_frames
        assert abs(n - frames) <= (2 if approx else 0), (name, n, frames)
        assert len(out) == min(300, n) and dec.passes == 1, name
        assert dec.plan.indices.tolist() == segment_indices(n, 300).tolist()
        assert all(v.shape == (224, 224, 3) for v in out.values())
        stored = (
            (dec.info.height, dec.info.width) if dec.info.rotation in (90, 270) else (dec.info.width, dec.info.height)
        )
        assert stored == (w, h), name
        assert not [x for x in dec.info.warnings if "failed" in x or "truncated" in x], (name, dec.info.warnings)


@pytest.mark.shared_videos
def test_real_rotated_clip_comes_out_portrait(shared_videos: Path) -> None:
    rotated = SampledDecoder(str(shared_videos / "derived_demo_rotate90.mp4"), num_frames=5)
    assert (rotated.info.width, rotated.info.height) == (256, 340)
    rot = decode_all(rotated)
    plain = decode_all(SampledDecoder(str(shared_videos / "mmaction2_demo_demo.mp4"), num_frames=5))
    assert sorted(rot) == sorted(plain)
    for k in rot:
        assert rot[k].shape == (340, 256, 3)
        # same bitstream, only the display matrix differs: the picture turned by the metadata's angle.
        # FFmpeg reads it as 90 degrees counter-clockwise, i.e. 270 clockwise (what ffmpeg's autorotate shows).
        assert np.array_equal(rot[k], np.rot90(plain[k], k=rotated.info.rotation // -90))
    assert rotated.info.rotation == 270


@pytest.mark.shared_videos
def test_real_vfr_clip_timestamp_policy(shared_videos: Path) -> None:
    dec = SampledDecoder(str(shared_videos / "mmaction2_demo_demo_skeleton.mp4"), num_frames=300, policy="timestamp")
    out = decode_all(dec)
    assert dec.info.decoded_frames == 72 and dec.passes == 1
    assert set(out) == set(dec.plan.indices.tolist())
    ts = dec.plan.timestamps
    assert np.all(np.diff(ts) >= 0) and ts[0] == 0.0 and ts[-1] <= dec.info.duration
    # uniform in time: slot i shows the frame on screen at the centre of the i-th 1/300 of the clip
    centres = (np.arange(300) + 0.5) * dec.info.duration / 300
    assert np.all(ts <= centres + 1e-9) and np.all(centres - ts < 0.2)
