"""The one pipeline behind every door: extract -> store -> predict.

The CLI (`videotag tag/extract/predict`), the API and the Celery tasks call these functions; nothing here knows
about HTTP or queues. Models are loaded lazily once per process (after any fork).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from extractor.backbone import FrameExtractor
from extractor.decode import check_file
from extractor.engine import Extraction, ExtractionEngine, _Failed, extract_many
from predictor.batching import MicroBatcher
from predictor.onnx_predictor import OnnxPredictor
from videotag.core.errors import StageTimeout, VideoError, VideotagError
from videotag.core.feature_store import (
    ID_LENGTH,
    FeatureRecord,
    FeatureStore,
    ShardWriter,
    absolute_source,
    shard_path,
    write_shard,
)
from videotag.core.hashing import sha256_file
from videotag.core.manifest import read_manifest
from videotag.core.results import VideoResult, rank
from videotag.core.settings import Settings
from videotag.inputs import is_url

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5


# --------------------------------------------------------------------------------------------- URLs
def fetch_url(url: str, dest_dir: Path, settings: Settings, public_only: bool = False) -> Path:
    """Download an http(s) URL with size and time limits; VideoError(download_failed) on any failure.

    public_only: refuse hosts resolving to loopback/private/link-local addresses, checked again on every
    redirect hop (the service sets it unless `allow_private_urls`; the CLI user may fetch from anywhere).
    """
    import httpx

    from videotag.core.netguard import non_public_target

    dest_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(url).path).name or "video"
    fd, tmp = tempfile.mkstemp(prefix=".dl-", suffix="-" + name[-80:], dir=dest_dir)
    size, hop = 0, url
    try:
        with os.fdopen(fd, "wb") as f, httpx.Client(timeout=settings.download_timeout_s) as client:
            for _ in range(MAX_REDIRECTS + 1):
                if public_only and (problem := non_public_target(hop)):
                    where = f" (redirected to {hop})" if hop != url else ""
                    raise VideoError(url, "download_failed", problem + where)
                with client.stream("GET", hop) as r:
                    if r.is_redirect and "location" in r.headers:
                        hop = urllib.parse.urljoin(hop, r.headers["location"])
                        continue
                    if r.status_code != 200:
                        raise VideoError(url, "download_failed", f"HTTP {r.status_code} from server")
                    for chunk in r.iter_bytes(1 << 20):
                        size += len(chunk)
                        if size > settings.max_download_bytes:
                            raise VideoError(url, "download_failed", f"larger than {settings.max_download_bytes} bytes")
                        f.write(chunk)
                    break
            else:
                raise VideoError(url, "download_failed", f"more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as e:
        Path(tmp).unlink(missing_ok=True)
        raise VideoError(url, "download_failed", f"{type(e).__name__}: {e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


# --------------------------------------------------------------------------------------------- models
@dataclass
class Models:
    extractor: FrameExtractor
    predictor: OnnxPredictor
    model_name: str


def backbone_dir_for(settings: Settings, model: str | None = None) -> Path:
    """A predictor bundle may carry its own backbone (`DIR/backbone/`); else the configured backbone."""
    pdir = settings.resolve_model_dir(model or settings.model)
    if (pdir / "backbone" / "manifest.json").is_file():
        return pdir / "backbone"
    return settings.resolve_model_dir(settings.backbone)


# The caches below hold one model / engine / batcher per process. A worker's threads may ask for the same one at
# once: lru_cache alone would then build it once per thread (N sessions, N batcher threads), hence the lock.
_LOAD_LOCK = threading.RLock()


@lru_cache(maxsize=8)
def _load_extractor(path: str, providers: tuple[str, ...], threads: int) -> FrameExtractor:
    """One FrameExtractor per (backbone dir, providers, threads) per process."""
    return FrameExtractor(path, list(providers), threads)


@lru_cache(maxsize=8)
def _load_predictor(path: str, providers: tuple[str, ...], threads: int) -> OnnxPredictor:
    """One OnnxPredictor per (model dir, providers, threads) per process."""
    return OnnxPredictor(path, list(providers), threads)


def get_extractor(settings: Settings, model: str | None = None) -> FrameExtractor:
    """The backbone `model` needs (its bundled one, else the configured one), loaded once per process."""
    with _LOAD_LOCK:
        bdir = backbone_dir_for(settings, model)
        return _load_extractor(str(bdir.resolve()), settings.onnx_providers, settings.intra_op_threads)


def get_predictor(settings: Settings, model: str | None = None) -> OnnxPredictor:
    """The predictor `model` (default: settings.model), loaded once per process."""
    with _LOAD_LOCK:
        pdir = settings.resolve_model_dir(model or settings.model)
        return _load_predictor(str(pdir.resolve()), settings.onnx_providers, settings.intra_op_threads)


def sampling_for(settings: Settings, model: str | None = None) -> str | None:
    """The frame-sampling rule for `model`: as set, else the one its predictor was trained with, else None (the
    backbone's own rule)."""
    if settings.sampling:
        return settings.sampling
    pdir = settings.resolve_model_dir(model or settings.model)
    return read_manifest(pdir, kind="predictor", verify=False).get("sampling")


def auto_batch_size(extractor: FrameExtractor, requested: int = 0) -> int:
    """Frames per CNN batch: as requested, else 8 on CPU (no faster at 32, half the memory), 64 on a GPU."""
    if requested:
        return requested
    return 8 if extractor.provider == "CPUExecutionProvider" else 64


def stage1_sizes(extractor: FrameExtractor, settings: Settings) -> tuple[int, int]:
    """(frames per CNN batch, decoders) for this backbone: as set, else automatic for its provider."""
    return auto_batch_size(extractor, settings.batch_size), settings.decoders_for(extractor.provider)


@cache  # never evicted: an engine's threads live as long as it is cached
def _engine(extractor: FrameExtractor, frames: int, batch: int, decoders: int) -> ExtractionEngine:
    return ExtractionEngine(extractor, frames, batch_size=batch, decoders=decoders)


def get_engine(settings: Settings, model: str | None = None) -> ExtractionEngine:
    """This process's stage-1 engine for `model`'s backbone (shared by the extract worker's threads)."""
    with _LOAD_LOCK:
        ex = get_extractor(settings, model)
        return _engine(ex, settings.frames, *stage1_sizes(ex, settings))


@cache  # never evicted: a batcher's thread lives as long as it is cached
def _batcher(predictor: OnnxPredictor, max_batch: int, wait_ms: float) -> MicroBatcher:
    return MicroBatcher(predictor.predict, max_batch, wait_ms / 1000.0)


def get_batcher(settings: Settings, model: str | None = None) -> MicroBatcher:
    """This process's stage-2 micro-batcher for `model` (shared by the predict worker's threads)."""
    with _LOAD_LOCK:
        return _batcher(get_predictor(settings, model), settings.predict_batch, settings.predict_wait_ms)


def load_models(settings: Settings, model: str | None = None) -> Models:
    """Backbone + predictor for `model` (default: settings.model), checked to belong together."""
    ex = get_extractor(settings, model)
    pr = get_predictor(settings, model)
    pr.check_features(ex.name, ex.sha256, ex.feature_dim, where=f"backbone {ex.dir}")
    return Models(ex, pr, pr.name)


# --------------------------------------------------------------------------------------------- stage 1
def extraction_stream(
    paths: Sequence[str], extractor: FrameExtractor, settings: Settings, model: str | None = None
) -> Iterator[Extraction | _Failed]:
    """Stage 1, assembled once for every caller: decode + sample (the model's rule) ahead while the CNN runs in
    batches; one Extraction (or _Failed) per local path, in order."""
    batch, decoders = stage1_sizes(extractor, settings)
    return extract_many(list(paths), extractor, settings.frames, sampling_for(settings, model), batch, decoders)


def to_record(ex: Extraction, extractor: FrameExtractor, video_id: str, content_sha256: str) -> FeatureRecord:
    """One extraction as the feature store's record (float16 features + provenance and decode metadata)."""
    info = ex.info
    return FeatureRecord(
        video_id=video_id,
        features=ex.features.astype("float16"),  # the store's precision: `tag` and `predict` agree exactly
        source=ex.source,
        source_abs=absolute_source(ex.source),
        content_sha256=content_sha256,
        duration=float(info.duration),
        fps=float(info.fps),
        decoded_frames=int(info.decoded_frames),
        sample_indices=ex.plan.indices,
        sample_timestamps=ex.plan.timestamps,
        sampling=ex.plan.policy,
        backbone=extractor.name,
        backbone_sha256=extractor.sha256,
        meta={
            "width": info.width,
            "height": info.height,
            "rotation": info.rotation,
            "codec": info.codec,
            "container": info.container,
            "header_frames": info.header_frames,
            "warnings": json.dumps(info.warnings),
        },
    )


def record_warnings(rec: FeatureRecord) -> list[str]:
    """The decoder's warnings kept with a stored record (a JSON list in its metadata); [] when none or unreadable."""
    raw = rec.meta.get("warnings") or "[]"
    try:
        found = json.loads(raw) if isinstance(raw, str) else list(raw)
    except ValueError:
        return []
    return [str(w) for w in found] if isinstance(found, list) else []


def error_result(source: str, exc: BaseException, video_id: str = "") -> VideoResult:
    """A per-item error record: specific for VideoError/VideotagError, recorded (with traceback) otherwise."""
    if isinstance(exc, VideoError):
        err = {"code": exc.code, "reason": exc.reason}
    elif isinstance(exc, VideotagError):
        err = {"code": "model_error", "reason": str(exc)}
    else:
        log.error("%s: unexpected %s", source, type(exc).__name__, exc_info=exc)
        err = {"code": "internal_error", "reason": f"{type(exc).__name__}: {exc}"}
    return VideoResult(video_id=video_id, source=source, ok=False, error=err)


def extract_to_store(
    source: str,
    features_dir: Path,
    settings: Settings,
    model: str | None = None,
    video_id: str | None = None,
    public_urls_only: bool = False,
    timeout_s: float | None = None,
) -> dict:
    """Stage 1 for one local file or URL into its own shard `features_dir/<backbone>/<video_id>.h5`.

    Idempotent: when that shard exists it is reused, never rewritten or duplicated. Raises VideoError for bad
    input (permanent), OSError for I/O trouble (transient), StageTimeout past `timeout_s` (the video is
    cancelled). Returns the store location.
    """
    t0 = time.perf_counter()
    extractor = get_extractor(settings, model)
    local, tmp = source, None
    if is_url(source):
        tmp = fetch_url(source, settings.uploads_dir, settings, public_only=public_urls_only)
        local = str(tmp)
    try:
        _check_local(local, source)
        sha = sha256_file(local)
        vid = video_id or sha[:ID_LENGTH]
        shard = shard_path(features_dir, extractor.name, vid)
        if shard.is_file():
            log.info("%s: features already stored in %s", source, shard)
            with FeatureStore(shard) as rec:
                n = rec.get(vid).num_frames
            return {"path": str(shard), "video_id": vid, "source": source, "num_frames": n, "reused": True,
                    "timings": {"total_s": round(time.perf_counter() - t0, 4)}}  # fmt: skip
        try:
            res = get_engine(settings, model).extract(local, sampling_for(settings, model), timeout=timeout_s)
        except TimeoutError:
            raise StageTimeout(f"extract exceeded the soft time limit of {timeout_s:g} s") from None
        except VideoError as e:
            raise _as_source_error(e, source) from None
        res.source = source
        write_shard(shard, [to_record(res, extractor, vid, sha)], on_exists="keep")
        timings = {**res.timings, "total_s": round(time.perf_counter() - t0, 4)}
        return {"path": str(shard), "video_id": vid, "source": source, "num_frames": int(res.features.shape[0]),
                "reused": False, "timings": timings}  # fmt: skip
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _as_source_error(exc: BaseException, source: str) -> BaseException:
    """Report errors against the user's source (URL), not the temporary download path."""
    if isinstance(exc, VideoError) and exc.source != source:
        return VideoError(source, exc.code, exc.reason)
    return exc


def _check_local(path: str, source: str) -> None:
    """The decoder's cheap file checks (missing, directory, empty, unreadable) before hashing, named by `source`."""
    try:
        check_file(path)
    except VideoError as e:
        raise _as_source_error(e, source) from None


# --------------------------------------------------------------------------------------------- stage 2
def predict_records(
    predictor: OnnxPredictor,
    records: list[FeatureRecord],
    topk: int,
    threshold: float | None,
    model_name: str | None = None,
    lang: str | None = None,
    run: Callable[[list], object] | None = None,
) -> list[VideoResult]:
    """Rank classes for already-extracted records, named in `lang` (None: the model's default language).

    Refuses features from another backbone or sampling rule, and a language the model lacks. `run` replaces
    `predictor.predict` (the worker's MicroBatcher, which batches these records with other callers').
    """
    names = predictor.names(lang)
    for r in records:
        predictor.check_features(r.backbone, r.backbone_sha256, r.feature_dim, where=r.source, sampling=r.sampling)
    if not records:
        return []
    t = time.perf_counter()
    probs = (run or predictor.predict)([r.features.astype("float32") for r in records])
    per = (time.perf_counter() - t) / len(records)
    return [
        VideoResult(
            video_id=r.video_id,
            source=r.source,
            ok=True,
            tags=rank(p, names, topk, threshold),
            model=model_name or predictor.name,
            timings={"predict_s": round(per, 5)},
            warnings=record_warnings(r),
        )
        for r, p in zip(records, probs, strict=True)
    ]


def _batched_run(settings: Settings, model: str | None) -> Callable[[list], object]:
    """The MicroBatcher's predict, bounded by the soft time limit (a threads pool has no Celery limits)."""
    batcher, limit = get_batcher(settings, model), settings.task_soft_time_limit_s

    def run(sequences: list) -> object:
        try:
            return batcher.predict(sequences, timeout=limit)
        except TimeoutError:
            raise StageTimeout(f"predict exceeded the soft time limit of {limit:g} s") from None

    return run


def predict_from_store(
    location: dict,
    settings: Settings,
    model: str | None = None,
    topk: int | None = None,
    threshold: float | None = None,
    lang: str | None = None,
) -> VideoResult:
    """Stage 2 only, from a store location {"path", "video_id"} written by stage 1. With `predict_batch` > 1 the
    model call goes through this process's MicroBatcher, so concurrent callers (the predict worker's threads)
    share model batches."""
    predictor = get_predictor(settings, model)
    with FeatureStore(location["path"]) as store:
        rec = store.get(location["video_id"])
    th = threshold if threshold is not None else settings.threshold
    run = _batched_run(settings, model) if settings.predict_batch > 1 else None
    (res,) = predict_records(predictor, [rec], topk or settings.topk, th, lang=lang or settings.lang, run=run)
    res.source = location.get("source", rec.source)
    res.features = {"path": location["path"], "video_id": rec.video_id}
    return res


# --------------------------------------------------------------------------------------------- batch (CLI)
def tag_sources(
    sources: list[str],
    settings: Settings,
    model: str | None = None,
    features_out: Path | None = None,
    predict: bool = True,
    on_result: Callable[[VideoResult], None] | None = None,
) -> Iterator[VideoResult]:
    """Tag many videos in one process: decode ahead while the CNN runs; one result per source, in order.

    With `features_out` the features are also kept: a `.h5` path -> one shard for the run, a directory ->
    one shard per video (same layout as the service). With predict=False only stage 1 runs.
    """
    models = load_models(settings, model) if predict else None
    extractor = models.extractor if models else get_extractor(settings, model)
    if models:
        models.predictor.names(settings.lang)  # a language the model lacks fails now, not once per video
    writer = ShardWriter(features_out, on_exists="replace") if features_out and features_out.suffix == ".h5" else None
    tmpdir = Path(tempfile.mkdtemp(prefix="videotag-dl-"))
    written: set[str] = set()
    try:
        local: list[str] = []
        early: dict[int, VideoResult] = {}
        for i, src in enumerate(sources):  # resolve URLs and obviously bad paths before decoding
            try:
                path = str(fetch_url(src, tmpdir, settings)) if is_url(src) else src
                _check_local(path, src)
                local.append(path)
            except VideoError as e:
                early[i] = error_result(src, e)
                local.append("")
        stream = extraction_stream([p for p in local if p], extractor, settings, model)
        for i, src in enumerate(sources):
            if i in early:
                res = early[i]
            else:
                res = _finish_one(src, next(stream), extractor, models, settings, writer, features_out, written)
            if on_result:
                on_result(res)
            yield res
    finally:
        if writer is not None:
            if written:
                writer.close()
            else:
                writer.abort()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _finish_one(
    src: str,
    item: Extraction | _Failed,
    extractor: FrameExtractor,
    models: Models | None,
    settings: Settings,
    writer: ShardWriter | None,
    features_out: Path | None,
    written: set[str],
) -> VideoResult:
    """One source's stage-1 output -> its record (kept in the run's store if asked) -> its result (stage 2)."""
    if isinstance(item, _Failed):
        return error_result(src, _as_source_error(item.error, src))
    try:
        item.source = src
        sha = sha256_file(item.source if not is_url(src) else item.info.source)
        vid = sha[:ID_LENGTH]
        rec = to_record(item, extractor, vid, sha)
        location = None
        if writer is not None:
            if vid not in written:
                writer.add(rec)
                written.add(vid)
            location = {"path": str(features_out), "video_id": vid}
        elif features_out is not None:
            shard = shard_path(features_out, extractor.name, vid)
            write_shard(shard, [rec], on_exists="keep")
            location = {"path": str(shard), "video_id": vid}
        if models is None:
            res = VideoResult(video_id=vid, source=src, ok=True, warnings=record_warnings(rec))
        else:
            (res,) = predict_records(
                models.predictor, [rec], settings.topk, settings.threshold, models.model_name, settings.lang
            )
        res.features = location
        res.timings = {**item.timings, **res.timings}
        return res
    except (VideotagError, OSError, ValueError) as e:
        return error_result(src, e)


def predict_store(
    store_paths: list[Path], settings: Settings, model: str | None = None, ids: list[str] | None = None
) -> Iterator[VideoResult]:
    """Stage 2 over feature stores (all videos, or the given ids/sources); one result per video."""
    predictor = get_predictor(settings, model)
    predictor.names(settings.lang)  # a language the model lacks fails now, not once per video
    with FeatureStore(store_paths) as store:
        batch: list[FeatureRecord] = []
        for key in ids if ids is not None else store.ids():
            vid = store.resolve(key)
            if vid is None:
                err = {"code": "not_in_store", "reason": "no such id or source in the feature store"}
                yield VideoResult(video_id=key, source=key, ok=False, error=err)
                continue
            batch.append(store.get(vid))
            if len(batch) >= 64:
                yield from predict_records(predictor, batch, settings.topk, settings.threshold, lang=settings.lang)
                batch = []
        yield from predict_records(predictor, batch, settings.topk, settings.threshold, lang=settings.lang)


# --------------------------------------------------------------------------------------------- results
def result_filename(res: VideoResult, used: set[str]) -> str:
    """VideoTag names result files after the video; disambiguate equal basenames with the id."""
    base = Path(urllib.parse.urlparse(res.source).path).name or res.video_id or "video"
    name = f"{base}.json"
    if name in used:
        name = f"{base}.{res.video_id[:8] or len(used)}.json"
    used.add(name)
    return name


class ResultWriter:
    """Writes `results.jsonl` (one object per video, as they come) + one VideoTag-format JSON per ok video."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "results.jsonl", "w", encoding="utf-8")
        self._used: set[str] = set()

    def write(self, res: VideoResult) -> None:
        self._jsonl.write(res.model_dump_json() + "\n")
        self._jsonl.flush()
        if res.ok and res.tags:
            path = self.out_dir / result_filename(res, self._used)
            path.write_text(json.dumps(res.videotag_format(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def close(self) -> None:
        self._jsonl.close()


def write_results(results: Iterable[VideoResult], out_dir: Path) -> None:
    """All of `results` through one ResultWriter (results.jsonl + VideoTag JSONs) into `out_dir`."""
    w = ResultWriter(out_dir)
    try:
        for r in results:
            w.write(r)
    finally:
        w.close()
