"""Training datasets the way users have them: a folder per class (or a CSV), turned into what `train` reads.

`build_dataset(DIR, OUT, settings)` walks `DIR/<class>/**` for videos (the layout of Flash, Hugging Face and
PaddleX: the vocabulary is the sorted class folder names), extracts their features with the pipeline's one
extraction path (`pipeline.tag_sources(predict=False)`, exactly what `videotag extract` runs) and writes:

    OUT/features/<backbone>/<id>.h5   the feature store (one shard per video; re-runs reuse them)
    OUT/vocab.txt                     one class name per line (id = line number)
    OUT/train.txt, OUT/val.txt        VideoTag lists `<video id>\t<label ids>`, a stratified split by class
    OUT/videos.csv                    id, source, labels (names), split: which file became which id
    OUT/failed.jsonl                  one result per video that could not be extracted (code + reason)
    OUT/dataset.json                  the summary, the problems and the `videotag train` command to run next

With `labels=FILE.csv` (header `path,labels` or `id,labels`, `;`-separated class names) every video under DIR
is extracted and labelled from the CSV instead (multi-label); its keys are matched like any label file
(`predictor.data.match_key`: relative to the CSV, to DIR or to the current directory, normalised, by content).
Videos that fail are reported and left out; the rest goes on.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from predictor.data import DatasetError, read_labels, resolve_labels, split_by_id
from videotag import pipeline
from videotag.core.feature_store import FeatureStore, video_id_for
from videotag.core.manifest import now_iso
from videotag.core.results import VideoResult
from videotag.core.settings import Settings
from videotag.core.vocab import Vocabulary
from videotag.inputs import VIDEO_EXTENSIONS, expand_inputs


@dataclass
class DatasetPaths:
    """What `build_dataset` wrote, and its counts. `train_args()` gives the matching `videotag train` options."""

    out_dir: Path
    features: Path  # OUT/features/<backbone>: the store directory of this dataset's backbone
    vocab: Path
    train: Path
    val: Path | None  # None when val_fraction is 0
    videos: Path
    failed: Path
    summary: Path
    num_videos: int = 0  # found under DIR
    num_failed: int = 0
    num_train: int = 0
    num_val: int = 0
    classes: list[str] = field(default_factory=list)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {"train": n, "val": n}
    problems: list[str] = field(default_factory=list)  # left-out videos and label lines, one message each

    def train_args(self) -> list[str]:
        """`-f FEATURES -l TRAIN --vocab VOCAB [--val-labels VAL | --val-fraction 0]` for `videotag train`."""
        args = ["-f", str(self.features), "-l", str(self.train), "--vocab", str(self.vocab)]
        return args + (["--val-labels", str(self.val)] if self.val else ["--val-fraction", "0"])

    def train_command(self, run_dir: str | Path | None = None) -> str:
        """The exact shell command to train on this dataset (run dir default: runs/<OUT's name>)."""
        run_dir = run_dir or Path("runs") / (self.out_dir.resolve().name or "model")
        return shlex.join(["videotag", "train", *self.train_args(), "-o", str(run_dir)])


def _class_folders(videos_dir: Path) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Sorted class names, class -> its videos (recursive), and videos lying outside any class folder."""
    dirs = sorted(d for d in videos_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {d.name: expand_inputs([str(d)]) for d in dirs}
    per_class = {name: found for name, found in per_class.items() if found}
    loose = [
        str(p) for p in sorted(videos_dir.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    ]
    return sorted(per_class), per_class, loose


def _csv_class_names(path: Path) -> list[str]:
    """Sorted distinct class names of a `path,labels` CSV (the vocabulary of a multi-label dataset)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DatasetError(f"label CSV {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"label CSV {path} is not UTF-8 text ({e})") from None
    cols = [c.strip().lower() for c in rows[0]] if rows else []
    if "labels" not in cols:
        raise DatasetError(f"{path}:1: CSV header must have columns 'path' (or 'id') and 'labels', got {rows[:1]}")
    cl = cols.index("labels")
    names = {n.strip() for row in rows[1:] if len(row) > cl for n in row[cl].split(";") if n.strip()}
    if not names:
        raise DatasetError(f"label CSV {path}: no class names in its 'labels' column")
    return sorted(names)


def _stratified_split(
    labels: dict[str, tuple[int, ...]], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split per class (a multi-label video goes with its rarest class); deterministic for a seed."""
    counts = Counter(c for ids in labels.values() for c in ids)
    groups: dict[int, list[str]] = {}
    for vid, ids in labels.items():
        groups.setdefault(min(ids, key=lambda c: (counts[c], c)), []).append(vid)
    train, val = [], []
    for c in sorted(groups):
        t, v = split_by_id(groups[c], val_fraction, seed)
        train += t
        val += v
    return train, val


def _write_list(path: Path, ids: list[str], labels: dict[str, tuple[int, ...]], header: str) -> None:
    lines = [f"# {header}", "# one video per line: <video id><TAB><0-based class ids> (see vocab.txt, videos.csv)"]
    lines += [f"{vid}\t{' '.join(map(str, labels[vid]))}" for vid in ids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _reusable(sources: list[str], shard_dir: Path, settings: Settings) -> dict[int, VideoResult]:
    """Videos whose shard `shard_dir/<id>.h5` exists from an earlier run with the same frame count: not decoded
    again. A shard made with other settings is refused (extraction keeps existing shards, it never mixes)."""
    out: dict[int, VideoResult] = {}
    if not shard_dir.is_dir():
        return out
    for i, src in enumerate(sources):
        try:
            vid = video_id_for(src)
        except OSError:
            continue  # extraction reports it
        shard = shard_dir / f"{vid}.h5"
        if not shard.is_file():
            continue
        with FeatureStore(shard) as st:
            rec = st.get(vid)
        if rec.num_frames != settings.frames or (settings.sampling and rec.sampling != settings.sampling):
            raise DatasetError(
                f"{shard} (features of {src}) holds {rec.num_frames} frames sampled by {rec.sampling!r}, but this "
                f"run asks for {settings.frames}{' by ' + repr(settings.sampling) if settings.sampling else ''}: "
                f"use another --out, or delete {shard_dir} to extract again"
            )
        out[i] = VideoResult(video_id=vid, source=src, ok=True, features={"path": str(shard), "video_id": vid})
    return out


def build_dataset(
    videos_dir: str | Path,
    out_dir: str | Path,
    settings: Settings,
    model: str | None = None,
    labels: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[VideoResult], None] | None = None,
) -> DatasetPaths:
    """Folder-per-class videos (or videos + a `path,labels` CSV) -> features, vocabulary, train/val lists.

    videos_dir: `DIR/<class>/**/<video>` (class = folder name), or any videos under DIR when `labels` is given.
    settings/model: extraction settings (frames, batch size, sampling, backbone) and the predictor whose
        backbone to use, as for `videotag extract`.
    val_fraction, seed: stratified, deterministic split (0 = no validation list).
    on_start(total), on_result(result): progress hooks, called before extraction and once per video.
    Videos whose features an earlier run stored in OUT/features with the same frame count are not decoded again.
    Raises DatasetError when there is nothing to build (no classes, no videos, every video failed).
    """
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not videos_dir.is_dir():
        raise DatasetError(f"{videos_dir}: not a directory (expected one sub-folder of videos per class)")
    problems: list[str] = []
    folder_of: dict[str, str] = {}
    if labels is None:
        classes, per_class, loose = _class_folders(videos_dir)
        if not classes:
            raise DatasetError(
                f"{videos_dir}: no class folders with videos (expected {videos_dir}/<class>/*.mp4; "
                f"extensions {'/'.join(sorted(VIDEO_EXTENSIONS))}), or pass --labels FILE.csv"
            )
        if loose:
            problems.append(f"{len(loose)} video(s) directly in {videos_dir} are in no class folder, left out "
                            f"(e.g. {loose[0]})")  # fmt: skip
        sources = [s for c in classes for s in per_class[c]]
        folder_of = {s: c for c in classes for s in per_class[c]}
    else:
        classes = _csv_class_names(Path(labels))
        sources = expand_inputs([str(videos_dir)])
        if not sources:
            raise DatasetError(f"{videos_dir}: no video files found (searched recursively)")
    vocab = Vocabulary(tuple(classes))
    out_dir.mkdir(parents=True, exist_ok=True)
    features_root = out_dir / "features"
    failed_path = out_dir / "failed.jsonl"

    reused = _reusable(sources, features_root / pipeline.get_extractor(settings, model).name, settings)
    todo = [s for i, s in enumerate(sources) if i not in reused]
    if on_start:
        on_start(len(sources))
    ok: list[VideoResult] = []
    n_failed = 0
    with open(failed_path, "w", encoding="utf-8") as failed:
        extracted = pipeline.tag_sources(todo, settings, model, features_out=features_root, predict=False)
        try:
            for i in range(len(sources)):
                res = reused[i] if i in reused else next(extracted)
                if on_result:
                    on_result(res)
                if res.ok and res.features:
                    ok.append(res)
                else:
                    n_failed += 1
                    failed.write(res.model_dump_json() + "\n")
        finally:
            extracted.close()
    if not ok:
        raise DatasetError(f"none of the {len(sources)} videos could be extracted; reasons in {failed_path}")
    if n_failed:
        problems.append(f"{n_failed} of {len(sources)} video(s) failed to extract, left out (see {failed_path})")
    shard_paths = sorted({r.features["path"] for r in ok})
    features_dir = Path(shard_paths[0]).parent

    source_of: dict[str, str] = {}
    video_labels: dict[str, tuple[int, ...]] = {}
    if labels is None:
        index = {c: i for i, c in enumerate(classes)}
        for r in ok:
            if r.video_id in source_of:
                problems.append(f"{r.source} has the same content as {source_of[r.video_id]}: one video, both labels")
            source_of.setdefault(r.video_id, r.source)
            merged = video_labels.get(r.video_id, ()) + (index[folder_of[r.source]],)
            video_labels[r.video_id] = tuple(sorted(set(merged)))
    else:
        for r in ok:
            source_of.setdefault(r.video_id, r.source)
        with FeatureStore(shard_paths) as store:
            lf = read_labels(labels, vocab)
            res = resolve_labels(lf, store, base_dirs=[Path(labels).parent, Path.cwd(), videos_dir])
        problems += [p.message for p in res.problems]
        problems += [p.message for p in res.notes]
        for vid, ids in zip(res.video_ids, res.labels, strict=True):
            if ids and vid in source_of:
                video_labels[vid] = ids
        unlabelled = [s for v, s in source_of.items() if v not in video_labels]
        if unlabelled:
            problems.append(f"{len(unlabelled)} video(s) have no labels in {labels}, left out (e.g. {unlabelled[0]})")
        if not video_labels:
            raise DatasetError(f"{labels}: no extracted video under {videos_dir} got a label; problems: {problems[:3]}")

    train, val = _stratified_split(video_labels, val_fraction, seed)
    paths = DatasetPaths(
        out_dir=out_dir,
        features=features_dir,
        vocab=out_dir / "vocab.txt",
        train=out_dir / "train.txt",
        val=out_dir / "val.txt" if val else None,
        videos=out_dir / "videos.csv",
        failed=failed_path,
        summary=out_dir / "dataset.json",
        num_videos=len(sources),
        num_failed=n_failed,
        num_train=len(train),
        num_val=len(val),
        classes=list(classes),
        problems=problems,
    )
    vocab.save(paths.vocab)
    header = f"videotag dataset from {videos_dir} ({len(video_labels)} videos, {len(classes)} classes)"
    _write_list(paths.train, train, video_labels, header + ": training split")
    if paths.val:
        _write_list(paths.val, val, video_labels, header + ": validation split")
    elif (out_dir / "val.txt").exists():
        (out_dir / "val.txt").unlink()  # a stale list from an earlier run with another split
    split_of = {v: "train" for v in train} | {v: "val" for v in val}
    for vid, ids in video_labels.items():
        for c in ids:
            counts = paths.class_counts.setdefault(classes[c], {"train": 0, "val": 0})
            counts[split_of[vid]] += 1
    with open(paths.videos, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "source", "labels", "split"])
        for vid in train + val:
            w.writerow([vid, source_of[vid], ";".join(classes[c] for c in video_labels[vid]), split_of[vid]])
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(paths).items()}
    summary.update(
        videos_dir=str(videos_dir),
        labels=str(labels) if labels else None,
        val_fraction=val_fraction,
        seed=seed,
        cwd=os.getcwd(),
        train_command=paths.train_command(),
        created=now_iso(),
    )
    paths.summary.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
