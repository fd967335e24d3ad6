"""Proof that the sequence models learn: synthetic order and multi-label tasks through the real CLI.

    python benchmarks/bench_sequence_learning.py [--size tiny|small|full] [--out DIR] [--json results.json]

For each task (see predictor/synthetic.py) and model, runs `videotag train` with the default recipe (train split,
10% validation by id; only --epochs and the model size given) and `videotag evaluate` on the held-out test split,
then prints GAP@20 / Hit@1 / mAP / epochs run / training time.
Pass criteria (exit code 1 otherwise):
    order       attention_lstm GAP >= 0.9, frame_pool GAP <= 0.65 (chance is ~0.5: both classes hold the
                same frames, only their order differs)
    multilabel  nextvlad GAP >= 0.9
    (--size tiny, 90 training sequences: attention_lstm order >= 0.7, nextvlad multilabel >= 0.6)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from predictor.synthetic import make_multilabel_task, make_order_task  # noqa: E402

# Small models for 32-d synthetic features, trained with the default recipe (no optimiser options: the same
# command a user runs; the recipe scales the lr with batch size and model width).
MODELS: dict[str, list[str]] = {
    "frame_pool": [],
    "nextvlad": ["-s", "groups=4", "-s", "clusters=16", "-s", "hidden=128"],
    "attention_lstm": ["-s", "embedding_size=32", "-s", "lstm_size=32", "-s", "fc1_size=64", "-s", "fc2_size=64"],
}
SIZES = {
    "tiny": {"train": 100, "test": 200, "epochs": 15, "max_len": 50},
    "small": {"train": 600, "test": 200, "epochs": 12, "max_len": 50},
    "full": {"train": 2000, "test": 1000, "epochs": 15, "max_len": 80},
}
CRITERIA = {  # (task, model): (metric, op, bound)
    ("order", "attention_lstm"): ("gap@20", ">=", 0.9),
    ("order", "frame_pool"): ("gap@20", "<=", 0.65),
    ("multilabel", "nextvlad"): ("gap@20", ">=", 0.9),
}
# 90 training sequences: the models must clearly beat chance, not master the task.
CRITERIA_TINY = {
    ("order", "attention_lstm"): ("gap@20", ">=", 0.7),
    ("order", "frame_pool"): ("gap@20", "<=", 0.65),
    ("multilabel", "nextvlad"): ("gap@20", ">=", 0.6),
}


def videotag(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "videotag", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def run(size: str, out: Path, seed: int, threads: int) -> list[dict]:
    s = SIZES[size]
    splits = {"train": s["train"], "test": s["test"]}
    tasks = [
        make_order_task(out / "data", splits, max_len=s["max_len"], task_seed=seed),
        make_multilabel_task(out / "data", splits, max_len=s["max_len"], task_seed=seed),
    ]
    rows = []
    for task in tasks:
        for model, extra in MODELS.items():
            run_dir = out / "runs" / f"{task.name}_{model}"
            t0 = time.perf_counter()
            tr = videotag(
                "train", "-f", str(task.stores["train"]), "-l", str(task.labels["train"]), "--vocab", str(task.vocab),
                "-o", str(run_dir), "-m", model, "--epochs", str(s["epochs"]),
                "--seed", str(seed), "--threads", str(threads), "--no-progress", *extra,
            )  # fmt: skip
            train_s = time.perf_counter() - t0
            if tr.returncode != 0:
                raise SystemExit(f"train {task.name}/{model} failed:\n{tr.stdout}\n{tr.stderr}")
            report = run_dir / "test_report.json"
            ev = videotag(
                "evaluate", "-m", str(run_dir / "best.pt"), "-f", str(task.stores["test"]),
                "-l", str(task.labels["test"]), "-o", str(report),
            )  # fmt: skip
            if ev.returncode != 0:
                raise SystemExit(f"evaluate {task.name}/{model} failed:\n{ev.stdout}\n{ev.stderr}")
            m = json.loads(report.read_text())["metrics"]
            hist = json.loads((run_dir / "history.json").read_text())
            rows.append({"task": task.name, "model": model, "train_s": train_s, "epochs_run": len(hist["epochs"]),
                         "warnings": hist["warnings"], **m})  # fmt: skip
            print(f"  {task.name:10s} {model:15s} GAP {m['gap@20']:.3f}  ({train_s:.0f}s)", file=sys.stderr)
    return rows


def verdicts(rows: list[dict], size: str = "full") -> list[str]:
    failed = []
    criteria = CRITERIA_TINY if size == "tiny" else CRITERIA
    for r in rows:
        crit = criteria.get((r["task"], r["model"]))
        if crit:
            key, op, bound = crit
            ok = r[key] >= bound if op == ">=" else r[key] <= bound
            r["criterion"] = f"{key} {op} {bound}: {'PASS' if ok else 'FAIL'}"
            if not ok:
                failed.append(f"{r['task']}/{r['model']}: {key} {r[key]:.3f} not {op} {bound}")
    return failed


def table(rows: list[dict]) -> str:
    head = (
        "| task | model | GAP@20 | Hit@1 | mAP | epochs | train s | not-learning warnings | criterion |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['task']} | {r['model']} | {r['gap@20']:.3f} | {r['hit@1']:.3f} | {r['mAP']:.3f} | {r['epochs_run']} | "
        f"{r['train_s']:.0f} | {len(r['warnings'])} | {r.get('criterion', '')} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="videotag-seqbench-") as tmp:
        out = args.out or Path(tmp)
        s = SIZES[args.size]
        print(
            f"synthetic tasks: {s['train']} train (10% of it validation) / {s['test']} held-out test sequences, "
            f"20-{s['max_len']} frames of 32-d features, {s['epochs']} epochs, seed {args.seed}",
            file=sys.stderr,
        )
        rows = run(args.size, out, args.seed, args.threads)
    failed = verdicts(rows, args.size)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
