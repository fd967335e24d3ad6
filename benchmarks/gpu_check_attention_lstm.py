"""GPU check of the Attention-LSTM's two ONNX forms: which provider really runs them, and are they still right?

Builds VideoTag's Attention-LSTM (2048 -> 1024 -> 2x512 peephole LSTM -> 8192 -> 4096 -> 3396) from random
weights, exports the "scan" form (peephole cell as ONNX Scan) and the "onnx_lstm" form (native LSTM op with
peephole input P), and runs each on CUDAExecutionProvider and on CPUExecutionProvider. Prints, per form and
provider: the session's providers, where every LSTM/Scan node actually ran (from ORT's profile), max |diff|
against torch (float32, CPU) on a batch of different lengths, and sequences/s at T=300.

Expected: "scan" matches torch (<= 1e-4) on both providers. "onnx_lstm" matches on CPU; on CUDA the cuDNN
LSTM kernel does not read P (peepholes), so if the LSTM node lands on CUDA its result is wrong (~1e-1).

    python benchmarks/gpu_check_attention_lstm.py [--small] [--bundle DIR] [--json out.json]

--bundle DIR also runs an imported VideoTag bundle (videotag import-videotag): predictor and backbone on CUDA
vs CPU on random inputs. Exit code 1 if a form that should be exact is not (scan on any provider, onnx_lstm on
CPU), or if CUDA was asked for but not used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOL = 1e-4
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def _session(path: Path, provider: str, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    providers = [provider, CPU] if provider != CPU else [CPU]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def _node_placement(profile_file: str) -> dict[str, list[str]]:
    """op type -> sorted set of providers its nodes ran on (from an ORT profile)."""
    events = json.loads(Path(profile_file).read_text())
    seen: dict[str, set[str]] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and "provider" in args and "op_name" in args:
            seen.setdefault(args["op_name"], set()).add(args["provider"])
    return {k: sorted(v) for k, v in sorted(seen.items())}


def _throughput(sess, feature_dim: int, batch: int, steps: int = 300, repeat: int = 5) -> float:
    x = np.random.default_rng(0).standard_normal((batch, steps, feature_dim), dtype=np.float32)
    lens = np.full(batch, steps, dtype=np.int64)
    feeds = {"features": x, "lengths": lens}
    sess.run(None, feeds)  # warm-up (CUDA kernels, allocations)
    t = time.perf_counter()
    for _ in range(repeat):
        sess.run(None, feeds)
    return batch * repeat / (time.perf_counter() - t)


def check_forms(small: bool, tmp: Path) -> tuple[list[dict], bool]:
    import torch

    from predictor.export import parity_batch
    from predictor.models import create_model

    torch.manual_seed(0)
    cfg = dict(feature_dim=2048, num_classes=3396)
    if small:
        cfg = dict(feature_dim=64, num_classes=50, embedding_size=32, lstm_size=16, fc1_size=64, fc2_size=32)
    model = create_model("attention_lstm", **cfg).eval()
    with torch.no_grad():  # livelier gates than the default init, so a missing peephole shows clearly
        for name, p in model.named_parameters():
            if name.startswith("lstm."):
                p.normal_(0.0, 0.3 if name.endswith("peephole") else 0.05)
    x, lens = parity_batch(model.feature_dim, lengths=(300, 120, 37, 1), seed=1)
    with torch.no_grad():
        want = model.probabilities(x, lens).numpy()
    rows, ok = [], True
    for form in ("scan", "onnx_lstm"):
        path = tmp / f"attention_lstm_{form}.onnx"
        model.export_onnx_graph(path, 17, lstm_impl=form)
        for provider in (CUDA, CPU):
            sess = _session(path, provider, str(tmp / f"prof_{form}_{provider[:4]}"))
            got = sess.run(["probabilities"], {"features": x.numpy(), "lengths": lens.numpy()})[0]
            placement = _node_placement(sess.end_profiling())
            sess_plain = _session(path, provider)
            row = {
                "form": form,
                "asked": provider,
                "session_providers": sess_plain.get_providers(),
                "recurrent_node_on": placement.get("Scan" if form == "scan" else "LSTM"),
                "max_abs_diff_vs_torch": float(np.abs(got - want).max()),
                "seq_per_s_b1": round(_throughput(sess_plain, model.feature_dim, 1), 2),
                "seq_per_s_b32": round(_throughput(sess_plain, model.feature_dim, 32, repeat=2), 2),
            }
            if provider == CUDA:
                row["nodes_by_provider"] = placement
            must_match = form == "scan" or provider == CPU
            row["verdict"] = (
                "ok" if row["max_abs_diff_vs_torch"] <= TOL else ("WRONG" if must_match else "wrong (expected)")
            )
            if must_match and row["max_abs_diff_vs_torch"] > TOL:
                ok = False
            if provider == CUDA and row["session_providers"][0] != CUDA:
                row["verdict"] += "; CUDA NOT USED"
                ok = False
            rows.append(row)
    return rows, ok


def check_bundle(bundle: Path) -> tuple[list[dict], bool]:
    """An imported VideoTag bundle: predictor and backbone, CUDA vs CPU."""
    rng = np.random.default_rng(2)
    rows, ok = [], True
    frames = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    feats = {}
    for provider in (CPU, CUDA):
        sess = _session(bundle / "backbone" / "model.onnx", provider)
        feats[provider] = sess.run(["features"], {"frames": frames})[0]
        t = time.perf_counter()
        big = rng.integers(0, 256, (64, 224, 224, 3), dtype=np.uint8)
        sess.run(["features"], {"frames": big})
        rows.append({"model": "backbone", "asked": provider, "session_providers": sess.get_providers(),
                     "frames_per_s": round(64 / (time.perf_counter() - t), 1)})  # fmt: skip
    d = float(np.abs(feats[CUDA] - feats[CPU]).max())
    rows.append({"model": "backbone", "cuda_vs_cpu_max_abs_diff": d, "scale": float(np.abs(feats[CPU]).max())})
    seq = rng.standard_normal((3, 300, 2048), dtype=np.float32)
    lens = np.array([300, 150, 20], dtype=np.int64)
    probs = {}
    for provider in (CPU, CUDA):
        sess = _session(bundle / "model.onnx", provider)
        probs[provider] = sess.run(["probabilities"], {"features": seq, "lengths": lens})[0]
        rows.append({"model": "predictor", "asked": provider, "session_providers": sess.get_providers()})
    d = float(np.abs(probs[CUDA] - probs[CPU]).max())
    rows.append({"model": "predictor", "cuda_vs_cpu_max_abs_diff": d})
    for r in rows:
        if r.get("asked") == CUDA and r["session_providers"][0] != CUDA:
            r["verdict"] = "CUDA NOT USED"
            ok = False
    ok = ok and d <= 1e-3  # TF32/cuDNN convolution algorithms differ from CPU in the last bits, not more
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny model (smoke run), not VideoTag's size")
    ap.add_argument("--bundle", type=Path, help="an imported VideoTag bundle directory to check as well")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}; available providers: {ort.get_available_providers()}")
    if CUDA not in ort.get_available_providers():
        print("CUDAExecutionProvider is not available in this onnxruntime build: nothing to check on a GPU")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        rows, ok = check_forms(args.small, Path(tmp))
    for r in rows:
        print(json.dumps(r, ensure_ascii=False))
    result = {"forms": rows}
    if args.bundle:
        brows, bok = check_bundle(args.bundle)
        for r in brows:
            print(json.dumps(r, ensure_ascii=False))
        result["bundle"] = brows
        ok = ok and bok
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
