"""The Python steps of benchmarks/device_check.sh (run that script; these are its parts).

    python benchmarks/device_check.py providers MODEL_DIR          # ORT build, providers listed vs really used
    python benchmarks/device_check.py parity BACKBONE_DIR --clips DIR [--cpu-only]
    python benchmarks/device_check.py build-resnet WEIGHTS_DIR     # imported VideoTag bundle, generated weights
    python benchmarks/device_check.py summarize RUNS_DIR           # e2e table (+ nvidia-smi utilisation)

Each step prints one JSON object per result line and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# Parity tolerances GPU vs CPU (float32 graphs): cuDNN/TensorRT pick other convolution algorithms (and TF32 on
# Ampere+ by default), so features differ in the last bits, relative to the largest feature, never more.
REL_TOL, COS_TOL = 1e-2, 0.999


def _emit(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _session(path: Path, provider: str, trt_cache: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if provider == CPU:
        providers: list = [CPU]
    elif provider == TRT:
        cache = str(trt_cache or Path("/tmp/videotag-trt-cache"))
        Path(cache).mkdir(parents=True, exist_ok=True)
        providers = [(TRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache}), CUDA, CPU]
    else:
        providers = [provider, CPU]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def cmd_providers(args) -> int:
    """What this onnxruntime offers, and which provider a session REALLY gets for each one asked for."""
    import onnxruntime as ort

    from videotag.core.onnx_sessions import choose_providers

    info: dict = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    try:
        from onnxruntime.capi import build_and_package_info as b

        info["package"], info["built_for_cuda"] = b.package_name, getattr(b, "cuda_version", None)
    except ImportError:
        pass
    info["videotag_device_auto_chooses"] = choose_providers(None)
    model = Path(args.model) / "model.onnx"
    used, ok = {}, True
    for p in (CUDA, TRT):
        if p not in info["available"]:
            used[p] = "not in this build"
            continue
        try:
            t = time.perf_counter()
            got = _session(model, p).get_providers()
            used[p] = {"session_providers": got, "in_use": got[0] == p, "start_s": round(time.perf_counter() - t, 2)}
            ok = ok and (got[0] == p or p == TRT)  # TensorRT is optional; CUDA must work on a GPU machine
        except Exception as e:  # noqa: BLE001 - report, do not stop the other checks
            used[p] = {"error": f"{type(e).__name__}: {e}"[:400], "in_use": False}
            ok = ok and p == TRT
    info["asked_vs_used"] = used
    _emit({"step": "providers", **info, "verdict": "ok" if ok or args.cpu_only else "CUDA NOT USABLE"})
    return 0 if ok or args.cpu_only else 1


def _real_frames(backbone_dir: Path, clips: Path, n: int) -> np.ndarray:
    from extractor import quantize as q
    from extractor.backbone import FrameExtractor
    from videotag.pipeline import expand_inputs

    fx = FrameExtractor(backbone_dir, ["CPUExecutionProvider"])
    videos = expand_inputs([str(clips)])[:4]
    per = max(2, -(-n // max(len(videos), 1)))
    frames = np.concatenate([q.sample_clip(v, fx.preprocess, per, fx.sampling).frames for v in videos])
    return q.even_subsample(frames, n)


def cmd_parity(args) -> int:
    """Backbone features on the same real frames: CPU (reference) vs CUDA vs TensorRT; and frames/s of each."""
    import onnxruntime as ort

    bdir = Path(args.backbone)
    manifest = json.loads((bdir / "manifest.json").read_text(encoding="utf-8"))
    frames = _real_frames(bdir, Path(args.clips), args.frames)
    avail = ort.get_available_providers()
    providers = [CPU] + ([] if args.cpu_only else [p for p in (CUDA, TRT) if p in avail])
    ref, ok = None, True
    for p in providers:
        row: dict = {"step": "parity", "model": args.name or manifest["architecture"], "asked": p}
        try:
            t = time.perf_counter()
            sess = _session(bdir / "model.onnx", p, Path(args.trt_cache) if args.trt_cache else None)
            out = sess.run(["features"], {"frames": frames[:8]})[0]  # first run: TensorRT builds its engine here
            row["session_providers"] = sess.get_providers()
            row["start_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            for i in range(0, len(frames), args.batch):
                sess.run(["features"], {"frames": frames[i : i + args.batch]})
            row["frames_per_s"] = round(len(frames) / (time.perf_counter() - t), 1)
            feats = np.concatenate([sess.run(["features"], {"frames": frames[i : i + 8]})[0]
                                    for i in range(0, len(frames), 8)])  # fmt: skip
            del out
        except Exception as e:  # noqa: BLE001
            row.update(error=f"{type(e).__name__}: {e}"[:400], verdict="FAILED")
            ok = ok and p == TRT
            _emit(row)
            continue
        if p == CPU:
            ref = feats
            row["verdict"] = "reference"
        else:
            from extractor.quantize import cosine

            diff = float(np.abs(feats - ref).max())
            scale = float(np.abs(ref).max())
            cos = float(cosine(ref, feats).min())
            row.update(max_abs_diff=diff, rel_max_diff=diff / max(scale, 1e-12), cosine_min=cos)
            good = diff / max(scale, 1e-12) <= REL_TOL and cos >= COS_TOL
            used = row["session_providers"][0] == p
            row["verdict"] = ("ok" if good else "MISMATCH") + ("" if used else f"; {p} NOT USED")
            ok = ok and (good and used or p == TRT)
        _emit(row)
    if args.cpu_only:
        name = args.name or manifest["architecture"]
        _emit({"step": "parity", "model": name, "note": "GPU parity skipped (--cpu-only)"})
    return 0 if ok else 1


def cmd_build_resnet(args) -> int:
    """weights/videotag: TSN ResNet-101 + 3396-class Attention-LSTM from generated Paddle weights."""
    from bench_optimize import videotag_bundle_from_generated_weights

    out = Path(args.weights)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "videotag" / "manifest.json").is_file():
        _emit({"step": "build-resnet", "bundle": str(out / "videotag"), "reused": True})
        return 0
    t = time.perf_counter()
    bundle = videotag_bundle_from_generated_weights(out, lambda m: print(m, file=sys.stderr))
    _emit({"step": "build-resnet", "bundle": str(bundle), "seconds": round(time.perf_counter() - t, 1)})
    return 0


def _util(csv: Path) -> dict:
    """nvidia-smi samples 'utilization.gpu, memory.used' -> mean/max."""
    util, mem = [], []
    for line in csv.read_text().splitlines() if csv.is_file() else []:
        parts = [x.strip() for x in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            util.append(int(parts[0]))
            mem.append(float(parts[1]))
    if not util:
        return {}
    return {"gpu_util_mean_pct": round(statistics.mean(util), 1), "gpu_util_max_pct": max(util),
            "gpu_mem_max_mib": max(mem), "samples": len(util)}  # fmt: skip


def cmd_summarize(args) -> int:
    """runs/<N>.json written by the shell script ({decoders, mode, clips, frames, wall_s, failed}) -> table."""
    rows = []
    for f in sorted(Path(args.runs).glob("decoders_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        r = json.loads(f.read_text())
        r.update(_util(f.with_suffix(".smi.csv")))
        r["clips_per_s"] = round(r["clips"] / r["wall_s"], 3)
        r["frames_per_s"] = round(r["clips"] * r["frames"] / r["wall_s"], 1)
        rows.append(r)
        _emit({"step": "end-to-end", **r})
    print(f"\n{'decoders':>8} {'mode':<28} {'clips':>5} {'wall s':>7} {'clips/s':>8} {'frames/s':>9} {'GPU util':>14}")
    for r in rows:
        util = f"{r['gpu_util_mean_pct']}% (max {r['gpu_util_max_pct']})" if "gpu_util_mean_pct" in r else "-"
        print(f"{r['decoders']:>8} {r['mode']:<28} {r['clips']:>5} {r['wall_s']:>7.1f} {r['clips_per_s']:>8} "
              f"{r['frames_per_s']:>9} {util:>14}")  # fmt: skip
    bad = [r for r in rows if r.get("failed")]
    return 1 if bad or not rows else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("providers")
    p.add_argument("model")
    p.add_argument("--cpu-only", action="store_true")
    p = sub.add_parser("parity")
    p.add_argument("backbone")
    p.add_argument("--clips", required=True)
    p.add_argument("--name")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--trt-cache")
    p.add_argument("--cpu-only", action="store_true")
    p = sub.add_parser("build-resnet")
    p.add_argument("weights")
    p = sub.add_parser("summarize")
    p.add_argument("runs")
    args = ap.parse_args()
    return {"providers": cmd_providers, "parity": cmd_parity, "build-resnet": cmd_build_resnet,
            "summarize": cmd_summarize}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
