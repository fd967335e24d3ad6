"""`videotag gc`: remove stored features and results by age or of one batch (logic: `workers.retention`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from videotag.cli.app import app
from videotag.cli.common import console, fail, guard, make_settings, out


@app.command()
@guard
def gc(
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Remove what was not touched for this long: 7d, 12h, 2w…")
    ] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Remove a complete batch's results and features.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go and the bytes freed; remove nothing.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="The service's data directory.")] = None,
) -> None:
    """Free disk: feature shards, batch results, left-over uploads and preview strips older than --older-than, or
    those of one --batch. What live jobs still need is kept (when the job store can be reached)."""
    from workers.retention import human_bytes, parse_age, plan_batch, plan_older_than, remove

    if older_than is None and batch is None:
        fail("say what to remove: --older-than 7d and/or --batch ID (add --dry-run to see it first)")
    try:
        age_s = parse_age(older_than) if older_than is not None else None
    except ValueError as e:
        fail(str(e))
    settings = make_settings(data_dir=data_dir)
    jobstore = _jobstore(settings, required=batch is not None)
    items = []
    if batch is not None:
        try:
            items += plan_batch(settings, jobstore, batch)
        except (LookupError, ValueError) as e:
            fail(str(e))
    if age_s is not None:
        seen = {it.path for it in items}
        items += [it for it in plan_older_than(settings, age_s, jobstore) if it.path not in seen]
    total = sum(it.bytes for it in items)
    for it in items:
        out.print(f"{it.kind:<8} {human_bytes(it.bytes):>10}  {it.path}  ({it.why})", highlight=False, soft_wrap=True)
    if dry_run:
        console.print(f"dry run: would remove {len(items)} item(s), freeing {human_bytes(total)} ({total} bytes)")
        return
    n, freed = remove(items)
    console.print(f"removed {n} item(s), freed {human_bytes(freed)} ({freed} bytes)")


def _jobstore(settings, required: bool):
    """The job store when one can be found (it protects live jobs' data); required for --batch."""
    from workers.celery_app import redis_url
    from workers.jobstore import JobStore

    try:
        url = redis_url(settings, required=required)
    except RuntimeError as e:
        fail(f"--batch needs the job store: {e}")
    if url is None:
        console.print("[yellow]note:[/] no job store found (no `videotag serve` on this data dir, no "
                      "VIDEOTAG_REDIS_URL): nothing is known to be live")  # fmt: skip
        return None
    st = JobStore.from_url(url)
    try:
        st.r.ping()
    except Exception as e:  # noqa: BLE001 - redis errors of every kind: say which and stop
        fail(f"the job store at {url} does not answer ({type(e).__name__}: {e}); start the service or retry")
    return st
