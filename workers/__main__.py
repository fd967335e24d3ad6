"""`python -m workers --queues extract|predict [--concurrency N]`: one Celery worker (what `videotag worker` runs).

The pool follows the settings (`workers.celery_app.worker_pool`): an extract worker with `decoders` > 1 or a
predict worker with `predict_batch` > 1 runs one process whose threads share one model; otherwise a prefork pool.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    """Parse the worker options and run one Celery worker on the given queues; exits with the worker's status."""
    ap = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    ap.add_argument("--queues", "-Q", default="extract,predict", help="extract, predict or extract,predict")
    ap.add_argument(
        "--concurrency", "-c", type=int, default=None,
        help="prefork pool processes (each loads the models once); only where videos are not batched",
    )  # fmt: skip
    ap.add_argument("--loglevel", "-l", default="INFO")
    ap.add_argument("--hostname", "-n", default=None)
    ap.add_argument("--events", "-E", action="store_true", help="send task events (for Flower)")
    a = ap.parse_args(argv)
    import os

    from videotag.core.settings import get_settings
    from workers.celery_app import app, worker_argv, worker_pool

    settings = get_settings()
    decoders = settings.planned_decoders() if "extract" in a.queues else 1
    try:
        pool, size = worker_pool(a.queues, decoders, settings.predict_batch, a.concurrency)
    except ValueError as e:
        ap.error(str(e))
    os.environ["VIDEOTAG_WORKER_QUEUES"] = a.queues  # what the pool warms up (after fork, for prefork)
    os.environ["VIDEOTAG_WORKER_POOL"] = pool
    # Celery's own `app.worker_main` drops the worker's exit status, so a worker that stopped on an unrecoverable
    # error exited 0 and `restart: on-failure` style supervisors left it down. Run its CLI and keep the status.
    from celery.bin.celery import celery as celery_cli

    celery_cli.params[0].default = app
    rc = celery_cli.main(args=worker_argv(a.queues, size, a.loglevel, a.hostname, a.events, pool=pool),
                         standalone_mode=False)  # fmt: skip
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
