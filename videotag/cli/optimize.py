"""`videotag optimize`: an INT8 (CPU) or FP16 (CUDA/TensorRT) copy of a model, gated on measured agreement."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from videotag.cli.app import app
from videotag.cli.common import DeviceOpt, console, fail, guard, make_settings, out, setup_logging


@app.command(
    "optimize",
    epilog="Gate keys (defaults): cosine_mean (0.97), cosine_min (0.90), topk (5), topk_overlap (0.70), "
    "topk_overlap_min (0.40), max_prob_diff (0.20). Exit status: 0 written, 1 refused by the gate (nothing "
    "written), 2 bad usage or input. See docs/optimize.md.",
)
@guard
def optimize_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="Model to optimise: a name under weights/ (as `tag --model`) or a "
            "directory (a predictor bundle or a backbone)."
        ),
    ],  # fmt: skip
    clips: Annotated[
        list[str] | None,
        typer.Argument(help="More calibration clips (so `--calibrate a.mp4 b.mp4 c.mp4` works).", show_default=False),
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Static INT8 (QDQ) for ONNX Runtime's CPU provider.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision, for the CUDA/TensorRT providers.")] = False,
    calibrate: Annotated[
        list[str] | None,
        typer.Option(
            "--calibrate",
            "-c",
            help="Calibration clips: files or directories (searched recursively). "
            "Every third clip is held back to measure agreement.",
        ),
    ] = None,  # fmt: skip
    holdout: Annotated[
        list[str] | None,
        typer.Option(
            "--holdout", help="Measure agreement on these clips instead (then all --calibrate clips calibrate)."
        ),
    ] = None,  # fmt: skip
    out_name: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", help="New model name under weights/ or a directory [default: MODEL-int8 / MODEL-fp16]."
        ),
    ] = None,  # fmt: skip
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="Change a gate value, KEY=VALUE, repeatable (e.g. --gate cosine_mean=0.99)."),
    ] = None,
    frames: Annotated[int, typer.Option(help="Frames sampled per calibration clip (the model's sampling rule).")] = 32,
    eval_frames: Annotated[
        int | None,
        typer.Option(
            "--eval-frames",
            help="Frames sampled per held-back clip to measure agreement [default: as "
            "`tag` samples: --frames of settings, 300].",
        ),
    ] = None,  # fmt: skip
    max_calibration_frames: Annotated[
        int, typer.Option("--max-calibration-frames", help="Cap on calibration frames (evenly subsampled).")
    ] = 256,
    exclude: Annotated[
        str,
        typer.Option(
            help="INT8 nodes kept in float: auto (try none, then the first conv, then first + last conv: "
            "the first that passes), none, or a comma list of first, last, node names."
        ),
    ] = "auto",  # fmt: skip
    predictor: Annotated[
        str,
        typer.Option(
            help="Convert the predictor too: auto (only when it takes >= 10% of a video's model time), "
            "keep (float32), convert."
        ),
    ] = "auto",  # fmt: skip
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="INT8 weight scales per output channel or per tensor.")
    ] = True,
    reduce_range: Annotated[
        bool | None,
        typer.Option(
            "--reduce-range/--no-reduce-range",
            help="7-bit weights [default: only on x86 without VNNI].",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    calibration_method: Annotated[
        str, typer.Option("--calibration-method", help="minmax | entropy | percentile (the last two need more memory).")
    ] = "minmax",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    device: DeviceOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the new manifest's `optimized` record as JSON.")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: info logs, -vv: debug.")] = 0,
) -> None:
    """Write a new, faster bundle of MODEL (INT8 for CPUs, FP16 for GPUs) if it agrees with the original.

    Example: `videotag optimize videotag --int8 --calibrate clips/` writes weights/videotag-int8, used as
    `videotag tag --model videotag-int8 VIDEO`. Agreement (feature cosine, top-k overlap, max probability
    difference) is measured on held-back clips and recorded in the manifest; below the gate nothing is written.
    """
    from videotag.inputs import expand_inputs
    from videotag.optimize import Gate, GateRefused, optimize_model

    setup_logging(verbose)
    if int8 == fp16:
        fail("choose one of --int8 (CPU) or --fp16 (CUDA/TensorRT)")
    settings = make_settings(device=device)
    sources = expand_inputs(list(calibrate or []) + list(clips or []))
    held = expand_inputs(holdout or []) if holdout else None
    if not sources:
        fail("no calibration clips: give some with --calibrate FILES_OR_DIRS")
    excl: str | list[str] = exclude if exclude in ("auto", "none") else [x.strip() for x in exclude.split(",") if x]
    try:
        report = optimize_model(
            settings,
            model,
            "int8" if int8 else "fp16",
            sources,
            out_name,
            holdout=held,
            frames=frames,
            eval_frames=eval_frames,
            max_calibration_frames=max_calibration_frames,
            gate=Gate.parse(gate),
            exclude=excl,
            predictor=predictor,
            per_channel=per_channel,
            reduce_range=reduce_range,
            calibration_method=calibration_method,
            force=force,
            say=lambda msg: console.print(f"[dim]{escape(msg)}[/]"),
        )
    except GateRefused as e:
        console.print(f"[bold red]refused:[/] {e}")
        raise typer.Exit(1) from None
    rec = report.manifest["optimized"]
    if as_json:
        print(json.dumps(rec, indent=2, ensure_ascii=False))
        return
    a = rec["agreement"]
    t = Table(title=f"{report.mode} {rec['from']['model']} vs original, {a['frames']} held-back frames of "
                    f"{a['videos']} video(s)", title_justify="left", box=None, pad_edge=False)  # fmt: skip
    for col in ("video", "frames", "cosine mean", "cosine min", f"top-{a.get('topk', '-')} overlap", "max prob diff"):
        t.add_column(col, justify="left" if col == "video" else "right")
    for r in a["per_video"]:
        t.add_row(r["video"], str(r["frames"]), f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}",
                  f"{r['topk_overlap']:.2f}" if "topk_overlap" in r else "-",
                  f"{r['max_prob_diff']:.4f}" if "max_prob_diff" in r else "-")  # fmt: skip
    out.print(t)
    name = report.out.name if report.out.parent.resolve() == settings.weights_dir.resolve() else str(report.out)
    speed = a["throughput_while_measuring"]
    console.print(
        f"[green]wrote[/] {report.out} ({rec['exclusion']}; predictor {rec['predictor_precision'] or '-'}); backbone "
        f"{speed['original_frames_per_s']} -> {speed['optimized_frames_per_s']} frames/s on "
        f"{speed['providers'][0]} while measuring\n  run it: videotag tag --model {name} VIDEO..."
    )
