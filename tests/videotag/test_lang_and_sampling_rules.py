"""Languages of class names and the sampling rule that travels with models: the default model samples the
whole video ("uniform") and names classes in English only; a model trained on one rule refuses features sampled
with another; asking for a language a model lacks is one clear line (exit 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from videotag.core.feature_store import FeatureStore
from videotag.core.manifest import read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]


def videotag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videotag", *args], capture_output=True, text=True, cwd=REPO)


def test_default_model_samples_uniformly_and_speaks_english(default_weights, video_factory, tmp_path) -> None:
    clip = video_factory("lang_clip.mp4", frames=60)
    man = read_manifest(default_weights / "imagenet_framepool")
    assert man["languages"] == {"en": {"file": "labels.txt", "sha256": man["vocabulary"]["sha256"]}}
    assert read_manifest(default_weights / "efficientnet_lite0")["sampling"] == "uniform"
    r = videotag("tag", str(clip), "--frames", "8", "--features", str(tmp_path / "f.h5"), "--json", "--lang", "en")
    assert r.returncode == 0, r.stderr
    with FeatureStore(tmp_path / "f.h5") as st:
        (vid,) = st.ids()
        rec = st.get(vid)
    assert rec.sampling == "uniform"
    assert rec.sample_indices.tolist() == [3, 11, 18, 26, 33, 41, 48, 56]  # centres of 8 spans of 60 frames
    r = videotag("tag", str(clip), "--frames", "8", "--lang", "zh")
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and "no 'zh' class names (it has: en)" in err and "Traceback" not in err


def test_a_model_refuses_features_sampled_with_another_rule(default_weights, video_factory, tmp_path) -> None:
    clip = video_factory("rule_clip.mp4", frames=30)
    model = tmp_path / "uniform_model"
    shutil.copytree(default_weights / "imagenet_framepool", model)
    m = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    write_manifest(model, {**m, "sampling": "uniform"}, m["weights"])

    r = videotag("extract", str(clip), "--frames", "6", "--sampling", "segment", "-o", str(tmp_path / "seg.h5"))
    assert r.returncode == 0, r.stderr
    r = videotag("predict", str(tmp_path / "seg.h5"), "--model", str(model))
    assert r.returncode == 2, r.stdout + r.stderr
    err = " ".join(r.stderr.split())  # rich wraps long lines
    assert "trained on features sampled with the 'uniform' rule" in err and "'segment'" in err
    # the model's rule is the default when tagging with it: no mismatch
    r = videotag("tag", str(clip), "--frames", "6", "--model", str(model), "--features", str(tmp_path / "u.h5"))
    assert r.returncode == 0, r.stderr
    r = videotag("predict", str(tmp_path / "u.h5"), "--model", str(model))
    assert r.returncode == 0, r.stderr
