"""`videotag serve | worker | submit | status`: the queue-backed service from the command line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from videotag.cli.app import app
from videotag.cli.common import DeviceOpt, Verbose, console, fail, guard, make_settings, out, setup_logging
from videotag.settings import Settings, get_settings

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
    extract_workers: Annotated[int, typer.Option(help="Extract pool processes.")] = 1,
    predict_workers: Annotated[int, typer.Option(help="Predict pool processes.")] = 1,
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
    from videotag.service import Service

    settings = make_settings(data_dir=data_dir, device=device)  # the workers get it as VIDEOTAG_DEVICE
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
    svc.run()


@app.command()
@guard
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="extract, predict, or extract,predict")] = "extract",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Pool processes.")] = 1,
    data_dir: DataDir = None,
    events: Annotated[bool, typer.Option("--events", "-E", help="Send task events (Flower).")] = False,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. extract@%h.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Start a Celery worker for the extract and/or predict queue on the configured Redis."""
    if device:
        os.environ["VIDEOTAG_DEVICE"] = device  # the tasks read get_settings()
    settings = make_settings(data_dir=data_dir)
    _connect(settings)
    from workers.__main__ import main as worker_main

    argv = ["--queues", queues, "--concurrency", str(concurrency), "--loglevel", loglevel]
    argv += ["--hostname", hostname] if hostname else []
    worker_main(argv + (["--events"] if events else []))


def _read_sources(inputs: list[str], filelist: Path | None) -> list[str]:
    """One path (or URL) per line, blank lines skipped (VideoTag's filelist); relative paths made absolute."""
    items = list(inputs)
    if filelist is not None:
        try:
            text = filelist.read_text(encoding="utf-8-sig")
        except OSError as e:
            fail(f"cannot read filelist {filelist}: {e.strerror or e}")
        except UnicodeDecodeError as e:
            fail(f"filelist {filelist} is not UTF-8 text ({e})")
        items += [ln.rstrip("\r\n") for ln in text.splitlines() if ln.strip()]
    return [s if s.startswith(("http://", "https://")) else str(Path(s).expanduser().absolute()) for s in items]


@app.command()
@guard
def submit(
    inputs: Annotated[list[str] | None, typer.Argument(help="Videos or URLs (in addition to --filelist).")] = None,
    filelist: Annotated[Path | None, typer.Option("--filelist", "-f", help="One video path per line.")] = None,
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
    sources = _read_sources(inputs or [], filelist)
    if not sources:
        fail("nothing to submit: give videos and/or --filelist")
    url = _connect(settings)
    from videotag.catalog import require_language
    from videotag.jobs import JobStore
    from workers.tasks import enqueue

    model = model or settings.model
    if lang:
        require_language(settings.resolve_model_dir(model), lang)
    store = JobStore.from_url(url)
    batch_id, job_ids = store.create_batch(sources, "path", model=model, topk=topk, threshold=threshold,
                                           lang=lang)  # fmt: skip
    enqueue([(j, "extract", None) for j in job_ids])
    out.print(batch_id, highlight=False)
    console.print(f"queued {len(job_ids)} video(s)")
    if wait:
        _follow(store, batch_id)


def _follow(store, batch_id: str) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    info = store.batch(batch_id)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[failed]} failed"), console=console) as bar:  # fmt: skip
        task = bar.add_task(batch_id, total=info["total"], failed=0)
        while True:
            info = store.batch(batch_id)
            bar.update(task, completed=info["done"] + info["failed"], failed=info["failed"])
            if info["status"] == "complete" and info["results_dir"]:
                break
            time.sleep(0.5)
    return info


@app.command()
@guard
def status(
    id: Annotated[str, typer.Argument(help="A batch id (b…) or a job id (j…).")],
    watch: Annotated[bool, typer.Option(help="Follow until complete.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Progress of a batch (total, done, failed, results directory) or the state of one job."""
    settings = make_settings(data_dir=data_dir)
    url = _connect(settings)
    from videotag.jobs import JobStore

    store = JobStore.from_url(url)
    info = store.batch(id)
    if info is None:
        job = store.get(id)
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
        info = _follow(store, id)
    if info["status"] == "complete" and not info["results_dir"]:
        from workers.tasks import finalize_batch

        finalize_batch(id)  # complete but not yet written (e.g. the writer crashed): write now
        info = store.batch(id)
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(
        f"{id}  {info['status']}  {info['done'] + info['failed']}/{info['total']} "
        f"({100 * info['progress']:.1f}%)  done {info['done']}  failed {info['failed']}  pending {info['pending']}"
        + (f"\nresults: {info['results_dir']}" if info["results_dir"] else ""),
        highlight=False,
    )
