"""`videotag serve | worker | submit | status`: the queue-backed service from the command line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from videotag.cli.app import app
from videotag.cli.common import (
    Decoders,
    DeviceOpt,
    PredictBatch,
    Verbose,
    console,
    fail,
    guard,
    make_settings,
    out,
    setup_logging,
)
from videotag.core.settings import Settings, get_settings

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Features, results, uploads, embedded Redis (settings.data_dir).")
]


def _connect(settings: Settings) -> str:
    """Resolve the Redis URL (VIDEOTAG_REDIS_URL, else the local `videotag serve`) and make this process use it."""
    from workers.celery_app import redis_url

    try:
        url = redis_url(settings)
    except RuntimeError as e:
        fail(str(e))
    # The Celery app and get_settings() read the environment when first imported/called.
    os.environ["VIDEOTAG_REDIS_URL"] = url
    os.environ["VIDEOTAG_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    get_settings.cache_clear()
    import workers.celery_app as ca

    ca.app.conf.broker_url = ca.celery_broker_url(url)
    return url


@app.command()
@guard
def serve(
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: DataDir = None,
    extract_workers: Annotated[int, typer.Option(help="Extract pool processes (with --decoders 1 only).")] = 1,
    predict_workers: Annotated[int, typer.Option(help="Predict pool processes (with --predict-batch 1 only).")] = 1,
    decoders: Decoders = None,
    predict_batch: PredictBatch = None,
    redis_port: Annotated[
        int | None, typer.Option(help="Also expose the embedded Redis on this TCP port (for remote workers).")
    ] = None,
    workers: Annotated[bool, typer.Option(help="Start the extract and predict workers here.")] = True,
    device: DeviceOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Run the whole service: embedded Redis (unless VIDEOTAG_REDIS_URL is set), API, extract + predict workers."""
    setup_logging(max(verbose, 1))
    from videotag.cli.core import _ensure_defaults
    from workers.supervisor import Service

    # the workers get these as VIDEOTAG_* variables
    settings = make_settings(data_dir=data_dir, device=device, decoders=decoders, predict_batch=predict_batch)
    _check_pools(settings, {"extract": ("--extract-workers", extract_workers),
                            "predict": ("--predict-workers", predict_workers)})  # fmt: skip
    _ensure_defaults(settings, None)
    svc = Service(settings, host=host, port=port, extract_concurrency=extract_workers,
                  predict_concurrency=predict_workers, redis_port=redis_port, workers=workers)  # fmt: skip
    svc.start()
    try:
        if workers:  # without local workers readyz waits for remote ones: don't block on it
            svc.wait_ready(180)
    except RuntimeError as e:
        svc.stop()
        fail(str(e))
    console.print(f"[green]videotag serving[/] {svc.api_url}  (Redis {svc.redis_url}, logs {svc.log_dir})")
    console.print("Ctrl-C stops it")
    if svc.run():  # the embedded Redis could not be kept up: exit non-zero so an init system restarts us
        raise typer.Exit(1)


def _check_pools(settings: Settings, processes: dict[str, tuple[str, int]]) -> None:
    """Refuse, before starting anything, prefork processes asked for where videos share one model (threads).
    `processes`: queue -> (the option that asked, how many)."""
    from workers.celery_app import worker_pool

    decoders = settings.planned_decoders()
    for queue, (option, n) in processes.items():
        try:
            worker_pool(queue, decoders, settings.predict_batch, n)
        except ValueError as e:
            fail(f"{option} {n}: {e}")


@app.command()
@guard
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="extract, predict, or extract,predict")] = "extract",
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Prefork pool processes, where videos are not batched (decoders 1 "
                     "for extract, predict batch 1 for predict); otherwise one process runs a thread per video."),
    ] = None,  # fmt: skip
    decoders: Decoders = None,
    predict_batch: PredictBatch = None,
    data_dir: DataDir = None,
    events: Annotated[bool, typer.Option("--events", "-E", help="Send task events (Flower).")] = False,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. extract@%h.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Start a Celery worker for the extract and/or predict queue on the configured Redis."""
    for name, value in (("DEVICE", device), ("DECODERS", decoders), ("PREDICT_BATCH", predict_batch)):
        if value is not None:
            os.environ[f"VIDEOTAG_{name}"] = str(value)  # the tasks read get_settings()
    settings = make_settings(data_dir=data_dir)
    _check_pools(settings, {q: ("--concurrency", concurrency or 1) for q in ("extract", "predict") if q in queues})
    _connect(settings)
    from workers.__main__ import main as worker_main

    argv = ["--queues", queues, "--loglevel", loglevel] + (["--concurrency", str(concurrency)] if concurrency else [])
    argv += ["--hostname", hostname] if hostname else []
    worker_main(argv + (["--events"] if events else []))


@app.command()
@guard
def submit(
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Videos, directories (each video in them) or URLs, as for `tag`.")
    ] = None,
    filelist: Annotated[
        Path | None, typer.Option("--filelist", "-f", help="One video path per line (# comments, blank lines ok).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Predictor (default: settings.model).")] = None,
    topk: Annotated[int | None, typer.Option(help="Tags per video.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drop tags below this probability.")] = None,
    lang: Annotated[
        str | None, typer.Option("--lang", help="Language of class names, e.g. en or zh [default: the model's].")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until the batch completes.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Enqueue a batch on the configured Redis; prints the batch id (follow it with `videotag status ID`)."""
    settings = make_settings(data_dir=data_dir)
    from videotag.catalog import require_language
    from workers.jobstore import JobStore
    from workers.submit import NothingToSubmit, absolute_paths, batch_sources, submit_batch

    try:  # the workers may run elsewhere: local paths made absolute before and after directories are listed
        sources = batch_sources(inputs or [], filelist, check=absolute_paths)
    except NothingToSubmit:
        fail("nothing to submit: give videos, directories with videos and/or --filelist")
    url = _connect(settings)
    model = model or settings.model
    if lang:
        require_language(settings.resolve_model_dir(model), lang)
    jobstore = JobStore.from_url(url)
    batch_id, job_ids = submit_batch(jobstore, sources, model=model, topk=topk, threshold=threshold, lang=lang)
    out.print(batch_id, highlight=False)
    console.print(f"queued {len(job_ids)} video(s)")
    if wait:
        _follow(jobstore, batch_id)


def _follow(jobstore, batch_id: str) -> dict:
    """A live progress bar of a batch until it is complete and its results are written; its final record."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    info = jobstore.batch(batch_id)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[failed]} failed"), console=console) as bar:  # fmt: skip
        task = bar.add_task(batch_id, total=info["total"], failed=0)
        while True:
            info = jobstore.batch(batch_id)
            bar.update(task, completed=info["done"] + info["failed"], failed=info["failed"])
            if info["status"] == "complete" and info["results_dir"]:
                break
            time.sleep(0.5)
    return info


@app.command()
@guard
def status(
    id: Annotated[str, typer.Argument(help="A batch id (b…) or a job id (j…).")],
    watch: Annotated[bool, typer.Option(help="Follow until complete, then list the failed items.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    failed: Annotated[
        bool, typer.Option("--failed", help="Print the batch's failed items as JSONL on stdout (after --watch).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Progress of a batch (total, done, failed, results directory, which items failed and why) or the state
    of one job."""
    settings = make_settings(data_dir=data_dir)
    url = _connect(settings)
    from workers.jobstore import JobStore

    jobstore = JobStore.from_url(url)
    info = jobstore.batch(id)
    if info is None:
        job = jobstore.get(id)
        if job is None:
            fail(f"no batch or job {id!r} in {url}")
        if as_json:
            out.print_json(json.dumps(job.__dict__, default=str))
            return
        line = f"{job.id}  {job.status}  {job.source}"
        if job.error:
            line += f"  [{job.error.get('code')}] {job.error.get('reason')}"
        if job.result:
            line += "  " + ", ".join(f"{t['class_name']} {t['probability']:.3f}" for t in job.result["tags"][:5])
        out.print(line, highlight=False)
        return
    if watch and info["status"] != "complete":
        info = _follow(jobstore, id)
    if info["status"] == "complete" and not info["results_dir"]:
        from workers.tasks import finalize_batch

        finalize_batch(id)  # complete but not yet written (e.g. the writer crashed): write now
        info = jobstore.batch(id)
    if as_json:
        out.print_json(json.dumps(info))
        return
    summary = (
        f"{id}  {info['status']}  {info['done'] + info['failed']}/{info['total']} "
        f"({100 * info['progress']:.1f}%)  done {info['done']}  failed {info['failed']}  pending {info['pending']}"
        + (f"\nresults: {info['results_dir']}" if info["results_dir"] else "")
    )
    fails = jobstore.failed_items(id) if info["failed"] else []
    if failed:  # stdout is the JSONL alone: one object per failed item; the summary goes to stderr
        console.print(summary, highlight=False)
        for item in fails:
            print(json.dumps(item, ensure_ascii=False), flush=True)
        return
    out.print(summary, highlight=False)
    _print_failed(fails, id)


MAX_FAILED_SHOWN = 20


def _print_failed(fails: list[dict], batch_id: str) -> None:
    """The failed items, one line each: index, source, [code] reason (the first MAX_FAILED_SHOWN)."""
    from rich.markup import escape

    if not fails:
        return
    out.print(f"[red]failed items ({len(fails)}):[/]")
    for item in fails[:MAX_FAILED_SHOWN]:
        out.print(f"  #{item['index']}  {escape(item['source'])}  [bold]\\[{item['code']}][/] {escape(item['reason'])}",
                  soft_wrap=True, highlight=False)  # fmt: skip
    if len(fails) > MAX_FAILED_SHOWN:
        out.print(f"  … and {len(fails) - MAX_FAILED_SHOWN} more: videotag status {batch_id} --failed", highlight=False)
