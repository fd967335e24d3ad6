"""Stage-2 predictor speed: sequences/s at T=300 frames, batch 1 and 32, torch eager vs ONNX Runtime (CPU).

    python benchmarks/bench_predictor.py [--dim 1280] [--classes 3396] [--min-time 3] [--json out.json]

Models at their reference sizes (random weights; speed does not depend on them): frame_pool,
attention_lstm (VideoTag: embedding 1024, LSTM 512x2, fc 8192/4096), nextvlad (paper: lambda 2, G 8, K 128,
hidden 2048) and the ensemble of attention_lstm + nextvlad (one merged ONNX graph). The ONNX side runs through
`OnnxPredictor` (the serving path, padding included), the torch side is `model.probabilities` under
inference_mode. Thread counts are each runtime's default; the load average is printed because the machine
may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from predictor.ensemble_builder import build_ensemble  # noqa: E402
from predictor.export import export_predictor  # noqa: E402
from predictor.models import create_model  # noqa: E402
from predictor.onnx_predictor import OnnxPredictor  # noqa: E402
from videotag.core.vocab import Vocabulary  # noqa: E402

T = 300


def rate(fn: Callable[[], object], n: int, min_time: float, min_iters: int = 2) -> float:
    """Sequences per second of `fn` (which handles n sequences): one warm-up, then >= min_time seconds."""
    fn()
    iters, t0 = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - t0 < min_time:
        fn()
        iters += 1
    return n * iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1280, help="feature dim (1280 EfficientNet-Lite0, 2048 ResNet TSN)")
    ap.add_argument("--classes", type=int, default=3396, help="output classes (VideoTag: 3396)")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=0, help="torch and ORT intra-op threads (0 = their defaults)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    d, c = args.dim, args.classes
    vocab = Vocabulary(tuple(f"class_{i}" for i in range(c)))
    backbone = {"name": "bench", "sha256": "0" * 64, "feature_dim": d}
    torch.manual_seed(0)
    models = {
        "frame_pool": create_model("frame_pool", feature_dim=d, num_classes=c),
        "attention_lstm": create_model("attention_lstm", feature_dim=d, num_classes=c),
        "nextvlad": create_model("nextvlad", feature_dim=d, num_classes=c),
    }
    for m in models.values():
        m.eval()
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((T, d)).astype(np.float32) for _ in range(max(batches))]
    rows = []
    print(
        f"T={T}, D={d}, C={c}; torch {torch.__version__} ({torch.get_num_threads()} threads), ORT threads "
        f"{args.threads or 'default'}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="videotag-predbench-") as tmp:
        dirs = {}
        for name, m in models.items():
            t0 = time.perf_counter()
            dirs[name] = export_predictor(m, Path(tmp) / name, vocab, backbone)
            print(f"  exported {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        dirs["ensemble"] = build_ensemble([dirs["attention_lstm"], dirs["nextvlad"]], Path(tmp) / "ensemble")
        ens = create_model(
            "ensemble",
            feature_dim=d,
            num_classes=c,
            members=[{"name": "attention_lstm", "config": {}}, {"name": "nextvlad", "config": {}}],
        ).eval()
        ens.members[0].load_state_dict(models["attention_lstm"].state_dict())
        ens.members[1].load_state_dict(models["nextvlad"].state_dict())
        models["ensemble"] = ens
        for name, m in models.items():
            onnx = OnnxPredictor(dirs[name], intra_op_threads=args.threads)
            row = {"model": name, "params_M": sum(p.numel() for p in m.parameters()) / 1e6,
                   "onnx_MB": (dirs[name] / "model.onnx").stat().st_size / 2**20}  # fmt: skip
            for b in batches:
                x = torch.from_numpy(np.stack(seqs[:b]))
                lens = torch.full((b,), T, dtype=torch.int64)

                def run_torch(x: torch.Tensor = x, lens: torch.Tensor = lens, m: torch.nn.Module = m) -> object:
                    with torch.inference_mode():
                        return m.probabilities(x, lens)

                row[f"torch_b{b}"] = rate(run_torch, b, args.min_time)
                row[f"onnx_b{b}"] = rate(lambda b=b, onnx=onnx: onnx.predict(seqs[:b], batch_size=b), b, args.min_time)
                print(
                    f"  {name:15s} batch {b:2d}: torch {row[f'torch_b{b}']:8.1f}/s   ORT {row[f'onnx_b{b}']:8.1f}/s",
                    file=sys.stderr,
                )
            rows.append(row)
    cols = [f"{rt}_b{b}" for b in batches for rt in ("torch", "onnx")]
    head = "| model | params (M) | " + " | ".join(
        f"{'torch' if k.startswith('torch') else 'ORT'} b{k.split('_b')[1]} (seq/s)" for k in cols
    )
    print(head + " |\n|" + "---|" * (len(cols) + 2))
    for r in rows:
        print(f"| {r['model']} | {r['params_M']:.1f} | " + " | ".join(f"{r[k]:.1f}" for k in cols) + " |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"T": T, "dim": d, "classes": c, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
