"""`videotag evaluate --out DIR`: metrics JSON, per-class AP (JSON + CSV, sorted), PR curves, confusion matrix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import vt
from PIL import Image

from predictor.checkpoint import save_checkpoint
from predictor.metrics import average_precision, per_class_ap
from predictor.models import create_model
from videotag.core.feature_store import FeatureRecord, write_shard
from videotag.core.vocab import Vocabulary

NAMES = ("cat", "dog", "bird", "fish")




@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 videos whose features point at their class (noisy), a frame_pool checkpoint that reads them."""
    d = tmp_path_factory.mktemp("evalout")
    rng = np.random.default_rng(0)
    recs, single, multi = [], [], []
    for i in range(40):
        c = [0, 0, 0, 1, 1, 2, 3, 0][i % 8]  # unbalanced: cat most frequent
        x = rng.standard_normal((5, 4)).astype(np.float32)
        x[:, c] += 1.5
        recs.append(FeatureRecord(f"v{i:02d}", x, f"/v/{i}.mp4", backbone="toy"))
        single.append(f"v{i:02d} {c}")
        multi.append(f"v{i:02d} {c}" + (f" {(c + 1) % 4}" if i % 3 == 0 else ""))
    store = write_shard(d / "toy.h5", recs)
    vocab = d / "vocab.txt"
    Vocabulary(NAMES).save(vocab)
    (d / "single.txt").write_text("\n".join(single) + "\n")
    (d / "multi.txt").write_text("\n".join(multi) + "\n")
    model = create_model("frame_pool", feature_dim=4, num_classes=4, pool="mean", frame_activation="softmax")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        w = next(p for p in model.parameters() if p.ndim == 2)
        w.copy_(torch.eye(4) * 3.0)
    ckpt = save_checkpoint(
        d / "best.pt",
        {
            "model": "frame_pool",
            "model_config": model.config,
            "state_dict": model.state_dict(),
            "epoch": 1,
            "metrics": {},
            "vocab": {"names": list(NAMES), "sha256": Vocabulary(NAMES).sha256},
            "backbone": {"name": "toy", "sha256": "", "feature_dim": 4},
            "sampling": "segment",
        },
    )
    return {"dir": d, "store": store, "vocab": vocab, "ckpt": ckpt}


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


def test_single_label_writes_everything(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    text = vt("evaluate", "-m", setup["ckpt"], "-f", setup["store"], "-l", setup["dir"] / "single.txt", "-o", out)
    assert "metrics.json" in text
    for name in ("metrics.json", "per_class_ap.json", "per_class_ap.csv", "pr_curves.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["num_videos"] == 40 and report["outputs"]["confusion_matrix"] == "confusion_matrix.png"
    w, h = _png(out / "pr_curves.png")
    assert w > 200 and h > 200
    _png(out / "confusion_matrix.png")
    per_class = json.loads((out / "per_class_ap.json").read_text())
    aps = [c["ap"] for c in per_class["classes"]]
    assert aps == sorted(aps, reverse=True) and per_class["classes_with_positives"] == 4
    with (out / "per_class_ap.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class_name"] for r in rows] == [c["class_name"] for c in per_class["classes"]]
    assert [float(r["ap"]) for r in rows] == sorted((float(r["ap"]) for r in rows), reverse=True)
    assert {r["class_name"]: int(r["num_positives"]) for r in rows} == {"cat": 20, "dog": 10, "bird": 5, "fish": 5}
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]


def test_multi_label_has_no_confusion_matrix_and_json_out_still_works(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    vt("evaluate", "-m", setup["ckpt"], "-f", setup["store"], "-l", setup["dir"] / "multi.txt", "-o", out)
    assert (out / "pr_curves.png").is_file() and (out / "per_class_ap.csv").is_file()
    assert not (out / "confusion_matrix.png").exists()
    # A path ending in .json keeps the old behaviour: just the report, there.
    report = tmp_path / "r.json"
    vt("evaluate", "-m", setup["ckpt"], "-f", setup["store"], "-l", setup["dir"] / "multi.txt", "-o", report)
    assert json.loads(report.read_text())["metrics"]["num_videos"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "r.json"]


def test_per_class_ap_matches_average_precision() -> None:
    rng = np.random.default_rng(1)
    scores, labels = rng.random((30, 5)), rng.random((30, 5)) < 0.3
    labels[:, 4] = False  # a class without positives is left out
    rows = per_class_ap(scores, labels)
    assert [r["class_id"] for r in rows if r["class_id"] == 4] == []
    for r in rows:
        assert r["ap"] == pytest.approx(average_precision(scores[:, r["class_id"]], labels[:, r["class_id"]]))
        assert r["num_positives"] == int(labels[:, r["class_id"]].sum())
    assert [r["ap"] for r in rows] == sorted((r["ap"] for r in rows), reverse=True)
