"""Training data: label files, the dataset over a FeatureStore, padding collate, split by id.

Label files, two formats (picked by the `.csv` extension, or a first line `id,labels` / `path,labels`):

    VideoTag list   one video per line: `ID_OR_PATH L1 L2 ...`, labels are 0-based vocabulary ids, separated by
                    spaces (or tabs; a line containing a tab is split on the first tab, so paths may hold spaces).
                    Blank lines and lines starting with `#` are ignored. A line whose path seems to hold spaces
                    (`my clip.mp4 3`) is reported as `ambiguous_line`: use a tab or the CSV form.
    CSV             header `id,labels` (or `path,labels`); labels are class names separated by `;` (names are
                    looked up in the vocabulary; a name listed twice maps to its first id). Quote paths with
                    commas; spaces need nothing.

`ID_OR_PATH` is matched to a stored video by `match_key`, in order: video id (or a 64-hex content sha256), the
source as recorded, that path normalised (`./`, `..`) or absolute as recorded at extraction, the path relative
to the label file's directory, relative to the current directory, through symlinks (realpath), and finally by
content (an existing file is hashed: its id is the first 32 hex of its sha256). Keys that match nothing are
classified: `unknown_id`, `missing_file`, `not_extracted` (the file exists, its content is not in the store) or
`ambiguous_line`.

Parsing never raises on bad lines: it returns the problems with file:line, and `load_labelled` turns them into
one `DatasetError` that lists them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from videotag.core.errors import VideotagError
from videotag.core.feature_store import ID_LENGTH, FeatureStore
from videotag.core.hashing import sha256_file
from videotag.core.vocab import Vocabulary


class DatasetError(VideotagError):
    """A label file, vocabulary or feature store is unusable for training/evaluation (message lists why)."""


@dataclass(frozen=True)
class LabeledItem:
    """One line of a label file: the key as written, its label ids, and where it came from."""

    key: str
    labels: tuple[int, ...]
    where: str  # "file:line"
    line: str = ""  # the raw line of a space-separated list line (to explain an ambiguous path)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: a stable `code` and a message that says what/where/why."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class LabelFile:
    items: list[LabeledItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # errors: the item was skipped or is invalid
    notes: list[Problem] = field(default_factory=list)  # warnings: kept, but worth knowing
    path: Path | None = None  # the label file (relative keys are tried against its directory)


_KEY_COLUMNS = ("id", "path", "video")
_INT = re.compile(r"[+-]?\d+")
_FILEISH = re.compile(r"[/\\]|\.[A-Za-z0-9]{2,5}$")  # a path separator or a file extension


def _is_csv(path: Path, first_line: str) -> bool:
    head = first_line.replace(" ", "").replace('"', "").lower()
    return path.suffix.lower() == ".csv" or any(head.startswith(f"{k},labels") for k in _KEY_COLUMNS)


def read_labels(path: str | Path, vocab: Vocabulary) -> LabelFile:
    """Parse a VideoTag list or a CSV against `vocab`. Ids out of range / unknown names become problems."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"label file {path} is not UTF-8 text ({e})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    out = LabelFile(path=path)
    if _is_csv(path, first):
        _read_csv(path, text, vocab, out)
    else:
        _read_list(path, lines, vocab, out)
    if not out.items and not out.problems:
        out.problems.append(Problem("no_labels", f"{path}: no labelled videos in the file"))
    return out


def _read_list(path: Path, lines: list[str], vocab: Vocabulary, out: LabelFile) -> None:
    n = len(vocab)
    for i, raw in enumerate(lines, 1):
        line = raw.strip()
        where = f"{path}:{i}"
        if not line or line.startswith("#"):
            continue
        spaced = ""
        if "\t" in line:
            key, _, rest = line.partition("\t")
            fields = rest.replace(",", " ").split()
        else:
            key, *fields = line.split()
            spaced = line if fields else ""
            if (amb := _ambiguous_path(path, line, fields)) is not None:
                out.problems.append(Problem("ambiguous_line", f"{where}: {amb}"))
                continue
        key = key.strip()
        ids: list[int] = []
        bad = False
        for f in fields:
            try:
                v = int(f)
            except ValueError:
                out.problems.append(Problem("bad_label", f"{where}: label {f!r} of {key!r} is not an integer class id"))
                bad = True
                continue
            if not 0 <= v < n:
                out.problems.append(
                    Problem("label_out_of_range", f"{where}: label id {v} of {key!r} is out of range ({n} classes)")
                )
                bad = True
                continue
            ids.append(v)
        if bad:
            continue
        if not ids:
            out.notes.append(Problem("no_labels", f"{where}: {key!r} has no labels"))
        out.items.append(LabeledItem(key, tuple(dict.fromkeys(ids)), where, spaced))


_FIX = "put a tab between the path and the labels, or use the CSV form (header `id,labels`, class names)"


def _ambiguous_path(path: Path, line: str, fields: list[str]) -> str | None:
    """Explain a space-separated line whose path seems to contain spaces (`my clip.mp4 3`), else None.

    It is ambiguous when the tokens after the first are non-integers followed only by integers, and the last
    non-integer looks like part of a path (separator or extension) or the joined text is an existing file.
    """
    bad = [i for i, f in enumerate(fields) if not _INT.fullmatch(f)]
    if not bad or bad != list(range(bad[-1] + 1)):
        return None
    spans = [m.span() for m in re.finditer(r"\S+", line)]
    prefix = line[: spans[bad[-1] + 1][1]]
    exists = any(os.path.isfile(os.path.join(b, prefix)) for b in (str(path.parent), "."))
    if not (exists or _FILEISH.search(fields[bad[-1]])):
        return None
    return (
        f"ambiguous line {line!r}: the path seems to contain spaces ({prefix!r}"
        + (", an existing file" if exists else "")
        + f"), but this list format splits on whitespace, so the path would be {line.split()[0]!r} and "
        f"{fields[0]!r} a label; {_FIX}"
    )


def _read_csv(path: Path, text: str, vocab: Vocabulary, out: LabelFile) -> None:
    first_id = {}
    for i, name in enumerate(vocab.names):
        first_id.setdefault(name, i)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    cols = [h.strip().lower() for h in (header or [])]
    key_col = next((k for k in _KEY_COLUMNS if k in cols), None)
    if key_col is None or "labels" not in cols:
        out.problems.append(
            Problem("bad_header", f"{path}:1: CSV header must have columns 'id' (or 'path') and 'labels', got {header}")
        )
        return
    ci, cl = cols.index(key_col), cols.index("labels")
    for i, row in enumerate(reader, 2):
        where = f"{path}:{i}"
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) <= max(ci, cl):
            out.problems.append(
                Problem("bad_line", f"{where}: expected at least {max(ci, cl) + 1} columns, got {len(row)}")
            )
            continue
        key = row[ci].strip()
        if not key:
            out.problems.append(Problem("bad_line", f"{where}: empty id"))
            continue
        names = [s.strip() for s in row[cl].split(";") if s.strip()]
        ids, bad = [], False
        for name in names:
            if name not in first_id:
                out.problems.append(
                    Problem("unknown_class", f"{where}: class name {name!r} of {key!r} is not in the vocabulary")
                )
                bad = True
            else:
                ids.append(first_id[name])
        if bad:
            continue
        if not ids:
            out.notes.append(Problem("no_labels", f"{where}: {key!r} has no labels"))
        out.items.append(LabeledItem(key, tuple(dict.fromkeys(ids)), where))


def _summarise(problems: Sequence[Problem], limit: int = 10) -> str:
    shown = "\n  ".join(str(p) for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"  {shown}{more}"


@dataclass
class ResolvedLabels:
    """Label items mapped onto store video ids (`matched_by`: how many keys matched each way)."""

    video_ids: list[str]
    labels: list[tuple[int, ...]]
    problems: list[Problem]
    notes: list[Problem]
    matched_by: Counter[str] = field(default_factory=Counter)


class Resolver(Protocol):
    def resolve(self, id_or_source: str) -> str | None: ...


# Problem codes of label keys that match no stored video (`check-dataset` counts them as mismatches).
MISMATCH_CODES = ("unknown_id", "missing_file", "not_extracted", "ambiguous_line")
_HEX = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")


@dataclass(frozen=True)
class Match:
    """How a label key matched (`how`: id, source, label_dir, cwd, realpath, content), or why it did not."""

    video_id: str | None
    how: str = ""
    code: str = ""  # a MISMATCH_CODES entry when video_id is None
    reason: str = ""


def _candidates(key: str, base_dirs: Sequence[str]) -> list[tuple[str, str]]:
    """(how, absolute normalised path) for a path key: as is if absolute, else under each base directory."""
    k = os.path.expanduser(key)
    if os.path.isabs(k):
        return [("source", os.path.normpath(k))]
    out: list[tuple[str, str]] = []
    cwd = os.getcwd()
    for i, base in enumerate(base_dirs):
        how = "label_dir" if i == 0 and base != cwd else "cwd" if base == cwd else "base_dir"
        p = os.path.normpath(os.path.join(base, k))
        if all(p != q for _, q in out):
            out.append((how, p))
    return out


def match_key(
    key: str,
    store: Resolver,
    base_dirs: Sequence[str | Path] = (),
    hash_files: bool = True,
    _hashes: dict[str, str] | None = None,
) -> Match:
    """Find the stored video a label key names (order in the module docstring); never raises.

    base_dirs: where relative paths are tried, in order (label file's directory, then the current directory).
    hash_files: match an existing file by its content when no path matches (costs one read of the file).
    """
    vid = store.resolve(key)
    if vid is not None:
        return Match(vid, "id" if vid == key else "source")
    if _HEX.fullmatch(key) and (vid := store.resolve(key[:ID_LENGTH])) is not None:
        return Match(vid, "id")
    if "://" in key:
        return Match(None, code="unknown_id", reason="URL not recorded as a source in the feature store")
    bases = [os.path.abspath(b) for b in base_dirs]
    cands = _candidates(key, bases)
    for how, p in cands:
        if (vid := store.resolve(p)) is not None:
            return Match(vid, how)
    real = getattr(store, "resolve_realpath", None)
    if real is not None:
        for _, p in cands:
            if (vid := real(p)) is not None:
                return Match(vid, "realpath")
    files = [p for _, p in cands if os.path.isfile(p)]
    if files:
        if not hash_files:
            return Match(None, code="not_extracted", reason=f"file {files[0]} is not in the feature store")
        try:
            real_path = os.path.realpath(files[0])
            cache = _hashes if _hashes is not None else {}
            if real_path not in cache:
                cache[real_path] = sha256_file(real_path)
            digest = cache[real_path]
        except OSError as e:
            return Match(
                None, code="not_extracted", reason=f"file {files[0]} cannot be read to match its content ({e})"
            )
        if (vid := store.resolve(digest[:ID_LENGTH])) is not None:
            return Match(vid, "content")
        return Match(
            None,
            code="not_extracted",
            reason=f"file {files[0]} exists but neither its path nor its content (id {digest[:ID_LENGTH]}) is in "
            "the feature store: not extracted yet (`videotag extract`), or another --features?",
        )
    if _HEX.fullmatch(key) or not _FILEISH.search(key):
        return Match(None, code="unknown_id", reason="is not in the feature store (no such id or source)")
    looked = ", ".join(p for _, p in cands)
    return Match(None, code="missing_file", reason=f"no such file (looked for {looked}) and no such recorded source")


def _ambiguous_prefix(item: LabeledItem, store: Resolver, base_dirs: Sequence[str | Path]) -> str | None:
    """For an unmatched space-separated line: a longer prefix of it that names a stored video or a file."""
    spans = [m.span() for m in re.finditer(r"\S+", item.line)]
    for end in range(2, len(spans) + 1):
        prefix = item.line[: spans[end - 1][1]]
        m = match_key(prefix, store, base_dirs, hash_files=False)
        if m.video_id is not None or m.code == "not_extracted":
            return prefix
    return None


def resolve_labels(
    label_file: LabelFile,
    store: Resolver,
    base_dirs: Sequence[str | Path] | None = None,
    hash_files: bool = True,
) -> ResolvedLabels:
    """Map each key to a store video id (`match_key`); unmatched keys and duplicate videos are problems.

    base_dirs default: the label file's directory, then the current directory.
    """
    if base_dirs is None:
        base_dirs = [label_file.path.parent] if label_file.path is not None else []
        base_dirs = [*base_dirs, Path.cwd()]
    out = ResolvedLabels([], [], list(label_file.problems), list(label_file.notes))
    seen: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for item in label_file.items:
        m = match_key(item.key, store, base_dirs, hash_files, hashes)
        if m.video_id is None:
            code, reason = m.code, m.reason
            if item.line and code in ("missing_file", "unknown_id"):
                prefix = _ambiguous_prefix(item, store, base_dirs)
                if prefix is not None:
                    code = "ambiguous_line"
                    reason = (
                        f"matches no video, but {prefix!r} does: the path seems to contain spaces and this list "
                        f"format splits on whitespace; {_FIX}"
                    )
            out.problems.append(Problem(code, f"{item.where}: {item.key!r} {reason}"))
            continue
        vid = m.video_id
        if vid in seen:
            out.problems.append(
                Problem("duplicate_id", f"{item.where}: video {vid!r} is listed twice (first at {seen[vid]})")
            )
            continue
        seen[vid] = item.where
        out.matched_by[m.how] += 1
        out.video_ids.append(vid)
        out.labels.append(item.labels)
    return out


def load_labelled(
    label_path: str | Path, vocab: Vocabulary, store: FeatureStore, what: str = "labels"
) -> ResolvedLabels:
    """read_labels + resolve_labels, raising one DatasetError listing every problem (run check-dataset)."""
    res = resolve_labels(read_labels(label_path, vocab), store)
    unknown = [p for p in res.problems if p.code in MISMATCH_CODES]
    if not res.video_ids and unknown and len(unknown) == len(res.problems):
        raise DatasetError(
            f"{what} {label_path}: none of its {len(unknown)} videos is in the feature store "
            f"({len(store)} videos; e.g. {unknown[0]}); wrong --features?"
        )
    if res.problems:
        raise DatasetError(
            f"{what} {label_path}: {len(res.problems)} problem(s) (`videotag check-dataset` reports them all):\n"
            + _summarise(res.problems)
        )
    if not res.video_ids:
        raise DatasetError(f"{what} {label_path}: no labelled videos found in the feature store")
    return res


def sequence_shape(store: FeatureStore, video_id: str) -> tuple[int, ...]:
    """Shape of a stored sequence without reading it (FeatureStore has no public accessor for it)."""
    shard, key = store._lookup(video_id)
    return tuple(store._file(shard)["videos"][key].shape)


def store_backbone(store: FeatureStore, video_ids: Iterable[str] | None = None) -> dict[str, object]:
    """{name, sha256, feature_dim} of the backbone that made the store's features; refuses mixed backbones."""
    ids = list(video_ids) if video_ids is not None else store.ids()
    if not ids:
        raise DatasetError("feature store holds no videos")
    seen: dict[tuple[str, str, int], str] = {}
    for vid in ids:
        a = store.attrs(vid)
        shape = sequence_shape(store, vid)
        key = (str(a["backbone"]), str(a["backbone_sha256"]), int(shape[1]) if len(shape) == 2 else -1)
        seen.setdefault(key, vid)
    if len(seen) > 1:
        desc = "; ".join(f"{n or '?'} {s[:12] or '?'} {d}-d (e.g. {v!r})" for (n, s, d), v in seen.items())
        raise DatasetError(f"features come from {len(seen)} different backbones/dims, refusing to mix them: {desc}")
    (name, sha, dim), _ = next(iter(seen.items()))
    return {"name": name, "sha256": sha, "feature_dim": dim}


def split_by_id(video_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: rank ids by sha256(seed:id), the first round(n*f) are validation.

    Depends only on the set of ids and the seed (not on file order); at least one of each when n >= 2 and f > 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ranked = sorted(video_ids, key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    n_val = int(round(len(ranked) * val_fraction))
    if val_fraction > 0 and len(ranked) >= 2:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    val = set(ranked[:n_val])
    return [v for v in video_ids if v not in val], [v for v in video_ids if v in val]


class SequenceDataset(torch.utils.data.Dataset):
    """(features float32 [T, D], multi-hot target float32 [C], video id) per labelled video.

    cache=True keeps every sequence in RAM as float16 after its first read (what a small dataset wants; for large
    ones reading from HDF5 each epoch costs little next to the model).
    """

    def __init__(
        self,
        store: FeatureStore,
        video_ids: Sequence[str],
        labels: Sequence[tuple[int, ...]],
        num_classes: int,
        cache: bool = False,
    ) -> None:
        if len(video_ids) != len(labels):
            raise ValueError("video_ids and labels must have the same length")
        self.store, self.video_ids, self.num_classes = store, list(video_ids), num_classes
        self.targets = np.zeros((len(labels), num_classes), dtype=np.float32)
        for i, ids in enumerate(labels):
            self.targets[i, list(ids)] = 1.0
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.video_ids)

    def sequence(self, i: int) -> np.ndarray:
        """[T, D] float16 features of item i."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = self.store.features(self.video_ids[i])
        if not np.isfinite(x).all():  # our writer refuses NaN, foreign or damaged files may not
            raise DatasetError(
                f"video {self.video_ids[i]!r}: features contain NaN or inf (`videotag check-dataset` lists all such)"
            )
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        x = torch.from_numpy(np.asarray(self.sequence(i), dtype=np.float32))
        return x, torch.from_numpy(self.targets[i]), self.video_ids[i]


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, str]]) -> dict[str, object]:
    """List of ([T_i, D], [C], id) -> {features [B, T_max, D] zero-padded, lengths [B], targets [B, C], ids}."""
    lengths = torch.tensor([x.shape[0] for x, _, _ in batch], dtype=torch.int64)
    feats = torch.zeros(len(batch), int(lengths.max()), batch[0][0].shape[1], dtype=torch.float32)
    for i, (x, _, _) in enumerate(batch):
        feats[i, : x.shape[0]] = x
    return {
        "features": feats,
        "lengths": lengths,
        "targets": torch.stack([t for _, t, _ in batch]),
        "ids": [v for _, _, v in batch],
    }
