"""FP32 vs INT8 backbone throughput and agreement, in one run, for the two backbones we ship or import.

(a) `default`: EfficientNet-Lite0 with its real ImageNet weights (the models `videotag setup` exports) and the
    ImageNet frame-pool predictor. `videotag optimize imagenet_framepool --int8` on the real clips in
    ../shared/videos (every third clip held back), then: backbone frames/s FP32 vs INT8 on the same decoded frames,
    interleaved; and, with --tag-frames N (default 300), the tags of every clip end to end at N frames (FP32 vs
    INT8 bundle through `pipeline.tag_sources`, clip by clip, alternating which goes first), split into
    calibration and held-back clips.
(b) `resnet101`: the imported VideoTag bundle (TSN ResNet-101 + 3396-class Attention-LSTM) built by
    `import_videotag` from GENERATED Paddle weights (tests/reference/numpy_paddle.py: He-scaled convs, BN near
    identity; not trained weights), optimised the same way on the same clips; the same interleaved frames/s.

Throughput: the two ONNX Runtime sessions (same intra-op threads, same uint8 crops, batch 8) run in alternating
rounds (FP32 then INT8, then INT8 then FP32, ...); each round's ratio is computed from adjacent runs, and the
median ratio is reported, so load from other processes on the machine hits both sides alike.

    python benchmarks/bench_optimize.py [--only default|resnet101] [--rounds 5] [--json out.json]

Exit status 0 when both bundles were written (the gate passed); the ≥ 2.5x ResNet-101 target is reported, not
enforced.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extractor import quantize as q  # noqa: E402
from videotag.core.settings import Settings  # noqa: E402

TARGET_RESNET_SPEEDUP = 2.5


def _settings(weights: Path, frames: int = 300) -> Settings:
    return Settings(_env_file=None, weights_dir=weights, frames=frames, device="cpu", topk=20)


def _clips(videos: Path) -> list[str]:
    from videotag.pipeline import expand_inputs

    clips = expand_inputs([str(videos)])
    if len(clips) < 2:
        raise SystemExit(f"need at least two clips in {videos} (see ../shared/videos/README.md)")
    return clips


def interleaved_throughput(fp32: Path, int8: Path, frames: np.ndarray, rounds: int, threads: int, batch: int = 8):
    """frames/s of both models on the same frames, alternating which runs first each round."""
    sess = {"fp32": q.cpu_session(fp32, threads), "int8": q.cpu_session(int8, threads)}
    for s in sess.values():  # warm-up: first-run allocations and kernel selection
        q.run_backbone(s, frames[:batch], batch)
    fps: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(rounds):
        for name in ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32"):
            t = time.perf_counter()
            q.run_backbone(sess[name], frames, batch)
            fps[name].append(len(frames) / (time.perf_counter() - t))
    ratios = [i / f for f, i in zip(fps["fp32"], fps["int8"], strict=True)]
    return {
        "frames_per_round": int(len(frames)),
        "batch": batch,
        "threads": threads or "all cores",
        "fp32_frames_per_s": [round(x, 2) for x in fps["fp32"]],
        "int8_frames_per_s": [round(x, 2) for x in fps["int8"]],
        "fp32_median": round(statistics.median(fps["fp32"]), 2),
        "int8_median": round(statistics.median(fps["int8"]), 2),
        "speedup_per_round": [round(x, 2) for x in ratios],
        "speedup_median": round(statistics.median(ratios), 2),
        "speedup_min": round(min(ratios), 2),
        "speedup_max": round(max(ratios), 2),
    }


def _bench_frames(clips: list[str], preprocess, policy: str, n: int) -> np.ndarray:
    """n real decoded crops, spread over the clips (what the backbone sees in production)."""
    per = max(2, -(-n // len(clips)))
    frames = np.concatenate([q.sample_clip(c, preprocess, per, policy).frames for c in clips])
    return q.even_subsample(frames, n)


def _optimize(settings: Settings, model: str, clips: list[str], out: Path, frames: int, log, eval_frames=None) -> dict:
    from videotag.optimize import optimize_model

    t = time.perf_counter()
    rep = optimize_model(settings, model, "int8", clips, str(out), frames=frames, eval_frames=eval_frames, force=True,
                         say=log)  # fmt: skip
    rec = rep.manifest["optimized"]
    a = rec["agreement"]
    return {
        "seconds": round(time.perf_counter() - t, 1),
        "exclusion": rec["exclusion"],
        "predictor": rec["predictor_precision"],
        "calibration_frames": rec["backbone_precision"]["calibration_frames"],
        "held_back": rec["held_back"],
        "gate": rec["gate"],
        "agreement": {k: v for k, v in a.items() if k not in ("throughput_while_measuring",)},
        "attempts": rec["attempts"],
    }


def tag_agreement(settings: Settings, fp32_model: str, int8_model: str, clips: list[str], held: set[str]) -> dict:
    """Tags of every clip at settings.frames frames, FP32 vs INT8 bundle, end to end (decode included)."""
    from videotag import pipeline

    pipeline.load_models(settings, fp32_model)
    pipeline.load_models(settings, int8_model)
    rows, secs = [], {"fp32": 0.0, "int8": 0.0}
    for i, clip in enumerate(clips):
        res = {}
        for name, model in (("fp32", fp32_model), ("int8", int8_model))[:: 1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            (res[name],) = list(pipeline.tag_sources([clip], settings, model))
            secs[name] += time.perf_counter() - t
        a, b = res["fp32"], res["int8"]
        if not (a.ok and b.ok):
            rows.append({"clip": Path(clip).name, "error": (a.error or b.error)})
            continue
        pa = {t.class_id: t.probability for t in a.tags}
        pb = {t.class_id: t.probability for t in b.tags}
        top = lambda tags, k: {t.class_id for t in tags[:k]}  # noqa: E731
        common = set(pa) & set(pb)
        rows.append({
            "clip": Path(clip).name,
            "held_back": Path(clip).name in held,
            "top1_same": a.tags[0].class_id == b.tags[0].class_id,
            "top5_overlap": len(top(a.tags, 5) & top(b.tags, 5)) / 5,
            "top20_overlap": len(top(a.tags, 20) & top(b.tags, 20)) / 20,
            "max_prob_diff_common_top20": round(max((abs(pa[c] - pb[c]) for c in common), default=float("nan")), 4),
            "fp32_top1": f"{a.tags[0].class_name} {a.tags[0].probability:.3f}",
            "int8_top1": f"{b.tags[0].class_name} {b.tags[0].probability:.3f}",
        })  # fmt: skip
    ok = [r for r in rows if "error" not in r]

    def summary(sel: list[dict]) -> dict:
        if not sel:
            return {}
        return {
            "clips": len(sel),
            "top1_agreement": round(float(np.mean([r["top1_same"] for r in sel])), 3),
            "top5_overlap_mean": round(float(np.mean([r["top5_overlap"] for r in sel])), 3),
            "top5_overlap_min": round(float(np.min([r["top5_overlap"] for r in sel])), 3),
            "top20_overlap_mean": round(float(np.mean([r["top20_overlap"] for r in sel])), 3),
        }

    return {
        "frames": settings.frames,
        "all": summary(ok),
        "held_back": summary([r for r in ok if r["held_back"]]),
        "calibration": summary([r for r in ok if not r["held_back"]]),
        "end_to_end_clips_per_s": {k: round(len(clips) / v, 3) for k, v in secs.items()},
        "per_clip": rows,
    }


def bench_default(videos: Path, rounds: int, threads: int, frames: int, eval_frames: int, tag_frames: int, tmp: Path,
                  log) -> dict:  # fmt: skip
    from videotag.defaults import BACKBONE, PREDICTOR, export_defaults

    weights = ROOT / "weights"
    export_defaults(weights)  # what `videotag setup` does; a no-op when they are there
    s = _settings(weights)
    clips = _clips(videos)
    out = tmp / f"{PREDICTOR}-int8"
    log(f"[default] videotag optimize {PREDICTOR} --int8 on {len(clips)} clips")
    opt = _optimize(s, PREDICTOR, clips, out, frames, log, eval_frames)
    from extractor.backbone import FrameExtractor

    fx = FrameExtractor(weights / BACKBONE)
    bench = _bench_frames(clips, fx.preprocess, fx.sampling, 64)
    log(f"[default] interleaved throughput, {rounds} rounds of {len(bench)} frames")
    speed = interleaved_throughput(weights / BACKBONE / "model.onnx", out / "backbone" / "model.onnx", bench, rounds,
                                   threads)  # fmt: skip
    row = {"backbone": "efficientnet_lite0 (real ImageNet weights)", "optimize": opt, "throughput": speed}
    if tag_frames:
        log(f"[default] tags of {len(clips)} clips at {tag_frames} frames, FP32 vs INT8")
        row["tags"] = tag_agreement(_settings(weights, tag_frames), PREDICTOR, str(out), clips,
                                    set(opt["held_back"]["clips"]))  # fmt: skip
    return row


def videotag_bundle_from_generated_weights(weights: Path, log) -> Path:
    """The imported VideoTag bundle from generated Paddle weights (as tests/importers/test_paddle_videotag.py)."""
    from tests.reference import numpy_paddle as ref
    from videotag.core.vocab import VIDEOTAG_LABELS
    from videotag.importers.paddle_videotag import import_videotag

    src = weights.parent / "paddle"
    src.mkdir(exist_ok=True)
    for name, params in (("tsn.pdparams", ref.random_tsn_params(101, seed=0)),
                         ("attention_lstm.pdparams", ref.random_attention_lstm_params(3396, seed=1))):  # fmt: skip
        with open(src / name, "wb") as f:
            pickle.dump(params, f, protocol=2)
    out = weights / "videotag"
    t = time.perf_counter()
    import_videotag(src / "tsn.pdparams", src / "attention_lstm.pdparams", VIDEOTAG_LABELS["zh"], out)
    log(f"[resnet101] imported a generated-weights VideoTag bundle in {time.perf_counter() - t:.0f}s")
    return out


def bench_resnet(videos: Path, rounds: int, threads: int, frames: int, eval_frames: int, tmp: Path, log) -> dict:
    weights = tmp / "weights"
    weights.mkdir()
    bundle = videotag_bundle_from_generated_weights(weights, log)
    s = _settings(weights)
    clips = _clips(videos)
    out = weights / "videotag-int8"
    log(f"[resnet101] videotag optimize videotag --int8 on {len(clips)} clips")
    opt = _optimize(s, "videotag", clips, out, frames, log, eval_frames)
    from extractor.backbone import FrameExtractor

    fx = FrameExtractor(bundle / "backbone")
    bench = _bench_frames(clips, fx.preprocess, fx.sampling, 32)
    log(f"[resnet101] interleaved throughput, {rounds} rounds of {len(bench)} frames")
    speed = interleaved_throughput(bundle / "backbone" / "model.onnx", out / "backbone" / "model.onnx", bench,
                                   rounds, threads)  # fmt: skip
    return {
        "backbone": "videotag_tsn_resnet101 (GENERATED weights, imported bundle)",
        "optimize": opt,
        "throughput": speed,
        "target_speedup": TARGET_RESNET_SPEEDUP,
        "target_met": speed["speedup_median"] >= TARGET_RESNET_SPEEDUP,
    }


def _print(name: str, row: dict) -> None:
    sp, opt, a = row["throughput"], row["optimize"], row["optimize"]["agreement"]
    print(f"\n== {name}: {row['backbone']}")
    print(f"  frames/s (median of {len(sp['fp32_frames_per_s'])} interleaved rounds, {sp['frames_per_round']} frames,"
          f" batch {sp['batch']}, threads {sp['threads']}): FP32 {sp['fp32_median']}  INT8 {sp['int8_median']}  "
          f"speed-up {sp['speedup_median']}x (rounds {sp['speedup_min']}-{sp['speedup_max']}x)")  # fmt: skip
    print(f"  gate ({opt['exclusion']}; predictor {opt['predictor']}) on {a['frames']} held-back frames of "
          f"{a['videos']} clips: feature cosine mean {a['feature_cosine_mean']:.4f} min {a['feature_cosine_min']:.4f}"
          + (f"; top-{a['topk']} overlap mean {a['topk_overlap_mean']:.2f} min {a['topk_overlap_min']:.2f}; "
             f"top-1 agreement {a['top1_agreement']:.2f}; max prob diff {a['max_prob_diff']:.4f}"
             if "topk" in a else ""))  # fmt: skip
    if "tags" in row:
        tg = row["tags"]
        for part in ("held_back", "calibration", "all"):
            if tg[part]:
                print(f"  tags at {tg['frames']} frames, {part} clips: {tg[part]}")
        print(f"  end to end clips/s (sequential, alternating): {tg['end_to_end_clips_per_s']}")
    if "target_met" in row:
        print(f"  target >= {row['target_speedup']}x: {'met' if row['target_met'] else 'NOT met'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "videos")
    ap.add_argument("--only", choices=("default", "resnet101"))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved FP32/INT8 rounds")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for both sessions (0: all cores)")
    ap.add_argument("--frames", type=int, default=32, help="frames sampled per calibration clip")
    ap.add_argument("--eval-frames", type=int, default=300, help="frames sampled per held-back clip (as `tag`: 300)")
    ap.add_argument("--tag-frames", type=int, default=300, help="default model: end-to-end tags at N frames (0: skip)")
    ap.add_argument("--json", type=Path, help="write all results here too")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    from videotag.optimize import GateRefused

    results: dict = {"cpu_vnni": q.cpu_has_vnni()}
    try:
        _run(args, results, log)
    except GateRefused as e:
        print(f"REFUSED by the gate: {e}")
        return 1
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


def _run(args, results: dict, log) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp_s:
        tmp = Path(tmp_s)
        if args.only in (None, "default"):
            results["default"] = bench_default(args.videos, args.rounds, args.threads, args.frames, args.eval_frames,
                                               args.tag_frames, tmp, log)  # fmt: skip
            _print("default", results["default"])
        if args.only in (None, "resnet101"):
            results["resnet101"] = bench_resnet(args.videos, args.rounds, args.threads, args.frames, args.eval_frames,
                                                tmp, log)  # fmt: skip
            _print("resnet101", results["resnet101"])


if __name__ == "__main__":
    raise SystemExit(main())
