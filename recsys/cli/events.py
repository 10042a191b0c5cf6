"""`recsys events record`: send behaviour events to a running feature service."""

from __future__ import annotations

import json

import click

from recsys.cli._options import client_options, columns_option, feature_stub, read_rows, rpc

BATCH = 1000  # interactions per RecordInteractions call
FEATURES_HELP = "Feature service HOST:PORT."


@click.group()
def events() -> None:
    """Send behaviour events to a running feature service."""


@events.command("record")
@click.option("--features", "target", required=True, help=FEATURES_HELP)
@click.option(
    "--file",
    "table",
    type=click.File("r", encoding="utf-8"),
    help="Text table of user_id,item_id,timestamp[,event_id][,event] rows ('-': stdin; event: the kind, "
    "e.g. view or purchase); "
    "comma, tab, semicolon or pipe separated.",
)
@columns_option
@client_options
@click.argument("event", nargs=-1, metavar="[USER ITEM [TIMESTAMP]]")
def record(target, table, columns, security, timeout, event) -> None:
    """Record one event (USER ITEM [TIMESTAMP]) or a file of them, in batches of 1000; print
    {"recorded": N, "duplicates": M}. TIMESTAMP is unix seconds or ISO-8601; default: now."""
    if (table is None) == (not event):
        raise click.UsageError("give USER ITEM [TIMESTAMP] or --file CSV, not both")
    if table is None:
        if len(event) not in (2, 3):
            raise click.UsageError("give USER ITEM [TIMESTAMP]")
        rows = [dict(zip(("user_id", "item_id", "timestamp"), event, strict=False))]
    else:
        rows = read_rows(table, columns, ("user_id", "item_id"), table.name)
    click.echo(json.dumps(send_events(target, security, timeout, rows)))


def send_events(target, security, timeout, rows) -> dict[str, int]:
    """RecordInteractions for `rows` (dicts of user_id, item_id[, timestamp, event_id, event]) in
    batches of `BATCH`; the totals of recorded and duplicate events."""
    from recsys.v1 import features_pb2, types_pb2

    totals = {"recorded": 0, "duplicates": 0}
    with feature_stub(target, security) as stub:
        batch: list = []

        def flush() -> None:
            reply = rpc(
                target, stub.RecordInteractions, features_pb2.RecordInteractionsRequest(interactions=batch), timeout
            )
            totals["recorded"] += reply.recorded
            totals["duplicates"] += reply.duplicates
            batch.clear()

        for line, row in enumerate(rows, start=2):
            user, item = row.get("user_id", ""), row.get("item_id", "")
            if not user or not item:
                raise ValueError(f"row {line}: user_id and item_id are required")
            stamp = _unix_seconds(row.get("timestamp", ""), line)
            batch.append(
                types_pb2.Interaction(
                    user_id=user,
                    item_id=item,
                    timestamp=stamp,
                    event_id=row.get("event_id", ""),
                    event=row.get("event", ""),
                )
            )
            if len(batch) == BATCH:
                flush()
        if batch:
            flush()
    return totals


def _unix_seconds(text: str, line: int) -> int:
    """Unix seconds from integer/decimal seconds or an ISO-8601 time (UTC unless it says); now if blank."""
    import time
    from datetime import UTC, datetime

    if not text:
        return int(time.time())
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"row {line}: timestamp {text!r} is neither unix seconds nor ISO-8601") from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
