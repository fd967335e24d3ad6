"""`videotag export-backbone`: a ResNet-50 TSN backbone from a local torchvision-format state dict, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from extractor.backbone import FrameExtractor
from extractor.backbones.resnet import ResNet
from videotag.core.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]


def test_resnet50_from_state_dict_file(tmp_path, sample_videos):
    torch.manual_seed(0)
    net = ResNet(50, num_classes=1000)
    for m in net.modules():  # keep random-weight activations O(1) through 16 blocks
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(4.0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r50.pth")
    out = tmp_path / "resnet50"
    p = subprocess.run(
        [sys.executable, "-m", "videotag", "export-backbone", "--arch", "resnet50", "--weights",
         str(tmp_path / "r50.pth"), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    m = read_manifest(out, kind="backbone")
    assert m["feature_dim"] == 2048 and m["onnx_parity_max_abs_diff"] <= 1e-4
    fx = FrameExtractor(out)
    frames = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = torch.tensor(frames).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    assert np.abs(fx(frames) - ref).max() <= 1e-4

    # wrong depth: a clear list of mismatches, no traceback
    p = subprocess.run(
        [sys.executable, "-m", "videotag", "export-backbone", "--arch", "resnet101", "--weights",
         str(tmp_path / "r50.pth"), "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert p.returncode == 2 and "missing" in p.stderr and "Traceback" not in p.stderr
