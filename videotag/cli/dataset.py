"""`videotag dataset DIR`: a folder of videos per class (or videos + a CSV) -> a dataset `train` reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from videotag.cli.app import app
from videotag.cli.common import Verbose, console, guard, make_settings, out, setup_logging
from videotag.cli.core import BatchSize, Frames, Sampling, _ensure_defaults, _progress
from videotag.core.results import VideoResult
from videotag.core.settings import Settings

if TYPE_CHECKING:
    from videotag.datasets import DatasetPaths


@app.command("dataset")
@guard
def dataset(
    videos: Annotated[
        Path,
        typer.Argument(
            help="DIR/<class>/**/<video>: one sub-folder per class (its name is the class); with --labels any "
            "videos under DIR.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Writes features/, vocab.txt, train.txt, val.txt, videos.csv here.")
    ] = Path("dataset"),
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", "-l", help="Multi-label CSV `path,labels` (`;`-separated class names) instead of folders."
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Share of each class held out for validation (0 = none).")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split: same seed and videos, same split.")] = 0,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Use the backbone this predictor needs (bundles may carry one).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Backbone name under weights/ or a directory [default: settings.backbone].")
    ] = None,
    frames: Frames = None,
    batch_size: BatchSize = None,
    sampling: Sampling = None,
    verbose: Verbose = 0,
) -> None:
    """Build a training dataset from videos sorted into one folder per class (Flash / HF / PaddleX layout).

    Extracts features (as `videotag extract`), writes the vocabulary (sorted class folder names) and a
    stratified train/validation split as VideoTag lists, then prints the `videotag train` command to run.
    Videos that fail are listed in OUT/failed.jsonl and left out; the exit status is 0 when a dataset was written.
    """
    setup_logging(verbose)
    settings = make_settings(frames=frames, batch_size=batch_size, sampling=sampling, backbone=backbone)
    paths = build_and_report(videos, out_dir, settings, model, labels, val_fraction, seed)
    out.print("next: " + escape(paths.train_command()), soft_wrap=True)


def build_and_report(
    videos: Path,
    out_dir: Path,
    settings: Settings,
    model: str | None,
    labels: Path | None,
    val_fraction: float,
    seed: int,
) -> DatasetPaths:
    """`build_dataset` with a progress bar, per-video failures as they come and a per-class summary (used by
    `videotag dataset` and `videotag train --videos`)."""
    from videotag.datasets import build_dataset

    _ensure_defaults(settings, model)
    state: dict = {"ok": 0, "failed": 0}
    with _progress(2) as prog:  # always shown: extraction is the slow part

        def start(total: int) -> None:
            state["task"] = prog.add_task("extracting", total=total, ok=0, failed=0, current="")

        def step(res: VideoResult) -> None:
            state["ok" if res.ok else "failed"] += 1
            prog.update(state["task"], advance=1, ok=state["ok"], failed=state["failed"])
            if not res.ok and res.error:
                console.print(f"[red]FAILED[/] {escape(res.source)}: [bold]{res.error['code']}[/]: "
                              f"{escape(res.error['reason'])}")  # fmt: skip

        paths = build_dataset(
            videos, out_dir, settings, model, labels, val_fraction, seed, on_start=start, on_result=step
        )
    if len(paths.classes) <= 40:
        t = Table(show_edge=False, box=None)
        for col in ("id", "class", "train", "val"):
            t.add_column(col, justify="right" if col != "class" else "left")
        for i, name in enumerate(paths.classes):
            c = paths.class_counts.get(name, {"train": 0, "val": 0})
            t.add_row(str(i), escape(name), str(c["train"]), str(c["val"]))
        out.print(t)
    for p in paths.problems:
        console.print(f"[yellow]note[/] {escape(p)}", soft_wrap=True)
    out.print(
        f"[bold]{paths.num_videos} video(s), {len(paths.classes)} classes[/]: {paths.num_train} train, "
        f"{paths.num_val} val, [{'red' if paths.num_failed else 'green'}]{paths.num_failed} failed[/]"
        + (f" (see {escape(str(paths.failed))})" if paths.num_failed else "")
    )
    out.print(f"dataset in {escape(str(paths.out_dir))} (summary: {escape(str(paths.summary))})")
    return paths
