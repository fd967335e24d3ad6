"""`videotag optimize`: a new INT8/FP16 bundle that `videotag tag --model` and `videotag models` use, agreement
measured on held-back clips and recorded, and the gate's refusal (nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from cli_runner import vt
from tinymodels import tiny_backbone, tiny_predictor

from videotag.core.manifest import read_manifest
from videotag.optimize import Gate


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """weights/tinybb (backbone) + weights/tinypred (predictor using the configured backbone, like the default
    model) + weights/tinybundle (predictor carrying its own backbone/, like the imported VideoTag bundle)."""
    w = tmp_path_factory.mktemp("weights")
    bdir = tiny_backbone(w / "tinybb")
    tiny_predictor(w / "tinypred", bdir)
    shutil.copytree(w / "tinypred", w / "tinybundle")
    shutil.copytree(bdir, w / "tinybundle" / "backbone")
    return w


@pytest.fixture(scope="module")
def clips(video_factory) -> list[Path]:
    return [
        video_factory("oa.mp4", codec="h264", frames=30),
        video_factory("ob.mp4", codec="h264", frames=30, pattern="noise"),
        video_factory("oc.mkv", codec="h264", frames=30, size=(200, 150)),
        video_factory("od.mp4", codec="h264", frames=30, pattern="noise", size=(128, 96)),
    ]


@pytest.fixture(autouse=True)
def env(weights, monkeypatch):
    monkeypatch.setenv("VIDEOTAG_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("VIDEOTAG_BACKBONE", "tinybb")
    monkeypatch.setenv("VIDEOTAG_MODEL", "tinypred")


@pytest.fixture(scope="module")
def int8_bundle(weights, clips) -> tuple[Path, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDEOTAG_WEIGHTS_DIR", str(weights))
        mp.setenv("VIDEOTAG_BACKBONE", "tinybb")
        output = vt("optimize", "tinypred", "--int8", "--calibrate", *clips, "--frames", "12")
    return weights / "tinypred-int8", output


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_bundle_records_agreement_on_held_back_clips(int8_bundle, weights, clips):
    out, output = int8_bundle
    assert "passes the gate" in output and "wrote" in output and "tag --model tinypred-int8" in output
    p = read_manifest(out, kind="predictor")
    b = read_manifest(out / "backbone", kind="backbone")
    assert b["architecture"] == "tinybb-int8" and b["base_architecture"] == "tinybb" and b["precision"] == "int8"
    assert p["backbone"] == {"name": "tinybb-int8", "sha256": b["sha256"], "feature_dim": 16}
    assert p["precision"] == "float32"  # the predictor does not pay: it stays float32
    assert "QuantizeLinear" in _ops(out / "backbone" / "model.onnx")
    rec = p["optimized"]
    assert rec["mode"] == "int8" and rec["from"]["model"] == "tinypred"
    assert rec["backbone_precision"]["format"] == "QDQ" and "per-channel" in rec["backbone_precision"]["weights"]
    assert rec["gate"] == vars(Gate())
    # every third clip is held back, never calibrated on
    assert rec["held_back"]["clips"] == [clips[2].name]
    assert set(rec["calibration"]["clips"]) == {clips[0].name, clips[1].name, clips[3].name}
    a = rec["agreement"]
    assert a["videos"] == 1 and a["frames"] == 30  # held back as `tag` samples it: 300 slots, 30 distinct frames
    assert rec["held_back"]["slots_per_video"] == 300 and rec["calibration"]["frames"] == 36
    assert 0.98 <= a["feature_cosine_mean"] <= 1.0 and a["feature_cosine_min"] <= a["feature_cosine_mean"]
    assert a["topk"] == 5 and 0.8 <= a["topk_overlap_mean"] <= 1.0 and 0 <= a["max_prob_diff"] <= 0.1
    assert a["per_video"][0]["video"] == clips[2].name
    assert not Gate().failures(a)
    assert (out / "labels.txt").is_file() and b["sampling"] == read_manifest(weights / "tinybb")["sampling"]


def test_int8_bundle_tags_a_clip_and_is_listed(int8_bundle, clips):
    _ = int8_bundle
    lines = vt("tag", "--model", "tinypred-int8", clips[0], "--frames", "8", "--topk", "3", "--json").splitlines()
    res = json.loads(next(line for line in lines if line.startswith("{")))
    assert res["ok"] and res["model"] == "tinypred-int8" and len(res["tags"]) == 3
    listed = {m["name"]: m for m in json.loads(vt("models", "--json"))["installed"]}
    assert listed["tinypred-int8"]["kind"] == "predictor"
    assert listed["tinypred-int8"]["backbone"] == "tinybb-int8 (bundled)"


def test_refused_below_the_gate_writes_nothing(weights, clips):
    before = sorted(p.name for p in weights.iterdir())
    output = vt("optimize", "tinypred", "--int8", "--calibrate", *clips, "--frames", "8", "--eval-frames", "8",
                "--out", "never", "--gate", "cosine_mean=1", code=1)  # fmt: skip
    assert "refused" in output and "nothing was written" in output and "feature cosine mean" in output
    for rung in ("none", "first conv", "first and last conv"):  # the whole exclusion ladder was tried
        assert f"{rung}:" in output
    assert sorted(p.name for p in weights.iterdir()) == before  # no bundle, no staging leftovers


def test_fp16_bundle_with_own_backbone_and_given_holdout(weights, clips):
    output = vt("optimize", "tinybundle", "--fp16", "--calibrate", clips[0], "--holdout", clips[1],
                "--holdout", clips[3], "--frames", "8", "--eval-frames", "8", "--predictor", "convert")  # fmt: skip
    out = weights / "tinybundle-fp16"
    p = read_manifest(out, kind="predictor")
    b = read_manifest(out / "backbone", kind="backbone")
    rec = p["optimized"]
    assert b["architecture"] == "tinybb-fp16" and p["precision"] == "fp16" and rec["calibration"] is None
    assert rec["held_back"] == {"by": "clips (given)", "clips": [clips[1].name, clips[3].name], "slots_per_video": 8,
                                "frames": 16}  # fmt: skip
    assert rec["target_providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert rec["agreement"]["feature_cosine_min"] > 0.999, output
    g = onnx.load(str(out / "backbone" / "model.onnx")).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.initializer)
    lines = vt("tag", "--model", "tinybundle-fp16", clips[2], "--frames", "8", "--json").splitlines()
    assert json.loads(next(x for x in lines if x.startswith("{")))["ok"]


def test_single_clip_holds_back_odd_frames_and_predictor_int8(weights, clips, tmp_path):
    out = tmp_path / "one"
    vt("optimize", str(weights / "tinybundle"), "--int8", "-c", clips[1], "--frames", "10", "--eval-frames", "4",
       "--out", out, "--predictor", "convert", "--exclude", "first")  # fmt: skip
    rec = read_manifest(out, kind="predictor")["optimized"]
    assert rec["held_back"]["by"].startswith("frames") and rec["held_back"]["frames"] == 5
    assert rec["calibration"]["frames"] == 5 and rec["exclusion"] == "as given"
    assert len(rec["backbone_precision"]["excluded_nodes"]) == 1
    assert "dynamic int8" in rec["predictor_precision"]["format"]
    assert "MatMulInteger" in _ops(out / "model.onnx") or "DynamicQuantizeLinear" in _ops(out / "model.onnx")


def test_usage_errors_are_one_line(weights, clips, int8_bundle):
    assert "choose one of --int8" in vt("optimize", "tinypred", "-c", clips[0], code=2)
    assert "choose one of --int8" in vt("optimize", "tinypred", "--int8", "--fp16", "-c", clips[0], code=2)
    assert "no calibration clips" in vt("optimize", "tinypred", "--int8", code=2)
    assert "exists" in vt("optimize", "tinypred", "--int8", "-c", clips[0], code=2)  # tinypred-int8 is there
    assert "already an optimised bundle" in vt("optimize", "tinypred-int8", "--int8", "-c", clips[0], code=2)
    assert "KEY=VALUE" in vt("optimize", "tinypred", "--int8", "-c", clips[0], "--out", "x", "--gate", "bogus=1",
                             code=2)  # fmt: skip
    assert "not found" in vt("optimize", "nosuchmodel", "--int8", "-c", clips[0], code=2)
    assert "missing" in vt("optimize", "tinypred", "--int8", "-c", "/nonexistent.mp4", "--out", "y", code=2)


def test_gate_parse_and_failures():
    g = Gate.parse(["cosine_mean=0.99", "topk=3", "max-prob-diff=0.2"])
    assert (g.cosine_mean, g.topk, g.max_prob_diff) == (0.99, 3, 0.2)
    for bad in ("cosine_mean", "x=1", "cosine_mean=abc", "cosine_min=1.5", "topk=0"):
        with pytest.raises(Exception, match="--gate"):
            Gate.parse([bad])
    ok = {"feature_cosine_mean": 0.99, "feature_cosine_min": 0.95, "topk_overlap_mean": 1.0,
          "topk_overlap_min": 0.8, "max_prob_diff": 0.01}  # fmt: skip
    assert Gate().failures(ok) == []
    assert Gate().failures({**ok, "max_prob_diff": 0.5}) == ["max probability difference 0.5000 > 0.2"]
    assert Gate().failures({"feature_cosine_mean": 0.8, "feature_cosine_min": 0.95}) == [
        "feature cosine mean 0.8000 < 0.97"
    ]  # a backbone alone: no probability checks


def test_backbone_alone(weights, clips, tmp_path):
    out = tmp_path / "bb8"
    vt("optimize", "tinybb", "--int8", "-c", *clips[:3], "--frames", "8", "--eval-frames", "8", "--out", out)
    m = read_manifest(out, kind="backbone")
    a = m["optimized"]["agreement"]
    assert m["architecture"] == "tinybb-int8" and m["optimized"]["predictor_precision"] is None
    assert a["feature_cosine_mean"] >= 0.97 and "topk_overlap_mean" not in a and "max_prob_diff" not in a
