"""`videotag check-dataset` on real HDF5 stores, clean and broken in every way it must report."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from cli_runner import vt
from PIL import Image

from videotag.core.feature_store import FeatureRecord, write_shard
from videotag.core.vocab import Vocabulary

D = 8




def _rec(vid: str, backbone: str = "bb", t: int = 5, seed: int = 0) -> FeatureRecord:
    x = np.random.default_rng(seed).standard_normal((t, D)).astype(np.float32)
    return FeatureRecord(vid, x, f"/src/{vid}.mp4", backbone=backbone, backbone_sha256=f"sha-{backbone}")


def _vocab(tmp: Path) -> Path:
    path = tmp / "vocab.txt"
    Vocabulary(("cat", "dog", "car", "tree")).save(path)
    return path


def test_clean_dataset_passes(tmp_path: Path) -> None:
    store = write_shard(tmp_path / "a.h5", [_rec(f"v{i}", seed=i) for i in range(6)])
    labels = tmp_path / "labels.txt"
    labels.write_text("v0 0 1\nv1 1\nv2 2\n/src/v3.mp4 3\nv4 0\nv5 0 3\n")
    out = vt("check-dataset", "-f", store, "-l", labels, "--vocab", _vocab(tmp_path), "-o", tmp_path / "rep", code=0)
    assert "dataset OK" in out and "6 videos in the store, 6 labelled" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["ok"] and rep["errors"] == []
    assert [c["count"] for c in rep["class_counts"]] == [3, 2, 1, 2]
    assert rep["summary"]["labels_per_video"]["max"] == 2 and rep["summary"]["feature_dims"] == {str(D): 6}
    png = tmp_path / "rep" / "class_histogram.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_every_problem_is_reported_without_a_traceback(tmp_path: Path) -> None:
    a = write_shard(tmp_path / "a.h5", [_rec(f"v{i}", seed=i) for i in range(8)])
    write_shard(tmp_path / "b.h5", [_rec("v3", seed=30), _rec("w0", backbone="other", seed=31)])
    (tmp_path / "c.h5").write_bytes(b"this is not an HDF5 file")
    # What a foreign or broken writer can leave behind (our ShardWriter refuses both): NaN and an empty sequence.
    with h5py.File(a, "r+") as f:
        ds = f["videos/v1"]
        data = ds[()]
        data[2, 3] = np.nan
        ds[...] = data
        attrs = dict(f["videos/v2"].attrs)
        del f["videos/v2"]
        empty = f["videos"].create_dataset("v2", shape=(0, D), dtype=np.float16)
        for k, v in attrs.items():
            empty.attrs[k] = v
    labels = tmp_path / "labels.txt"
    labels.write_text(
        "v0 0 1\nv1 2\nv4 9\nv5 x\nnosuch 1\nv0 1\nv6\n/src/v7.mp4 3\n",
    )
    out = vt("check-dataset", "-f", tmp_path, "-l", labels, "--vocab", _vocab(tmp_path), "-o", tmp_path / "rep", code=1)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert not rep["ok"]
    codes = set(rep["error_counts"])
    assert codes == {
        "unreadable_shard",  # c.h5
        "duplicate_store_id",  # v3 in a.h5 and b.h5
        "mixed_backbones",  # w0
        "nan_features",  # v1
        "empty_sequence",  # v2
        "label_out_of_range",  # line 3
        "bad_label",  # line 4
        "unknown_id",  # line 5
        "duplicate_id",  # line 6
    }, rep["errors"]
    messages = "\n".join(e["message"] for e in rep["errors"])
    assert f"{labels}:3: label id 9 of 'v4' is out of range" in messages
    assert f"{labels}:5: 'nosuch' is not in the feature store" in messages
    assert rep["mismatches"]["unknown_id"] == {
        "count": 1,
        "examples": [f"{labels}:5: 'nosuch' is not in the feature store (no such id or source)"],
    }
    assert rep["mismatches"]["unlabelled_videos"]["count"] == 5 and "mismatch unknown_id: 1" in out
    assert "'v1'" in messages and "NaN in 1 of 5 frames" in messages
    assert "c.h5: cannot read feature shard" in messages
    warn_codes = {w["code"] for w in rep["warnings"]}
    assert {"no_labels", "unlabelled_videos"} <= warn_codes  # v6 has no labels; w0, v2, v3 ... have no line
    assert "dataset has 9 error(s)" in out and "[nan_features]" in out
    assert (tmp_path / "rep" / "class_histogram.png").is_file()


def test_csv_labels_and_missing_inputs(tmp_path: Path) -> None:
    store = write_shard(tmp_path / "a.h5", [_rec(f"v{i}", seed=i) for i in range(3)])
    labels = tmp_path / "labels.csv"
    labels.write_text("id,labels\nv0,cat;dog\nv1,unicorn\nv2,tree\n")
    vocab = _vocab(tmp_path)
    out = vt("check-dataset", "-f", store, "-l", labels, "--vocab", vocab, "-o", tmp_path / "r1", code=1)
    assert "class name 'unicorn' of 'v1' is not in the vocabulary" in out
    rep = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert rep["error_counts"] == {"unknown_class": 1}
    counts = {c["name"]: c["count"] for c in rep["class_counts"]}
    assert counts == {"cat": 1, "dog": 1, "car": 0, "tree": 1}
    assert any(w["code"] == "empty_classes" for w in rep["warnings"])

    out = vt("check-dataset", "-f", tmp_path / "nope.h5", "-l", tmp_path / "nope.txt",
             "--vocab", tmp_path / "nope_vocab", "-o", tmp_path / "r2", code=1)  # fmt: skip
    rep = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert set(rep["error_counts"]) == {"bad_vocabulary", "missing_store"}
