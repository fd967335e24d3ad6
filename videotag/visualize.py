"""Pictures of a tagging result: a PNG contact sheet (sampled frames + the top tags as bars) and an MP4 copy of
the video with the top tags drawn on every frame (as PaddleX's `save_to_video`).

Frames come from the project's decoder (`extractor.decode`: display rotation applied, damaged files tolerated).
Text is drawn with Pillow: DejaVu Sans (shipped with matplotlib) for Latin text, and a CJK font found through
fontconfig (`fc-list :lang=zh`, e.g. fonts-wqy-microhei or fonts-noto-cjk) for names it lacks glyphs for, such
as VideoTag's Chinese labels. Without such a font a name is drawn as "#class_id name" (missing glyphs show as
boxes) and a warning is logged. Files are written under a temporary name and renamed, so a failure never leaves
a half-written picture; every failure raises `VideotagError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from videotag.core.errors import VideotagError
from videotag.core.results import Tag, VideoResult

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
INK = (33, 37, 41)
MUTED = (108, 117, 125)
BAR = (47, 111, 208)
TRACK = (230, 235, 242)
THUMB_BOX = 240  # a contact-sheet frame fits in THUMB_BOX x THUMB_BOX pixels
PAD = 12
_KNOWN_CJK = ("NotoSansCJK-Regular.ttc", "wqy-microhei.ttc", "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf")

# ------------------------------------------------------------------------------------------------------ fonts


@dataclass(frozen=True)
class _FontFile:
    path: str
    index: int = 0


@lru_cache(maxsize=1)
def _font_files() -> tuple[tuple[_FontFile, _FontFile], ...]:
    """(regular, bold) font files in order of preference: DejaVu Sans first, then CJK fonts from fontconfig."""
    found: list[tuple[_FontFile, _FontFile]] = []
    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        if (ttf / "DejaVuSans.ttf").is_file():
            found.append((_FontFile(str(ttf / "DejaVuSans.ttf")), _FontFile(str(ttf / "DejaVuSans-Bold.ttf"))))
    except ImportError:
        pass
    cjk: list[_FontFile] = []
    if shutil.which("fc-list"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listing = subprocess.run(
                ["fc-list", ":lang=zh", "-f", "%{file}|%{index}|%{family}|%{style}\n"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout  # fmt: skip
            rows = [line.split("|") for line in listing.splitlines() if line.count("|") == 3]
            rows = [r for r in rows if "mono" not in r[2].lower() and "serif" not in r[2].lower()] or rows
            rows.sort(key=lambda r: ("regular" not in r[3].lower() and "book" not in r[3].lower(), r[0], r[1]))
            cjk = [_FontFile(p, int(i or 0)) for p, i, _, _ in rows if Path(p).is_file()]
    if not cjk:  # no fontconfig: look where Debian's CJK font packages put theirs
        for name in _KNOWN_CJK:
            cjk += [_FontFile(str(p)) for p in sorted(Path("/usr/share/fonts").rglob(name))]
    found += [(f, f) for f in dict.fromkeys(cjk)]
    return tuple(found)


@lru_cache(maxsize=8)
def _charset(font: _FontFile) -> frozenset[int]:
    """Code points a font file has glyphs for (empty if unreadable)."""
    try:
        from fontTools.ttLib import TTFont

        with TTFont(font.path, fontNumber=font.index, lazy=True) as tt:
            return frozenset(tt.getBestCmap() or {})
    except Exception as e:  # noqa: BLE001 - a broken font file is skipped, never fatal
        log.debug("cannot read the character map of %s: %s", font.path, e)
        return frozenset()


@lru_cache(maxsize=64)
def _load(font: _FontFile | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if font is None:
        return ImageFont.load_default(size)
    try:
        return ImageFont.truetype(font.path, size, index=font.index)
    except OSError:
        return ImageFont.load_default(size)


_warned: set[str] = set()


def _font_for(text: str, size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont | None:
    """A font with glyphs for every character of `text`, or None if no font found here has them all."""
    need = {ord(c) for c in text if not c.isspace()}
    for regular, heavy in _font_files():
        if need <= _charset(regular):
            return _load(heavy if bold else regular, size)
    return None


def _fit_text(text: str, size: int, bold: bool = False, class_id: int | None = None):
    """(text, font) to draw: `text` with a font that covers it; else "#id text" in the best font, with a warning."""
    font = _font_for(text, size, bold)
    if font is not None:
        return text, font
    if text not in _warned:
        _warned.add(text)
        log.warning(
            "no font here has glyphs for %r (install a CJK font, e.g. fonts-wqy-microhei); drawing it with boxes",
            text,
        )
    files = _font_files()
    fallback = _load((files[0][1] if bold else files[0][0]) if files else None, size)
    return (f"#{class_id} {text}" if class_id is not None else text), fallback


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    return int(np.ceil(draw.textlength(text, font=font)))


def _ellipsize(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "...", font) > width:
        text = text[:-1]
    return text + "..."


# ------------------------------------------------------------------------------------------------ helpers


def _atomic_target(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")


def _publish(tmp: Path, out: Path) -> Path:
    os.replace(tmp, out)
    return out


def _top(result: VideoResult, n: int) -> list[Tag]:
    return sorted(result.tags, key=lambda t: (-t.probability, t.class_id))[: max(n, 0)]


class _Fit:
    """Decoder transform: scale each sampled frame (in the decoder's own swscale call) to fit a box."""

    def __init__(self, box: int) -> None:
        self.box = box

    def resize_to(self, w: int, h: int) -> tuple[int, int]:
        s = self.box / max(w, h)
        return max(1, round(w * s)), max(1, round(h * s))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return rgb


def _sample_frames(video_path: Path, count: int, box: int):
    """(frames [(index, seconds, rgb)], VideoInfo): `count` frames spread evenly over the video, each once."""
    from extractor.decode import SampledDecoder

    dec = SampledDecoder(str(video_path), num_frames=count, policy="uniform", transform=_Fit(box))
    got = {int(i): rgb for i, rgb in dec}  # keyed by index: a second decoding pass may repeat frames
    assert dec.plan is not None
    times = {int(i): float(t) for i, t in zip(dec.plan.indices, dec.plan.timestamps, strict=True)}
    keep = dict.fromkeys(int(i) for i in dec.plan.indices)  # short videos repeat indices cyclically
    return [(i, times[i], got[i]) for i in keep], dec.info


# ------------------------------------------------------------------------------------------- contact sheet


def contact_sheet(video_path: str | Path, result: VideoResult, out_png: str | Path, frames: int = 12,
                  tags: int = 5) -> Path:  # fmt: skip
    """Write a PNG: `frames` frames sampled evenly over the video in a grid (captioned with frame index and time)
    above the top `tags` tags as horizontal bars (length = probability, name and value written). Returns out_png."""
    video_path, out_png = Path(video_path), Path(out_png)
    try:
        sampled, info = _sample_frames(video_path, max(1, frames), THUMB_BOX)
        sheet = _draw_sheet(video_path, result, sampled, info, _top(result, tags))
        tmp = _atomic_target(out_png)
        try:
            sheet.save(tmp, "PNG", optimize=True)
            return _publish(tmp, out_png)
        finally:
            tmp.unlink(missing_ok=True)
    except VideotagError as e:
        raise VideotagError(f"cannot draw the contact sheet of {video_path}: {e}") from e
    except (OSError, ValueError, RuntimeError) as e:
        raise VideotagError(f"cannot write the contact sheet {out_png} for {video_path}: {e}") from e


def _draw_sheet(video_path: Path, result: VideoResult, sampled, info, top: list[Tag]) -> Image.Image:
    cols = min(4, len(sampled))
    rows = -(-len(sampled) // cols)
    cell_w = max(THUMB_BOX, max(rgb.shape[1] for _, _, rgb in sampled))
    cell_h = max(rgb.shape[0] for _, _, rgb in sampled)
    caption_h = 22
    width = max(cols * cell_w + (cols + 1) * PAD, 640)
    head_h = 64
    grid_h = rows * (cell_h + caption_h + PAD)
    bar_row, tags_head = 30, 34
    tags_h = tags_head + max(len(top), 1) * bar_row + PAD
    img = Image.new("RGB", (width, head_h + grid_h + tags_h + PAD), BACKGROUND)
    d = ImageDraw.Draw(img)

    title, font = _fit_text(Path(urllib.parse.urlparse(result.source).path).name or str(video_path), 20, bold=True)
    d.text((PAD, PAD), _ellipsize(d, title, font, width - 2 * PAD), fill=INK, font=font)
    facts = [result.model or "no model", f"{info.duration:.1f} s", f"{info.decoded_frames} frames",
             f"{info.fps:.2f} fps", f"{info.width}x{info.height}"]  # fmt: skip
    if info.rotation:
        facts.append(f"rotated {info.rotation}\N{DEGREE SIGN}")
    if result.video_id:
        facts.append(f"id {result.video_id[:12]}")
    sub, font = _fit_text("  \N{MIDDLE DOT}  ".join(facts), 13)
    d.text((PAD, PAD + 28), _ellipsize(d, sub, font, width - 2 * PAD), fill=MUTED, font=font)

    x0 = (width - (cols * cell_w + (cols - 1) * PAD)) // 2
    cap_font = _load(_font_files()[0][0] if _font_files() else None, 12)
    for n, (index, seconds, rgb) in enumerate(sampled):
        r, c = divmod(n, cols)
        x = x0 + c * (cell_w + PAD)
        y = head_h + r * (cell_h + caption_h + PAD)
        h, w = rgb.shape[:2]
        img.paste(Image.fromarray(rgb), (x + (cell_w - w) // 2, y + (cell_h - h) // 2))
        cap = f"frame {index}  \N{MIDDLE DOT}  {seconds:.2f} s"
        d.text((x + cell_w // 2, y + cell_h + 4), cap, fill=MUTED, font=cap_font, anchor="mt")

    y = head_h + grid_h
    head, font = _fit_text(f"Top {len(top)} tags" if top else "No tags", 16, bold=True)
    d.text((PAD, y), head, fill=INK, font=font)
    y += tags_head
    if not top:
        note = "no tag above the threshold" if result.model else "features only (no predictor ran)"
        d.text((PAD, y), note, fill=MUTED, font=_load(_font_files()[0][0] if _font_files() else None, 14))
        return img
    labels = [_fit_text(t.class_name, 15, class_id=t.class_id) for t in top]
    label_w = min(max(_text_width(d, s, f) for s, f in labels), width // 3)
    value_font = _load(_font_files()[0][0] if _font_files() else None, 14)
    value_w = _text_width(d, "0.000", value_font) + PAD
    bar_x = PAD + label_w + PAD
    bar_w = width - bar_x - PAD - value_w
    for t, (label, font) in zip(top, labels, strict=True):
        mid = y + bar_row // 2
        d.text((PAD + label_w, mid), _ellipsize(d, label, font, label_w), fill=INK, font=font, anchor="rm")
        d.rectangle((bar_x, mid - 9, bar_x + bar_w, mid + 9), fill=TRACK)
        p = min(max(t.probability, 0.0), 1.0)
        if p > 0:
            d.rectangle((bar_x, mid - 9, bar_x + max(1, round(p * bar_w)), mid + 9), fill=BAR)
        d.text((bar_x + bar_w + PAD // 2, mid), f"{t.probability:.3f}", fill=INK, font=value_font, anchor="lm")
        y += bar_row
    return img


# -------------------------------------------------------------------------------------------- tagged video


def _overlay(lines: list[tuple[str, object]], width: int, height: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(alpha [h, w, 1] float32, premultiplied rgb [h, w, 3] float32, x, y) of the tag box for a frame size."""
    size = int(np.clip(round(height / 22), 10, 48))
    pad = max(3, size // 3)
    drawn = [_fit_text(name, size, class_id=cid) + (f"{p:.2f}",) for (name, cid), p in lines]
    scratch = ImageDraw.Draw(Image.new("L", (1, 1)))
    value_font = _load(_font_files()[0][0] if _font_files() else None, size)
    name_w = max(_text_width(scratch, t, f) for t, f, _ in drawn)
    value_w = max(_text_width(scratch, v, value_font) for _, _, v in drawn)
    line_h = round(size * 1.35)
    box_w = min(name_w + value_w + 3 * pad, width - 2 * pad)
    box_h = min(len(drawn) * line_h + 2 * pad - (line_h - size) // 2, height - 2 * pad)
    box = Image.new("RGBA", (max(box_w, 1), max(box_h, 1)), (0, 0, 0, 150))
    d = ImageDraw.Draw(box)
    for k, (text, font, value) in enumerate(drawn):
        y = pad + k * line_h + size // 2
        d.text((box_w - pad, y), value, fill=(255, 255, 255, 255), font=value_font, anchor="rm")
        room = box_w - 3 * pad - _text_width(d, value, value_font)
        d.text((pad, y), _ellipsize(d, text, font, room), fill=(255, 255, 255, 255), font=font, anchor="lm")
    rgba = np.asarray(box, dtype=np.float32) / 255.0
    alpha = rgba[..., 3:4]
    return alpha, rgba[..., :3] * alpha * 255.0, pad, pad


def tagged_video(video_path: str | Path, result: VideoResult, out_mp4: str | Path, tags: int = 3) -> Path:
    """Re-encode the video to H.264 MP4 with the top `tags` tags ("name 0.87") in a semi-transparent box.

    Same frame rate, frame times and display size (rotation applied to the pixels; an odd width or height loses
    its last pixel column/row, which H.264 4:2:0 needs even). Decodes and encodes one frame at a time, so memory
    does not grow with video length. Audio and subtitles are dropped. Returns out_mp4.
    """
    import av
    import cv2
    from av.video.reformatter import VideoReformatter

    from extractor.decode import _CV2_ROTATE, _FrameReader, _open, probe

    video_path, out_mp4 = Path(video_path), Path(out_mp4)
    top = _top(result, tags)
    tmp = _atomic_target(out_mp4)
    try:
        info = probe(str(video_path))
        w, h = info.width - info.width % 2, info.height - info.height % 2
        if w < 2 or h < 2:
            raise VideotagError(f"{info.width}x{info.height} is too small to encode")
        lines = [((t.class_name, t.class_id), t.probability) for t in top]
        alpha, ink, ox, oy = _overlay(lines, w, h) if lines else (None, None, 0, 0)
        src, stream = _open(str(video_path))
        written = 0
        try:
            tb = stream.time_base or Fraction(1, 90000)
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            step = max(1, round(1 / (float(rate) * float(tb))))
            with av.open(str(tmp), "w", format="mp4") as dst:
                enc = dst.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "18"})
                enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
                enc.codec_context.time_base = tb
                enc.time_base = tb
                reformatter = VideoReformatter()
                reader = _FrameReader(src, stream)
                last_pts: int | None = None
                first_pts: int | None = None
                for frame in reader:
                    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                    if info.rotation:
                        rgb = cv2.rotate(rgb, _CV2_ROTATE[info.rotation])
                    rgb = np.ascontiguousarray(rgb[:h, :w])
                    if alpha is not None:
                        bh, bw = alpha.shape[:2]
                        region = rgb[oy : oy + bh, ox : ox + bw]
                        a, i = alpha[: region.shape[0], : region.shape[1]], ink[: region.shape[0], : region.shape[1]]
                        region[...] = np.clip(region * (1.0 - a) + i + 0.5, 0, 255).astype(np.uint8)
                    pts = frame.pts
                    if pts is not None and first_pts is None:
                        first_pts = pts
                    pts = None if pts is None else pts - (first_pts or 0)
                    if pts is None or (last_pts is not None and pts <= last_pts):
                        pts = 0 if last_pts is None else last_pts + step  # no or non-increasing time: next slot
                    last_pts = pts
                    out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                    out.pts, out.time_base = pts, tb
                    for packet in enc.encode(out):
                        dst.mux(packet)
                    written += 1
                for packet in enc.encode():
                    dst.mux(packet)
        finally:
            src.close()
        if written == 0:
            raise VideotagError("no frame decoded")
        return _publish(tmp, out_mp4)
    except VideotagError as e:
        raise VideotagError(f"cannot write the tagged video {out_mp4} for {video_path}: {e}") from e
    except (OSError, ValueError, RuntimeError, av.error.FFmpegError) as e:
        raise VideotagError(f"cannot write the tagged video {out_mp4} for {video_path}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- one result


def visualize_result(result: VideoResult, out_dir: str | Path, video: bool = False,
                     used: set[str] | None = None) -> list[Path]:  # fmt: skip
    """The pictures of one result in `out_dir`: `<video name>.png` (contact sheet) and, with `video`,
    `<video name>.tagged.mp4`. Names are de-duplicated as the result JSONs are (pass the same `used` set for a
    batch). Returns [] for a failed result; raises VideotagError when the source is not a local file any more
    (URL inputs are downloaded to a temporary file that is gone) or drawing fails."""
    from videotag.pipeline import result_filename

    if not result.ok:
        return []
    source = Path(result.source)
    if "://" in result.source or not source.is_file():
        raise VideotagError(f"{result.source}: cannot draw pictures: not a local video file (any more)")
    base = result_filename(result, used if used is not None else set()).removesuffix(".json")
    out_dir = Path(out_dir)
    written = [contact_sheet(source, result, out_dir / f"{base}.png")]
    if video:
        written.append(tagged_video(source, result, out_dir / f"{base}.tagged.mp4"))
    return written


def visualize_stream(
    results: Iterable[VideoResult],
    out_dir: str | Path,
    video: bool = False,
    on_written: Callable[[Path], None] = lambda _p: None,
    on_error: Callable[[VideoResult, VideotagError], None] | None = None,
) -> Iterator[VideoResult]:
    """Pass results through; after each ok one has been handed on, draw its pictures (`visualize_result`, names
    de-duplicated over the stream). A drawing failure goes to `on_error` and never fails the video."""
    used: set[str] = set()
    for res in results:
        yield res
        if not res.ok:
            continue
        try:
            for path in visualize_result(res, out_dir, video=video, used=used):
                on_written(path)
        except VideotagError as e:
            if on_error is None:
                log.warning("no pictures for %s: %s", res.source, e)
            else:
                on_error(res, e)
