"""Write small, real test videos with PyAV, and read back which frame a decoded image is.

Every generated frame k shows a 4x4 grid of flat cells (row-major, stored orientation):
cell 0 is a red orientation marker, cell 15 a blue one, cells 1..14 hold the bits of k (LSB first; white = 1,
black = 0). Flat 30x40-pixel cells survive lossy coding, chroma subsampling and resizing, so `frame_index`
recovers k from any decoded frame that still shows the whole picture (not a crop), and `display_rotation`
tells in which orientation the picture is shown.

Main entry points:
- `make_video(path, frames=40, size=(160, 120), fps=25, codec=None, rotation=0, vfr=False, audio=False)`
- `make_audio_only`, `make_truncated`, `make_not_a_video`, `make_unknown_codec`, `make_no_frames`,
  `make_corrupt_frames` for the bad-input cases; `set_avi_frame_count` for a header that lies.
- `vfr_times(frames, fps)`: the presentation times (seconds) `make_video(vfr=True)` gives its frames.
- `render_frame(k, size)`: the exact RGB image frame k was made from.

Rotation follows `extractor.decode.VideoInfo.rotation`: degrees the picture is turned *clockwise* for display.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = 4  # cells per side
BITS = GRID * GRID - 2  # cells 1..14 carry the frame number
MAX_FRAMES = 1 << BITS
RED, BLUE = (220, 30, 30), (30, 30, 220)
WHITE, BLACK = 230, 20

# container suffix -> default video codec name (FFmpeg decoder name) and audio encoder
_DEFAULT_CODEC = {".mp4": "h264", ".mov": "h264", ".mkv": "h264", ".webm": "vp9", ".avi": "mpeg4"}
_DEFAULT_AUDIO = {".mp4": "aac", ".mov": "aac", ".mkv": "libopus", ".webm": "libopus", ".avi": "mp2"}
# decoder-style codec name -> (encoder, encoder options)
_ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    "h264": ("libx264", {"preset": "veryfast", "bf": "2"}),
    "hevc": ("libx265", {"preset": "ultrafast", "x265-params": "log-level=error:bframes=2"}),
    "vp8": ("libvpx", {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "1M"}),
    "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "mpeg4": ("mpeg4", {"qscale": "3"}),
}
CODECS = tuple(_ENCODERS)
CONTAINERS = tuple(_DEFAULT_CODEC)


def encoder_available(codec: str) -> bool:
    """True if this PyAV/FFmpeg build can encode `codec` ("h264", "hevc", "vp8", "vp9", "mpeg4")."""
    name = _ENCODERS[codec][0]
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
    return True


def render_frame(k: int, size: tuple[int, int] = (160, 120), pattern: str = "index") -> np.ndarray:
    """The RGB image [h, w, 3] uint8 of frame k (stored orientation). `size` is (width, height).

    pattern "index": flat cells only. "noise": the same cells plus +-12 grey-level noise that changes every
    frame (harder to compress, closer to real footage; `frame_index` still reads it).
    """
    if not 0 <= k < MAX_FRAMES:
        raise ValueError(f"frame number {k} does not fit in {BITS} bits")
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    ys = np.linspace(0, h, GRID + 1).astype(int)
    xs = np.linspace(0, w, GRID + 1).astype(int)
    for cell in range(GRID * GRID):
        r, c = divmod(cell, GRID)
        if cell == 0:
            colour = RED
        elif cell == GRID * GRID - 1:
            colour = BLUE
        else:
            v = WHITE if (k >> (cell - 1)) & 1 else BLACK
            colour = (v, v, v)
        img[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = colour
    if pattern == "noise":
        rng = np.random.default_rng(k)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, size=(h, w, 1)), 0, 255).astype(np.uint8)
    elif pattern != "index":
        raise ValueError(f"unknown pattern {pattern!r}")
    return img


def _cell_means(rgb: np.ndarray) -> np.ndarray:
    """[GRID*GRID, 3] mean colour of the central half of each cell."""
    h, w = rgb.shape[:2]
    ys = np.linspace(0, h, GRID + 1)
    xs = np.linspace(0, w, GRID + 1)
    out = np.empty((GRID * GRID, 3))
    for cell in range(GRID * GRID):
        r, c = divmod(cell, GRID)
        y0, y1 = ys[r], ys[r + 1]
        x0, x1 = xs[c], xs[c + 1]
        dy, dx = (y1 - y0) / 4, (x1 - x0) / 4
        patch = rgb[int(y0 + dy) : int(np.ceil(y1 - dy)), int(x0 + dx) : int(np.ceil(x1 - dx))]
        out[cell] = patch.reshape(-1, 3).mean(0)
    return out


def display_rotation(rgb: np.ndarray) -> int:
    """Clockwise rotation (0/90/180/270) that turned a generated frame into `rgb`, from where the red cell is."""
    for rot in (0, 90, 180, 270):
        means = _cell_means(np.rot90(rgb, k=rot // 90))  # np.rot90 turns counter-clockwise: undoes `rot`
        red, blue = means[0], means[-1]
        if red[0] > 120 and red[2] < 100 and blue[2] > 120 and blue[0] < 100:
            return rot
    raise ValueError("no orientation marker found: not a whole generated frame")


def frame_index(rgb: np.ndarray, rotation: int | None = None) -> int:
    """Frame number k shown by a decoded RGB image [H, W, 3] of a generated video (whole picture, any scale).

    rotation: clockwise display rotation of `rgb` relative to the stored frame; None = detect it.
    """
    if rotation is None:
        rotation = display_rotation(rgb)
    means = _cell_means(np.rot90(rgb, k=rotation // 90))
    grey = means[1:-1].mean(1)
    return int(sum(1 << i for i, v in enumerate(grey) if v > (WHITE + BLACK) / 2))


def vfr_times(frames: int, fps: float = 25) -> np.ndarray:
    """[frames] float64 presentation times (s) of a `vfr=True` video: first half at fps/2, second half at 2*fps.

    Exact multiples of 1 ms, so the mp4/mkv time bases (1/1000 and finer) store them without rounding.
    """
    slow = frames // 2
    d_slow, d_fast = round(2000 / fps), max(1, round(500 / fps))  # milliseconds
    ms = [i * d_slow for i in range(slow)]
    start = slow * d_slow
    ms += [start + i * d_fast for i in range(frames - slow)]
    return np.asarray(ms, np.float64) / 1000.0


def make_video(
    path: str | Path,
    frames: int = 40,
    size: tuple[int, int] = (160, 120),
    fps: int = 25,
    codec: str | None = None,
    rotation: int = 0,
    vfr: bool = False,
    audio: bool = False,
    pattern: str = "index",
    gop: int = 12,
    faststart: bool = False,
    rotate_tag: int | None = None,
) -> Path:
    """Write a real video whose frame k shows `render_frame(k)`; return its path.

    path suffix picks the container (.mp4 .mov .mkv .webm .avi); codec ("h264", "hevc", "vp8", "vp9",
    "mpeg4") defaults per container. size is (width, height) as stored; rotation (0/90/180/270, clockwise) is
    written as display-matrix metadata (mp4/mov/mkv/webm). vfr: frame times from `vfr_times` (1 ms time base).
    audio: add a 1 kHz tone track. faststart: mp4/mov index at the front (so a truncated file still opens).
    rotate_tag: write only an old-style "rotate" stream tag (no display matrix; stays a plain tag in mkv).
    Raises RuntimeError if the encoder is not in this FFmpeg build (tests should skip).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _DEFAULT_CODEC:
        raise ValueError(f"unsupported container suffix {suffix!r}; use one of {CONTAINERS}")
    codec = codec or _DEFAULT_CODEC[suffix]
    if not encoder_available(codec):
        raise RuntimeError(f"encoder for {codec} ({_ENCODERS[codec][0]}) is not available in this FFmpeg build")
    if frames > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames")
    if rotation % 90 or suffix == ".avi" and rotation:
        raise ValueError("rotation must be a multiple of 90 and needs mp4/mov/mkv/webm")
    enc_name, enc_opts = _ENCODERS[codec]
    w, h = size
    container_opts = {"movflags": "+faststart"} if faststart and suffix in (".mp4", ".mov") else {}
    times = vfr_times(frames, fps) if vfr else None
    with av.open(str(path), "w", options=container_opts) as out:
        stream = out.add_stream(enc_name, rate=fps, options=dict(enc_opts))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(-rotation)  # FFmpeg's matrix angle is counter-clockwise
        if rotate_tag is not None:
            stream.metadata["rotate"] = str(rotate_tag)
        astream = None
        if audio:
            astream = out.add_stream(_DEFAULT_AUDIO[suffix], rate=48000)
            astream.layout = "stereo"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(render_frame(k, size, pattern), format="rgb24")
            if vfr:
                frame.pts = int(round(times[k] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            _write_tone(out, astream, seconds=float(times[-1]) + 0.05 if vfr else frames / fps)
    return path


def _write_tone(out: av.container.OutputContainer, astream: av.audio.stream.AudioStream, seconds: float) -> None:
    """Encode `seconds` of a 1 kHz stereo tone into `astream`."""
    rate = astream.codec_context.sample_rate or 48000
    fmt = astream.codec_context.format.name
    chunk = astream.codec_context.frame_size or 1024
    total = int(seconds * rate)
    pts = 0
    while pts < total:
        n = min(chunk, total - pts)
        t = (np.arange(pts, pts + n) / rate).astype(np.float32)
        mono = 0.2 * np.sin(2 * np.pi * 1000 * t)
        if fmt.endswith("p"):  # planar: [channels, samples]
            data = np.stack([mono, mono])
        else:  # packed: [1, samples * channels]
            data = np.repeat(mono, 2)[None]
        if fmt.startswith("s16"):
            data = (data * 32767).astype(np.int16)
        else:
            data = data.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        frame.sample_rate, frame.pts = rate, pts
        for packet in astream.encode(frame):
            out.mux(packet)
        pts += n
    for packet in astream.encode():
        out.mux(packet)


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """A real media file with one audio track (tone) and no video stream (.mp4/.m4a/.mkv/.webm...)."""
    path = Path(path)
    suffix = path.suffix.lower()
    with av.open(str(path), "w", format="mp4" if suffix in (".m4a", ".mp4", ".mov") else None) as out:
        astream = out.add_stream(_DEFAULT_AUDIO.get(suffix, "aac"), rate=48000)
        astream.layout = "stereo"
        _write_tone(out, astream, seconds)
    return path


def make_truncated(
    path: str | Path, fraction: float = 0.5, source: str | Path | None = None, nbytes: int | None = None, **video_kw
) -> Path:
    """Cut a real video file to `fraction` of its bytes (or its first `nbytes`): `source` if given, else a fresh
    `make_video(**video_kw)`."""
    path = Path(path)
    if source is None:
        full = path.with_name(path.stem + ".full" + path.suffix)
        make_video(full, **video_kw)
    else:
        full = Path(source)
    data = full.read_bytes()
    keep = nbytes if nbytes is not None else max(1, int(len(data) * fraction))
    path.write_bytes(data[:keep])
    if source is None:
        full.unlink()
    return path


def make_not_a_video(path: str | Path) -> Path:
    """A text file with a video suffix."""
    path = Path(path)
    path.write_text("This is a plain text file, not a video.\n" * 20)
    return path


def make_unknown_codec(path: str | Path, frames: int = 10) -> Path:
    """A valid AVI whose video FourCC is patched to 'QQQQ', a codec no FFmpeg knows (-> unsupported codec)."""
    path = Path(path)
    if path.suffix.lower() != ".avi":
        raise ValueError("make_unknown_codec writes an .avi")
    make_video(path, frames=frames, codec="mpeg4")
    data = bytearray(path.read_bytes())
    # mpeg4 in AVI is tagged FMP4: in the stream header (strh fccHandler) and the BITMAPINFOHEADER (strf)
    n = data.count(b"FMP4")
    if n == 0:
        raise RuntimeError("FourCC FMP4 not found in the AVI written by FFmpeg")
    path.write_bytes(bytes(data).replace(b"FMP4", b"QQQQ"))
    return path


def make_no_frames(path: str | Path, size: tuple[int, int] = (160, 120)) -> Path:
    """An .avi with a declared MPEG-4 video stream but not a single frame in it.

    (AVI because FFmpeg's mp4 demuxer drops empty tracks and its mkv demuxer refuses a file without clusters.)
    """
    path = Path(path)
    if path.suffix.lower() != ".avi":
        raise ValueError("make_no_frames writes an .avi")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        out.start_encoding()  # write the header although no packet will follow
    return path


def make_corrupt_frames(
    path: str | Path, frames: int = 10, size: tuple[int, int] = (160, 120), corrupt: set[int] | None = None
) -> Path:
    """An .mkv of intra-only MPEG-4 frames whose packets numbered in `corrupt` (None = all) hold random bytes.

    With corrupt=None: a video stream with no decodable frame. Otherwise the other frames still decode.
    """
    path = Path(path)
    src = path.with_name(path.stem + ".src.mkv")
    make_video(src, frames=frames, size=size, codec="mpeg4", gop=1)
    rng = np.random.default_rng(0)
    with av.open(str(src)) as inp, av.open(str(path), "w", format="matroska") as out:
        istream = inp.streams.video[0]
        ostream = out.add_stream_from_template(istream)
        for i, packet in enumerate(p for p in inp.demux(istream) if p.size):
            if corrupt is None or i in corrupt:
                bad = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                bad.is_keyframe = packet.is_keyframe
                packet = bad
            packet.stream = ostream
            out.mux(packet)
    src.unlink()
    return path


def set_avi_frame_count(path: str | Path, count: int) -> Path:
    """Overwrite the frame count an AVI's headers claim (avih dwTotalFrames, strh dwLength): a lying header."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    if avih < 0 or strh < 0:
        raise ValueError(f"{path} has no AVI main/stream header")
    # avih: tag, size, dwMicroSecPerFrame, dwMaxBytesPerSec, dwPaddingGranularity, dwFlags, dwTotalFrames
    data[avih + 24 : avih + 28] = count.to_bytes(4, "little")
    # strh: tag, size, fccType, fccHandler, dwFlags, wPriority+wLanguage, dwInitialFrames, dwScale, dwRate,
    #       dwStart, dwLength
    data[strh + 40 : strh + 44] = count.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def copy_video(src: str | Path, dst: str | Path) -> Path:
    """Copy a file (e.g. to give a clip a different name/suffix)."""
    return Path(shutil.copyfile(src, dst))
