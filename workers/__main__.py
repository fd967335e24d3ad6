"""`python -m workers --queues extract|predict [--concurrency N]`: one Celery worker (what `videotag worker` runs)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    """Parse the worker options and run one Celery worker on the given queues."""
    ap = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    ap.add_argument("--queues", "-Q", default="extract,predict", help="extract, predict or extract,predict")
    ap.add_argument("--concurrency", "-c", type=int, default=1, help="pool processes (each loads the models once)")
    ap.add_argument("--loglevel", "-l", default="INFO")
    ap.add_argument("--hostname", "-n", default=None)
    ap.add_argument("--events", "-E", action="store_true", help="send task events (for Flower)")
    a = ap.parse_args(argv)
    import os

    os.environ["VIDEOTAG_WORKER_QUEUES"] = a.queues  # what the pool processes warm up after fork
    from workers.celery_app import app, worker_argv

    app.worker_main(worker_argv(a.queues, a.concurrency, a.loglevel, a.hostname, a.events))


if __name__ == "__main__":
    main()
