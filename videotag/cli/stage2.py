"""Stage-2 commands: train, evaluate, export, check-dataset, ensemble."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from videotag.cli.app import app
from videotag.cli.common import guard

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _parse_sets(pairs: list[str] | None, json_config: str | None) -> dict[str, Any]:
    """`--model-config JSON` then `--set KEY=VALUE` (VALUE as JSON when it parses, else a string)."""
    out: dict[str, Any] = {}
    if json_config:
        try:
            cfg = json.loads(json_config)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model-config is not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError("--model-config must be a JSON object, e.g. '{\"hidden\": 512}'")
        out.update(cfg)
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _metrics_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """One row per metric, one column per model (stays readable in an 80-column terminal)."""
    keys = [k for k in rows[0][1] if not k.startswith("num_")] if rows else []
    t = Table(title=title)
    t.add_column("metric")
    for name, _ in rows:
        t.add_column(name, justify="right")
    for k in keys:
        t.add_row(k, *(f"{m[k]:.4f}" for _, m in rows))
    return t


_FEATURES_HELP = "HDF5 feature store file or directory of shards (repeat for several)."
_LABELS_HELP = (
    "Label file: VideoTag list `ID_OR_PATH L1 L2 ...` (0-based ids) or CSV `id,labels` (`;`-separated names)."
)


@app.command("train")
@guard
def train_cmd(
    features: list[Path] = typer.Option(None, "--features", "-f", help=_FEATURES_HELP),
    labels: Path = typer.Option(None, "--labels", "-l", help=_LABELS_HELP),
    vocab: Path = typer.Option(None, "--vocab", help="Vocabulary: one class name per line, id = line number."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run directory: best.pt, last.pt, run_config.json, history.json, curves.png."
    ),
    videos: Path = typer.Option(
        None,
        "--videos",
        help="DIR/<class>/*.mp4 (one folder per class): build OUT/dataset first, as `videotag dataset` does "
        "(features, vocabulary, stratified split by --val-fraction/--seed), then train on it. Replaces -f/-l/--vocab.",
    ),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Registered model (attention_lstm, nextvlad, frame_pool, ensemble). "
        "Default: attention_lstm, or the --init-from checkpoint's.",
    ),
    model_config: str = typer.Option(None, "--model-config", help="Model config as a JSON object."),
    set_: list[str] = typer.Option(None, "--set", "-s", help="One model config KEY=VALUE (repeatable)."),
    val_labels: Path = typer.Option(None, "--val-labels", help="Separate validation label file (else split by id)."),
    val_fraction: float = typer.Option(0.1, help="Share of the labelled ids held out for validation."),
    epochs: int = typer.Option(20, help="Epochs at most (early stopping may end sooner; a resume may raise it)."),
    recipe: str = typer.Option(
        "default",
        help="default (AdamW, batch-scaled lr, warm-up, decay on plateau, clip 1.0, early stopping, batch capped by "
        "the data) | videotag (centered RMSProp 1e-3, x0.1 after 5 epochs, wd 8e-4, batch 1024). Options override.",
    ),
    batch_size: int = typer.Option(None, help="Videos per batch. Default: recipe's (64; videotag 1024)."),
    cap_batch: bool = typer.Option(
        None,
        "--cap-batch/--no-cap-batch",
        help="Cap the batch at len(train)/16. Default: on for the default recipe without --batch-size.",
    ),
    optimizer: str = typer.Option(None, help="rmsprop (centered) | adam | adamw | sgd. Default: the recipe's."),
    lr: float = typer.Option(
        None, help="Peak learning rate, used as given. Default: recipe's (default: per model, x sqrt(batch/64))."
    ),
    schedule: str = typer.Option(
        None, help="plateau | cosine | step | constant. Default: the recipe's (plateau; videotag: step)."
    ),
    warmup_steps: int = typer.Option(None, help="Linear warm-up steps (0 = none). Default: ~1 epoch, <= 300."),
    lr_step: int = typer.Option(None, help="Step schedule: decay the lr every N epochs (videotag: 5)."),
    lr_gamma: float = typer.Option(None, help="Decay factor, step/plateau schedules (videotag 0.1, default 0.3)."),
    weight_decay: float = typer.Option(None, help="Weight decay (AdamW: decoupled). Default: 1e-2; videotag 8e-4."),
    clip_grad: float = typer.Option(None, help="Clip the gradient norm to this value (0 = off). Default: 1.0."),
    patience: int = typer.Option(
        None, help="Stop after N epochs without a better validation GAP@20 (0 = never). Default: 5; videotag 0."
    ),
    seed: int = typer.Option(0, help="Seed for init, split, shuffling and dropout: same seed, same run."),
    init_from: Path = typer.Option(
        None,
        "--init-from",
        help="Fine-tune from this checkpoint; with another vocabulary only the output layer is new.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    threads: int = typer.Option(0, help="torch CPU threads (0 = default; 1 is fastest for small models)."),
    keep_checkpoints: str = typer.Option(
        "0", help="Also keep the newest N full per-epoch checkpoints (N or 'all'); best.pt and last.pt always stay."
    ),
    fail_if_not_learning: bool = typer.Option(
        False, "--fail-if-not-learning", help="Exit with code 3 when training did not learn (for pipelines)."
    ),
) -> None:
    """Train (or fine-tune) a sequence model on feature stores + labels; keeps best.pt and last.pt.

    The default recipe learns on a hundred videos and on millions with the same command; `--recipe videotag`
    reproduces VideoTag's (meant for batch 1024 on millions of videos). The resolved recipe is in run_config.json.

    Warns (log + history.json) when the run is not learning: NaN/inf loss, validation GAP@20 at the level of a
    constant predictor, training loss not falling, every video getting the same scores.

    Export the result with `videotag export --checkpoint OUT --out MODEL_DIR`.
    """
    from predictor.train import RUN_CONFIG, NotLearningError, TrainConfig, train

    if videos is not None:
        if features or labels or vocab or val_labels:
            raise ValueError(
                "--videos builds the features, labels and vocabulary itself: drop -f/-l/--vocab/--val-labels"
            )
        if (out / RUN_CONFIG).is_file() and not resume:
            raise ValueError(f"{out} already holds a training run; pass --resume to continue it or use a new --out")
        from videotag.cli.common import make_settings
        from videotag.cli.dataset import build_and_report

        ds = build_and_report(videos, out / "dataset", make_settings(), None, None, val_fraction, seed)
        features, labels, vocab, val_labels = [ds.features], ds.train, ds.vocab, ds.val
    elif not (features and labels and vocab):
        raise ValueError("give --videos DIR, or --features, --labels and --vocab")
    cfg = TrainConfig(
        features=[str(f) for f in features],
        labels=str(labels),
        vocab=str(vocab),
        model=model,
        model_config=_parse_sets(set_, model_config),
        val_labels=str(val_labels) if val_labels else None,
        val_fraction=val_fraction,
        epochs=epochs,
        recipe=recipe,
        batch_size=batch_size,
        cap_batch=cap_batch,
        optimizer=optimizer,
        lr=lr,
        schedule=schedule,
        warmup_steps=warmup_steps,
        lr_step=lr_step,
        lr_gamma=lr_gamma,
        weight_decay=weight_decay,
        clip_grad=clip_grad,
        patience=patience,
        seed=seed,
        init_from=str(init_from) if init_from else None,
    )
    try:
        res = train(
            cfg,
            out,
            resume=resume,
            progress=progress,
            log=lambda s: typer.echo(s),
            threads=threads,
            keep_checkpoints=keep_checkpoints,
            fail_if_not_learning=fail_if_not_learning,
        )
    except NotLearningError as e:
        _err.print(f"[bold red]error:[/] {escape(str(e))} (see {out / 'history.json'})", soft_wrap=True)
        raise typer.Exit(NotLearningError.exit_code) from None
    if res.history:
        best = res.best
        has_val = best.get("gap@20") is not None and best["gap@20"] >= 0
        extra = f"; best epoch {best['epoch']} (val gap@20 {best['gap@20']:.4f})" if has_val else ""
        note = f"; {len(res.warnings)} warning(s) in history.json" if res.warnings else ""
        typer.echo(f"done: {out}{extra}{note}")


def _resolve_model(name_or_path: str) -> Path:
    """An existing directory as given, else a model name resolved under the weights directory."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    from videotag.core.settings import get_settings

    return get_settings().resolve_model_dir(name_or_path)


@app.command("evaluate")
@guard
def evaluate_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="Exported model dir (or name under weights/) or a checkpoint."
    ),
    features: list[Path] = typer.Option(..., "--features", "-f", help=_FEATURES_HELP),
    labels: Path = typer.Option(..., "--labels", "-l", help=_LABELS_HELP),
    vocab: Path = typer.Option(None, "--vocab", help="Vocabulary of the labels (must be the model's)."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Directory for metrics.json, per_class_ap.json/.csv, pr_curves.png (+ confusion_matrix.png for "
        "single-label data); a path ending in .json writes only the JSON report there.",
    ),
    batch_size: int = typer.Option(32, help="Videos per inference batch."),
    gap_k: int = typer.Option(20, help="k of GAP@k (YouTube-8M: 20)."),
    pr_classes: int = typer.Option(10, help="PR curves for this many most frequent classes."),
) -> None:
    """GAP@k, Hit@1, PERR, mAP, top-1/top-5 accuracy and recall@k of a model on labelled features (+ per-class AP,
    PR curves and a confusion matrix with --out DIR)."""
    from predictor.evaluate import evaluate

    as_json = out is not None and out.suffix.lower() == ".json"
    rep = evaluate(
        _resolve_model(model),
        features,
        labels,
        vocab,
        batch_size=batch_size,
        gap_k=gap_k,
        out_json=out if as_json else None,
        out_dir=out if out is not None and not as_json else None,
        pr_top=pr_classes,
    )
    m = rep["metrics"]
    _out.print(_metrics_table(f"{m['num_videos']} videos, {m['num_classes']} classes", [(rep["architecture"], m)]))
    if as_json:
        typer.echo(f"report: {out}")
    elif out is not None:
        extra = ", ".join(v for k, v in rep["outputs"].items() if k != "metrics")
        typer.echo(f"report: {out / 'metrics.json'} (+ {extra})")


@app.command("export")
@guard
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint file or training run dir."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (model.onnx + manifest + labels)."),
    which: str = typer.Option("best", help="For a run dir: best (best validation GAP) or last."),
) -> None:
    """Export a trained model to ONNX + manifest (checked ONNX == torch to 1e-4) with its validation metrics."""
    from predictor.checkpoint import export_checkpoint

    if which not in ("best", "last"):
        raise ValueError(f"--which must be best or last, got {which!r}")
    d = export_checkpoint(checkpoint, out, which)
    m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    typer.echo(
        f"exported {m['architecture']} -> {d} (ONNX parity {m['onnx_parity_max_abs_diff']:.1e}, "
        f"val gap@20 {m['metrics'].get('gap@20', float('nan')):.4f})"
    )


@app.command("check-dataset")
@guard
def check_dataset_cmd(
    features: list[Path] = typer.Option(..., "--features", "-f", help=_FEATURES_HELP),
    labels: Path = typer.Option(..., "--labels", "-l", help=_LABELS_HELP),
    vocab: Path = typer.Option(..., "--vocab", help="Vocabulary: one class name per line."),
    out: Path = typer.Option(Path("dataset-check"), "--out", "-o", help="Writes report.json + class_histogram.png."),
    show: int = typer.Option(20, help="Print at most this many errors and warnings."),
) -> None:
    """Validate a feature store + label file before training; exit code 1 when it finds errors."""
    from predictor.check_dataset import MISMATCH_KINDS, check_dataset

    rep = check_dataset(features, labels, vocab, out, progress=sys.stderr.isatty())
    s = rep["summary"]
    typer.echo(
        f"{s.get('videos_in_store', 0)} videos in the store, {s.get('labelled_videos', 0)} labelled, "
        f"{s.get('num_classes', '?')} classes ({s.get('classes_without_examples', '?')} without examples)"
    )
    if s.get("matched_by"):
        typer.echo("matched by: " + ", ".join(f"{how} {n}" for how, n in sorted(s["matched_by"].items())))
    for kind, m in rep.get("mismatches", {}).items():
        if m["count"]:
            _out.print(f"[yellow]mismatch[/] {kind}: {m['count']} ({MISMATCH_KINDS.get(kind, '')})", soft_wrap=True)
            for ex in m["examples"]:
                _out.print(f"    {escape(ex)}", soft_wrap=True)
    for kind, items, style in (("error", rep["errors"], "red"), ("warning", rep["warnings"], "yellow")):
        for p in items[:show]:
            _out.print(f"[{style}]{kind}[/] {escape('[' + p['code'] + ']')} {escape(p['message'])}", soft_wrap=True)
        if len(items) > show:
            typer.echo(f"... {len(items) - show} more {kind}s in {out / 'report.json'}")
    typer.echo(f"report: {out / 'report.json'}")
    if not rep["ok"]:
        counts = ", ".join(f"{k}: {v}" for k, v in rep["error_counts"].items())
        _err.print(f"[bold red]dataset has {len(rep['errors'])} error(s)[/] ({counts})", soft_wrap=True)
        raise typer.Exit(1)
    typer.echo("dataset OK")


@app.command("ensemble")
@guard
def ensemble_cmd(
    members: list[str] = typer.Argument(..., help="Exported model dirs, checkpoints or training run dirs."),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble model directory to write."),
    weights: str = typer.Option(None, "--weights", "-w", help="Comma-separated fusion weights (default equal)."),
    tune_features: list[Path] = typer.Option(
        None, "--tune-features", help="Choose the fusion weights on these feature stores (e.g. the validation set "
        "the members did not train on): best GAP@20 on a weight grid, the members alone included."
    ),
    tune_labels: Path = typer.Option(None, "--tune-labels", help="...with these labels."),
    tune_step: float = typer.Option(0.05, "--tune-step", help="Grid step of the weight search."),
    eval_features: list[Path] = typer.Option(None, "--eval-features", help="Evaluate the ensemble on these..."),
    eval_labels: Path = typer.Option(None, "--eval-labels", help="...with these labels; metrics go in the manifest."),
) -> None:
    """Build one predictor from several: weighted average of their probabilities, one merged ONNX graph."""
    from predictor.ensemble_builder import build_ensemble, set_metrics

    w = None
    if weights:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    if bool(tune_features) != bool(tune_labels):
        raise ValueError("--tune-features and --tune-labels go together")
    if tune_features and w is not None:
        raise ValueError("give --weights or --tune-features/--tune-labels, not both")
    tune = (tune_features, tune_labels) if tune_features else None
    paths = [_resolve_model(m) if not Path(m).exists() else Path(m) for m in members]
    d = build_ensemble(paths, out, w, tune=tune, tune_step=tune_step)
    typer.echo(f"ensemble of {len(members)} -> {d}")
    if tune:
        from videotag.core.manifest import read_manifest

        t = read_manifest(d, kind="predictor")["fusion_tuning"]
        typer.echo(
            f"fusion weights {', '.join(f'{x:.2f}' for x in t['weights'])} chosen on {t['videos']} videos: "
            f"GAP@20 {t['gap@20']:.4f} (equal weights {t['equal_weights_gap@20']:.4f}, members "
            + ", ".join(f"{g:.4f}" for g in t["members_gap@20"]) + ")"
        )
    if eval_features and eval_labels:
        from predictor.evaluate import evaluate

        rep = evaluate(d, eval_features, eval_labels)
        set_metrics(d, rep["metrics"])
        _out.print(_metrics_table("ensemble", [("ensemble", rep["metrics"])]))
