"""Backbones as ONNX models: export (with a parity assert) and the per-process runtime.

Exported graph: `frames` uint8 [B, S, S, 3] RGB -> `features` float32 [B, D]. Casting, /255, mean/std and the
NHWC->NCHW transpose are inside the graph, so decoded crops travel as compact uint8 and every execution
provider (CPU, CUDA, TensorRT) gets the same input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from extractor.preprocess import Preprocess
from extractor.sampling import DEFAULT_POLICY
from videotag.core.manifest import WEIGHTS_NAME, read_manifest, staged_dir, write_manifest
from videotag.core.onnx_sessions import get_session

if TYPE_CHECKING:  # torch is only needed to export; serving (FrameExtractor) stays torch-free and lean
    from torch import nn

OPSET = 17
PARITY_TOL = 1e-4


def _uint8_wrapper(features: nn.Module, mean, std) -> nn.Module:
    """uint8 NHWC RGB -> normalised float NCHW -> features."""
    import torch
    from torch import nn

    class UInt8Frames(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            x = frames.permute(0, 3, 1, 2).to(torch.float32)
            return self.features((x - self.mean) * self.inv_std)

    return UInt8Frames()


def export_backbone(
    features_module: nn.Module,
    out_dir: str | Path,
    *,
    architecture: str,
    feature_dim: int,
    preprocess: Preprocess,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    source: dict[str, Any],
    sampling: str = DEFAULT_POLICY,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Export `features_module` (normalised NCHW float -> [B, D]) as a uint8-input backbone model dir.

    Asserts ONNX Runtime (CPU) == torch within 1e-4 on random frames; writes model.onnx + manifest.json.
    """
    import torch

    wrapped = _uint8_wrapper(features_module.eval(), mean, std).eval()
    s = preprocess.crop
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, s, s, 3), dtype=torch.uint8, generator=g)
    with staged_dir(out_dir) as tmp:
        diff = _export_checked(wrapped, frames, tmp / WEIGHTS_NAME, architecture, feature_dim)
        write_manifest(
            tmp,
            {
                "kind": "backbone",
                "architecture": architecture,
                "feature_dim": feature_dim,
                "input": {"name": "frames", "layout": "NHWC", "dtype": "uint8", "color": "RGB", "size": s},
                "preprocessing": {**preprocess.to_dict(), "mean": list(mean), "std": list(std), "scale": "1/255"},
                "sampling": sampling,
                "output": {"name": "features", "pooling": "global average"},
                "opset": OPSET,
                "onnx_parity_max_abs_diff": diff,
                "source": source,
                **(extra or {}),
            },
        )
    return Path(out_dir)


def _export_checked(wrapped: nn.Module, frames, path: Path, architecture: str, feature_dim: int) -> float:
    """torch.onnx.export to `path`, then assert ONNX Runtime (CPU) == torch; returns the max |diff|."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = wrapped(frames).numpy()
        torch.onnx.export(
            wrapped,
            (frames,),
            str(path),
            input_names=["frames"],
            output_names=["features"],
            dynamic_axes={"frames": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # one self-contained file
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"frames": frames.numpy()})[0]
    if got.shape != (len(frames), feature_dim):
        raise AssertionError(f"{architecture}: exported features have shape {got.shape}, expected (_, {feature_dim})")
    diff = float(np.abs(got - ref).max())
    if diff > PARITY_TOL:
        raise AssertionError(f"{architecture}: ONNX differs from torch by {diff:.2e} > {PARITY_TOL}")
    return diff


class FrameExtractor:
    """A backbone model dir served by ONNX Runtime: uint8 crops [B, S, S, 3] -> features [B, D] float32."""

    def __init__(self, model_dir: str | Path, providers=None, intra_op_threads: int = 0) -> None:
        self.dir = Path(model_dir)
        self.manifest = read_manifest(self.dir, kind="backbone")
        pp = self.manifest["preprocessing"]
        self.preprocess = Preprocess(preset=pp["preset"], resize=pp["resize"], crop=pp["crop"])
        self.session = get_session(self.dir / self.manifest["weights"], providers, intra_op_threads)
        self.provider = self.session.get_providers()[0]

    @property
    def name(self) -> str:
        return str(self.manifest["architecture"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def sampling(self) -> str:
        return str(self.manifest.get("sampling", "segment"))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """[B, S, S, 3] uint8 -> [B, D] float32."""
        return self.session.run(["features"], {"frames": np.ascontiguousarray(frames)})[0]
