"""extractor.quantize: calibration frames through the model's own decoding, INT8 (QDQ, per-channel) and FP16
graphs with the backbone's interface, the exclusion ladder, predictor conversion, and the split helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tinymodels import FEATURE_DIM, tiny_backbone

from extractor import quantize as q
from extractor.decode import SampledDecoder
from extractor.preprocess import Preprocess


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return tiny_backbone(tmp_path_factory.mktemp("bb") / "tinybb")


@pytest.fixture(scope="module")
def clips(video_factory) -> list[Path]:
    return [
        video_factory("qa.mp4", codec="h264", frames=30),
        video_factory("qb.mp4", codec="h264", frames=30, pattern="noise", size=(200, 150)),
        video_factory("qshort.mp4", codec="h264", frames=7),
    ]


@pytest.fixture(scope="module")
def frames(clips) -> np.ndarray:
    pre = Preprocess(crop=32, resize=36)
    return np.concatenate([q.sample_clip(c, pre, 12, "uniform").frames for c in clips[:2]])


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _io(path: Path) -> tuple[int, int]:
    g = onnx.load(str(path)).graph
    return g.input[0].type.tensor_type.elem_type, g.output[0].type.tensor_type.elem_type


def test_sample_clip_uses_the_decoder_and_keeps_slot_order(clips):
    pre = Preprocess(crop=32, resize=36)
    got = q.sample_clip(clips[2], pre, 16, "uniform")  # 7-frame clip, 16 slots: cyclic repeats
    assert got.frames.shape == (7, 32, 32, 3) and got.frames.dtype == np.uint8
    assert got.slots.tolist() == [i % 7 for i in range(16)]
    dec = SampledDecoder(str(clips[2]), num_frames=16, policy="uniform", transform=pre)
    want = dict(dec)
    for k, j in enumerate(sorted(want)):
        assert np.array_equal(got.frames[k], want[j])


def test_split_helpers():
    assert q.split_holdout(1) == [] and q.split_holdout(2) == [1] and q.split_holdout(3) == [2]
    assert q.split_holdout(10) == [2, 5, 8]
    clip = q.ClipFrames("x.mp4", np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3), np.arange(5))
    cal, held = q.split_frames(clip)
    assert len(cal.frames) == 3 and len(held.frames) == 2
    assert np.array_equal(held.frames[0], clip.frames[1]) and "odd frames" in held.source
    assert len(q.even_subsample(np.zeros((100, 1)), 10)) == 10 and len(q.even_subsample(np.zeros((4, 1)), 10)) == 4
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    assert np.allclose(q.cosine(a, b), [1.0, 1.0, -1.0])


def test_frame_reader_batches(frames):
    r = q.FrameReader(frames, batch=5)
    sizes = [len(x["frames"]) for x in r]
    assert sum(sizes) == len(frames) and max(sizes) == 5 and len(r) == len(sizes)
    assert r.get_next() is None


def test_int8_quantizer_qdq_per_channel_same_interface(backbone, frames, tmp_path):
    qz = q.Int8Quantizer(backbone / "model.onnx", tmp_path / "work", frames, batch=4)
    ladder = qz.exclusion_ladder()
    assert [name for name, _ in ladder] == ["none", "first conv", "first and last conv"]
    convs = q.conv_nodes(qz.prepared)
    assert ladder[1][1] == [convs[0]] and ladder[2][1] == [convs[0], convs[-1]]

    out = tmp_path / "int8.onnx"
    info = qz.quantize(out)
    assert info["format"] == "QDQ" and "per-channel" in info["weights"] and info["excluded_nodes"] == []
    assert info["reduce_range"] == (q.cpu_has_vnni() is False)
    ops = _ops(out)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert _io(out) == (onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT)
    m = onnx.load(str(out))
    inits = {i.name: i for i in m.graph.initializer}
    per_channel = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[0]].data_type == onnx.TensorProto.INT8
                   and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]  # fmt: skip
    assert per_channel, "conv weights should carry one scale per output channel"

    ref, _ = q.run_backbone(q.cpu_session(backbone / "model.onnx"), frames)
    got, _ = q.run_backbone(q.cpu_session(out), frames)
    assert got.shape == (len(frames), FEATURE_DIM) and got.dtype == np.float32
    assert q.cosine(ref, got).mean() > 0.98

    # a second rung reuses the calibration and keeps the first conv in float
    out2 = tmp_path / "int8_first.onnx"
    info2 = qz.quantize(out2, qz.resolve_exclusions(["first"]))
    assert info2["excluded_nodes"] == [convs[0]]
    g = onnx.load(str(out2)).graph
    first = next(n for n in g.node if n.op_type == "Conv")
    float_inits = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert first.input[1] in float_inits, "the excluded conv's weight should stay float"


def test_resolve_exclusions_names_and_errors(backbone, frames, tmp_path):
    qz = q.Int8Quantizer(backbone / "model.onnx", tmp_path / "work", frames[:4])
    convs = q.conv_nodes(qz.prepared)
    assert qz.resolve_exclusions(["first", "last", convs[1], "first"]) == [convs[0], convs[-1], convs[1]]
    with pytest.raises(ValueError, match="no node named 'nope'"):
        qz.resolve_exclusions(["nope"])
    with pytest.raises(ValueError, match="calibration method"):
        q.Int8Quantizer(backbone / "model.onnx", tmp_path / "w2", frames[:4], method="magic")


def test_fp16_keeps_the_interface_and_agrees(backbone, frames, tmp_path):
    out = tmp_path / "fp16.onnx"
    info = q.convert_fp16(backbone / "model.onnx", out)
    assert info["format"] == "float16"
    assert _io(out) == (onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT)
    g = onnx.load(str(out)).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.initializer)
    ref, _ = q.run_backbone(q.cpu_session(backbone / "model.onnx"), frames)
    got, _ = q.run_backbone(q.cpu_session(out), frames)
    assert q.cosine(ref, got).min() > 0.999


@pytest.mark.parametrize("form", ["scan", "onnx_lstm"])
def test_predictor_int8_and_fp16(form, tmp_path):
    from predictor.models import create_model

    torch.manual_seed(0)
    m = create_model("attention_lstm", feature_dim=32, num_classes=20, embedding_size=16, lstm_size=8,
                     fc1_size=32, fc2_size=16).eval()  # fmt: skip
    src = tmp_path / "p.onnx"
    m.export_onnx_graph(src, 17, lstm_impl=form)
    x = np.random.default_rng(0).standard_normal((2, 9, 32), dtype=np.float32)
    feeds = {"features": x, "lengths": np.array([9, 4], dtype=np.int64)}
    ref = q.cpu_session(src).run(["probabilities"], feeds)[0]
    assert not q.is_quantized(src)
    q.quantize_predictor_int8(src, tmp_path / "p8.onnx")
    assert q.is_quantized(tmp_path / "p8.onnx")
    q.convert_predictor_fp16(src, tmp_path / "p16.onnx")
    for name, tol in (("p8.onnx", 0.02), ("p16.onnx", 0.005)):
        got = q.cpu_session(tmp_path / name).run(["probabilities"], feeds)[0]
        assert np.abs(got - ref).max() < tol, name


def test_reduce_range_follows_vnni(monkeypatch):
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert q.default_reduce_range() is True
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert q.default_reduce_range() is False
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: None)
    assert q.default_reduce_range() is False
