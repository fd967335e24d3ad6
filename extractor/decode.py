"""Stage-1 decoding: one sequential PyAV pass that keeps only the sampled frames, resized as they are decoded.

Memory does not grow with video length: the decoder holds one frame at a time; what is kept is the list of
frame timestamps (8 bytes per decoded frame, ~0.9 MB for an hour at 30 fps) and the sampled output frames the
consumer has not taken yet. Colour conversion (and scaling, when the transform says where to) happens in one
swscale call, for sampled frames only.

The plan needs the true frame count, which only decoding tells (headers lie or say nothing: mkv/webm have no
count). `SampledDecoder` estimates it (header count; else a demux-only packet count, which costs ~1% of decoding),
yields the estimated plan's frames as they are decoded, then checks the estimate against the decoded count and,
if it was wrong, decodes a second time yielding only the frames the exact plan still lacks.

Bad input raises `videotag.core.errors.VideoError(source, code, reason)`. Damaged files: packets that fail to decode
are skipped and counted; when reading stops early (truncated file) the frames decoded so far are used; both are
recorded in `VideoInfo.warnings`. Only if no frame decodes at all is it an error (`truncated` when reading
failed, `no_frames` otherwise).

Not handled: display-matrix flips (only the rotation part is applied) and non-square pixels (frames keep
their stored pixel grid).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from av.stream import Disposition
from av.video.reformatter import VideoReformatter

from extractor.sampling import COUNT_POLICIES, POLICIES, count_indices, timestamp_indices
from videotag.core.errors import VideoError

log = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], np.ndarray]
_CV2_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_MAX_WARNINGS = 20


@dataclass
class VideoInfo:
    source: str
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"
    codec: str  # FFmpeg decoder name, e.g. "h264", "hevc", "vp9", "mpeg4"
    width: int  # display size (after rotation)
    height: int
    rotation: int  # 0/90/180/270, clockwise display rotation applied
    fps: float  # average frame rate (decoded_frames / duration when known)
    duration: float  # seconds (verified by decoding: last pts + frame duration - first pts)
    header_frames: int  # what the header claimed (0 if unknown)
    decoded_frames: int = 0  # filled after decoding
    warnings: list[str] = field(default_factory=list)


@dataclass
class SamplePlan:
    indices: np.ndarray  # [n] int64 decoded-frame index for each slot (cyclic repeats allowed)
    timestamps: np.ndarray  # [n] float64 seconds (pts of those frames, relative to the first frame)
    policy: str  # "uniform" | "segment" | "timestamp" (extractor.sampling.POLICIES)


# ---------------------------------------------------------------------------------------------------- opening


def _sniff(head: bytes) -> str | None:
    """Name of the container these first bytes announce, or None (used to tell 'damaged video' from 'no video')."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "MP4/QuickTime"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:3] == b"FLV":
        return "FLV"
    if head[:4] == b"OggS":
        return "Ogg"
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":
        return "ASF/WMV"
    if head[:4] == b"\x00\x00\x01\xba":
        return "MPEG program stream"
    if head[:1] == b"\x47" and (len(head) < 189 or head[188:189] == b"\x47"):
        return "MPEG transport stream"
    return None


def check_file(path: str) -> tuple[int, bytes]:
    """(size in bytes, first 256 bytes) of a readable, non-empty regular file; else VideoError."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoError(path, "missing", f"no such file: {os.path.abspath(path)}") from None
    except PermissionError as e:
        raise VideoError(path, "unreadable", f"permission denied looking up the file: {e.strerror}") from None
    except OSError as e:
        raise VideoError(path, "unreadable", f"cannot stat the file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "unreadable", "the path is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(path, "invalid_input", f"not a regular file (mode {stat.filemode(st.st_mode)})")
    if st.st_size == 0:
        raise VideoError(path, "empty", "the file is 0 bytes long")
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except PermissionError as e:
        who = f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this process"
        raise VideoError(
            path,
            "unreadable",
            f"permission denied opening for reading ({e.strerror}; file mode {stat.filemode(st.st_mode)}, "
            f"owner uid {st.st_uid}, running as {who})",
        ) from None
    except OSError as e:
        raise VideoError(path, "unreadable", f"I/O error reading the file: {e.strerror or e}") from None
    return st.st_size, head


def _open(path: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and pick its video stream (not cover art). The caller closes the container."""
    size, head = check_file(path)
    try:
        container = av.open(path, metadata_errors="replace")
    except PermissionError as e:
        raise VideoError(path, "unreadable", f"permission denied: {e}") from None
    except (av.error.FFmpegError, OSError) as e:
        kind = _sniff(head)
        msg = getattr(e, "strerror", None) or str(e)
        if kind is not None:
            raise VideoError(
                path,
                "truncated",
                f"starts like {kind} but FFmpeg cannot open it ({msg}): the {size}-byte file is cut short or "
                "its header/index is damaged",
            ) from None
        raise VideoError(
            path,
            "not_a_video",
            f"FFmpeg recognises no media container in this {size}-byte file ({msg}); it starts with {head[:16]!r}",
        ) from None
    try:
        return container, _pick_stream(path, container)
    except BaseException:
        container.close()
        raise


def _pick_stream(path: str, container: av.container.InputContainer) -> av.video.stream.VideoStream:
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):
        raise VideoError(path, "not_a_video", f"this is a still image (FFmpeg format {fmt!r}), not a video")
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        audio = container.streams.audio
        if audio:
            codecs = ", ".join(s.codec_context.name if s.codec_context else "unknown" for s in audio)
            art = " (a cover picture is not a video)" if container.streams.video else ""
            raise VideoError(
                path, "audio_only", f"{fmt} container has no video stream, only {len(audio)} audio ({codecs}){art}"
            )
        if not container.streams:
            raise VideoError(path, "no_frames", f"{fmt} container holds no streams at all")
        kinds = ", ".join(sorted({s.type for s in container.streams}))
        raise VideoError(path, "not_a_video", f"{fmt} container holds only {kinds} streams, no video")
    stream = videos[0]
    if stream.codec_context is None:
        raise VideoError(
            path,
            "unsupported_codec",
            f"video stream #{stream.index} in the {fmt} container uses a codec this FFmpeg build "
            f"(libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}) does not know or cannot decode",
        )
    return stream


# ---------------------------------------------------------------------------------------------------- reading


class _FrameReader:
    """Demux + decode one stream packet by packet, so that a bad packet or a read error is recorded, not fatal.

    Iterating yields av.VideoFrame in presentation order. Afterwards: `packets` (non-empty video packets read),
    `decode_errors` / `first_decode_error`, `read_error` (the demuxer failed: file truncated or unreadable).
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        self.container, self.stream = container, stream
        self.packets = 0
        self.decode_errors = 0
        self.first_decode_error: str | None = None
        self.read_error: str | None = None
        self.corrupt_frames = 0

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self.stream.decode(packet)
        except av.error.EOFError:  # decoder already drained
            return []
        except (av.error.FFmpegError, ValueError) as e:
            self.decode_errors += 1
            if self.first_decode_error is None:
                self.first_decode_error = f"{type(e).__name__}: {e}"
            return []

    def __iter__(self) -> Iterator[av.VideoFrame]:
        demux = self.container.demux(self.stream)
        flushed = False
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as e:
                self.read_error = f"{type(e).__name__}: {e}"
                break
            if packet.size:
                self.packets += 1
            else:
                flushed = True  # PyAV's end-of-stream packet: decoding it drains the decoder
            for frame in self._decode(packet):
                self.corrupt_frames += bool(frame.is_corrupt)
                yield frame
        if not flushed:
            yield from self._decode(None)


def _rotation_cw(frame: av.VideoFrame) -> int:
    """Clockwise display rotation (0/90/180/270) from the frame's display matrix (FFmpeg gives counter-clockwise)."""
    ccw = frame.rotation or 0
    return int(-round(ccw / 90) * 90) % 360


def _seconds(value: int | None, time_base) -> float:
    return float(value * time_base) if value is not None and time_base is not None else 0.0


def _header_info(path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> VideoInfo:
    cc = stream.codec_context
    duration = _seconds(stream.duration, stream.time_base)
    if duration <= 0 and container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return VideoInfo(
        source=path,
        container=container.format.name,
        codec=cc.name,
        width=cc.width,
        height=cc.height,
        rotation=0,
        fps=float(rate) if rate else 0.0,
        duration=duration,
        header_frames=int(stream.frames or 0),
    )


def _no_frame_error(path: str, info: VideoInfo, reader: _FrameReader) -> VideoError:
    """The error for a video stream from which not one frame decoded; says why as precisely as known."""
    what = f"{info.codec} video stream ({info.width}x{info.height}) in the {info.container} container"
    if reader.read_error is not None:
        return VideoError(
            path, "truncated", f"reading failed before any frame of the {what} decoded: {reader.read_error}"
        )
    if reader.packets == 0:
        return VideoError(path, "no_frames", f"the {what} contains no packets (header claims {info.header_frames})")
    return VideoError(
        path,
        "no_frames",
        f"none of the {reader.packets} packets of the {what} decoded to a frame "
        f"({reader.decode_errors} decoder errors; first: {reader.first_decode_error or 'none'})",
    )


def probe(path: str) -> VideoInfo:
    """Header facts plus the first decoded frame (for rotation, and proof that something decodes). Raises VideoError.

    duration/fps/header_frames are the header's claims here; SampledDecoder replaces them with decoded facts.
    """
    path = str(path)
    container, stream = _open(path)
    try:
        info = _header_info(path, container, stream)
        reader = _FrameReader(container, stream)
        first = next(iter(reader), None)
        if first is None:
            raise _no_frame_error(path, info, reader)
        info.rotation = _rotation_cw(first)
        # Old-style "rotate" tag (clockwise degrees): FFmpeg turns it into a display matrix for mp4/mov, but in
        # mkv it stays a plain tag (ROTATE), which FFmpeg <= 4 still honoured; so do we, when there is no matrix.
        legacy = next((v for key, v in stream.metadata.items() if key.lower() == "rotate"), "")
        if info.rotation == 0 and legacy.strip().lstrip("-").isdigit():
            info.rotation = int(round(int(legacy) / 90) * 90) % 360
        info.width, info.height = first.width, first.height
        if info.rotation in (90, 270):
            info.width, info.height = info.height, info.width
        return info
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------------- sampling


class SampledDecoder:
    """Iterate (frame_index, transform(rgb_display_frame)) for the frames of the final plan, each index once,
    in decode order. After iteration `.info` (decoded_frames filled) and `.plan` are final.

    rgb_display_frame is [H, W, 3] uint8 RGB in display orientation. If `transform` has `resize_to(w, h)` (an
    `extractor.preprocess.Preprocess`) and it returns a size, the frame is scaled to it (display w, h) in the
    same swscale call that converts the colour (AREA when shrinking, BILINEAR when enlarging), so the transform
    only crops. Frame indices count decoded frames in presentation order, from 0.

    policy "uniform": centres of n equal spans of the decoded frames (the whole video); "segment": VideoTag's rule
    on the decoded frame count (bit-exact, for its imported model); "timestamp": uniform in time (VFR-safe).
    Usually one decoding pass; a second pass (a warning says why) when the frame-count estimate was wrong. Only
    then may the first pass also have yielded a few frames of the estimated plan that the final plan does not
    use: consumers key what they receive by frame index and build the slots from `plan.indices`.
    The constructor probes the file, so bad input raises VideoError there; damage found while decoding raises
    during iteration.
    """

    def __init__(
        self,
        path: str,
        num_frames: int = 300,
        policy: str = "segment",
        transform: Transform | None = None,
        threads: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown sampling policy {policy!r}; choose from {POLICIES}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.path = str(path)
        self.num_frames = num_frames
        self.policy = policy
        self.transform = transform
        self.threads = threads
        self._resize_to = getattr(transform, "resize_to", None)
        self._reformatter = VideoReformatter()
        self._probed = probe(self.path)
        self.info: VideoInfo = dataclasses.replace(self._probed, warnings=[])
        self.plan: SamplePlan | None = None
        self.passes = 0  # decoding passes made by the last iteration (1, or 2 when the estimate was wrong)

    # -- helpers ------------------------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        log.warning("%s: %s", self.path, msg)
        if len(self.info.warnings) < _MAX_WARNINGS:
            self.info.warnings.append(msg)

    def _open_for_decoding(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        container, stream = _open(self.path)
        cc = stream.codec_context
        cc.thread_type = "AUTO"  # frame + slice threads: halves VP9 decode time
        cc.thread_count = self.threads
        return container, stream

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        """Decoded frame -> transform(display-oriented RGB [H, W, 3] uint8)."""
        rot = self.info.rotation
        w, h = frame.width, frame.height
        target = None
        if self._resize_to is not None:
            target = self._resize_to(h, w) if rot in (90, 270) else self._resize_to(w, h)
        # One reformatter for all frames: it keeps its swscale context (frame.to_ndarray(...) builds a new one per
        # frame, which costs ~10x the conversion itself at 340x256).
        if target is not None:
            tw, th = target  # display orientation; scale the stored picture to the pre-rotation size
            sw, sh = (th, tw) if rot in (90, 270) else (tw, th)
            interp = "AREA" if sw < w else "BILINEAR"  # swscale BILINEAR is also 2x slower than AREA when shrinking
            rgb = self._reformatter.reformat(frame, width=sw, height=sh, format="rgb24", interpolation=interp)
        else:
            rgb = self._reformatter.reformat(frame, format="rgb24")
        rgb = rgb.to_ndarray()
        if rot:
            # == np.rot90(rgb, k=-rot // 90) (clockwise), but cv2 writes a contiguous result ~9x faster than
            # numpy's strided copy (0.18 vs 1.6 ms at 340x256)
            rgb = cv2.rotate(rgb, _CV2_ROTATE[rot])
        if not rgb.flags.c_contiguous:
            rgb = np.ascontiguousarray(rgb)
        return self.transform(rgb) if self.transform is not None else rgb

    def _estimate(self) -> tuple[int, np.ndarray | None, float, str]:
        """(frame count, sorted frame times [N] s or None, duration s, where from) before decoding."""
        info = self.info
        if self.policy in COUNT_POLICIES and info.header_frames > 0:
            return info.header_frames, None, info.duration, "container header"
        # Demux only (no decoding): packet count and presentation times. A few ms for a 10 s clip.
        container, stream = _open(self.path)
        times, durs, missing_pts = array("d"), array("d"), 0
        try:
            tb = float(stream.time_base)
            try:
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    if packet.pts is None:
                        missing_pts += 1
                    else:
                        times.append(packet.pts * tb)
                        durs.append((packet.duration or 0) * tb)
            except (av.error.FFmpegError, OSError) as e:
                # truncated: estimate from what was read; the decoding pass meets the same damage and reports it
                log.info("%s: demuxing for the frame-count estimate stopped: %s", self.path, e)
        finally:
            container.close()
        count = len(times) + missing_pts
        if count == 0:
            return max(info.header_frames, 1), None, info.duration, "container header (no packets demuxed)"
        if self.policy in COUNT_POLICIES:
            return count, None, info.duration, "demuxed packet count"
        if missing_pts:  # no timestamps to go by: assume the header's constant rate
            fps = info.fps or 25.0
            return count, np.arange(count) / fps, count / fps, "demuxed packet count"
        t = np.frombuffer(times, dtype=np.float64)
        order = np.argsort(t, kind="stable")
        t = t[order]
        last = float(np.frombuffer(durs, dtype=np.float64)[order[-1]])
        if last <= 0:
            last = float(np.median(np.diff(t))) if t.size > 1 else 1.0 / (info.fps or 25.0)
        return count, t, float(t[-1] + last - t[0]), "demuxed packet timestamps"

    def _plan_indices(self, count: int, times: np.ndarray | None, duration: float) -> np.ndarray:
        if self.policy in COUNT_POLICIES:
            return count_indices(self.policy, count, self.num_frames)
        if times is None:  # no timestamps to go by: uniform over the frame count
            return count_indices("uniform", count, self.num_frames)
        return timestamp_indices(times, duration, self.num_frames)

    def _finish(self, reader: _FrameReader, pts: np.ndarray, last_duration: float) -> tuple[np.ndarray, float]:
        """Fill info from what decoding found; return (monotonic frame times [N] s, duration s)."""
        info = self.info
        n = pts.size
        if np.any(np.diff(pts) < 0):
            # Frames come out in presentation order, but some containers attach decode-order times: AVI has no
            # presentation times, so FFmpeg numbers B-frame streams in decode order. The k-th smallest time is
            # then the k-th frame's time.
            if info.container != "avi":
                self._warn("frame timestamps are not in presentation order; using them sorted")
            pts = np.sort(pts)
        if last_duration <= 0:
            last_duration = float(np.median(np.diff(pts))) if n > 1 else 1.0 / (info.fps or 25.0)
        header_duration, header_fps = info.duration, info.fps
        duration = float(pts[-1] + last_duration - pts[0])
        info.decoded_frames = n
        info.duration = duration
        info.fps = n / duration if duration > 0 else info.fps
        if reader.read_error is not None:
            self._warn(
                f"reading stopped after {n} frames ({duration:.2f} s): {reader.read_error}; "
                f"the file is truncated or damaged, using the {n} frames decoded"
            )
        if reader.decode_errors:
            self._warn(
                f"{reader.decode_errors} of {reader.packets} packets failed to decode and were skipped "
                f"(first: {reader.first_decode_error})"
            )
        if reader.corrupt_frames:
            self._warn(f"{reader.corrupt_frames} decoded frame(s) flagged corrupt by the decoder")
        # Frames the header promised: its frame count, else its duration x frame rate. Far fewer decoded (a file
        # cut short with its index at the front decodes without a read error) -> say the file looks truncated.
        promised, basis = info.header_frames, "the header promised"
        if not promised and header_duration > 0 and header_fps > 0:
            promised = round(header_duration * header_fps)
            basis = f"the header's duration and frame rate promised ({header_duration:.2f} s x {header_fps:g} fps)"
        short = promised > 0 and n < 0.9 * promised - 2
        if short:
            self._warn(f"decoded {n} of {promised} frames {basis}: the file looks truncated")
        elif info.header_frames and info.header_frames != n:
            self._warn(f"header claims {info.header_frames} frames, decoding found {n}")
        if not short and header_duration > 0 and duration < 0.9 * header_duration - 2.0 / max(info.fps, 1.0):
            self._warn(
                f"header claims {header_duration:.2f} s but frames cover only {duration:.2f} s "
                "(truncated file, or a header that is wrong)"
            )
        return pts, duration

    # -- iteration ----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self.info = dataclasses.replace(self._probed, warnings=[])  # iterating again starts from the header facts
        self.plan = None
        self.passes = 1
        est_count, est_times, est_duration, est_from = self._estimate()
        wanted = set(self._plan_indices(est_count, est_times, est_duration).tolist())
        delivered: set[int] = set()
        pts = array("d")  # seconds, one per decoded frame (8 bytes each: the only per-frame state kept)
        last_duration, last_time_base = 0, None
        container, stream = self._open_for_decoding()
        try:
            reader = _FrameReader(container, stream)
            fallback_dt = 1.0 / (self.info.fps or 25.0)
            for k, frame in enumerate(reader):
                t = frame.time
                if t is None:  # no timestamp (some AVI/raw streams): continue from the previous one
                    t = pts[-1] + fallback_dt if pts else 0.0
                pts.append(t)
                last_duration, last_time_base = frame.duration, frame.time_base
                if k in wanted:
                    delivered.add(k)
                    yield k, self._convert(frame)
        finally:
            container.close()
        if not pts:
            raise _no_frame_error(self.path, self.info, reader)

        last_seconds = _seconds(last_duration, last_time_base)
        times, duration = self._finish(reader, np.frombuffer(pts, dtype=np.float64), last_seconds)
        indices = self._plan_indices(times.size, times, duration)
        missing = sorted(set(indices.tolist()) - delivered)
        if missing:
            self.passes = 2
            self._warn(
                f"frame-count estimate ({est_count}, from the {est_from}) was wrong: decoded {times.size} frames; "
                f"decoding again for the {len(missing)} sampled frames not yet delivered"
            )
            yield from self._second_pass(missing, delivered)
            still = [k for k in missing if k not in delivered]
            if still:  # decoding gave different frames the second time; keep the slots filled, say so
                self._warn(f"second pass did not reproduce frames {still[:10]}; slots use the nearest frames")
                have = np.array(sorted(delivered), dtype=np.int64)
                near = have[np.clip(np.searchsorted(have, indices), 0, have.size - 1)]
                indices = np.where(np.isin(indices, still), near, indices)
        self.plan = SamplePlan(indices=indices, timestamps=times[indices] - times[0], policy=self.policy)

    def _second_pass(self, missing: list[int], delivered: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        need, last = set(missing), missing[-1]
        container, stream = self._open_for_decoding()
        try:
            for k, frame in enumerate(_FrameReader(container, stream)):
                if k in need:
                    need.discard(k)
                    delivered.add(k)
                    yield k, self._convert(frame)
                if k >= last:
                    break
        finally:
            container.close()
