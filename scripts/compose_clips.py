#!/usr/bin/env python3
"""Write N small, distinct H.264 clips for the compose test: compose_clips.py OUT_DIR N [FRAMES] [PREFIX].

Runs inside the videotag image (PyAV and NumPy only), so the host needs neither. Each clip has its own content
(moving shapes seeded by its number), hence its own content hash and its own features: no two items of a batch
share work, and every item costs a real decode and CNN pass.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import av
import numpy as np


def make_clip(path: Path, seed: int, frames: int, size: tuple[int, int] = (192, 144), fps: int = 25) -> None:
    w, h = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(3,), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast"}
        cx, cy, vx, vy = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-4, 4), rng.uniform(-4, 4)
        for k in range(frames):
            img = np.empty((h, w, 3), np.uint8)
            img[:] = (base + np.array([k * 3, k * 5, k * 7])) % 255
            cx, cy = (cx + vx) % w, (cy + vy) % h
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (12 + seed % 20) ** 2
            img[disc] = 255 - img[disc]
            img[(xx // 16 + yy // 16 + k // 5 + seed) % 7 == 0] //= 2
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main(argv: list[str]) -> None:
    out, n = Path(argv[1]), int(argv[2])
    frames = int(argv[3]) if len(argv) > 3 else 60
    prefix = argv[4] if len(argv) > 4 else "clip"
    out.mkdir(parents=True, exist_ok=True)
    base = (zlib.crc32(prefix.encode()) % 100_000) * 1000  # distinct seeds within and across prefixes
    for i in range(n):
        make_clip(out / f"{prefix}_{i:03d}.mp4", seed=base + i, frames=frames + i % 7)
    print(f"{n} clips in {out}")


if __name__ == "__main__":
    main(sys.argv)
