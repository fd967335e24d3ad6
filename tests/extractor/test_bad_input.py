"""Every kind of bad input gets its VideoError code and a specific reason (what, where, why); no tracebacks.

All inputs are real files made on the spot (tests/videogen.py); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import videogen
from videogen import frame_index, make_video

from extractor.decode import SampledDecoder, probe
from videotag.core.errors import VideoError


def error_of(path: Path | str) -> VideoError:
    """The VideoError raised for `path` by both probe() and SampledDecoder (constructor or iteration)."""
    with pytest.raises(VideoError) as probed:
        probe(str(path))
    with pytest.raises(VideoError) as decoded:
        list(SampledDecoder(str(path), num_frames=8))
    assert (probed.value.code, probed.value.reason) == (decoded.value.code, decoded.value.reason)
    err = probed.value
    assert err.code in VideoError.CODES and err.source == str(path)
    assert err.to_dict() == {"source": str(path), "code": err.code, "reason": err.reason}
    return err


def test_missing(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.mp4")
    assert err.code == "missing" and str(tmp_path / "nope.mp4") in err.reason
    err = error_of(tmp_path / "not_a_dir.txt" / "clip.mp4")  # a parent that does not exist either
    assert err.code == "missing"


def test_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    err = error_of(tmp_path / "empty.mp4")
    assert err.code == "empty" and "0 bytes" in err.reason


def test_not_a_video(tmp_path: Path) -> None:
    path = videogen.make_not_a_video(tmp_path / "notes.mp4")
    err = error_of(path)
    assert err.code == "not_a_video"
    assert "no media container" in err.reason and f"{path.stat().st_size}-byte" in err.reason
    assert "This is a plain" in err.reason  # shows what the file starts with


def test_still_image_named_like_a_video(tmp_path: Path) -> None:
    path = tmp_path / "picture.mp4"
    ok, png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    path.write_bytes(png.tobytes())
    err = error_of(path)
    assert err.code == "not_a_video" and "still image" in err.reason and "png" in err.reason


def test_audio_only(tmp_path: Path) -> None:
    err = error_of(videogen.make_audio_only(tmp_path / "song.mp4"))
    assert err.code == "audio_only" and "aac" in err.reason and "no video stream" in err.reason


def test_container_without_frames(tmp_path: Path) -> None:
    err = error_of(videogen.make_no_frames(tmp_path / "hollow.avi"))
    assert err.code == "no_frames" and "mpeg4" in err.reason and "no packets" in err.reason


def test_zero_decodable_frames(tmp_path: Path) -> None:
    err = error_of(videogen.make_corrupt_frames(tmp_path / "garbage.mkv", frames=10))
    assert err.code == "no_frames"
    assert "none of the 10 packets" in err.reason and "mpeg4" in err.reason and "Invalid data" in err.reason


def test_unsupported_codec(tmp_path: Path) -> None:
    err = error_of(videogen.make_unknown_codec(tmp_path / "alien.avi"))
    assert err.code == "unsupported_codec" and "avi" in err.reason and "libavcodec" in err.reason


def test_truncated_mp4_without_index(tmp_path: Path) -> None:
    # FFmpeg writes the mp4 index (moov) last: half a file has frames but no index -> cannot be read at all
    path = videogen.make_truncated(tmp_path / "half.mp4", fraction=0.5)
    err = error_of(path)
    assert err.code == "truncated" and "MP4" in err.reason and f"{path.stat().st_size}-byte" in err.reason


def test_truncated_to_header_only(tmp_path: Path) -> None:
    full = make_video(tmp_path / "full.mkv", frames=20)
    err = error_of(videogen.make_truncated(tmp_path / "stub.mkv", nbytes=200, source=full))
    assert err.code == "truncated" and "Matroska" in err.reason and "200-byte" in err.reason


@pytest.mark.parametrize(
    ("name", "kw"), [("cut.mkv", {}), ("cut.webm", {}), ("cut_faststart.mp4", {"faststart": True})]
)
def test_truncated_file_whose_first_part_decodes_is_used_with_a_warning(tmp_path: Path, name: str, kw: dict) -> None:
    """Policy: frames decoded before the cut are used; info.warnings says the file is truncated."""
    path = videogen.make_truncated(tmp_path / name, fraction=0.5, frames=40, **kw)
    dec = SampledDecoder(str(path), num_frames=10)
    out = dict(iter(dec))
    n = dec.info.decoded_frames
    assert 0 < n < 40
    assert set(dec.plan.indices.tolist()) <= set(out)
    for k in dec.plan.indices.tolist():
        if k < n - 1:  # the last frame before the cut may be half there
            assert frame_index(out[k], 0) == k
    assert any("truncated" in w for w in dec.info.warnings), dec.info.warnings


def test_some_corrupt_packets_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = videogen.make_corrupt_frames(tmp_path / "scratched.mkv", frames=40, corrupt={10, 11, 12})
    dec = SampledDecoder(str(path), num_frames=40)
    out = dict(iter(dec))
    assert 37 <= dec.info.decoded_frames < 40
    assert [frame_index(out[k], 0) for k in range(10)] == list(range(10))
    assert any("failed to decode" in w and "Invalid data" in w for w in dec.info.warnings), dec.info.warnings


def test_directory_named_like_a_video_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "folder.mp4").mkdir()
    err = error_of(tmp_path / "folder.mp4")
    assert err.code == "unreadable" and "directory" in err.reason


def test_permission_denied_is_unreadable(tmp_path: Path) -> None:
    """A real EACCES: root ignores mode 000, so as root the check runs in a forked child that drops to uid
    65534 (nobody) before opening. Without root, the mode alone denies access."""
    folder = Path(tempfile.mkdtemp(prefix="videotag-perm-"))
    try:
        folder.chmod(0o711)  # others may traverse (not list) the folder
        path = make_video(folder / "locked.mp4", frames=5)
        path.chmod(0)
        result = _probe_as_unprivileged(str(path)) if os.geteuid() == 0 else _probe_here(str(path))
    finally:
        shutil.rmtree(folder)
    assert result["code"] == "unreadable", result
    assert "permission denied" in result["reason"] and "----------" in result["reason"]


def _probe_here(path: str) -> dict:
    try:
        probe(path)
    except VideoError as e:
        return e.to_dict()
    return {"code": None, "reason": "probe succeeded"}


def _probe_as_unprivileged(path: str) -> dict:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork to drop privileges")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, probe, report as JSON, exit without running pytest's teardown
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = _probe_here(path)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
            result = {"code": "child-error", "reason": repr(e)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)
