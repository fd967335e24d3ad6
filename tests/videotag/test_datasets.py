"""`videotag dataset DIR`: folder-per-class (and CSV multi-label) videos -> features, vocabulary, split, failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import videogen
from cli_runner import vt

from predictor.data import read_labels, resolve_labels
from videotag.core.feature_store import FeatureStore
from videotag.core.vocab import Vocabulary

CLASSES = ["cat", "dog", "zebra crossing"]




@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """videos/<class>/clip <i>.mp4: 3 classes x 3 tiny distinct clips, one broken file, one loose clip."""
    root = tmp_path_factory.mktemp("ds") / "videos"
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(3):
            videogen.make_video(root / c / f"clip {i}.mp4", frames=10 + i + 3 * ci, size=(64, 48))
    videogen.make_not_a_video(root / "dog" / "broken.mp4")
    videogen.make_video(root / "loose.mp4", frames=6, size=(64, 48))
    return root


def _list(path: Path) -> dict[str, tuple[int, ...]]:
    rows = [ln.split("\t") for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return {vid: tuple(map(int, labels.split())) for vid, labels in rows}


def test_folder_per_class(videos: Path, default_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(videos.parent)  # relative paths, as a user types them
    output = vt("dataset", "videos", "--out", "ds", "--frames", "8", "--val-fraction", "0.34", "--seed", "1")
    ds = videos.parent / "ds"
    assert (ds / "vocab.txt").read_text().splitlines() == CLASSES
    train, val = _list(ds / "train.txt"), _list(ds / "val.txt")
    assert len(train) == 6 and len(val) == 3 and not set(train) & set(val)
    assert sorted(c for (c,) in val.values()) == [0, 1, 2]  # stratified: one of each class held out
    rows = list(csv.DictReader(open(ds / "videos.csv", encoding="utf-8")))
    assert len(rows) == 9 and {r["labels"] for r in rows} == set(CLASSES)
    for r in rows:  # the folder is the class, the id is the content
        assert Path(r["source"]).parent.name == r["labels"]
        assert (train | val)[r["id"]] == (CLASSES.index(r["labels"]),)
    failed = [json.loads(ln) for ln in (ds / "failed.jsonl").read_text().splitlines()]
    assert [(f["source"], f["error"]["code"]) for f in failed] == [("videos/dog/broken.mp4", "not_a_video")]
    summary = json.loads((ds / "dataset.json").read_text())
    assert summary["num_failed"] == 1 and summary["class_counts"]["dog"] == {"train": 2, "val": 1}
    assert any("loose.mp4" in p for p in summary["problems"])
    flat = " ".join(output.split())
    assert "10 video(s), 3 classes: 6 train, 3 val, 1 failed" in flat
    assert ("next: videotag train -f ds/features/efficientnet_lite0 -l ds/train.txt --vocab ds/vocab.txt "
            "--val-labels ds/val.txt -o runs/ds") in flat  # fmt: skip
    with FeatureStore(ds / "features") as store:
        assert len(store) == 9 and all(store.get(v).num_frames == 8 for v in train)
        # the case: a label file with absolute paths against a store extracted from a relative dir
        lf = videos.parent / "abs.txt"
        lf.write_text("".join(f"{(videos.parent / r['source']).resolve()}\t{CLASSES.index(r['labels'])}\n"
                              for r in rows))  # fmt: skip
        res = resolve_labels(read_labels(lf, Vocabulary(tuple(CLASSES))), store)
        assert res.problems == [] and sorted(res.video_ids) == sorted(r["id"] for r in rows)
    # same videos and seed -> same split (features are reused, not decoded again)
    shard = ds / "features" / "efficientnet_lite0" / f"{next(iter(val))}.h5"
    mtime = shard.stat().st_mtime_ns
    vt("dataset", "videos", "--out", "ds", "--frames", "8", "--val-fraction", "0.34", "--seed", "1")
    assert _list(ds / "val.txt") == val and shard.stat().st_mtime_ns == mtime
    out = vt("dataset", "videos", "--out", "ds", "--frames", "4", code=2)  # never mixes 8- and 4-frame features
    assert "holds 8 frames" in " ".join(out.split()) and "use another --out" in " ".join(out.split())
    # check-dataset agrees the dataset is clean
    out = vt("check-dataset", "-f", ds / "features", "-l", ds / "train.txt", "--vocab", ds / "vocab.txt", "-o", "rep")
    assert "dataset OK" in out and "matched by: id 6" in out


def test_multilabel_csv(videos: Path, default_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(videos.parent)
    labels = videos.parent / "labels.csv"
    labels.write_text(
        "path,labels\n"
        '"videos/cat/clip 0.mp4",cat;dog\n'
        f'"{videos / "cat" / "clip 1.mp4"}",cat\n'  # absolute
        '"cat/clip 2.mp4",cat;zebra crossing\n'  # relative to DIR
        '"videos/dog/clip 0.mp4",dog\n"videos/dog/./clip 1.mp4",dog\n"videos/dog/clip 2.mp4",dog;cat\n'
        "videos/nope.mp4,dog\n",
        encoding="utf-8",
    )
    vt("dataset", "videos", "--labels", labels, "--out", "ml", "--frames", "8", "--val-fraction", "0")
    ml = videos.parent / "ml"
    assert (ml / "vocab.txt").read_text().splitlines() == CLASSES
    assert not (ml / "val.txt").exists()
    train = _list(ml / "train.txt")
    assert sorted(train.values()) == [(0,), (0, 1), (0, 2), (1,), (1,), (1, 0)]  # names in CSV order
    summary = json.loads((ml / "dataset.json").read_text())
    assert summary["train_command"].endswith("--val-fraction 0 -o runs/ml")
    problems = " ".join(summary["problems"])
    assert "'videos/nope.mp4' no such file" in problems and "have no labels in" in problems


def test_train_videos_builds_the_dataset_then_trains(
    videos: Path, default_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`videotag train --videos DIR` in one go: OUT/dataset as `videotag dataset` writes it, then the run."""
    monkeypatch.chdir(videos.parent)
    monkeypatch.setenv("VIDEOTAG_FRAMES", "8")
    output = vt("train", "--videos", "videos", "-m", "frame_pool", "--epochs", "2", "--val-fraction", "0.34",
                "-o", "runs/v", "--no-progress")  # fmt: skip
    run = videos.parent / "runs" / "v"
    assert (run / "dataset" / "vocab.txt").read_text().splitlines() == CLASSES
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    rc = json.loads((run / "run_config.json").read_text())
    assert rc["sampling"] == "uniform" and len(_list(run / "dataset" / "val.txt")) == 3
    assert "10 video(s), 3 classes: 6 train, 3 val, 1 failed" in " ".join(output.split())
    out = vt("train", "--videos", "videos", "-f", "x.h5", "-o", "runs/w", code=2)
    assert "drop -f/-l/--vocab/--val-labels" in " ".join(out.split())
    assert "give --videos DIR" in vt("train", "-o", "runs/w", code=2)
