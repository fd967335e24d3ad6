"""`videotag import-videotag`: Baidu VideoTag's Paddle weights -> an ONNX bundle for `videotag tag --model`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from videotag.cli.app import app
from videotag.cli.common import console, guard, out, setup_logging

_FILE = dict(exists=False, dir_okay=False)  # existence is checked by the importer, with a clearer message


@app.command("import-videotag")
@guard
def import_videotag_cmd(
    tsn: Annotated[Path, typer.Option("--tsn", help="VideoTag's tsn.pdparams (from video_tag_tsn.tar).", **_FILE)],
    lstm: Annotated[
        Path, typer.Option("--lstm", help="VideoTag's attention_lstm.pdparams (from video_tag_lstm.tar).", **_FILE)
    ],
    labels: Annotated[Path, typer.Option("--labels", help="VideoTag's label_3396.txt (id = line number).", **_FILE)],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to create (e.g. weights/videotag).")],
    lstm_impl: Annotated[
        str,
        typer.Option(
            "--lstm-impl",
            help="ONNX form of the peephole LSTM: 'scan' runs on every provider (CPU, CUDA); 'onnx_lstm' uses "
            "the native LSTM op, faster on CPU but wrong on CUDA (cuDNN ignores peepholes).",
        ),
    ] = "scan",
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: info logs.")] = 0,
) -> None:
    """Import VideoTag's released weights (TSN ResNet-101 + Attention-LSTM, 3396 labels) as ONNX models."""
    setup_logging(verbose)
    from videotag.importers.paddle_videotag import LSTM_IMPLS, import_videotag

    if lstm_impl not in LSTM_IMPLS:
        raise typer.BadParameter(f"must be one of {', '.join(LSTM_IMPLS)}", param_hint="--lstm-impl")
    t0 = time.perf_counter()
    report = import_videotag(
        tsn,
        lstm,
        labels,
        out_dir,
        lstm_impl=lstm_impl,
        overwrite=force,
        log=lambda msg: console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {msg}"),
    )
    out.print(f"[green]imported[/] {report.out}  ({time.perf_counter() - t0:.0f}s)")
    out.print(f"  classes: {report.num_classes}; names used twice (kept apart by id): {len(report.duplicate_names)}")
    out.print(
        f"  ONNX vs torch max |diff|: backbone {report.backbone_parity:.1e}, predictor {report.predictor_parity:.1e}"
    )
    out.print(f"  run it: videotag tag --model {report.out} VIDEO...")
