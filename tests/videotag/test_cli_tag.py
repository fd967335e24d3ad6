"""`videotag tag / extract / predict` end to end, as a user runs them (real subprocesses, real videos)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import videogen

from videotag.core.feature_store import FeatureStore

REPO = Path(__file__).resolve().parents[2]


def videotag(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "videotag", *args], capture_output=True, text=True, cwd=REPO)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_videotag_json(path: Path, source: str, k: int) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data[0] == source and len(data) == k + 1
    probs = [d["probability"] for d in data[1:]]
    assert probs == sorted(probs, reverse=True)
    for d in data[1:]:
        assert set(d) == {"class_name", "probability", "class_id"} and 0 <= d["class_id"] < 1000


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, sample_videos) -> Path:
    d = tmp_path_factory.mktemp("clips")
    names = ["h264.mp4", "h264.mkv", "vp9.webm", "vp8.webm", "mpeg4.avi", "h264.mov", "rot90.mp4", "vfr.mp4"]
    names.append("short.mp4")
    for n in names:
        if n in sample_videos:
            sub = d / ("nested" if n.startswith("v") else "")
            sub.mkdir(exist_ok=True)
            shutil.copy(sample_videos[n], sub / n)
    return d


def test_tag_directory_out_and_features(clip_dir, tmp_path, default_weights):
    out, feats = tmp_path / "out", tmp_path / "f.h5"
    p = videotag("tag", str(clip_dir), "--frames", "16", "--topk", "5", "--out", str(out), "--features", str(feats))
    clips = sorted(str(x) for x in clip_dir.rglob("*.*"))
    rows = read_jsonl(out / "results.jsonl")
    assert sorted(r["source"] for r in rows) == clips  # recursive, every clip, once
    assert all(r["ok"] and len(r["tags"]) == 5 and r["model"] == "imagenet_framepool" for r in rows)
    assert f"{len(clips)} ok, 0 failed" in p.stderr.replace("\n", " ")
    for r in rows:
        check_videotag_json(out / f"{Path(r['source']).name}.json", r["source"], 5)
    with FeatureStore(feats) as store:
        assert len(store) == len(clips)
        for r in rows:
            rec = store.get(r["video_id"])
            assert rec.features.shape == (16, 1280) and rec.source == r["source"]
            assert rec.backbone == "efficientnet_lite0" and len(rec.sample_indices) == 16
        short = store.get(store.resolve(str(clip_dir / "short.mp4")))
        assert short.decoded_frames == 7 and list(short.sample_indices[:8]) == [0, 1, 2, 3, 4, 5, 6, 0]
        rot = store.get(store.resolve(str(clip_dir / "rot90.mp4")))
        assert (rot.meta["width"], rot.meta["height"], rot.meta["rotation"]) == (120, 160, 90)
    # stage 2 alone on the stored features gives the same ranking
    p2 = videotag("predict", str(feats), "--topk", "5", "--json")
    again = {r["source"]: r for r in map(json.loads, p2.stdout.splitlines())}
    for r in rows:
        got = again[r["source"]]["tags"]
        assert [t["class_id"] for t in got] == [t["class_id"] for t in r["tags"]]
        np.testing.assert_allclose([t["probability"] for t in got], [t["probability"] for t in r["tags"]], atol=1e-5)


def test_filelist_with_spaces_non_ascii_and_failures(sample_videos, tmp_path, default_weights):
    d = tmp_path / "dir with space"
    d.mkdir()
    good = shutil.copy(sample_videos["h264.mp4"], d / "vidéo 1 ü.mp4")
    bad = {
        "missing": str(tmp_path / "nope.mp4"),
        "empty": str(videogen.make_not_a_video(tmp_path / "x.mp4").with_name("empty.mp4")),
        "not_a_video": str(videogen.make_not_a_video(tmp_path / "text.mp4")),
        "audio_only": str(videogen.make_audio_only(tmp_path / "tone.m4a")),
        "unsupported_codec": str(videogen.make_unknown_codec(tmp_path / "qqqq.avi")),
    }
    Path(bad["empty"]).write_bytes(b"")
    flist = tmp_path / "list.txt"
    flist.write_text("\n".join([str(good), *bad.values()]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    p = videotag("tag", "--filelist", str(flist), "--frames", "8", "--out", str(out), check=1)
    rows = {r["source"]: r for r in read_jsonl(out / "results.jsonl")}
    assert len(rows) == 1 + len(bad)
    assert rows[str(good)]["ok"] and (out / "vidéo 1 ü.mp4.json").is_file()
    for code, src in bad.items():
        assert not rows[src]["ok"] and rows[src]["error"]["code"] == code, rows[src]
        assert rows[src]["error"]["reason"]
        assert src in p.stderr.replace("\n", "")  # each failure reported with its path
    assert f"1 ok, {len(bad)} failed" in p.stderr.replace("\n", " ")


def test_url_input(sample_videos, tmp_path, default_weights):
    shutil.copy(sample_videos["h264.mkv"], tmp_path / "clip.mkv")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        p = videotag("tag", f"{base}/clip.mkv", f"{base}/absent.mp4", "--frames", "8", "--json", check=1)
    finally:
        srv.shutdown()
    rows = {r["source"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert rows[f"{base}/clip.mkv"]["ok"] and len(rows[f"{base}/clip.mkv"]["tags"]) == 20
    assert rows[f"{base}/absent.mp4"]["error"]["code"] == "download_failed"
    assert "404" in rows[f"{base}/absent.mp4"]["error"]["reason"]


def test_threshold_and_extract_then_predict(sample_videos, tmp_path, default_weights):
    p = videotag("tag", str(sample_videos["h264.mp4"]), "--frames", "8", "--threshold", "0.05", "--json")
    (row,) = map(json.loads, p.stdout.splitlines())
    assert all(t["probability"] >= 0.05 for t in row["tags"])
    store_dir = tmp_path / "store"
    videotag("extract", str(sample_videos["vp9.webm"]), str(sample_videos["mpeg4.avi"]), "--frames", "8",
             "--out", str(store_dir))  # fmt: skip
    assert len(list(store_dir.rglob("*.h5"))) == 2
    p = videotag("predict", str(store_dir), "--json", "--topk", "3")
    assert [len(json.loads(x)["tags"]) for x in p.stdout.splitlines()] == [3, 3]


def test_predict_refuses_features_of_another_backbone(tmp_path, default_weights):
    from videotag.core.feature_store import FeatureRecord, write_shard

    write_shard(tmp_path / "r.h5", [FeatureRecord("v", np.ones((4, 2048), np.float32), "x.mp4", backbone="resnet50")])
    p = videotag("predict", str(tmp_path / "r.h5"), check=2)
    assert "expects 1280-d features" in p.stderr and "resnet50" in p.stderr
    assert "Traceback" not in p.stderr


def test_help_explains():
    p = videotag("tag", "--help")
    for opt in ("--filelist", "--topk", "--threshold", "--frames", "--batch-size", "--out", "--features", "--model"):
        assert opt in p.stdout


@pytest.mark.shared_videos
def test_all_shared_clips(shared_videos, tmp_path, default_weights):
    """Every real clip in ../shared/videos through `videotag tag` (300 frames): well-formed, non-empty."""
    out = tmp_path / "out"
    videotag("tag", str(shared_videos), "--out", str(out), "--show", "5")
    clips = sorted(str(p) for p in shared_videos.iterdir() if p.suffix != ".md")
    rows = read_jsonl(out / "results.jsonl")
    assert sorted(r["source"] for r in rows) == clips
    for r in rows:
        assert r["ok"], r
        check_videotag_json(out / f"{Path(r['source']).name}.json", r["source"], 20)
    for r in rows:
        top5 = ", ".join(f"{t['class_name']} {t['probability']:.3f}" for t in r["tags"][:5])
        print(f"{Path(r['source']).name}: {top5}")
