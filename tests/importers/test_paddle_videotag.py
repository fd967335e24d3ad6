"""VideoTag import: Paddle-format files with VideoTag's exact names/shapes (random values) -> ONNX bundle, checked
against an independent NumPy port of Paddle's operators, plus preprocessing/sampling and every refusal path."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from extractor.backbone import FrameExtractor
from extractor.preprocess import Preprocess
from extractor.sampling import segment_indices
from predictor.onnx_predictor import OnnxPredictor
from tests.reference import numpy_paddle as ref
from videotag.core.manifest import read_manifest
from videotag.importers.paddle_videotag import (
    BACKBONE_NAME,
    PaddleWeightsError,
    attention_lstm_from_paddle,
    load_labels,
    load_pdparams,
    resnet_from_paddle,
    tsn_resnet_layout,
)

NUM_CLASSES = 3396
TOL = 1e-4


def _labels() -> list[str]:
    names = [f"标签{i:04d}" for i in range(NUM_CLASSES)]
    for k in range(10):  # label_3396.txt has 10 names that occur twice
        names[3300 + k] = names[200 + k]
    return names


@pytest.fixture(scope="module")
def paddle_files(tmp_path_factory) -> dict:
    """tsn.pdparams / attention_lstm.pdparams / label_3396.txt as fluid.save writes them (pickle protocol 2)."""
    d = tmp_path_factory.mktemp("videotag_release")
    tsn, lstm = ref.random_tsn_params(101, seed=0), ref.random_attention_lstm_params(NUM_CLASSES, seed=1)
    for name, params in (("tsn.pdparams", tsn), ("attention_lstm.pdparams", lstm)):
        with open(d / name, "wb") as f:
            pickle.dump(params, f, protocol=2)
    (d / "label_3396.txt").write_text("\n".join(_labels()) + "\n", encoding="utf-8")
    return {"dir": d, "tsn": tsn, "lstm": lstm}


@pytest.fixture(scope="module")
def bundle(paddle_files, tmp_path_factory) -> Path:
    """The real CLI command, in process."""
    from videotag.cli import _load, app

    _load()
    d = paddle_files["dir"]
    out = tmp_path_factory.mktemp("weights") / "videotag"
    args = ["import-videotag", "--tsn", str(d / "tsn.pdparams"), "--lstm", str(d / "attention_lstm.pdparams"),
            "--labels", str(d / "label_3396.txt"), "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "imported" in res.output and "3396" in res.output
    return out


def _frames(rng: np.random.Generator) -> list[np.ndarray]:
    # Smooth-ish content (like video) rather than pure noise, at sizes hitting each resize branch.
    out = []
    for h, w in ((360, 640), (300, 200)):
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
        out.append(np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8))
    return out


# ------------------------------------------------------------------------------------------- the bundle


def test_bundle_layout_and_manifests(bundle: Path, paddle_files) -> None:
    pm = read_manifest(bundle, kind="predictor")
    bm = read_manifest(bundle / "backbone", kind="backbone")
    assert pm["architecture"] == "attention_lstm" and pm["num_classes"] == NUM_CLASSES and pm["feature_dim"] == 2048
    assert pm["backbone"] == {"name": BACKBONE_NAME, "sha256": bm["sha256"]}
    assert pm["config"]["onnx_lstm_impl"] == "scan" and pm["postprocess"] == {"topk": 20, "threshold": None}
    assert bm["architecture"] == BACKBONE_NAME and bm["feature_dim"] == 2048 and bm["sampling"] == "segment"
    assert bm["preprocessing"]["preset"] == "videotag" and bm["preprocessing"]["crop"] == 224
    assert bm["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and bm["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert pm["onnx_parity_max_abs_diff"] <= TOL and bm["onnx_parity_max_abs_diff"] <= TOL
    # Labels: same lines, ids = line numbers, duplicated names kept apart.
    labels = (bundle / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == _labels()
    pr = OnnxPredictor(bundle, ["CPUExecutionProvider"])
    assert pr.vocab.ids_of("标签0203") == [203, 3303]
    assert not list(bundle.parent.glob("*.importing*"))  # staging cleaned up


def test_features_match_paddle_reference(bundle: Path, paddle_files) -> None:
    """ONNX backbone on preset crops == NumPy TSN ResNet-101 (Paddle BN, names) on the reference crops."""
    frames = _frames(np.random.default_rng(3))
    pp = Preprocess("videotag")
    crops = np.stack([pp(f) for f in frames])
    ref_crops = np.stack([ref.videotag_crop(f) for f in frames])
    assert np.array_equal(crops, ref_crops)
    got = FrameExtractor(bundle / "backbone", ["CPUExecutionProvider"])(crops)
    want = ref.tsn_resnet_features(paddle_files["tsn"], ref.videotag_normalise(ref_crops))
    assert got.shape == (2, 2048)
    assert np.abs(got - want).max() <= TOL
    assert 0.05 < np.abs(want).mean() < 10  # informative, not saturated/blown-up, features


def test_probabilities_match_paddle_reference(bundle: Path, paddle_files) -> None:
    """ONNX Attention-LSTM == NumPy port of Paddle's lstm/sequence ops, on LoD-style sequences of other lengths."""
    rng = np.random.default_rng(4)
    seqs = [rng.normal(0.0, 0.5, (t, 2048)).astype(np.float32) for t in (17, 1, 6, 40)]
    got = OnnxPredictor(bundle, ["CPUExecutionProvider"]).predict(seqs, batch_size=3)  # two padded batches
    want = ref.attention_lstm(paddle_files["lstm"], seqs)
    assert got.shape == (4, NUM_CLASSES)
    assert np.abs(got - want).max() <= TOL
    assert want.std() > 0.05 and np.abs(want[0] - want[3]).max() > 0.05  # outputs are input-dependent


def test_tag_end_to_end_matches_reference(bundle: Path, paddle_files, tmp_path) -> None:
    """`tag` with the bundle (2 sampled frames to keep the NumPy ResNet cheap) == VideoTag's chain in NumPy."""
    from tests.videogen import make_video
    from videotag import pipeline
    from videotag.core.settings import Settings

    video = make_video(tmp_path / "clip.mp4", frames=11, size=(320, 240))
    settings = Settings(frames=2, topk=20, threshold=None, providers=["CPUExecutionProvider"],
                        weights_dir=tmp_path / "w", data_dir=tmp_path / "d")  # fmt: skip
    (res,) = list(pipeline.tag_sources([str(video)], settings, model=str(bundle)))
    assert res.ok, res.error

    with av.open(str(video)) as c:  # VideoTag decodes every frame (OpenCV, BGR->RGB: same pixels as rgb24)
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = ref.videotag_sample(len(decoded), 2)
    assert idx == [2, 7]
    crops = np.stack([ref.videotag_crop(decoded[i]) for i in idx])
    feats = ref.tsn_resnet_features(paddle_files["tsn"], ref.videotag_normalise(crops))
    probs = ref.attention_lstm(paddle_files["lstm"], [feats])[0]
    top = np.argsort(-probs, kind="stable")[:20]
    assert len(res.tags) == 20
    assert [t.class_id for t in res.tags] == top.tolist()
    assert np.abs(np.array([t.probability for t in res.tags]) - probs[top]).max() <= TOL
    names = _labels()
    assert [t.class_name for t in res.tags] == [names[i] for i in top]


# ------------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    "hw",
    [(360, 640), (640, 360), (256, 256), (300, 300), (256, 455), (455, 256), (1080, 1920), (241, 230), (257, 1000)],
)
def test_videotag_preset_matches_reference(hw) -> None:
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    got = Preprocess("videotag")(frame)
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    assert np.array_equal(got, ref.videotag_crop(frame))


def test_videotag_sampling_matches_reference() -> None:
    for n in (1, 2, 7, 150, 299, 300, 301, 599, 600, 601, 1000, 12345):
        assert segment_indices(n, 300).tolist() == ref.videotag_sample(n, 300), n


# ------------------------------------------------------------------------------------------- refusals


def test_mismatched_tsn_parameters_are_listed(paddle_files) -> None:
    p = dict(paddle_files["tsn"])
    del p["res4b7_branch2b_weights"]
    p["res4b23_branch2a_weights"] = np.zeros((256, 1024, 1, 1), np.float32)
    p["bn2a_branch2a_scale"] = np.ones(65, np.float32)
    with pytest.raises(PaddleWeightsError) as e:
        resnet_from_paddle(p)
    msg = str(e.value)
    assert "missing (1): res4b7_branch2b_weights" in msg
    assert "unexpected (1): res4b23_branch2a_weights" in msg
    assert "misshaped (1): bn2a_branch2a_scale [65] (expected [64])" in msg


def test_tsn_layout_is_resnet101_with_paddle_names(paddle_files) -> None:
    layout = tsn_resnet_layout(101)
    assert len([k for k in layout if k.endswith("_weights")]) == 104  # 1 + 33 blocks x 3 + 4 shortcuts
    assert layout["res4b22_branch2c_weights"] == ("layer3.22.conv3.weight", (1024, 256, 1, 1))
    assert layout["bn5a_branch1_variance"] == ("layer4.0.downsample.1.running_var", (2048,))
    net = resnet_from_paddle(paddle_files["tsn"])  # fc_0.* (a classifier) is present and ignored
    assert net.depth == 101 and net.fc is None
    assert torch.equal(net.layer3[22].conv3.weight, torch.from_numpy(paddle_files["tsn"]["res4b22_branch2c_weights"]))


def test_mismatched_lstm_parameters_are_listed(paddle_files) -> None:
    p = dict(paddle_files["lstm"])
    del p["rgb_weight.w_0"]
    p["fc1.w_0"] = np.zeros((1024, 4096), np.float32)
    p["extra.w_0"] = np.zeros(3, np.float32)
    with pytest.raises(PaddleWeightsError) as e:
        attention_lstm_from_paddle(p)
    msg = str(e.value)
    assert "missing (1): rgb_weight.w_0" in msg and "unexpected (1): extra.w_0" in msg
    assert "fc1.w_0 [1024, 4096] (expected [1024, 8192])" in msg


def test_swapped_files_are_named(paddle_files) -> None:
    with pytest.raises(PaddleWeightsError, match="holds Attention-LSTM weights.*pass it as --lstm"):
        resnet_from_paddle(paddle_files["lstm"])
    with pytest.raises(PaddleWeightsError, match="holds TSN ResNet weights.*pass it as --tsn"):
        attention_lstm_from_paddle(paddle_files["tsn"])


def test_label_count_must_match_output_layer(tmp_path) -> None:
    bad = tmp_path / "labels.txt"
    bad.write_text("\n".join(_labels()[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(PaddleWeightsError, match="has 3395 names but the Attention-LSTM output layer has 3396"):
        load_labels(bad, NUM_CLASSES)
    good = tmp_path / "ok.txt"
    good.write_text("\n".join(_labels()) + "\n\n", encoding="utf-8")  # a trailing blank line is tolerated
    assert len(load_labels(good, NUM_CLASSES)) == NUM_CLASSES


def test_wrong_files_are_refused(tmp_path) -> None:
    text = tmp_path / "notes.pdparams"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(PaddleWeightsError, match="is not a Paddle .pdparams file"):
        load_pdparams(text, "--tsn")
    pth = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, pth)
    with pytest.raises(PaddleWeightsError, match="not a Paddle .pdparams file"):
        load_pdparams(pth)
    lst = tmp_path / "list.pdparams"
    lst.write_bytes(pickle.dumps([np.zeros(2)], protocol=2))
    with pytest.raises(PaddleWeightsError, match="holds a list, not a dict"):
        load_pdparams(lst)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pdparams"
    evil.write_bytes(pickle.dumps({"conv1_weights": Evil()}, protocol=2))
    with pytest.raises(PaddleWeightsError, match="references posix.system"):
        load_pdparams(evil)
    with pytest.raises(PaddleWeightsError, match="does not exist"):
        load_pdparams(tmp_path / "missing.pdparams")


def test_cli_reports_errors_without_traceback(paddle_files, tmp_path) -> None:
    from videotag.cli import _load, app

    _load()
    d = paddle_files["dir"]
    runner = CliRunner()

    def said(res) -> str:  # rich wraps long lines
        return " ".join(res.output.split())

    base = ["import-videotag", "--lstm", str(d / "attention_lstm.pdparams"), "--labels", str(d / "label_3396.txt")]
    res = runner.invoke(app, [*base, "--tsn", str(tmp_path / "nope.pdparams"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--tsn" in said(res) and "nope.pdparams does not exist" in said(res)
    assert "Traceback" not in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    res = runner.invoke(app, [*base, "--tsn", str(d / "tsn.pdparams"), "--out", str(tmp_path / "full")])
    assert res.exit_code == 2 and "exists and is not empty" in said(res)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    res = runner.invoke(app, [*base, "--tsn", str(d / "tsn.pdparams"), "--out", str(tmp_path / "o"),
                              "--lstm-impl", "cudnn"])  # fmt: skip
    assert res.exit_code == 2 and "--lstm-impl" in said(res)


def test_python2_pickles_tar_archives_and_split_parameters(tmp_path) -> None:
    """Paddle 1.x under Python 2 (latin1 byte strings), the released .tar itself, Paddle 2's split big arrays."""
    params = {"conv1_weights": np.arange(-5, 295, dtype=np.float32).reshape(3, 4, 5, 5)}

    class Py2Pickler(pickle._Pickler):  # writes bytes as Python 2 `str` (BINSTRING), as Python 2 pickles do
        dispatch = dict(pickle._Pickler.dispatch)

        def save_bytes(self, obj: bytes) -> None:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
            self.memoize(obj)

        dispatch[bytes] = save_bytes

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(params)
    py2 = tmp_path / "py2.pdparams"
    py2.write_bytes(buf.getvalue())
    assert np.array_equal(load_pdparams(py2)["conv1_weights"], params["conv1_weights"])

    tar_path = tmp_path / "video_tag_tsn.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(py2, arcname="video_tag_tsn/tsn.pdparams")
    assert np.array_equal(load_pdparams(tar_path)["conv1_weights"], params["conv1_weights"])

    flat = params["conv1_weights"].reshape(-1)
    split = {
        "conv1_weights@@.0": flat[:200],
        "conv1_weights@@.1": flat[200:],
        "UnpackBigParamInfor@@": {
            "conv1_weights": {"OriginShape": (3, 4, 5, 5), "slices": ["conv1_weights@@.0", "conv1_weights@@.1"]}
        },
    }
    sp = tmp_path / "split.pdparams"
    sp.write_bytes(pickle.dumps(split, protocol=2))
    assert np.array_equal(load_pdparams(sp)["conv1_weights"], params["conv1_weights"])
