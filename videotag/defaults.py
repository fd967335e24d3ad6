"""The out-of-the-box models: EfficientNet-Lite0 backbone + its ImageNet head pooled over time.

`videotag setup` calls `export_defaults()` once; it writes `weights/efficientnet_lite0/` (backbone) and
`weights/imagenet_framepool/` (predictor over labels/imagenet1k.txt), each with its manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from extractor.backbone import export_backbone
from extractor.backbones import efficientnet_lite0 as effnet
from extractor.preprocess import Preprocess
from extractor.sampling import DEFAULT_POLICY
from predictor.export import export_predictor
from predictor.models import create_model
from videotag.core.errors import ManifestError
from videotag.core.manifest import add_vocabularies, backbone_id, read_manifest
from videotag.core.vocab import LABELS_DIR, Vocabulary

log = logging.getLogger(__name__)
BACKBONE = "efficientnet_lite0"
PREDICTOR = "imagenet_framepool"
IMAGENET_LABELS = LABELS_DIR / "imagenet1k.txt"


def _valid(model_dir: Path, kind: str, **want) -> bool:
    """A valid model dir whose manifest has the `want`ed values (older exports are redone)."""
    try:
        m = read_manifest(model_dir, kind=kind)
    except ManifestError as e:
        if model_dir.exists():
            log.warning("re-exporting %s: %s", model_dir, e)
        return False
    stale = {k: m.get(k) for k, v in want.items() if m.get(k) != v}
    if stale:
        log.warning("re-exporting %s: made by an older version (%s)", model_dir, stale)
    return not stale


def export_defaults(weights_dir: Path, force: bool = False) -> tuple[Path, Path]:
    """Export the default backbone and predictor under `weights_dir` (skipped when already valid)."""
    bdir, pdir = weights_dir / BACKBONE, weights_dir / PREDICTOR
    net = None
    if force or not _valid(bdir, "backbone", sampling=DEFAULT_POLICY):
        net = effnet.load_pretrained()
        export_backbone(
            net,
            bdir,
            architecture=BACKBONE,
            feature_dim=effnet.FEATURE_DIM,
            preprocess=Preprocess("resize_short_crop", resize=256, crop=effnet.INPUT_SIZE),
            mean=effnet.MEAN,
            std=effnet.STD,
            source=effnet.source_info(),
            sampling=DEFAULT_POLICY,
        )
        log.info("exported %s", bdir)
    bman = read_manifest(bdir, kind="backbone")
    if (
        force
        or not _valid(pdir, "predictor", default_language="en")
        or read_manifest(pdir)["backbone"]["sha256"] != bman["sha256"]
    ):
        net = net or effnet.load_pretrained()
        vocab = Vocabulary.load(IMAGENET_LABELS)
        model = create_model(
            "frame_pool",
            feature_dim=effnet.FEATURE_DIM,
            num_classes=len(vocab),
            pool="meanmax",
            frame_activation="softmax",
        )
        with torch.no_grad():
            model.classifier.weight.copy_(net.classifier.weight)
            model.classifier.bias.copy_(net.classifier.bias)
        export_predictor(
            model,
            pdir,
            vocab,
            backbone=backbone_id(bman),
            extra={
                "description": "EfficientNet-Lite0's ImageNet-1k head on every frame; softmax probabilities "
                "pooled over time as (mean + max) / 2",
                "threshold": None,
            },
        )
        add_vocabularies(pdir, "en", {}, "en")
        log.info("exported %s", pdir)
    return bdir, pdir
