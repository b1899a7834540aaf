"""Prometheus-side commands: ``exporter``, ``pushgateway prune|delete``, ``alerts alertmanager|dashboard``.

Shared options for the Pushgateway and for labels live here too; ``cli.monitoring`` uses them
for ``audit`` and ``alerts export``.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from potato_ops.cli.common import DatabaseOption, expected_failures, fail, open_storage
from potato_ops.exitcodes import ExitCode

_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

LabelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        metavar="NAME=VALUE",
        show_default=False,
        help="An extra label (repeatable).",
    ),
]
PushgatewayOption = Annotated[
    str | None,
    typer.Option(
        "--pushgateway",
        metavar="URL",
        show_default=False,
        help="Pushgateway URL; http://user:password@host:9091 sends basic auth "
        "(the password is never shown).",
    ),
]
PushgatewayAuthOption = Annotated[
    Path | None,
    typer.Option(
        "--pushgateway-auth-file",
        metavar="FILE",
        show_default=False,
        help="A file holding USER:PASSWORD for the Pushgateway's basic auth "
        "(keeps it out of ps and cron logs).",
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", show_default=False, help="Write here instead of stdout."),
]


def parse_labels(values: list[str] | None) -> dict[str, str]:
    """Return ``--label NAME=VALUE`` options as a mapping; exit 2 naming a malformed one."""
    labels: dict[str, str] = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise fail(f"--label {value!r}: expected NAME=VALUE with a Prometheus label name", ExitCode.USAGE)
        if name in labels:
            raise fail(f"--label {name}: given twice", ExitCode.USAGE)
        labels[name] = text
    return labels


def write_output(text: str, output: Path | None) -> None:
    """Print the text, or write it to ``output`` and say so; one line on failure."""
    if output is None:
        sys.stdout.write(text)
        return
    if not output.parent.is_dir():
        raise fail(f"--output {output}: folder {output.parent} does not exist")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    typer.echo(f"wrote {output}")


def exporter(
    listen: Annotated[
        str,
        typer.Option(
            "--listen", metavar="HOST:PORT", help="Where to serve /metrics (port 0: any free port)."
        ),
    ] = "127.0.0.1:9464",
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="WHEN", show_default=False, help="Window of the rebuild figures (24h)."
        ),
    ] = None,
    slow_threshold_ms: Annotated[
        float,
        typer.Option("--slow-threshold-ms", min=0, help="A rebuild slower than this makes its user slow."),
    ] = 1000.0,
    database_url: DatabaseOption = None,
) -> None:
    """Serve /metrics for Prometheus: live bulk operations, the last scan, the window figures.

    Each scrape reads the database; the exporter never scans by itself (schedule `potato-ops
    metrics` or `audit` for that: their last scan is what it shows). Runs until interrupted
    (Ctrl-C or SIGTERM).
    """
    from potato_ops.domain.dates import parse_since
    from potato_ops.monitoring.exporter import parse_listen, start_exporter

    parse_listen(listen)
    storage = open_storage(database_url, must_exist=True)
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    try:
        storage.database.check_schema()
        if since is not None:
            parse_since(since, storage.now())
        running = start_exporter(storage.database, listen, since=since, slow_threshold_ms=slow_threshold_ms)
        previous = signal.signal(signal.SIGTERM, _stop)
        typer.echo(f"serving {running.url} (database {storage.url})")
        try:
            while not stop.wait(1.0):
                pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            running.stop()
    finally:
        storage.close()
    typer.echo("stopped")


def pushgateway_prune(
    pushgateway: PushgatewayOption = None,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", metavar="DURATION", help="Delete groups not pushed to for this long (90m, 2d)."
        ),
    ] = "7d",
    auth_file: PushgatewayAuthOption = None,
) -> None:
    """Delete the potato_ops_audit groups nobody pushed to for a while (retired databases, old labels)."""
    if pushgateway is None:
        raise fail("--pushgateway URL is required", ExitCode.USAGE)
    from datetime import UTC, datetime

    from potato_ops.domain.dates import parse_since
    from potato_ops.monitoring.pushgateway import describe_group, parse_gateway, prune_stale_groups

    now = datetime.now(UTC)
    seconds = (now - parse_since(older_than, now)).total_seconds()
    gateway = parse_gateway(pushgateway, auth_file)
    removed = prune_stale_groups(gateway, seconds, now=now.timestamp())
    for group in removed:
        typer.echo(f"deleted {describe_group(group)}")
    typer.echo(f"{len(removed)} stale group(s) deleted from {gateway.shown}")


def pushgateway_delete(
    pushgateway: PushgatewayOption = None,
    label: LabelOption = None,
    auth_file: PushgatewayAuthOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Delete this database's group (as `audit --pushgateway` pushes it, same --label) from the gateway."""
    if pushgateway is None:
        raise fail("--pushgateway URL is required", ExitCode.USAGE)
    labels = parse_labels(label)
    from potato_ops.monitoring.pushgateway import database_label, delete_group, grouping_key, parse_gateway

    gateway = parse_gateway(pushgateway, auth_file)
    storage = open_storage(database_url)
    try:
        key = grouping_key(database_label(storage.url), labels)
    finally:
        storage.close()
    delete_group(gateway, key)
    typer.echo(f"deleted {', '.join(f'{k}={v}' for k, v in key.items())} from {gateway.shown}")


def alerts_alertmanager(
    output: OutputOption = None,
    business_hours: Annotated[
        str,
        typer.Option(
            "--business-hours", metavar="HH:MM-HH:MM", help="When P1 alerts notify (Monday to Friday)."
        ),
    ] = "09:00-17:00",
    timezone: Annotated[
        str, typer.Option("--timezone", metavar="ZONE", help="IANA timezone of the business hours.")
    ] = "UTC",
) -> None:
    """Write an Alertmanager configuration: P0 to database team and on-call, P1 business hours, P2 ticket.

    Receivers are placeholders to fill; check the file with `amtool check-config`.
    """
    from potato_ops.monitoring.alertmanager import parse_business_hours, render_alertmanager_config

    write_output(render_alertmanager_config(parse_business_hours(business_hours, timezone)), output)


def alerts_dashboard(output: OutputOption = None) -> None:
    """Write the Grafana dashboard (JSON) of the operation and scan series."""
    from potato_ops.monitoring.dashboard import render_dashboard

    write_output(render_dashboard(), output)


def register(app: typer.Typer, alerts_app: typer.Typer) -> None:
    """Add ``exporter``, the ``pushgateway`` commands and ``alerts alertmanager|dashboard``."""
    app.command("exporter")(expected_failures(exporter))
    gateway_app = typer.Typer(
        help="Groups potato-ops pushed to a Pushgateway.", no_args_is_help=True, rich_markup_mode=None
    )
    gateway_app.command("prune")(expected_failures(pushgateway_prune))
    gateway_app.command("delete")(expected_failures(pushgateway_delete))
    app.add_typer(gateway_app, name="pushgateway")
    alerts_app.command("alertmanager")(expected_failures(alerts_alertmanager))
    alerts_app.command("dashboard")(expected_failures(alerts_dashboard))
