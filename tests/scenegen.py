"""Procedural "scenes" for real test videos that an ImageNet CNN can tell apart (benchmarks, learning tests).

Each of the `SCENES` is a distinct kind of picture drawn with numpy + OpenCV (sky with sun and hills, a night
skyline, a brick wall, sea waves, a forest, a checkerboard, polka dots, a page of text, rainbow stripes, an
archery target, desert dunes, stained-glass tiles). Every call of `render_scene(name, rng)` draws a new instance
(colours, sizes, counts and positions jittered), so two videos of the same scene never share pixels.

A video is a list of shots `(scene, n_frames)`; `make_scene_video` renders each shot's picture once on a canvas
larger than the frame and films it with a moving camera (random pan and zoom per shot), a per-video brightness and
contrast, per-frame sensor noise, and encodes it lossy with H.264 (libx264, CRF 23, yuv420p) in mp4 through PyAV.

    from tests.scenegen import SCENES, make_scene_video
    make_scene_video("v.mp4", [("forest", 24), ("brick_wall", 24)], seed=7)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import av
import cv2
import numpy as np

FRAME_SIZE = (320, 240)  # (width, height) of the written video
CANVAS = (480, 360)  # scenes are drawn this big, the camera films a moving window of it


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 25) -> tuple[int, int, int]:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return tuple(int(v) for v in c)


def _vgradient(h: int, w: int, top: Sequence[int], bottom: Sequence[int]) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    col = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
    return np.broadcast_to(col, (h, w, 3)).astype(np.uint8).copy()


def _sky_sun(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = _vgradient(h, w, _jitter(rng, (60, 120, 220)), _jitter(rng, (170, 210, 250)))
    cx, cy, r = int(rng.integers(w // 6, 5 * w // 6)), int(rng.integers(h // 8, h // 3)), int(rng.integers(25, 45))
    cv2.circle(img, (cx, cy), r, _jitter(rng, (255, 220, 60), 15), -1, cv2.LINE_AA)
    xs = np.arange(w)
    for k, base in enumerate((0.62, 0.75)):
        amp, freq, ph = rng.uniform(15, 35), rng.uniform(1.0, 3.0), rng.uniform(0, 2 * np.pi)
        top = (h * base + amp * np.sin(xs / w * 2 * np.pi * freq + ph)).astype(np.int32)
        pts = np.concatenate([np.stack([xs, top], 1), [[w - 1, h - 1], [0, h - 1]]]).astype(np.int32)
        cv2.fillPoly(img, [pts], _jitter(rng, (60 + 30 * k, 140 - 20 * k, 50)))
    return img


def _night_city(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = _vgradient(h, w, _jitter(rng, (10, 10, 40), 8), _jitter(rng, (30, 30, 70), 8))
    for _ in range(int(rng.integers(30, 60))):  # stars
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h // 2))), 1, (230, 230, 200), -1)
    x = -int(rng.integers(0, 30))
    while x < w:
        bw, bh = int(rng.integers(35, 80)), int(rng.integers(h // 3, 5 * h // 6))
        cv2.rectangle(img, (x, h - bh), (x + bw, h), _jitter(rng, (25, 25, 30), 10), -1)
        for wy in range(h - bh + 8, h - 8, 14):
            for wx in range(x + 6, x + bw - 8, 12):
                if rng.random() < 0.55:
                    cv2.rectangle(img, (wx, wy), (wx + 5, wy + 7), _jitter(rng, (250, 210, 90), 20), -1)
        x += bw + int(rng.integers(2, 10))
    return img


def _brick_wall(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    mortar = _jitter(rng, (200, 195, 185), 15)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = mortar
    bh, bw = int(rng.integers(18, 28)), int(rng.integers(45, 70))
    base = np.asarray(_jitter(rng, (160, 60, 40), 20))
    for row, y in enumerate(range(0, h, bh)):
        off = (bw // 2) * (row % 2) + int(rng.integers(0, 6))
        for x in range(-off, w, bw):
            col = tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, 3), 0, 255))
            cv2.rectangle(img, (x + 2, y + 2), (x + bw - 2, y + bh - 2), col, -1)
    return img


def _ocean_waves(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f1, f2 = rng.uniform(0.03, 0.06), rng.uniform(0.08, 0.15)
    wave = np.sin(yy * f1 + 12 * np.sin(xx * 0.02 + rng.uniform(0, 6)) * 0.1 + rng.uniform(0, 6))
    wave += 0.5 * np.sin(yy * f2 + xx * 0.01)
    deep, light = np.asarray(_jitter(rng, (10, 60, 130))), np.asarray(_jitter(rng, (40, 140, 200)))
    t = ((wave + 1.5) / 3.0).clip(0, 1)[..., None]
    img = (1 - t) * deep + t * light
    img[wave > 1.2] = (235, 240, 245)  # foam crests
    return img.astype(np.uint8)


def _forest(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = _vgradient(h, w, _jitter(rng, (150, 190, 140)), _jitter(rng, (40, 80, 30)))
    for _ in range(int(rng.integers(35, 60))):
        x, base, th = int(rng.integers(-20, w + 20)), int(rng.integers(h // 3, h + 30)), int(rng.integers(70, 170))
        tw = th // 3
        cv2.rectangle(img, (x - 4, base - 20), (x + 4, base + 10), _jitter(rng, (90, 60, 30), 15), -1)
        pts = np.array([[x, base - th], [x - tw, base - 15], [x + tw, base - 15]], np.int32)
        cv2.fillPoly(img, [pts], _jitter(rng, (20, 100, 35), 25), cv2.LINE_AA)
    return img


def _checkerboard(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    s = int(rng.integers(24, 48))
    yy, xx = np.mgrid[0:h, 0:w]
    a, b = np.asarray(_jitter(rng, (20, 20, 20), 15)), np.asarray(_jitter(rng, (235, 235, 235), 15))
    mask = ((yy // s + xx // s) % 2).astype(bool)
    img = np.where(mask[..., None], a, b).astype(np.uint8)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-20, 20)), 1.3)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def _polka_dots(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = _jitter(rng, (250, 235, 215), 10)
    palette = [(230, 50, 60), (40, 120, 220), (250, 190, 30), (60, 170, 80), (160, 60, 190)]
    for _ in range(int(rng.integers(40, 80))):
        col = _jitter(rng, palette[int(rng.integers(0, len(palette)))], 20)
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(8, 26)), col, -1,
                   cv2.LINE_AA)  # fmt: skip
    return img


def _text_page(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = _jitter(rng, (245, 243, 235), 8)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    scale = float(rng.uniform(0.5, 0.8))
    step = int(22 * scale / 0.6)
    ink = _jitter(rng, (25, 25, 35), 15)
    for y in range(step, h, step):
        line = "".join(letters[int(i)] for i in rng.integers(0, len(letters), 60))
        cv2.putText(img, line, (int(rng.integers(5, 20)), y), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
    return img


def _rainbow_stripes(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang, period = rng.uniform(0, np.pi), rng.uniform(60, 140)
    t = (xx * np.cos(ang) + yy * np.sin(ang)) / period + rng.uniform(0, 1)
    hue = ((t % 1.0) * 179).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 230), np.full_like(hue, 240)], -1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _target_rings(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = _jitter(rng, (120, 160, 90), 20)
    cx, cy = int(w / 2 + rng.integers(-60, 61)), int(h / 2 + rng.integers(-40, 41))
    ring = int(rng.integers(14, 22))
    cols = [_jitter(rng, (240, 240, 240), 10), _jitter(rng, (30, 30, 30), 10), _jitter(rng, (40, 120, 230), 15),
            _jitter(rng, (220, 40, 40), 15), _jitter(rng, (250, 220, 40), 15)]  # fmt: skip
    for i, r in enumerate(range(ring * 10, 0, -ring)):
        cv2.circle(img, (cx, cy), r, cols[min(i // 2, 4)], -1, cv2.LINE_AA)
    return img


def _desert(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = _vgradient(h, w, _jitter(rng, (200, 220, 240), 10), _jitter(rng, (240, 230, 210), 10))
    xs = np.arange(w)
    sand = np.asarray(_jitter(rng, (215, 170, 100), 15))
    for k in range(3):
        amp, freq, ph = rng.uniform(10, 30), rng.uniform(0.6, 1.8), rng.uniform(0, 2 * np.pi)
        top = (h * (0.35 + 0.18 * k) + amp * np.sin(xs / w * 2 * np.pi * freq + ph)).astype(np.int32)
        pts = np.concatenate([np.stack([xs, top], 1), [[w - 1, h - 1], [0, h - 1]]]).astype(np.int32)
        shade = tuple(int(v) for v in np.clip(sand * (0.85 + 0.08 * k), 0, 255))
        cv2.fillPoly(img, [pts], shade)
    grain = rng.normal(0, 10, (h, w, 1))
    return np.clip(img + grain * (np.arange(h)[:, None, None] > h * 0.35), 0, 255).astype(np.uint8)


def _stained_glass(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    s = int(rng.integers(30, 50))
    for y in range(0, h, s):
        for x in range(0, w, s):
            hue = int(rng.integers(0, 180))
            col = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2RGB)[0, 0]
            dx, dy = rng.integers(-6, 7, 2)
            cv2.rectangle(img, (x + 3 + int(dx), y + 3 + int(dy)), (x + s - 3, y + s - 3), tuple(int(c) for c in col),
                          -1)  # fmt: skip
    return img


SCENES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "sky_sun": _sky_sun,
    "night_city": _night_city,
    "brick_wall": _brick_wall,
    "ocean_waves": _ocean_waves,
    "forest": _forest,
    "checkerboard": _checkerboard,
    "polka_dots": _polka_dots,
    "text_page": _text_page,
    "rainbow_stripes": _rainbow_stripes,
    "target_rings": _target_rings,
    "desert": _desert,
    "stained_glass": _stained_glass,
}


def render_scene(name: str, rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> np.ndarray:
    """A new [h, w, 3] uint8 RGB instance of scene `name` (size is (width, height))."""
    w, h = size
    return np.ascontiguousarray(SCENES[name](rng, w, h))


def film(canvas: np.ndarray, n: int, rng: np.random.Generator, size: tuple[int, int] = FRAME_SIZE) -> list[np.ndarray]:
    """n frames of a camera that pans and zooms linearly across `canvas` (random start/end per call)."""
    ch, cw = canvas.shape[:2]
    fw, fh = size
    z0, z1 = rng.uniform(1.0, 1.4, 2)  # zoom: the window covers (frame size / zoom) ... canvas limits
    out = []
    p0, p1 = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
    for i in range(n):
        t = i / max(1, n - 1)
        z = (1 - t) * z0 + t * z1
        win_w = min(cw, fw * 1.4 / z)
        win_h = win_w * fh / fw
        px = ((1 - t) * p0 + t * p1) * [cw - win_w, ch - win_h]
        s = fw / win_w
        m = np.float32([[s, 0, -px[0] * s], [0, s, -px[1] * s]])
        out.append(cv2.warpAffine(canvas, m, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return out


def make_scene_video(
    path: str | Path,
    shots: Sequence[tuple[str, int]],
    seed: int,
    fps: int = 16,
    size: tuple[int, int] = FRAME_SIZE,
    crf: int = 23,
    preset: str = "veryfast",
) -> Path:
    """Write an H.264 mp4 showing `shots` [(scene name, frames), ...] in order; return its path."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    gain, bias = rng.uniform(0.75, 1.2), rng.uniform(-20, 20)  # per-video brightness/contrast
    lut = np.clip(np.arange(256) * gain + bias, 0, 255).astype(np.uint8)
    noise = int(rng.integers(2, 7))
    tmp = path.with_name("." + path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": preset, "crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        for name, n in shots:
            for img in film(render_scene(name, rng), n, rng, size):
                f = cv2.LUT(img, lut).astype(np.int16)
                f += rng.integers(-noise, noise + 1, img.shape[:2] + (1,), dtype=np.int16)
                frame = av.VideoFrame.from_ndarray(np.clip(f, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def contact_sheet(path: str | Path, seed: int = 0, per_scene: int = 3) -> Path:
    """A PNG with `per_scene` random instances (first frames of a filmed shot) of every scene, one row per scene."""
    rng = np.random.default_rng(seed)
    rows = []
    for name in SCENES:
        tiles = [cv2.resize(film(render_scene(name, rng), 1, rng)[0], (160, 120)) for _ in range(per_scene)]
        rows.append(np.concatenate(tiles, 1))
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    return Path(path)
