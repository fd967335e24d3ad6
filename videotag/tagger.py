"""The library door: tag videos from Python with the same pipeline the CLI, the API and the workers run.

    from videotag import Tagger

    tagger = Tagger()                                   # default model; exported on first use (~10-20 s, once)
    for r in tagger.tag(["a.mp4", "clips/", "https://host/v.webm"]):
        print(r.source, r.tags[:3] if r.ok else r.error)

`Tagger.tag` calls `videotag.pipeline.tag_sources`; `extract` is `tag_sources(..., predict=False)` and `predict`
is `predict_store`: there is no second pipeline. Results are `videotag.core.results.VideoResult`, as everywhere else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, overload

from videotag import pipeline
from videotag.core.errors import VideotagError
from videotag.core.results import VideoResult
from videotag.core.settings import Device, Settings
from videotag.inputs import expand_inputs, is_directory

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def library_settings(base: Settings | None = None, **given: Any) -> Settings:
    """A validated Settings: `given` (None values ignored) over `base`, else over the environment.

    Unlike the CLI, the library never reads a `.env` file from the working directory.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if base is None:
        return Settings(_env_file=None, **given)
    if not given:
        return base
    return type(base)(_env_file=None, **{**base.model_dump(), **given})


def ensure_default_models(settings: Settings) -> bool:
    """Export the default backbone + predictor into `settings.weights_dir` when `settings.model` needs them and
    they are not there yet (first use: ~10-20 s, ~25 MB). Returns True when it exported."""
    # The defaults' names are the settings' defaults (videotag.defaults imports torch: only when exporting).
    backbone, predictor = Settings.model_fields["backbone"].default, Settings.model_fields["model"].default
    names = {settings.model}
    try:
        if not (settings.resolve_model_dir(settings.model) / "backbone" / "manifest.json").is_file():
            names.add(settings.backbone)  # the model has no backbone of its own
    except VideotagError:
        names.add(settings.backbone)
    have = all((settings.weights_dir / n / "manifest.json").is_file() for n in (backbone, predictor))
    if not names & {backbone, predictor} or have:
        return False
    from videotag.defaults import export_defaults

    log.warning("videotag: exporting the default models to %s (once, ~10-20 s)", settings.weights_dir)
    settings.weights_dir.mkdir(parents=True, exist_ok=True)
    export_defaults(settings.weights_dir)
    return True


class Tagger:
    """Tag videos with one model, loaded once and reused for every call.

    Args:
        model: a model name under the weights directory (``"imagenet_framepool"``, the default: ImageNet-1k
            objects; ``"videotag"`` after ``videotag setup videotag``; your exported models) or a model
            directory. The default models are exported on first use.
        device: ``"auto"`` (default: a GPU when usable, else the CPU; logged), ``"cpu"``, ``"cuda"`` or
            ``"tensorrt"``. cuda/tensorrt raise `VideotagError` where unavailable; they never run on the CPU.
        frames: frames sampled per video (default 300).
        topk: tags per video (default 20).
        lang: language of class names, e.g. ``"en"``, ``"zh"`` (default: the model's); ids never change.
        threshold: drop tags below this probability (default: none).
        weights_dir: where models live (default: ``VIDEOTAG_WEIGHTS_DIR``, else ``weights/`` in a source
            checkout, else ``$XDG_DATA_HOME/videotag/weights`` or ``~/.local/share/videotag/weights``).
        settings: a `videotag.core.settings.Settings` to start from (default: the ``VIDEOTAG_*`` environment;
            a ``.env`` file is not read).
        **overrides: any other `Settings` field (``sampling``, ``batch_size``, ``intra_op_threads``, ...).

    Arguments given explicitly override the environment. Raises `VideotagError` (missing model, unknown
    language, unavailable device) here, not per video.

    Example::

        tagger = Tagger(device="auto", topk=5)
        r = tagger.tag("a.mp4")                 # one VideoResult
        if r.ok:
            for class_id, class_name, probability in r.tags:
                print(class_id, class_name, f"{probability:.3f}")
        r.save_json("a.json")
    """

    def __init__(
        self,
        model: PathLike | None = None,
        device: Device | None = None,
        *,
        frames: int | None = None,
        topk: int | None = None,
        lang: str | None = None,
        threshold: float | None = None,
        weights_dir: PathLike | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        self.settings: Settings = library_settings(
            settings,
            model=str(model) if model is not None else None,
            device=device,
            frames=frames,
            topk=topk,
            lang=lang,
            threshold=threshold,
            weights_dir=Path(weights_dir).expanduser() if weights_dir is not None else None,
            **overrides,
        )
        ensure_default_models(self.settings)
        self.models: pipeline.Models = pipeline.load_models(self.settings)
        self.models.predictor.names(self.settings.lang)  # an unknown language fails here, not per video
        log.info(
            "videotag: model %s (%d classes) on %s (device %s)",
            self.model_name,
            len(self.class_names),
            self.provider,
            self.settings.device,
        )

    # ------------------------------------------------------------------------------------------ info
    @property
    def model_name(self) -> str:
        """The predictor's name (its directory name)."""
        return self.models.model_name

    @property
    def provider(self) -> str:
        """The ONNX Runtime provider the backbone runs on, e.g. ``"CPUExecutionProvider"``."""
        return self.models.extractor.provider

    @property
    def device(self) -> str:
        """Where the models actually run: ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (what ``device="auto"`` chose)."""
        return {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}.get(self.provider, "cpu")

    @property
    def languages(self) -> list[str]:
        """Languages the model can name its classes in, e.g. ``["en", "zh"]``."""
        return self.models.predictor.languages

    @property
    def class_names(self) -> tuple[str, ...]:
        """All class names, id = position, in the chosen language."""
        return self.models.predictor.names(self.settings.lang)

    def __repr__(self) -> str:
        return (
            f"Tagger(model={self.model_name!r}, device={self.device!r}, classes={len(self.class_names)}, "
            f"frames={self.settings.frames}, topk={self.settings.topk}, lang={self.settings.lang!r})"
        )

    # ------------------------------------------------------------------------------------------ doors
    @overload
    def tag(self, inputs: PathLike, **options: Any) -> VideoResult: ...

    @overload
    def tag(self, inputs: Iterable[PathLike], **options: Any) -> Iterator[VideoResult]: ...

    def tag(
        self,
        inputs: PathLike | Iterable[PathLike],
        *,
        topk: int | None = None,
        threshold: float | None = None,
        lang: str | None = None,
        features_out: PathLike | None = None,
        visualize: PathLike | None = None,
        visualize_video: bool = False,
    ) -> VideoResult | Iterator[VideoResult]:
        """Tag one video, or stream results for many.

        Args:
            inputs: one video file or http(s) URL -> one `VideoResult`; a list (or any iterable) of files,
                directories (searched recursively for videos) and URLs -> an iterator of `VideoResult`, one per
                video, in input order, produced as each finishes (decoding overlaps the CNN).
            topk, threshold, lang: override the Tagger's for this call.
            features_out: also keep the features: ``FILE.h5`` (one store, published when the iterator is
                exhausted) or a directory (one shard per video); read them back with `predict`.
            visualize: write a PNG contact sheet per tagged video here (sampled frames + the top tags as bars);
                with ``visualize_video`` also an MP4 copy with the tags drawn on it. A drawing failure is logged
                and never fails the video.

        A bad input never raises: its result has ``ok=False`` and ``error={"code", "reason"}`` (codes:
        missing, empty, not_a_video, truncated, no_video_stream, unsupported_codec, download_failed, ...).
        ``result.tags`` is a list of `Tag` ``(class_id, class_name, probability)``, highest first.
        """
        settings = library_settings(self.settings, topk=topk, threshold=threshold, lang=lang)
        out = Path(features_out) if features_out is not None else None
        one = _is_one(inputs)
        sources = [_one_source(inputs)] if one else expand_inputs([os.fspath(x) for x in inputs])
        results = pipeline.tag_sources(sources, settings, features_out=out)
        if visualize is not None:
            from videotag.visualize import visualize_stream

            results = visualize_stream(results, visualize, visualize_video)
        if one:
            (res,) = list(results)
            return res
        return results

    @overload
    def extract(self, inputs: PathLike, out: PathLike) -> VideoResult: ...

    @overload
    def extract(self, inputs: Iterable[PathLike], out: PathLike) -> Iterator[VideoResult]: ...

    def extract(self, inputs: PathLike | Iterable[PathLike], out: PathLike) -> VideoResult | Iterator[VideoResult]:
        """Stage 1 only: videos -> per-frame features (float16 ``[frames, D]`` per video) in a feature store.

        Args:
            inputs: as in `tag` (one -> one result; many -> an iterator, in order).
            out: ``FILE.h5`` (one store file, published atomically when the iterator is exhausted) or a directory
                (one ``DIR/<backbone>/<video_id>.h5`` shard per video).

        Each result has ``ok``, ``video_id`` and ``features={"path", "video_id"}`` (no tags) or an ``error``.
        """
        out_path = Path(out)
        if _is_one(inputs):
            one = [_one_source(inputs)]
            (res,) = list(pipeline.tag_sources(one, self.settings, features_out=out_path, predict=False))
            return res
        sources = expand_inputs([os.fspath(x) for x in inputs])
        return pipeline.tag_sources(sources, self.settings, features_out=out_path, predict=False)

    def predict(
        self,
        store: PathLike | Iterable[PathLike],
        ids: Iterable[str] | None = None,
        *,
        topk: int | None = None,
        threshold: float | None = None,
        lang: str | None = None,
    ) -> Iterator[VideoResult]:
        """Stage 2 only: ranked tags from stored features (no decoding), one `VideoResult` per video.

        Args:
            store: feature store files (``.h5``) or directories of them (written by `extract` or
                ``videotag extract``); one path or several.
            ids: only these videos (video ids or source paths; unknown ones give ``error.code == "not_in_store"``);
                default: every video in the store, in store order.
            topk, threshold, lang: override the Tagger's for this call.

        Refuses features of another backbone or sampling rule (`VideotagError`).
        """
        settings = library_settings(self.settings, topk=topk, threshold=threshold, lang=lang)
        paths = [Path(store)] if _is_one(store) else [Path(p) for p in store]
        return pipeline.predict_store(paths, settings, ids=list(ids) if ids is not None else None)


def _is_one(inputs: object) -> bool:
    """One input (a str or path: one result back) rather than an iterable of them."""
    return isinstance(inputs, str | os.PathLike)


def _one_source(inputs: PathLike) -> str:
    """A single input as a source; a directory is refused (it would be many videos)."""
    src = os.fspath(inputs)
    if is_directory(src):
        raise VideotagError(f"{src} is a directory: pass it in a list to tag every video in it, tag([{src!r}])")
    return src
