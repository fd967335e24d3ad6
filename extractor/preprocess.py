"""Frame preprocessing presets: decoded RGB frame [H, W, 3] uint8 -> network input [S, S, 3] uint8.

Mean/std normalisation and the NHWC->NCHW transpose live inside the exported ONNX backbone, so frames cross
threads/processes as compact uint8 crops and the same bytes feed CPU, CUDA or TensorRT.

Presets:
- "resize_short_crop" (default): resize so the short side is `resize` (area interpolation when shrinking,
  bilinear when enlarging; aspect kept), centre crop `crop`. The decoder may do the resize itself with swscale
  (`resize_to`), leaving only the crop here.
- "videotag": VideoTag's exact rule: PIL bilinear resize to a fixed 341x256 (landscape/square) or 256x341
  (portrait) unless the short side is already 256 (then unchanged), centre crop 224 at int(round((d-224)/2)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

PRESETS = ("resize_short_crop", "videotag")


@dataclass(frozen=True)
class Preprocess:
    preset: str = "resize_short_crop"
    resize: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preprocessing preset {self.preset!r}; choose from {PRESETS}")

    def to_dict(self) -> dict:
        return asdict(self)

    def resize_to(self, width: int, height: int) -> tuple[int, int] | None:
        """Target (w, h) the decoder may scale to before calling this transform; None = give me the original."""
        if self.preset != "resize_short_crop":
            return None
        s = self.resize / min(width, height)
        return max(self.crop, round(width * s)), max(self.crop, round(height * s))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 RGB -> [crop, crop, 3] uint8 RGB (C-contiguous)."""
        h, w = rgb.shape[:2]
        if self.preset == "videotag":
            if min(w, h) != 256:
                size = (341, 256) if w >= h else (256, 341)
                rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
            h, w = rgb.shape[:2]
            top, left = int(round((h - self.crop) / 2)), int(round((w - self.crop) / 2))
        else:
            tw, th = self.resize_to(w, h)
            if (tw, th) != (w, h):
                interp = cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR
                rgb = cv2.resize(rgb, (tw, th), interpolation=interp)
            h, w = rgb.shape[:2]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
        return np.ascontiguousarray(rgb[top : top + self.crop, left : left + self.crop])
