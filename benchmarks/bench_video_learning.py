"""Proof on real video files: order-aware vs orderless models, and multi-label tagging, through the real CLI.

    python benchmarks/bench_video_learning.py --size small|large [--root /tmp/vlbench] [--tasks order,multilabel]
                            [--models frame_pool,nextvlad,attention_lstm,ensemble] [--epochs N] [--reuse-runs]

End to end, every step a `videotag` subprocess except writing the videos:
1. Videos: real H.264 mp4 files (PyAV/libx264, CRF 23, 320x240, 8 fps, 24 frames = 3 s) of procedurally drawn
   scenes (tests/scenegen.py: 12 kinds of picture, a new random instance per shot, filmed with a random camera
   pan/zoom, per-video brightness/contrast and per-frame noise), written to ROOT/<size>/<task>/videos/<split>/.
2. Features: `videotag extract DIR --out <split>.h5 --frames 24` with the default backbone (EfficientNet-Lite0,
   1280-d) and the default sampling rule; 24 frames of a 24-frame video are all of them under any count rule
   ("segment" or "uniform"). This keeps the CNN cost at 2 tasks x 2700 videos x 24 = 130k frames for the large
   size (2 shared CPU cores: writing and extracting the videos is most of the run's cost besides training).
   Stores are cached: a re-run skips extraction when ROOT/<size>/<task>/features/<split>.h5 exists (delete it
   to re-extract) and video writing when labels/<split>.txt exists.
3. Training: `videotag train -f train.h5 -f val.h5 -l train.txt --val-labels val.txt --vocab vocab.txt -m MODEL
   -o RUN --epochs E` -- nothing else: default recipe, batch size, model config, seed.
4. Held-out test: `videotag evaluate -m RUN/best.pt -f test.h5 -l test.txt`; the ensemble is
   `videotag export` of the nextvlad and attention_lstm runs + `videotag ensemble --tune-features val.h5
   --tune-labels val.txt` (fusion weights chosen on the validation videos, which the members saw only for
   picking best.pt; the grid includes each member alone) + `videotag evaluate` of the ensemble directory.

Tasks (labels are VideoTag lists `VIDEO_ID<TAB>L1 L2 ...`, 0-based ids, + vocab.txt):
    order       every video shows the same three scenes (sky_sun, night_city, ocean_waves) as three shots of random
                length (>= 5 frames each), in one of the 3! = 6 orders; class = the order. Every video holds the
                same content, so a model that ignores frame order (frame_pool, nextvlad) can only guess
                (chance GAP@20 is printed, from random scores on the same test labels).
    multilabel  every video shows 3-5 of the 12 scenes (>= 3 frames each) in random order; labels = the set.

Splits: small 150 train / 50 validation (for best.pt) / 50 held-out test; large 2000 / 200 / 500.
Epochs (the only training option set): 20 for both sizes (override with --epochs). With the CLI's default of 10
the attention-LSTM on the order task was still leaving its plateau when the cosine schedule ended (held-out 0.52,
recipe of commit 97010f7); with 20 it reaches validation 1.0 by epoch 7 (recipe of 54255f7, small size).

Runs live in ROOT/<size>/<task>/runs_e<EPOCHS>/<model>; `--reuse-runs` evaluates finished runs instead of
retraining, so models can be trained in separate processes and assembled afterwards, e.g. on 2 cores:
    for t in order multilabel; do for m in attention_lstm frame_pool,nextvlad; do
        OMP_NUM_THREADS=1 python benchmarks/bench_video_learning.py --size small --tasks $t --models $m & done; done
    wait; python benchmarks/bench_video_learning.py --size small --reuse-runs

Criteria (exit code 1 if one fails):
    order       attention_lstm GAP@20 >= 0.95; frame_pool and nextvlad GAP@20 <= chance + 0.1
    multilabel  nextvlad, attention_lstm and ensemble GAP@20 >= 0.95; ensemble >= max(its members) - 1e-4 (a tie
                at the ceiling: one swapped pair among ~10^4 top-20 scores; the exact difference is printed)

Writes ROOT/results.md (all rows so far, every size) and ROOT/results.json; prints the table.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scenegen import SCENES, make_scene_video  # noqa: E402

VIDEO_FRAMES, FPS, SAMPLED = 24, 8, 24
SIZES = {
    "small": {"train": 150, "val": 50, "test": 50, "epochs": 20},
    "large": {"train": 2000, "val": 200, "test": 500, "epochs": 20},
}
SPLIT_SEED = {"train": 1, "val": 2, "test": 3}
ORDER_SCENES = ("sky_sun", "night_city", "ocean_waves")
MODELS = ("frame_pool", "nextvlad", "attention_lstm")
TIE = 1e-4  # ensemble vs best member: GAP@20 differences below this are ties at the ceiling
ENSEMBLE_MEMBERS = ("nextvlad", "attention_lstm")


# ---------------------------------------------------------------- data
def _cuts(rng: np.random.Generator, total: int, n: int, minimum: int) -> list[int]:
    """n shot lengths >= minimum summing to total (uniform over compositions)."""
    free = total - n * minimum
    bars = np.sort(rng.integers(0, free + 1, n - 1))
    parts = np.diff(np.concatenate([[0], bars, [free]]))
    return [int(p) + minimum for p in parts]


def task_vocab(task: str) -> list[str]:
    if task == "order":
        return ["-".join(p) for p in itertools.permutations(ORDER_SCENES)]
    return list(SCENES)


def plan_video(task: str, rng: np.random.Generator) -> tuple[list[tuple[str, int]], list[int]]:
    """(shots, label ids) of one video."""
    vocab = task_vocab(task)
    if task == "order":
        order = [ORDER_SCENES[i] for i in rng.permutation(len(ORDER_SCENES))]
        lengths = _cuts(rng, VIDEO_FRAMES, 3, 5)
        return list(zip(order, lengths, strict=True)), [vocab.index("-".join(order))]
    k = int(rng.integers(3, 6))
    names = [vocab[i] for i in rng.choice(len(vocab), size=k, replace=False)]
    lengths = _cuts(rng, VIDEO_FRAMES, k, 3)
    return list(zip(names, lengths, strict=True)), sorted(vocab.index(n) for n in names)


def _write_one(args: tuple[str, list[tuple[str, int]], int]) -> str:
    path, shots, seed = args
    if not Path(path).exists():
        make_scene_video(path, shots, seed=seed, fps=FPS)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]  # the store's video id


def make_split(task_dir: Path, task: str, split: str, n: int, jobs: int) -> Path:
    """Write the videos + label list of one split (skipped if the label list exists); return the label path."""
    labels_path = task_dir / "labels" / f"{split}.txt"
    if labels_path.exists():
        return labels_path
    vdir = task_dir / "videos" / split
    vdir.mkdir(parents=True, exist_ok=True)
    base = {"order": 0, "multilabel": 1_000_000}[task] + SPLIT_SEED[split] * 100_000
    rng = np.random.default_rng(base)
    work, labels = [], []
    for i in range(n):
        shots, lab = plan_video(task, rng)
        work.append((str(vdir / f"{split}_{i:05d}.mp4"), shots, base + i))
        labels.append(lab)
    with ProcessPoolExecutor(jobs) as pool:
        ids = list(pool.map(_write_one, work, chunksize=8))
    labels_path.parent.mkdir(exist_ok=True)
    tmp = labels_path.with_suffix(".tmp")
    tmp.write_text("".join(f"{vid}\t{' '.join(map(str, lab))}\n" for vid, lab in zip(ids, labels, strict=True)))
    tmp.replace(labels_path)
    return labels_path


# ---------------------------------------------------------------- CLI
def videotag(*args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("videotag")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "videotag", *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}\n")
    if p.returncode != 0:
        raise SystemExit(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def extract(task_dir: Path, split: str) -> tuple[Path, float | None]:
    store = task_dir / "features" / f"{split}.h5"
    if store.exists():
        return store, None
    store.parent.mkdir(exist_ok=True)
    tmp = store.with_name(f"{split}.partial.h5")
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    videotag("extract", str(task_dir / "videos" / split), "--out", str(tmp), "--frames", str(SAMPLED),
             log=task_dir / "features" / f"{split}.log")  # fmt: skip
    dt = time.perf_counter() - t0
    tmp.replace(store)
    return store, dt


def chance_gap(labels_path: Path, num_classes: int, trials: int = 200) -> float:
    """Mean GAP@20 of random scores on these labels (what a model that learned nothing gets)."""
    from predictor.metrics import gap

    rows = [ln.split("\t")[1].split() for ln in labels_path.read_text().splitlines() if ln.strip()]
    y = np.zeros((len(rows), num_classes), np.float32)
    for i, r in enumerate(rows):
        y[i, [int(x) for x in r]] = 1
    rng = np.random.default_rng(0)
    return float(np.mean([gap(rng.random(y.shape), y, 20) for _ in range(trials)]))


def history_summary(run: Path) -> dict:
    try:
        doc = json.loads((run / "history.json").read_text())
    except (OSError, ValueError):
        return {}
    ep = doc.get("epochs", [])
    out = {"epochs_run": len(ep), "best": doc.get("best"), "stopped_early": doc.get("stopped_early"),
           "warnings": doc.get("warnings", [])}  # fmt: skip
    if ep:
        out["train_loss"] = [round(float(e["train_loss"]), 4) for e in ep if "train_loss" in e]
        vg = [e.get("val", {}).get("gap@20", e.get("val_gap@20")) for e in ep]
        if any(v is not None for v in vg):
            out["val_gap"] = [None if v is None else round(float(v), 4) for v in vg]
    return out


def code_state() -> str:
    """HEAD commit, plus a hash of the uncommitted changes to predictor/ and videotag/ if any (what trained)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    diff = subprocess.run(["git", "diff", "HEAD", "--", "predictor", "videotag", "extractor"], cwd=ROOT,
                          capture_output=True)  # fmt: skip
    state = head.stdout.strip() or "unknown"
    if diff.stdout:
        state += "+dirty:" + hashlib.sha256(diff.stdout).hexdigest()[:8]
    return state


def run_task(
    size: str,
    task: str,
    root: Path,
    models: list[str],
    epochs: int,
    jobs: int,
    prepare_only: bool = False,
    reuse: bool = False,
) -> list[dict]:
    s = SIZES[size]
    task_dir = root / size / task
    task_dir.mkdir(parents=True, exist_ok=True)
    vocab = task_dir / "vocab.txt"
    vocab.write_text("".join(f"{n}\n" for n in task_vocab(task)))
    labels, stores, prep = {}, {}, {}
    for split in ("train", "val", "test"):
        t0 = time.perf_counter()
        labels[split] = make_split(task_dir, task, split, s[split], jobs)
        gen_s = time.perf_counter() - t0
        stores[split], ext_s = extract(task_dir, split)
        prep[split] = {"videos_s": round(gen_s, 1), "extract_s": None if ext_s is None else round(ext_s, 1)}
        print(f"[{size}/{task}] {split}: {s[split]} videos ({gen_s:.0f}s), extract "
              f"{'cached' if ext_s is None else f'{ext_s:.0f}s'}", file=sys.stderr, flush=True)  # fmt: skip
    (task_dir / "prep_timings.json").write_text(json.dumps(prep, indent=2) + "\n")
    if prepare_only:
        return []
    chance = chance_gap(labels["test"], len(task_vocab(task)))
    runs_dir = task_dir / f"runs_e{epochs}"
    rows: list[dict] = []
    git = code_state()

    def evaluate(model_ref: Path, name: str) -> dict:
        report = runs_dir / f"test_{name}.json"
        videotag("evaluate", "-m", str(model_ref), "-f", str(stores["test"]), "-l", str(labels["test"]),
                 "-o", str(report))  # fmt: skip
        return json.loads(report.read_text())["metrics"]

    for model in (m for m in models if m in MODELS):
        run = runs_dir / model
        done = run / "bench_train.json"
        if reuse and done.exists() and (run / "best.pt").exists():
            info = json.loads(done.read_text())
            print(f"[{size}/{task}] {model}: reusing the finished run {run}", file=sys.stderr, flush=True)
        else:
            if run.exists():
                shutil.rmtree(run)
            run.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            videotag("train", "-f", str(stores["train"]), "-f", str(stores["val"]), "-l", str(labels["train"]),
                     "--val-labels", str(labels["val"]), "--vocab", str(vocab), "-m", model, "-o", str(run),
                     "--epochs", str(epochs), log=runs_dir / f"train_{model}.log")  # fmt: skip
            info = {"train_s": round(time.perf_counter() - t0, 1), "code": git,
                    "torch_threads_env": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
            done.write_text(json.dumps(info) + "\n")
        m = evaluate(run / "best.pt", model)
        rows.append({"size": size, "task": task, "model": model, "gap@20": m["gap@20"], "hit@1": m["hit@1"],
                     "mAP": m["mAP"], "epochs": epochs, "chance_gap@20": chance, **info,
                     "history": history_summary(run)})  # fmt: skip
        print(f"[{size}/{task}] {model:15s} GAP@20 {m['gap@20']:.3f} (chance {chance:.3f}) "
              f"train {info['train_s']:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
    if "ensemble" in models:
        t0 = time.perf_counter()
        exported = []
        for mm in ENSEMBLE_MEMBERS:
            out = runs_dir / f"export_{mm}"
            shutil.rmtree(out, ignore_errors=True)
            videotag("export", "--checkpoint", str(runs_dir / mm), "-o", str(out))
            exported.append(str(out))
        ens = runs_dir / "export_ensemble"
        shutil.rmtree(ens, ignore_errors=True)
        videotag("ensemble", *exported, "-o", str(ens), "--tune-features", str(stores["val"]),
                 "--tune-labels", str(labels["val"]))  # fmt: skip
        build_s = time.perf_counter() - t0
        m = evaluate(ens, "ensemble")
        members = "+".join(ENSEMBLE_MEMBERS)
        rows.append({"size": size, "task": task, "model": f"ensemble ({members})", "gap@20": m["gap@20"],
                     "hit@1": m["hit@1"], "mAP": m["mAP"], "train_s": round(build_s, 1), "epochs": epochs,
                     "chance_gap@20": chance, "code": git, "note": "train s = export + ensemble build"})  # fmt: skip
        print(f"[{size}/{task}] ensemble        GAP@20 {m['gap@20']:.3f}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- verdicts, table
def verdicts(rows: list[dict]) -> list[str]:
    failed = []
    by = {(r["size"], r["task"], r["model"].split(" ")[0], r["epochs"]): r for r in rows}

    def check(r: dict, ok: bool, what: str) -> None:
        r["criterion"] = f"{what}: {'PASS' if ok else 'FAIL'}"
        if not ok:
            failed.append(f"{r['size']}/{r['task']}/{r['model']}: {r['epochs']} epochs: GAP@20 {r['gap@20']:.3f}, "
                          f"want {what}")  # fmt: skip

    for (size, task, model, epochs), r in by.items():
        if task == "order" and model == "attention_lstm":
            check(r, r["gap@20"] >= 0.95, ">= 0.95")
        elif task == "order" and model in ("frame_pool", "nextvlad"):
            bound = r["chance_gap@20"] + 0.1
            check(r, r["gap@20"] <= bound, f"<= chance+0.1 = {bound:.3f}")
        elif task == "multilabel" and model in ("nextvlad", "attention_lstm"):
            check(r, r["gap@20"] >= 0.95, ">= 0.95")
        elif task == "multilabel" and model == "ensemble":
            best = max((by[k]["gap@20"] for mm in ENSEMBLE_MEMBERS if (k := (size, task, mm, epochs)) in by),
                       default=0.0)  # fmt: skip
            # At the ceiling (members at 1.0) one swapped pair among ~10^4 top-20 scores moves GAP by ~1e-5: that
            # is a tie, not a loss. The exact difference is printed either way.
            delta = r["gap@20"] - best
            check(r, r["gap@20"] >= 0.95 and delta >= -TIE,
                  f">= 0.95 and >= best member {best:.5f} - {TIE:g} (delta {delta:+.1e})")  # fmt: skip
    return failed


def table(rows: list[dict]) -> str:
    head = ("| size | task | epochs | model | held-out GAP@20 | Hit@1 | chance GAP@20 | train s | criterion |\n"
            "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [
        f"| {r['size']} | {r['task']} | {r['epochs']} | {r['model']} | {r['gap@20']:.4f} | {r['hit@1']:.3f} | "
        f"{r['chance_gap@20']:.3f} | {r['train_s']:.0f} | {r.get('criterion', '')} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--root", type=Path, default=Path("/tmp/vlbench"))
    ap.add_argument("--tasks", default="order,multilabel")
    ap.add_argument(
        "--models",
        default=",".join((*MODELS, "ensemble")),
        help="'ensemble' = export + fuse + evaluate "
        "the nextvlad and attention_lstm runs (trained now or, with --reuse-runs, earlier)",
    )
    ap.add_argument(
        "--reuse-runs", action="store_true", help="evaluate finished runs of the same epochs, no retraining"
    )
    ap.add_argument("--epochs", type=int, default=None, help="default: 20")
    ap.add_argument("--prepare-only", action="store_true", help="write videos + extract features, no training")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes writing videos")
    ap.add_argument("--table-only", action="store_true", help="re-judge ROOT/results.json and print the table")
    args = ap.parse_args()
    if args.table_only:
        merged = json.loads((args.root / "results.json").read_text())
        failed = verdicts(merged)
        (args.root / "results.md").write_text(table(merged) + "\n")
        print(table(merged))
        if failed:
            print("FAILED: " + "; ".join(failed), file=sys.stderr)
        raise SystemExit(1 if failed else 0)
    epochs = args.epochs or SIZES[args.size]["epochs"]
    s = SIZES[args.size]
    print(f"{args.size}: {s['train']}/{s['val']}/{s['test']} train/val/test videos per task, {VIDEO_FRAMES} frames "
          f"@ {FPS} fps, extract --frames {SAMPLED}, --epochs {epochs}", file=sys.stderr)  # fmt: skip
    rows = []
    for task in args.tasks.split(","):
        rows += run_task(args.size, task, args.root, args.models.split(","), epochs, args.jobs, args.prepare_only,
                         args.reuse_runs)  # fmt: skip
    if args.prepare_only:
        return
    # merge with earlier results of other sizes/tasks/models (several runs may finish at once: lock)
    res_json = args.root / "results.json"
    lock = open(args.root / ".results.lock", "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    old = json.loads(res_json.read_text()) if res_json.exists() else []
    keys = {(r["size"], r["task"], r["model"], r["epochs"]) for r in rows}
    merged = [r for r in old if (r["size"], r["task"], r["model"], r["epochs"]) not in keys] + rows
    order = {"small": 0, "large": 1}
    merged.sort(key=lambda r: (order.get(r["size"], 9), r["task"] != "order", r["epochs"],
                               MODELS.index(r["model"]) if r["model"] in MODELS else 9))  # fmt: skip
    failed = verdicts(merged)
    res_json.write_text(json.dumps(merged, indent=2) + "\n")
    (args.root / "results.md").write_text(table(merged) + "\n")
    print(table(merged))
    mine = [f for f in failed if any(f.startswith(f"{k[0]}/{k[1]}/{k[2]}: {k[3]} epochs:") for k in keys)]
    if mine:
        print("FAILED: " + "; ".join(mine), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
