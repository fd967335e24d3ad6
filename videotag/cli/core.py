"""`videotag setup | tag | extract | predict`: the pipeline from the command line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from videotag import pipeline
from videotag.catalog import AVAILABLE
from videotag.cli.app import app
from videotag.cli.common import Decoders, DeviceOpt, Verbose, console, fail, guard, make_settings, out, setup_logging
from videotag.core.results import VideoResult
from videotag.core.settings import Settings
from videotag.inputs import expand_inputs, read_filelist

Lang = Annotated[
    str | None,
    typer.Option(
        "--lang", help="Language of class names, e.g. en or zh (VideoTag has both) [default: the model's; en]."
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Predictor: a folder name under weights/ or a model directory (default: settings.model)."
    ),
]


def _ensure_defaults(settings: Settings, model: str | None) -> None:
    """Export the default models on first use, so `tag` works right after install (the Tagger's rule)."""
    from videotag.tagger import ensure_default_models

    ensure_default_models(settings.model_copy(update={"model": model}) if model else settings)


@app.command(
    epilog="What can be set up:\n\n"
    + "\n\n".join(f"  {k}: {v['description']}; needs {v['needs']}" for k, v in AVAILABLE.items()),
)
@guard
def setup(
    name: Annotated[
        str, typer.Argument(help=f"What to set up: {' | '.join(AVAILABLE)} (see below).", show_default=True)
    ] = "default",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Install directory (default: weights/NAME).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="videotag: take the archives from this folder or mirror URL instead of Baidu's server "
            "(air-gapped sites)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-export / re-download and replace what is installed.")] = False,
    lstm_impl: Annotated[
        str, typer.Option(help="videotag: ONNX form of the peephole LSTM (scan: every provider; onnx_lstm: CPU).")
    ] = "scan",
    verbose: Verbose = 0,
) -> None:
    """Install models into weights/: the offline default, or VideoTag's 3396-label model in one command.

    Examples: `videotag setup`; `videotag setup videotag`; `videotag setup videotag --source ~/Downloads`.
    Downloads resume where they stopped (run the command again after a cut connection or Ctrl-C).
    """
    setup_logging(max(verbose, 1))
    if name not in AVAILABLE:
        fail(f"cannot set up {name!r}: choose one of {', '.join(AVAILABLE)}")
    settings = make_settings()
    t = time.perf_counter()
    if name == "default":
        from videotag.defaults import export_defaults

        b, p = export_defaults(settings.weights_dir, force=force)
        console.print(f"[green]ready[/] backbone {b}  predictor {p}  ({time.perf_counter() - t:.1f}s)")
        return
    from videotag.importers.videotag_release import install_videotag

    target = out or settings.weights_dir / name
    with _download_progress() as progress:
        report = install_videotag(
            target,
            settings.cache_dir / "videotag",
            source=source,
            force=force,
            lstm_impl=lstm_impl,
            progress=progress,
            log=lambda msg: console.print(f"[dim]{time.perf_counter() - t:6.1f}s[/] {msg}"),
        )
    out_name = target.name if target.parent.resolve() == settings.weights_dir.resolve() else str(target)
    console.print(
        f"[green]installed[/] {report.out}: {report.num_classes} classes, names in en (default) and zh "
        f"({time.perf_counter() - t:.0f}s)\n"
        f"  run it: videotag tag --model {out_name} VIDEO...   (--lang zh for Chinese)"
    )


@contextmanager
def _download_progress() -> Iterator[Callable]:
    """One rich progress bar (size, speed, ETA) per archive `install_videotag` fetches."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console) as prog:

        def for_archive(archive) -> Callable[[int, int | None], None]:
            task = prog.add_task(archive.file, total=None)
            return lambda done, total: prog.update(task, completed=done, total=total)

        yield for_archive


@app.command("models")
@guard
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (installed + available) for scripts.")] = False,
) -> None:
    """List installed models (name, kind, architecture, classes, languages, backbone, size, source) and the ones
    `videotag setup` can install."""
    from videotag.catalog import available_models, installed_models

    settings = make_settings()
    installed = installed_models(settings.weights_dir)
    available = available_models(settings.weights_dir)
    if as_json:
        print(json.dumps({"weights_dir": str(settings.weights_dir), "installed": installed, "available": available},
                         ensure_ascii=False, indent=2))  # fmt: skip
        return
    t = Table(title=f"installed in {settings.weights_dir}", title_justify="left", box=None, pad_edge=False)
    for col in ("name", "kind", "architecture", "classes", "languages", "backbone", "size", "source"):
        t.add_column(col, justify="right" if col in ("classes", "size") else "left")
    for m in installed:
        t.add_row(
            m["name"], m["kind"], m["architecture"], str(m.get("classes") or ""), ",".join(m.get("languages") or []),
            m.get("backbone") or "", _human(m["size_bytes"]), m.get("source") or "",
        )  # fmt: skip
    out.print(t if installed else f"no models installed in {settings.weights_dir}")
    a = Table(title="available: videotag setup NAME", title_justify="left", box=None, pad_edge=False)
    for col in ("name", "installed", "needs", "what"):
        a.add_column(col)
    for m in available:
        a.add_row(m["name"], "yes" if m["installed"] else "no", m["needs"], m["description"])
    out.print(a)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _progress(total: int) -> Progress:
    """One live bar on stderr: what, bar, n/total, ok/failed counts, times, the file in hand (fits 80 columns)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("[dim]{task.fields[current]}"),
        console=console,
        disable=total <= 1,
    )


def short_name(source: str, width: int = 22) -> str:
    """The file name of a path/URL, middle-elided to `width` characters (for the live bar)."""
    name = source.rstrip("/").rsplit("/", 1)[-1] or source
    if len(name) <= width:
        return name
    half = (width - 1) // 2
    return f"{name[:half]}…{name[-(width - 1 - half):]}"


def _print_result(res: VideoResult, show: int | None) -> None:
    """One video's result (its top tags, or its error) printed above the live bar."""
    # Printed through the bar's console: rich draws results above the live bar and redraws it once below, so
    # no stale copies of the bar are left in the scrollback (results on stdout when it is not the terminal).
    con = console if console.is_terminal and out.is_terminal else out
    if not res.ok:
        console.print(f"[red]FAILED[/] {escape(res.source)}: [bold]{res.error['code']}[/]: "
                      f"{escape(res.error['reason'])}", soft_wrap=True)  # fmt: skip
        return
    if not res.tags:
        note = "features stored" if res.model is None else "no tag above the threshold"
        con.print(f"[bold]{escape(res.source)}[/]: {note}", soft_wrap=True)
        _print_warnings(con, res)
        return
    # Two short lines, not one that wraps at 80 columns: the source, then id and model.
    con.print(f"[bold]{escape(res.source)}[/]", soft_wrap=True, highlight=False)
    con.print(f"  [dim]{res.video_id} · {escape(str(res.model))}[/]", highlight=False)
    t = Table(show_edge=False, pad_edge=False, box=None)
    t.add_column("rank", justify="right")
    t.add_column("class_id", justify="right")
    t.add_column("class_name", overflow="fold")
    t.add_column("probability", justify="right")
    for i, tag in enumerate(res.tags if show is None else res.tags[:show], 1):
        t.add_row(str(i), str(tag.class_id), escape(tag.class_name), f"{tag.probability:.4f}")
    con.print(t)
    _print_warnings(con, res)


def _print_warnings(con, res: VideoResult) -> None:
    """A yellow `warning:` line per decoder warning, under the result it belongs to."""
    for w in res.warnings:
        con.print(f"  [yellow]warning:[/] {escape(w)}", soft_wrap=True, highlight=False)


def _report(
    results: Iterable[VideoResult],
    sources: list[str] | int,
    label: str,
    out_dir: Path | None,
    show: int | None,
    as_json: bool,
    note: str = "",
) -> int:
    """Print/write each result as it comes, a progress bar for batches, a summary; exit status 1 on any failure.
    Results come in the order of `sources`, so the bar names the next one as the file in hand (an int: a count
    only, nothing named)."""
    writer = pipeline.ResultWriter(out_dir) if out_dir else None
    total = sources if isinstance(sources, int) else len(sources)
    names = [] if isinstance(sources, int) else [short_name(s) for s in sources]
    ok = failed = 0
    t0 = time.perf_counter()
    try:
        with _progress(total) as prog:
            task = prog.add_task(label, total=total or None, ok=0, failed=0,
                                 current=names[0] if names else "")  # fmt: skip
            for res in results:
                ok, failed = ok + res.ok, failed + (not res.ok)
                done = ok + failed
                prog.update(task, advance=1, ok=ok, failed=failed, current=names[done] if done < len(names) else "")
                if writer:
                    writer.write(res)
                if as_json:
                    print(res.model_dump_json(), flush=True)
                else:
                    _print_result(res, show)
    finally:
        if writer:
            writer.close()
    dt = time.perf_counter() - t0
    console.print(
        f"[bold]{ok + failed} video(s): [green]{ok} ok[/], [{'red' if failed else 'green'}]{failed} failed[/][/]"
        f" in {dt:.1f}s ({(ok + failed) / max(dt, 1e-9):.2f} videos/s)"
        + (f"; results in {escape(str(out_dir))}" if out_dir else "")
        + note
    )
    return 1 if failed else 0


def _run(
    sources: list[str],
    settings: Settings,
    model: str | None,
    out_dir: Path | None,
    features: Path | None,
    predict: bool,
    show: int | None,
    as_json: bool,
) -> int:
    """Tag or extract `sources` in this process and report them (the body of `tag` and `extract`)."""
    if not sources:
        fail("no input videos (give files, directories, URLs or --filelist)")
    results = pipeline.tag_sources(sources, settings, model, features_out=features, predict=predict)
    note = f"; features in {features}" if features else ""
    return _report(results, sources, "tagging" if predict else "extracting", out_dir, show, as_json, note)


Inputs = Annotated[
    list[str] | None,
    typer.Argument(help="Video files, directories (searched recursively) or http(s) URLs.", show_default=False),
]
Filelist = Annotated[
    Path | None, typer.Option("--filelist", "-f", help="Text file with one video path per line (VideoTag format).")
]
Frames = Annotated[int | None, typer.Option(help="Frames sampled uniformly per video [default: 300].")]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", help="Frames per CNN batch [default: 8 on CPU, 64 on GPU].")
]
Sampling = Annotated[
    str | None,
    typer.Option(
        help="uniform (centres of N equal spans), segment (VideoTag's rule) or timestamp (uniform in time, for VFR) "
        "[default: the model's]."
    ),
]


@app.command()
@guard
def tag(
    inputs: Inputs = None,
    filelist: Filelist = None,
    model: ModelOpt = None,
    topk: Annotated[int | None, typer.Option(help="Tags per video [default: 20].")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drop tags below this probability.")] = None,
    frames: Frames = None,
    batch_size: BatchSize = None,
    decoders: Decoders = None,
    sampling: Sampling = None,
    device: DeviceOpt = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write results.jsonl + one VideoTag-format JSON per video here."),
    ] = None,
    features: Annotated[
        Path | None, typer.Option(help="Also keep the features: FILE.h5 (one shard) or a directory (shard per video).")
    ] = None,
    show: Annotated[
        int | None, typer.Option(min=0, help="Tags printed per video [default: --topk, all that are kept].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per video on stdout.")] = False,
    lang: Lang = None,
    visualize: Annotated[
        Path | None,
        typer.Option(
            "--visualize", help="Write a PNG contact sheet per video here (sampled frames + the top tags as bars)."
        ),
    ] = None,
    visualize_video: Annotated[
        bool,
        typer.Option("--visualize-video", help="With --visualize: also an MP4 copy with the top tags drawn on it."),
    ] = False,
    verbose: Verbose = 0,
) -> None:
    """Tag videos: decode, sample frames, CNN features, predictor -> ranked {class_id, class_name, probability}.

    Exit status is 1 when any video failed; every failure is reported with its path and reason.
    """
    setup_logging(verbose)
    if visualize_video and visualize is None:
        fail("--visualize-video needs --visualize DIR (where to write the pictures)")
    settings = make_settings(
        topk=topk,
        threshold=threshold,
        frames=frames,
        batch_size=batch_size,
        decoders=decoders,
        sampling=sampling,
        lang=lang,
        device=device,
    )
    _ensure_defaults(settings, model)
    sources = expand_inputs(inputs or [], filelist)
    if visualize is None:
        raise typer.Exit(_run(sources, settings, model, out_dir, features, True, show, as_json))
    if not sources:
        fail("no input videos (give files, directories, URLs or --filelist)")
    results = _visualizing(pipeline.tag_sources(sources, settings, model, features_out=features), visualize,
                           visualize_video)  # fmt: skip
    note = (f"; features in {features}" if features else "") + f"; pictures in {visualize}"
    raise typer.Exit(_report(results, sources, "tagging", out_dir, show, as_json, note))


def _visualizing(results: Iterable[VideoResult], out_dir: Path, video: bool) -> Iterable[VideoResult]:
    """Pass results through; after each ok one is reported, draw its pictures (a failure is a warning line)."""
    from videotag.visualize import visualize_stream

    return visualize_stream(
        results,
        out_dir,
        video,
        on_written=lambda path: console.print(f"[dim]wrote {path}[/]"),
        on_error=lambda res, e: console.print(f"[yellow]warning:[/] no pictures for {res.source}: {e}"),
    )


@app.command()
@guard
def extract(
    inputs: Inputs = None,
    filelist: Filelist = None,
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="FILE.h5 (one shard) or a directory (one shard per video).")
    ] = Path("features.h5"),
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Use the backbone this predictor needs (bundles may carry one).")
    ] = None,
    frames: Frames = None,
    batch_size: BatchSize = None,
    decoders: Decoders = None,
    sampling: Sampling = None,
    device: DeviceOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Stage 1 only: videos -> per-frame features in an HDF5 feature store."""
    setup_logging(verbose)
    settings = make_settings(frames=frames, batch_size=batch_size, decoders=decoders, sampling=sampling,
                             device=device)  # fmt: skip
    _ensure_defaults(settings, model)
    sources = expand_inputs(inputs or [], filelist)
    raise typer.Exit(_run(sources, settings, model, None, out_path, False, 0, False))


@app.command()
@guard
def predict(
    stores: Annotated[list[Path], typer.Argument(help="Feature store files (.h5) or directories of them.")],
    model: ModelOpt = None,
    ids: Annotated[
        Path | None, typer.Option("--ids", help="Only these videos: a file with one id or source path per line.")
    ] = None,
    topk: Annotated[int | None, typer.Option(help="Tags per video [default: 20].")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drop tags below this probability.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Write results here (as `tag --out`).")] = None,
    show: Annotated[
        int | None, typer.Option(min=0, help="Tags printed per video [default: --topk, all that are kept].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per video on stdout.")] = False,
    lang: Lang = None,
    device: DeviceOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Stage 2 only: ranked tags from stored features (no decoding). Refuses features of another backbone."""
    setup_logging(verbose)
    settings = make_settings(topk=topk, threshold=threshold, lang=lang, device=device)
    _ensure_defaults(settings, model)
    wanted = read_filelist(ids) if ids else None
    results = pipeline.predict_store(stores, settings, model, wanted)
    raise typer.Exit(_report(results, len(wanted or []), "predicting", out_dir, show, as_json))


@app.command("export-backbone")
@guard
def export_backbone_cmd(
    arch: Annotated[str, typer.Option(help="resnet50 | resnet101 (torchvision layout, 2048-d) | efficientnet_lite0.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write (e.g. weights/resnet50).")],
    weights: Annotated[
        Path | None,
        typer.Option(help="Local state-dict file (.pth) for ResNets: torchvision format, or {'state_dict': ...}."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Preprocessing: resize_short_crop (256 -> 224) or videotag (VideoTag's 341x256).")
    ] = "resize_short_crop",
    verbose: Verbose = 0,
) -> None:
    """Export a per-frame backbone to ONNX + manifest (asserting ONNX == torch), for `--backbone`/settings.

    Weights are never downloaded: ResNets load from a local file. Use the result with
    VIDEOTAG_BACKBONE=DIR (and a predictor trained on its features).
    """
    setup_logging(max(verbose, 1))
    from extractor.backbone import export_backbone
    from extractor.preprocess import Preprocess
    from videotag.core.hashing import sha256_file

    if arch == "efficientnet_lite0":
        from extractor.backbones import efficientnet_lite0 as eff

        net, dim, mean, std, source = eff.load_pretrained(), eff.FEATURE_DIM, eff.MEAN, eff.STD, eff.source_info()
    elif arch in ("resnet50", "resnet101"):
        from extractor.backbones.resnet import FEATURE_DIM, resnet_from_state_dict_file

        if weights is None:
            fail(f"{arch} needs --weights FILE.pth (a local torchvision-format state dict)")
        net = resnet_from_state_dict_file(weights, depth=int(arch[6:]))
        dim, mean, std = FEATURE_DIM, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        source = {"weights_file": str(weights), "weights_sha256": sha256_file(weights), "layout": "torchvision"}
    else:
        fail(f"unknown backbone {arch!r}; choose resnet50, resnet101 or efficientnet_lite0")
    crop = 224
    out = export_backbone(
        net, out_dir, architecture=arch, feature_dim=dim, preprocess=Preprocess(preset, resize=256, crop=crop),
        mean=mean, std=std, source=source,
    )  # fmt: skip
    console.print(f"[green]exported[/] {arch} -> {out}")
