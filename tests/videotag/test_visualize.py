"""`videotag tag --visualize DIR [--visualize-video]` and videotag/visualize.py, checked by decoding what they wrote."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import videogen
from PIL import Image

from extractor.sampling import uniform_indices
from videotag import visualize
from videotag.core.errors import VideotagError
from videotag.core.results import Tag, VideoResult

REPO = Path(__file__).resolve().parents[2]
ZH = ["篮球", "扣篮", "体育场", "运动鞋"]


def videotag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videotag", *args], capture_output=True, text=True, cwd=REPO)


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-d mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def sheet_frames(png: Path) -> list[int]:
    """Frame numbers shown by the contact sheet's thumbnails, row by row: each generated frame has a red marker
    cell (a quarter of its width and height) at its top-left, so the red runs locate the thumbnails."""
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)
    found = []
    for y0, y1 in runs(red.any(1)):
        for x0, x1 in runs(red[y0:y1].any(0)):
            thumb = img[y0 : y0 + 4 * (y1 - y0), x0 : x0 + 4 * (x1 - x0)].astype(np.uint8)
            found.append(videogen.frame_index(thumb, rotation=0))
    return found


def result_for(path: Path, names: list[str], probs: list[float] | None = None) -> VideoResult:
    probs = probs or [0.9, 0.5, 0.25, 0.1][: len(names)]
    tags = [Tag(class_id=i + 3, class_name=n, probability=p) for i, (n, p) in enumerate(zip(names, probs, strict=True))]
    return VideoResult(video_id="0123456789abcdef" * 2, source=str(path), ok=True, model="test", tags=tags)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return videogen.make_video(tmp_path_factory.mktemp("vis") / "clip.mp4", frames=40, size=(160, 120))


@pytest.fixture(scope="module")
def tagged(clip, tmp_path_factory, default_weights) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(pictures dir, results dir, process) of one `videotag tag --visualize --visualize-video` run."""
    root = tmp_path_factory.mktemp("tagged")
    pics, out = root / "pics", root / "out"
    p = videotag("tag", str(clip), "--visualize", str(pics), "--visualize-video", "--frames", "8", "--out", str(out))
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return pics, out, p


def test_cli_writes_the_pictures(tagged):
    pics, out, p = tagged
    assert sorted(x.name for x in pics.iterdir()) == ["clip.mp4.png", "clip.mp4.tagged.mp4"]  # no temp files left
    assert "pictures in" in p.stderr and "1 ok, 0 failed" in p.stderr.replace("\n", " ")
    assert (out / "clip.mp4.json").is_file()  # --out is unchanged


def test_contact_sheet_shows_the_sampled_frames(tagged):
    png = tagged[0] / "clip.mp4.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        w, h = im.size
    assert 4 * 160 <= w <= 1400 and 400 <= h <= 1400, (w, h)
    # the sheet's own 12 frames (not --frames), spread evenly over the video by the uniform rule, in order
    assert sheet_frames(png) == uniform_indices(40, 12).tolist() == [1, 5, 8, 11, 15, 18, 21, 25, 28, 31, 35, 38]


def test_tagged_video_is_the_source_plus_an_overlay(tagged, clip):
    src, out = decode_rgb(clip), decode_rgb(tagged[0] / "clip.mp4.tagged.mp4")
    assert len(out) == len(src) == 40
    assert out[0].shape == src[0].shape == (120, 160, 3)
    with av.open(str(tagged[0] / "clip.mp4.tagged.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264" and not c.streams.audio
        assert float(c.streams.video[0].average_rate) == pytest.approx(25, rel=0.01)
    diffs = [np.abs(a.astype(int) - b.astype(int)).max(2) for a, b in zip(out, src, strict=True)]
    changed = np.any([d > 40 for d in diffs], axis=0)
    ys, xs = np.nonzero(changed)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    assert y0 < 10 and x0 < 10 and 20 < y1 < 120 * 0.6 and 40 < x1 <= 160, (y0, y1, x0, x1)  # a top-left box
    outside = ~np.zeros((120, 160), bool)
    outside[y0:y1, x0:x1] = False
    for k, (a, b, d) in enumerate(zip(out, src, diffs, strict=True)):
        assert d[outside].mean() < 3, k  # elsewhere frame k is the source's frame k (re-encoding noise only)
        box_a, box_b = a[y0:y1, x0:x1].astype(int).sum(2), b[y0:y1, x0:x1].astype(int).sum(2)
        lit = box_b > 250  # the red marker and any white cells under the box
        assert np.mean(box_a[lit] < box_b[lit] - 80) > 0.5  # a dark, semi-transparent box ...
        assert np.sum((box_a > 400) & (box_b < 150)) > 20  # ... with light text where the picture was dark


def test_visualize_video_needs_visualize(clip):
    p = videotag("tag", str(clip), "--visualize-video")
    assert p.returncode == 2 and "--visualize-video needs --visualize" in p.stderr


def test_picture_failure_is_a_warning_not_a_failed_video(clip, tmp_path, default_weights):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    p = videotag("tag", str(clip), "--visualize", str(blocker), "--frames", "4", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[0])["ok"] is True
    assert "warning:" in p.stderr and "no pictures for" in p.stderr


def test_chinese_names_render(clip, tmp_path):
    res = result_for(clip, ZH)
    png = visualize.contact_sheet(clip, res, tmp_path / "zh.png", frames=4)
    mp4 = visualize.tagged_video(clip, res, tmp_path / "zh.mp4")
    assert Image.open(png).size[0] >= 640 and len(decode_rgb(mp4)) == 40
    if any(visualize._charset(regular) >= {ord(c) for c in "".join(ZH)} for regular, _ in visualize._font_files()):
        text, font = visualize._fit_text(ZH[0], 14, class_id=3)
        assert text == ZH[0] and font is not None  # a CJK font was found: names drawn as they are


def test_without_a_cjk_font_names_fall_back_to_id_and_a_warning(clip, tmp_path, monkeypatch, caplog):
    latin = [f for f in visualize._font_files() if "DejaVu" in f[0].path][:1]
    monkeypatch.setattr(visualize, "_font_files", lambda: tuple(latin))
    monkeypatch.setattr(visualize, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="videotag.visualize"):
        assert visualize._fit_text(ZH[0], 14, class_id=3)[0] == f"#3 {ZH[0]}"
        png = visualize.contact_sheet(clip, result_for(clip, ZH), tmp_path / "zh.png", frames=2)
    assert Image.open(png).size[0] >= 640
    assert "no font here has glyphs" in caplog.text


def test_visualize_result_names_and_errors(clip, tmp_path):
    res = result_for(clip, ["alpha", "beta"])
    used: set[str] = set()
    first = visualize.visualize_result(res, tmp_path, used=used)
    second = visualize.visualize_result(res, tmp_path, video=True, used=used)  # same name: disambiguated by id
    assert [p.name for p in first] == ["clip.mp4.png"]
    assert [p.name for p in second] == ["clip.mp4.01234567.png", "clip.mp4.01234567.tagged.mp4"]
    failed = VideoResult(video_id="", source=str(clip), ok=False, error={"code": "missing", "reason": "x"})
    assert visualize.visualize_result(failed, tmp_path) == []
    with pytest.raises(VideotagError, match="not a local video file"):
        visualize.visualize_result(result_for(tmp_path / "gone.mp4", ["a"]), tmp_path)
    not_video = tmp_path / "x.mp4"
    not_video.write_bytes(b"hello, not a video" * 10)
    with pytest.raises(VideotagError, match="cannot draw the contact sheet"):
        visualize.contact_sheet(not_video, res, tmp_path / "bad.png")
    with pytest.raises(VideotagError, match="cannot write the tagged video"):
        visualize.tagged_video(not_video, res, tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_tagged_video_keeps_rotation_and_frame_times(sample_videos, tmp_path):
    for name, size in (("rot90.mp4", (160, 120)), ("vfr.mp4", (120, 160))):
        src = sample_videos[name]
        out = visualize.tagged_video(src, result_for(src, ["a", "b", "c"]), tmp_path / f"{name}.tagged.mp4")
        with av.open(str(src)) as a, av.open(str(out)) as b:
            ta = [f.time for f in a.decode(video=0)]
            fb = list(b.decode(video=0))
        assert len(fb) == len(ta)
        assert (fb[0].height, fb[0].width) == size  # rotation applied to the pixels: displayed as the source is
        assert np.allclose([f.time for f in fb], np.asarray(ta) - ta[0], atol=1e-3)
        if name == "rot90.mp4":  # turned clockwise, the stored bottom-right (blue) marker shows bottom-left
            blue = fb[3].to_ndarray(format="rgb24")[-30:, :20].reshape(-1, 3).mean(0)
            assert blue[2] > 150 and blue[0] < 100, blue
