"""Small generated models for quantisation tests: a 3-conv backbone (32 px crops) and a frame-pool predictor.

bdir = tiny_backbone(weights / "tinybb")                  # uint8 frames -> 16-d features, with a manifest
pdir = tiny_predictor(weights / "tinypred", bdir)         # 10 classes, trained on tinybb's features
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FEATURE_DIM = 16
NUM_CLASSES = 10


class TinyNet(nn.Module):
    """conv-bn-relu x3 (first and last conv differ, so the exclusion ladder has three rungs), global mean."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, FEATURE_DIM, 1), nn.BatchNorm2d(FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def tiny_backbone(out: Path, seed: int = 0, architecture: str = "tinybb") -> Path:
    from extractor.backbone import export_backbone
    from extractor.preprocess import Preprocess

    torch.manual_seed(seed)
    net = TinyNet().eval()
    with torch.no_grad():  # BN statistics that are not the identity, as after training
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.3)
    return export_backbone(
        net, out, architecture=architecture, feature_dim=FEATURE_DIM, preprocess=Preprocess(crop=32, resize=36),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), source={"package": "tests"},
    )  # fmt: skip


def tiny_predictor(out: Path, backbone_dir: Path, seed: int = 0) -> Path:
    from predictor.export import export_predictor
    from predictor.models import create_model
    from videotag.core.manifest import add_vocabularies, backbone_id, read_manifest
    from videotag.core.vocab import Vocabulary

    torch.manual_seed(seed)
    model = create_model("frame_pool", feature_dim=FEATURE_DIM, num_classes=NUM_CLASSES, pool="meanmax",
                         frame_activation="softmax")  # fmt: skip
    with torch.no_grad():  # spread the classes so the top tags are not a coin toss
        model.classifier.weight.mul_(8.0)
    vocab = Vocabulary(tuple(f"class {i}" for i in range(NUM_CLASSES)))
    export_predictor(model.eval(), out, vocab, backbone=backbone_id(read_manifest(backbone_dir, kind="backbone")))
    add_vocabularies(out, "en", {}, "en")
    return out
