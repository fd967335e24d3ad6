"""Stage-1 + end-to-end benchmark on a folder of videos, with VideoTag's way as the reference, in one run.

Prints: end-to-end videos/s and frames/s (our overlapped pipeline, predictor included); decode-only and
backbone-only times on the same clips; the reference pipeline (cv2 decodes every frame into a list, PIL
bilinear resize to 341x256, centre crop 224, the same ONNX backbone on all 300 frames in one batch) and the
throughput ratio; peak RSS of each mode (each runs in its own process so peaks don't mix). `--long-minutes M`
also generates an M-minute 360p video and reports the peak RSS of tagging it.

    python benchmarks/bench_extract.py ../shared/videos [--repeat 1] [--long-minutes 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videotag.core.settings import Settings  # noqa: E402


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _settings(frames: int, batch: int = 0) -> Settings:
    return Settings(frames=frames, batch_size=batch)


def mode_e2e(videos: list[str], frames: int, batch: int = 0) -> dict:
    from videotag import pipeline

    s = _settings(frames, batch)
    pipeline.load_models(s)  # model load is not part of throughput
    t = time.perf_counter()
    results = list(pipeline.tag_sources(videos, s))
    dt = time.perf_counter() - t
    ok = sum(r.ok for r in results)
    return {"seconds": dt, "ok": ok, "failed": len(results) - ok, "frames": ok * frames}


def mode_decode(videos: list[str], frames: int) -> dict:
    from extractor.decode import SampledDecoder
    from videotag import pipeline

    pre = pipeline.get_extractor(_settings(frames)).preprocess
    t = time.perf_counter()
    unique = 0
    for v in videos:
        for _ in SampledDecoder(v, num_frames=frames, transform=pre):
            unique += 1
    return {"seconds": time.perf_counter() - t, "unique_frames": unique}


def mode_backbone(videos: list[str], frames: int, batch: int) -> dict:
    """The CNN alone on as many frames as stage 1 sends it (unique sampled frames), already in memory."""
    from extractor.decode import SampledDecoder
    from videotag import pipeline

    ex = pipeline.get_extractor(_settings(frames))
    batch = batch or pipeline.auto_batch_size(ex)
    crops = [np.stack([c for _, c in SampledDecoder(v, num_frames=frames, transform=ex.preprocess)]) for v in videos]
    ex(crops[0][:batch])  # warm-up
    t = time.perf_counter()
    for c in crops:
        for i in range(0, len(c), batch):
            ex(c[i : i + batch])
    return {"seconds": time.perf_counter() - t, "frames": int(sum(len(c) for c in crops))}


def videotag_sample(n_decoded: int, n: int) -> list[int]:
    """VideoTag's rule (re-stated here so the reference does not depend on our code)."""
    avg = n_decoded // n
    if avg >= 1:
        return [(avg - 1) // 2 + i * avg for i in range(n)]
    return [i % n_decoded for i in range(n)]


def mode_reference(videos: list[str], frames: int) -> dict:
    """VideoTag's way: every frame decoded into a list (BGR->RGB), PIL bilinear 341x256, crop 224, one batch."""
    import cv2
    from PIL import Image

    from videotag import pipeline

    ex = pipeline.get_extractor(_settings(frames))
    ex(np.zeros((1, 224, 224, 3), np.uint8))
    t = time.perf_counter()
    done = 0
    for v in videos:
        cap = cv2.VideoCapture(v)
        imgs = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            imgs.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        cap.release()
        if not imgs:
            continue  # VideoTag silently drops such videos
        batch = []
        for i in videotag_sample(len(imgs), frames):
            im = Image.fromarray(imgs[i])
            w, h = im.size
            if min(w, h) != 256:
                im = im.resize((341, 256) if w >= h else (256, 341), Image.BILINEAR)
            a = np.asarray(im)
            hh, ww = a.shape[:2]
            top, left = int(round((hh - 224) / 2)), int(round((ww - 224) / 2))
            batch.append(a[top : top + 224, left : left + 224])
        del imgs
        ex(np.stack(batch))  # VideoTag: 300 frames in one batch
        done += 1
    return {"seconds": time.perf_counter() - t, "ok": done}


def _child(fn_name: str, args: tuple, q) -> None:
    try:
        res = globals()[fn_name](*args)
        res["peak_rss_mib"] = _peak_rss_mib()
        q.put(res)
    except BaseException as e:  # reported by the parent
        q.put({"error": f"{type(e).__name__}: {e}"})


def run_isolated(fn_name: str, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn_name, args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def make_long_video(path: Path, minutes: float, fps: int = 25) -> Path:
    """An M-minute 640x360 H.264 video with moving content (generated once, cached by name)."""
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.mp4")
    n = int(minutes * 60 * fps)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "250"}
        base = np.zeros((360, 640, 3), np.uint8)
        yy, xx = np.mgrid[0:360, 0:640]
        for i in range(n):
            base[..., 0] = (xx + i * 3) % 256
            base[..., 1] = (yy + i) % 256
            base[..., 2] = (i // fps) % 256
            for pkt in s.encode(av.VideoFrame.from_ndarray(base, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    tmp.rename(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the pipeline's automatic choice.")
    ap.add_argument("--repeat", type=int, default=1, help="Process the folder this many times (longer, steadier).")
    ap.add_argument("--long-minutes", type=float, default=0.0, help="Also tag a generated long 360p video.")
    ap.add_argument("--long-path", type=Path, default=Path("/tmp/videotag-long-360p.mp4"))
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    a = ap.parse_args()

    from videotag.pipeline import expand_inputs  # the CLI's own notion of 'the videos in a folder'

    videos = expand_inputs([str(a.folder)]) * a.repeat
    if not videos:
        sys.exit(f"no videos in {a.folder}")
    from videotag.cli.core import _ensure_defaults

    _ensure_defaults(Settings(), None)
    n = len(videos)
    print(f"{n} videos from {a.folder}, {a.frames} frames each, batch {a.batch_size}")
    r = {
        "decode_only": run_isolated("mode_decode", videos, a.frames),
        "backbone_only": run_isolated("mode_backbone", videos, a.frames, a.batch_size),
        "end_to_end": run_isolated("mode_e2e", videos, a.frames, a.batch_size),
    }
    if not a.skip_reference:
        r["reference_videotag_way"] = run_isolated("mode_reference", videos, a.frames)
    for k, v in r.items():
        if "error" in v:
            sys.exit(f"{k} failed: {v['error']}")
    e2e, dec, bb = r["end_to_end"]["seconds"], r["decode_only"]["seconds"], r["backbone_only"]["seconds"]
    print(f"\n{'mode':<24}{'seconds':>9}{'videos/s':>10}{'frames/s':>10}{'peak RSS MiB':>14}")
    for k, v in r.items():
        fr = n * a.frames
        s, rss = v["seconds"], v["peak_rss_mib"]
        print(f"{k:<24}{s:>9.2f}{n / s:>10.2f}{fr / s:>10.1f}{rss:>14.0f}")
    print(f"\nunique frames through the CNN: {r['backbone_only']['frames']} of {n * a.frames} sampled slots")
    print(f"end-to-end / max(decode-only, backbone-only) = {e2e / max(dec, bb):.2f}   (target <= 1.2)")
    print(f"end-to-end / (decode-only + backbone-only)   = {e2e / (dec + bb):.2f}   (1.0 = no overlap)")
    if "reference_videotag_way" in r:
        ratio = r["reference_videotag_way"]["seconds"] / e2e
        r["speedup_vs_reference"] = ratio
        print(f"throughput vs VideoTag's way (same ONNX backbone) = {ratio:.2f}x   (target >= 3)")
    if a.long_minutes:
        t = time.perf_counter()
        lp = make_long_video(a.long_path, a.long_minutes)
        print(f"\nlong video: {lp} ({a.long_minutes:g} min 360p, generated/cached in {time.perf_counter() - t:.0f}s)")
        lr = run_isolated("mode_e2e", [str(lp)], a.frames, a.batch_size)
        r["long_video"] = lr
        print(f"tagged in {lr['seconds']:.1f}s, ok={lr['ok']}, peak RSS {lr['peak_rss_mib']:.0f} MiB (target < 1024)")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
