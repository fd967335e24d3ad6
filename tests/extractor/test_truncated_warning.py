"""Issue 11 item 9: a file cut to a third of its size, index at the front, is tagged with a warning that says so.

Such a file opens (the index is whole) and reads to its end without a demuxer error: only the count of frames
decoded against the count the header promised shows the damage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from videogen import make_video

from extractor.decode import SampledDecoder

REPO = Path(__file__).resolve().parents[2]


def truncated_clip(tmp_path: Path, frames: int = 300) -> Path:
    path = make_video(tmp_path / "cut.mp4", frames=frames, faststart=True)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 3)
    return path


def test_decoder_warns_of_frames_missing_against_the_header(tmp_path: Path) -> None:
    path = truncated_clip(tmp_path)
    dec = SampledDecoder(str(path), num_frames=16)
    out = list(dec)
    n = dec.info.decoded_frames
    assert out and 0 < n < 300
    assert f"decoded {n} of 300 frames the header promised: the file looks truncated" in dec.info.warnings


def test_whole_faststart_file_has_no_warning(tmp_path: Path) -> None:
    path = make_video(tmp_path / "whole.mp4", frames=60, faststart=True)
    dec = SampledDecoder(str(path), num_frames=16)
    list(dec)
    assert dec.info.decoded_frames == 60 and dec.info.warnings == []


def test_tag_reports_the_warning_in_results_jsonl_and_on_the_terminal(tmp_path: Path, default_weights) -> None:
    path = truncated_clip(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "videotag", "tag", str(path), "--frames", "16", "--topk", "3", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["ok"] and row["tags"]
    assert any("the file looks truncated" in w for w in row["warnings"]), row
    assert "warning:" in p.stdout + p.stderr and "looks truncated" in p.stdout + p.stderr
    # VideoTag-format JSON keeps its exact shape: [source, {class_name, probability, class_id}, ...]
    (vt,) = [f for f in out.glob("*.json")]
    data = json.loads(vt.read_text())
    assert data[0] == str(path) and all(set(d) == {"class_name", "probability", "class_id"} for d in data[1:])


@pytest.mark.parametrize("field", ["warnings"])
def test_result_schema_has_warnings(field: str) -> None:
    from videotag.core.results import VideoResult

    r = VideoResult(video_id="x", source="s", ok=True)
    assert r.to_dict()[field] == [] and r.videotag_format() == ["s"]
