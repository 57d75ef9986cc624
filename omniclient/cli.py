"""``omni``: submit, follow and fetch jobs and batches from a shell (docs/cli.md).

Results and resources go to stdout as JSON (NDJSON for batch results), progress and errors to
stderr, so ``omni ... > out.json`` keeps only the answer. Exit codes: 0 done (job or batch
succeeded); 1 an API error, no connection, or a job or batch that ended failed or cancelled;
2 a usage error, a missing API key among them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import IO, Any

import click

from omniclient.cli_files import resume_point as resume_point
from omniclient.cli_files import spooled_stdin
from omniclient.cli_params import echo_lines, json_object, key_value_pairs, listing_options
from omniclient.client import OmniClient
from omniclient.errors import MissingApiKey, OmniClientError, OmniError
from omniclient.events import TERMINAL, BatchEvent
from omniclient.progress import BatchProgress, Tally
from omniclient.session import DEFAULT_URL
from omniclient.upload import PART_MAX_BYTES, PART_MAX_ITEMS

EXIT_FAILED = 1
"""A job or batch that ended failed or cancelled, an API error, or no connection."""
EXIT_USAGE = 2
"""A usage error (click's own code for them), a missing API key among them."""


def build_client(url: str, api_key: str) -> OmniClient:
    """The one place the CLI makes its client (tests replace it to inject a transport)."""
    return OmniClient(url, api_key)


class _Session:
    """The global options, and the client made from them on first use."""

    def __init__(self, ctx: click.Context, url: str, api_key: str | None) -> None:
        self._ctx = ctx
        self.url = url
        self.api_key = api_key
        self._client: OmniClient | None = None

    def client(self) -> OmniClient:
        if self._client is None:
            if not self.api_key:
                raise MissingApiKey("no API key: set OMNI_API_KEY or pass --api-key")
            self._client = self._ctx.with_resource(build_client(self.url, self.api_key))
        return self._client


class _Cli(click.Group):
    """Turns the client's errors into a readable message on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MissingApiKey as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except OmniError as exc:
            click.echo(f"error: {exc}", err=True)
            for item in exc.errors:
                click.echo(f"  {_location(item.get('loc'))}: {item.get('msg', '')}", err=True)
            ctx.exit(EXIT_FAILED)
        except OmniClientError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILED)
        except BrokenPipeError:
            # The reader went away (``omni batch results ID | head``): stop quietly, and keep
            # Python from complaining again when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_FAILED)


def _location(loc: object) -> str:
    """``["body", "input", "texts"]`` → ``input.texts``; ``["line", 3, "texts"]`` → ``line 3 →
    texts``."""
    parts = list(loc) if isinstance(loc, list | tuple) else [loc] if loc is not None else []
    if parts[:1] == ["body"]:
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] == "line" and isinstance(parts[1], int):
        rest = ".".join(str(p) for p in parts[2:])
        return f"line {parts[1]} → {rest}" if rest else f"line {parts[1]}"
    return ".".join(str(p) for p in parts) or "(request)"


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _note(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", envvar="OMNI_URL", default=DEFAULT_URL, show_default=True, show_envvar=True,
    help="Base URL of the Omni API.",
)  # fmt: skip
@click.option("--api-key", envvar="OMNI_API_KEY", show_envvar=True, help="API key (X-API-Key).")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Submit and follow Omni inference jobs and batches."""
    ctx.obj = _Session(ctx, url, api_key)


# Jobs


@main.command()
@click.argument("task")
@click.option(
    "--input", "-i", "input_", required=True, callback=json_object, metavar="JSON|@FILE",
    help="The task's input: a JSON object, or @file.json (@- reads stdin).",
)  # fmt: skip
@click.option("--metadata", "-m", multiple=True, callback=key_value_pairs, metavar="KEY=VALUE")
@click.option("--webhook", metavar="URL", help="POSTed to when the job ends.")
@click.option(
    "--wait", is_flag=True, help="Follow the job until it ends; exit 1 unless it succeeded."
)
@click.option("--no-cache", is_flag=True, help="Run the model even if the result is cached.")
@click.pass_obj
def submit(
    session: _Session,
    task: str,
    input_: dict[str, Any],
    metadata: dict[str, str],
    webhook: str | None,
    wait: bool,
    no_cache: bool,
) -> None:
    """Submit a job of TASK and print it (with --wait: print it once it ended)."""
    client = session.client()
    job = client.submit(
        task, input_, metadata=metadata or None, webhook=webhook, cache=not no_cache
    )
    if not wait:
        _echo_json(job)
        return
    _note(f"job {job['id']} {job.get('status', 'queued')}")
    _finish_job(client, job["id"])


@main.command()
@click.argument("job_id")
@click.pass_obj
def watch(session: _Session, job_id: str) -> None:
    """Follow a job's status changes; print it once it ended (exit 1 unless it succeeded)."""
    _finish_job(session.client(), job_id)


@main.command()
@click.argument("job_id")
@click.pass_obj
def get(session: _Session, job_id: str) -> None:
    """Print a job."""
    _echo_json(session.client().get_job(job_id))


@main.command()
@click.argument("job_id")
@click.option(
    "--wait", is_flag=True, help="Follow the new job to its end (exit 1 unless succeeded)."
)
@click.pass_obj
def retry(session: _Session, job_id: str, wait: bool) -> None:
    """Run a failed job again as a new job, and print it."""
    client = session.client()
    job = client.retry_job(job_id)
    if wait:
        _finish_job(client, job["id"])
    else:
        _echo_json(job)


@main.command()
@listing_options("jobs")
@click.pass_obj
def jobs(session: _Session, /, limit: int | None, **filters: Any) -> None:
    """List this key's jobs, newest first: one JSON object a line (no input, no result)."""
    echo_lines(session.client().list_jobs(**filters), limit)


@main.command()
@listing_options("batches")
@click.pass_obj
def batches(session: _Session, /, limit: int | None, **filters: Any) -> None:
    """List this key's batches with their counts, newest first: one JSON object a line."""
    echo_lines(session.client().list_batches(**filters), limit)


@main.command()
@click.argument("job_id")
@click.pass_obj
def cancel(session: _Session, job_id: str) -> None:
    """Cancel a job that has not ended, and print it."""
    _echo_json(session.client().cancel_job(job_id))


@main.command()
@click.argument("job_id")
@click.pass_obj
def delete(session: _Session, job_id: str) -> None:
    """Delete a job with its result and events (a running one stops)."""
    session.client().delete_job(job_id)
    _note(f"job {job_id} deleted")


def _finish_job(client: OmniClient, job_id: str) -> None:
    job: dict[str, Any] | None = None
    for event in client.job_events(job_id):
        job = event.data
        _note(f"#{event.id} {event.name}{_reason(job)}")
    if job is None or job.get("status") not in TERMINAL:
        job = client.get_job(job_id)
    _echo_json(job)
    if job.get("status") != "succeeded":
        click.get_current_context().exit(EXIT_FAILED)


def _reason(job: dict[str, Any]) -> str:
    error = job.get("error")
    if not isinstance(error, dict):
        return ""
    return f": {error.get('code', 'error')}: {error.get('message', '')}"


# Batches


@main.group()
def batch() -> None:
    """Submit and follow batches of inputs."""


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--task", "-t", required=True, help="The task every line is an input of.")
@click.option("--wait", is_flag=True, help="Show progress until it ends; exit 1 unless succeeded.")
@click.option(
    "--batch", "batch_id", metavar="BATCH_ID",
    help="Send FILE's parts to this open batch, then close it: resumes an interrupted upload "
    "(parts it already has append nothing; use the same --part-* values).",
)  # fmt: skip
@click.option(
    "--part-items", type=click.IntRange(min=1), default=PART_MAX_ITEMS, show_default=True,
    help="Most items in one request; a larger FILE goes in parts.",
)  # fmt: skip
@click.option(
    "--part-bytes", type=click.IntRange(min=1), default=PART_MAX_BYTES, show_default=True,
    help="Most bytes in one request; a larger FILE goes in parts.",
)  # fmt: skip
@click.pass_obj
def batch_submit(
    session: _Session,
    file: str,
    task: str,
    wait: bool,
    batch_id: str | None,
    part_items: int,
    part_bytes: int,
) -> None:
    """Submit FILE (NDJSON: one input per line; - reads stdin) as a batch of TASK.

    A FILE over one request's limits goes in parts (an open batch, each part, then close); one
    progress bar follows the upload and, with --wait, the run."""
    client = session.client()
    tally = Tally()
    with BatchProgress(tally) as progress:
        with contextlib.ExitStack() as stack:
            source: str | IO[bytes] = file
            if file == "-":
                source = stack.enter_context(spooled_stdin())
            created = client.submit_batch(
                task,
                source,
                part_bytes=part_bytes,
                part_items=part_items,
                batch_id=batch_id,
                on_upload=progress.upload,
            )
        total = (created.get("counts") or {}).get("total", "?")
        progress.note(f"batch {created['id']} accepted: {total} items of {task}")
        if wait:
            _follow_batch(client, created["id"], progress)
            return
    _echo_json(created)


@batch.command("status")
@click.argument("batch_id")
@click.pass_obj
def batch_status(session: _Session, batch_id: str) -> None:
    """Print a batch: its status and counts."""
    _echo_json(session.client().get_batch(batch_id))


@batch.command("watch")
@click.argument("batch_id")
@click.pass_obj
def batch_watch(session: _Session, batch_id: str) -> None:
    """Show a batch's progress until it ends; print it (exit 1 unless it succeeded)."""
    with BatchProgress(Tally()) as progress:
        _follow_batch(session.client(), batch_id, progress)


@batch.command("results")
@click.argument("batch_id")
@click.option("--status", "-s", help="Only items that ended so (e.g. failed).")
@click.option(
    "--after", type=click.IntRange(min=0), metavar="INDEX",
    help="Only the items after this index (resumes a download).",
)  # fmt: skip
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
    help="Append to FILE instead of stdout, after the last whole line already in it: run it "
    "again to resume an interrupted download.",
)  # fmt: skip
@click.pass_obj
def batch_results(
    session: _Session,
    batch_id: str,
    status: str | None,
    after: int | None,
    output: str | None,
) -> None:
    """Write the results as NDJSON, one line per item in input order.

    A download that breaks resumes by itself (after the last index received)."""
    client = session.client()
    if output is None:
        for line in client.batch_results(batch_id, status=status, after=after):
            click.echo(line)
        return
    last = resume_point(output)
    if after is None and last is not None:
        after = last
        _note(f"resuming after item {last}, the last one in {output}")
    with open(output, "a", encoding="utf-8") as out:
        for line in client.batch_results(batch_id, status=status, after=after):
            out.write(line + "\n")


@batch.command("item")
@click.argument("batch_id")
@click.argument("index", type=click.IntRange(min=0))
@click.pass_obj
def batch_item(session: _Session, batch_id: str, index: int) -> None:
    """Print one item's results line (INDEX counts from 0)."""
    _echo_json(session.client().get_batch_item(batch_id, index))


@batch.command("close")
@click.argument("batch_id")
@click.pass_obj
def batch_close(session: _Session, batch_id: str) -> None:
    """Close an open batch (no more parts), and print it."""
    _echo_json(session.client().close_batch(batch_id))


@batch.command("cancel")
@click.argument("batch_id")
@click.pass_obj
def batch_cancel(session: _Session, batch_id: str) -> None:
    """Cancel every item not yet started, and print the batch."""
    _echo_json(session.client().cancel_batch(batch_id))


@batch.command("delete")
@click.argument("batch_id")
@click.pass_obj
def batch_delete(session: _Session, batch_id: str) -> None:
    """Delete a batch with its items and results (running items stop)."""
    session.client().delete_batch(batch_id)
    _note(f"batch {batch_id} deleted")


@batch.command("retry")
@click.argument("batch_id")
@click.pass_obj
def batch_retry(session: _Session, batch_id: str) -> None:
    """Run exactly the failed items again, and print the batch."""
    _echo_json(session.client().retry_batch(batch_id))


def _follow_batch(client: OmniClient, batch_id: str, progress: BatchProgress) -> None:
    """Show the batch's progress on ``progress`` until it ends; print it (exit 1 unless it
    succeeded)."""
    final: dict[str, Any] | None = None
    for event in client.batch_events(batch_id):
        progress.update(event)
        if event.name == "done":
            final = event.data
    if final is None:  # a stream that ended without ``done`` (the server had nothing more)
        final = client.get_batch(batch_id)
        progress.update(BatchEvent("done", final))
    progress.close()
    _note(progress.tally.summary())
    _echo_json(final)
    if final.get("status") != "succeeded":
        click.get_current_context().exit(EXIT_FAILED)
