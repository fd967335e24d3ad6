"""Label keys matched to stored videos the way users write them: absolute/relative, normalised, symlinks, content."""

from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from predictor.data import load_labelled, match_key, read_labels, resolve_labels
from videotag.cli import _load, app
from videotag.core.feature_store import FeatureRecord, FeatureStore, absolute_source, write_shard
from videotag.core.hashing import sha256_file
from videotag.core.vocab import Vocabulary

_load()
VOCAB = Vocabulary(("cat", "dog", "car"))


def _vid(path: Path) -> str:
    return sha256_file(path)[:32]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """tmp/proj/clips/{a.mp4, b.mp4, my clip.mp4}, extracted from tmp/proj as `clips/...` (relative sources)."""
    proj = tmp_path / "proj"
    clips = proj / "clips"
    clips.mkdir(parents=True)
    names = ["a.mp4", "b.mp4", "my clip.mp4", "c, take 2.mp4"]
    for i, n in enumerate(names):
        (clips / n).write_bytes(os.urandom(64) + bytes([i]))
    monkeypatch.chdir(proj)
    recs = []
    for n in names:
        src = f"clips/{n}"
        x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
        recs.append(FeatureRecord(_vid(clips / n), x, src, source_abs=absolute_source(src)))
    store = write_shard(proj / "store" / "s.h5", recs)
    vocab = tmp_path / "vocab.txt"
    VOCAB.save(vocab)
    return {"root": tmp_path, "proj": proj, "clips": clips, "store": store, "vocab": vocab, "names": names}


def _resolve(text: str, where: Path, store: Path, name: str = "labels.txt"):
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text(text, encoding="utf-8")
    with FeatureStore(store) as st:
        return resolve_labels(read_labels(where / name, VOCAB), st)


def test_store_records_absolute_source_and_old_shards_still_read(tree: dict) -> None:
    with FeatureStore(tree["store"]) as st:
        vid = st.resolve("clips/a.mp4")
        assert st.get(vid).source_abs == str(tree["clips"] / "a.mp4")
        assert st.resolve(str(tree["clips"] / "a.mp4")) == vid  # absolute vs recorded relative
        assert st.resolve("./clips//a.mp4") == vid  # normalised
    with h5py.File(tree["store"], "r+") as f:  # a shard written before source_abs existed
        del f["index/source_abs"]
    with FeatureStore(tree["store"]) as st:
        assert st.resolve("clips/a.mp4") == vid
        assert st.resolve(str(tree["clips"] / "a.mp4")) == vid  # assumed relative to the cwd


def test_absolute_paths_against_store_extracted_from_relative_dir(tree: dict) -> None:
    clips = tree["clips"]
    res = _resolve(f"{clips / 'a.mp4'} 0\n{clips / 'b.mp4'} 1 2\n", tree["root"] / "elsewhere", tree["store"])
    assert res.problems == [] and len(res.video_ids) == 2
    assert res.video_ids[0] == _vid(clips / "a.mp4") and res.labels[1] == (1, 2)


def test_relative_to_label_file_cwd_and_dot_dot(tree: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    labels_dir = tree["proj"] / "labels"
    res = _resolve("../clips/./a.mp4 0\n./../clips/b.mp4 1\n", labels_dir, tree["store"])
    assert res.problems == [] and dict(res.matched_by) == {"label_dir": 2}
    # relative to the working directory when not relative to the label file
    res = _resolve("clips/sub/../a.mp4 0\n", tree["root"] / "other", tree["store"])
    assert res.problems == [] and dict(res.matched_by) == {"source": 1}  # normalised recorded source
    monkeypatch.chdir(tree["root"])
    res = _resolve("proj/clips/a.mp4 0\n", tree["root"] / "other", tree["store"])
    assert res.problems == [] and dict(res.matched_by) == {"cwd": 1}


def test_symlinks_and_content_id(tree: dict) -> None:
    root, clips = tree["root"], tree["clips"]
    (root / "link").symlink_to(clips, target_is_directory=True)
    copy = root / "copies" / "renamed.mp4"
    copy.parent.mkdir()
    shutil.copy(clips / "b.mp4", copy)
    (root / "copies" / "new.mp4").write_bytes(b"never extracted")
    res = _resolve(
        f"{root / 'link' / 'a.mp4'} 0\n../copies/renamed.mp4 1\n{_vid(clips / 'my clip.mp4')} 2\n"
        "../copies/new.mp4 0\n../copies/gone.mp4 0\n",
        root / "lists",
        tree["store"],
    )
    assert dict(res.matched_by) == {"realpath": 1, "content": 1, "id": 1}
    assert res.video_ids[1] == _vid(clips / "b.mp4")
    codes = {p.code: p.message for p in res.problems}
    assert set(codes) == {"not_extracted", "missing_file"}
    assert "new.mp4 exists but neither its path nor its content" in codes["not_extracted"]
    assert "lists/labels.txt:5: '../copies/gone.mp4' no such file (looked for" in codes["missing_file"]
    with FeatureStore(tree["store"]) as st:  # a full sha256 is a content id too
        assert match_key(sha256_file(clips / "a.mp4"), st).video_id == _vid(clips / "a.mp4")


def test_csv_quoted_paths_with_spaces_and_commas(tree: dict) -> None:
    clips = tree["clips"]
    text = f'path,labels\n"clips/my clip.mp4",cat;dog\n"{clips / "c, take 2.mp4"}",car\nclips/a.mp4,cat\n'
    res = _resolve(text, tree["proj"], tree["store"], "labels.csv")
    assert res.problems == [] and res.labels == [(0, 1), (2,), (0,)]
    assert res.video_ids[0] == _vid(clips / "my clip.mp4")


def test_space_separated_path_with_spaces_is_ambiguous(tree: dict) -> None:
    (tree["proj"] / "clip 1").write_bytes(b"x")
    text = "clips/my clip.mp4 0\nclips/my clip.mp4\t0 1\nclip 1 0\nclips/a.mp4 0\n"
    res = _resolve(text, tree["proj"], tree["store"])
    msgs = {p.message.split(":")[1]: p for p in res.problems}
    assert set(msgs) == {"1", "3"} and {p.code for p in res.problems} == {"ambiguous_line"}
    assert "the path seems to contain spaces ('clips/my clip.mp4', an existing file)" in msgs["1"].message
    assert "put a tab between the path and the labels, or use the CSV form" in msgs["1"].message
    assert "'clip' matches no video, but 'clip 1' does" in msgs["3"].message
    assert res.labels == [(0, 1), (0,)]  # the tab form works; the plain line too


def test_load_labelled_says_none_matched(tree: dict) -> None:
    labels = tree["root"] / "l.txt"
    labels.write_text("nope/x.mp4 0\n0123456789abcdef0123456789abcdef 1\n")
    from predictor.data import DatasetError

    with FeatureStore(tree["store"]) as st, pytest.raises(DatasetError, match="none of its 2 videos"):
        load_labelled(labels, VOCAB, st)


def test_check_dataset_reports_mismatches(tree: dict) -> None:
    root, clips = tree["root"], tree["clips"]
    (root / "lists").mkdir()
    (root / "lists" / "new.mp4").write_bytes(b"never extracted")
    labels = root / "lists" / "labels.txt"
    labels.write_text(
        f"{clips / 'a.mp4'} 0\nnew.mp4 1\ngone.mp4 1\nalso gone.mp4 2\nclips/my clip.mp4 0\n"
        "ffffffffffffffffffffffffffffffff 1\n"
    )
    r = CliRunner().invoke(app, ["check-dataset", "-f", str(tree["store"]), "-l", str(labels), "--vocab",
                                 str(tree["vocab"]), "-o", str(root / "rep")])  # fmt: skip
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(r.exception)))
    assert r.exit_code == 1, r.output
    rep = json.loads((root / "rep" / "report.json").read_text())
    mm = {k: v["count"] for k, v in rep["mismatches"].items()}
    assert mm == {"unknown_id": 1, "missing_file": 1, "not_extracted": 1, "ambiguous_line": 2,
                  "unlabelled_videos": 3}  # fmt: skip
    assert rep["summary"]["matched_by"] == {"source": 1}
    assert "gone.mp4" in rep["mismatches"]["missing_file"]["examples"][0]
    assert any("clips/b.mp4" in e for e in rep["mismatches"]["unlabelled_videos"]["examples"])
    assert "mismatch missing_file: 1" in r.output and "mismatch unlabelled_videos: 3" in r.output
    assert (root / "rep" / "class_histogram.png").is_file()
