"""Stage 1 with N decoders: videos/s, frames/s, CNN batches and peak RSS vs the number of decoders, in one run.

Each (decoders, round) runs `pipeline.extraction_stream` (what `videotag tag/extract` and the extract worker use)
in its own spawned process, so peak RSS does not mix; models are loaded and warmed before the clock starts.
Configurations are interleaved round by round (1, 2, 4, 1, 2, 4, ...) so machine noise hits them alike, and the
ratio to 1 decoder is taken per round. Two workloads:
  - real: the clips in VIDEOS (../shared/videos), repeated `--repeat` times, at `--frames` frames (300);
  - short: `--short N` generated 2-second H.264 clips (50 frames, 320x240), where one video cannot fill a batch;
  - decode only (`--decode-only`): the real clips with a no-op CNN, to see decoding scale with decoder threads.

    python benchmarks/bench_decoders.py [../shared/videos] [--decoders 1,2,4] [--rounds 3] [--repeat 2]
        [--short 40] [--decode-only] [--backbone NAME] [--out bench_decoders.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

VIDEO_EXT = {".mp4", ".mkv", ".webm", ".avi", ".mov"}


class NullCNN:
    """Decode-only: the real preprocessing, but the CNN returns zeros at once (shows how decoding scales with
    decoder threads, i.e. that the GIL does not serialise them)."""

    def __init__(self, real) -> None:
        self.preprocess, self.sampling, self.provider = real.preprocess, real.sampling, real.provider
        self.dim = real.feature_dim

    def __call__(self, x):
        import numpy as np

        return np.zeros((len(x), self.dim), np.float32)


def _run(videos: list[str], frames: int, decoders: int, backbone: str | None, q: mp.Queue, null_cnn: bool) -> None:
    """In a fresh process: warm the models, then time stage 1 over `videos` with `decoders` decoders."""
    from extractor.engine import Extraction
    from videotag import pipeline
    from videotag.core.settings import Settings

    s = Settings(frames=frames, decoders=decoders, **({"backbone": backbone} if backbone else {}))
    ex = pipeline.get_extractor(s)
    if null_cnn:
        ex = NullCNN(ex)
    list(pipeline.extraction_stream(videos[:1], ex, s))  # warm-up: sessions, first-call allocations
    rss_warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t = time.perf_counter()
    out = list(pipeline.extraction_stream(videos, ex, s))
    dt = time.perf_counter() - t
    ok = [r for r in out if isinstance(r, Extraction)]
    q.put({
        "seconds": dt, "ok": len(ok), "failed": len(out) - len(ok),
        "unique_frames": int(sum(len(set(r.plan.indices.tolist())) for r in ok)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "rss_after_warmup_mib": rss_warm,
        "provider": ex.provider, "batch": pipeline.auto_batch_size(ex, s.batch_size),
    })  # fmt: skip


def measure(videos: list[str], frames: int, decoders: int, backbone: str | None, null_cnn: bool = False) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(videos, frames, decoders, backbone, q, null_cnn))
    p.start()
    res = q.get(timeout=3600)
    p.join()
    return res


def short_clips(n: int, root: Path) -> list[str]:
    import videogen

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"short_{i:03d}.mp4"
        if not p.exists():
            videogen.make_video(p, frames=50, size=(320, 240), fps=25, gop=25, pattern="noise" if i % 2 else "index")
        out.append(str(p))
    return out


def bench(
    name: str, videos: list[str], frames: int, decoders: list[int], rounds: int, backbone: str | None,
    null_cnn: bool = False,
) -> dict:  # fmt: skip
    runs: dict[int, list[dict]] = {d: [] for d in decoders}
    for r in range(rounds):
        for d in decoders:
            res = measure(videos, frames, d, backbone, null_cnn)
            runs[d].append(res)
            print(f"  [{name}] round {r + 1} decoders {d}: {res['seconds']:.1f} s, {res['ok']} ok, "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    base = decoders[0]
    table = []
    for d in decoders:
        secs = [x["seconds"] for x in runs[d]]
        ratios = [runs[base][i]["seconds"] / runs[d][i]["seconds"] for i in range(rounds)]
        first = runs[d][0]
        table.append({
            "decoders": d, "videos": len(videos), "ok": first["ok"], "failed": first["failed"],
            "seconds_median": statistics.median(secs), "videos_per_s": len(videos) / statistics.median(secs),
            "frames_per_s": first["unique_frames"] / statistics.median(secs),
            "speedup_vs_first_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)],
            "peak_rss_mib_max": max(x["peak_rss_mib"] for x in runs[d]),
            "provider": first["provider"], "batch": first["batch"],
        })  # fmt: skip
    print(f"\n{name}: {len(videos)} videos, {frames} frames, {table[0]['provider']}, CNN batch {table[0]['batch']}")
    print(f"{'decoders':>8} {'videos/s':>9} {'frames/s':>9} {'vs ' + str(base):>8} {'range':>13} {'peak RSS':>9}")
    for t in table:
        lo, hi = t["speedup_range"]
        ratio, rss = t["speedup_vs_first_median"], t["peak_rss_mib_max"]
        print(f"{t['decoders']:>8} {t['videos_per_s']:>9.2f} {t['frames_per_s']:>9.1f} "
              f"{ratio:>7.2f}x {lo:>6.2f}-{hi:.2f}x {rss:>6.0f} MiB")  # fmt: skip
    return {"workload": name, "frames": frames, "rows": table, "runs": {str(d): runs[d] for d in decoders}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="?", default=str(REPO.parent / "shared" / "videos"))
    ap.add_argument("--decoders", default="1,2,4", help="comma-separated decoder counts; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="how many times the real clips are listed")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--short", type=int, default=40, help="generated 2 s clips for the short workload (0: skip)")
    ap.add_argument("--short-frames", type=int, default=32, help="frames sampled per short clip")
    ap.add_argument("--decode-only", action="store_true", help="also the real clips with a no-op CNN")
    ap.add_argument("--backbone", default=None, help="backbone name under weights/ (default: the settings')")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    decoders = [int(x) for x in a.decoders.split(",")]
    real = sorted(str(p) for p in Path(a.videos).iterdir() if p.suffix.lower() in VIDEO_EXT) * a.repeat
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; decoders {decoders}, "
          f"{a.rounds} rounds, interleaved")  # fmt: skip
    results = {"cpus": os.cpu_count(), "load_start": os.getloadavg(), "workloads": []}
    if real:
        results["workloads"].append(bench("real clips", real, a.frames, decoders, a.rounds, a.backbone))
        if a.decode_only:
            results["workloads"].append(
                bench("real clips, decode only", real, a.frames, decoders, a.rounds, a.backbone, null_cnn=True)
            )
    if a.short:
        with tempfile.TemporaryDirectory(prefix="bench-decoders-") as tmp:
            clips = short_clips(a.short, Path(tmp))
            results["workloads"].append(bench("short clips", clips, a.short_frames, decoders, a.rounds, a.backbone))
    results["load_end"] = os.getloadavg()
    print(f"\nload average at end {results['load_end'][0]:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
