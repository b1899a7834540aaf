"""``potato-ops exporter``: an HTTP ``/metrics`` endpoint for a Prometheus to scrape directly.

Every scrape reads the database afresh: the window figures without a scan (cheap), the last
recorded scan with its time (``ops_scan_results``), the audit's last success, and the live
series of bulk operations (``monitoring.operations``). It never scans by itself: the scan is
the costly part and belongs to ``potato-ops metrics``/``audit`` on a schedule, whose findings
it then shows. ``potato_ops_exporter_database_up`` is 0 when the database cannot be read; the
figures are absent then, which the exported absence rules notice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.errors import ConfigError, PotatoOpsError
from potato_ops.monitoring.metrics import DEFAULT_SLOW_THRESHOLD_MS, compute_metrics
from potato_ops.monitoring.names import PREFIX
from potato_ops.monitoring.operations import OperationsCollector
from potato_ops.monitoring.prometheus import MetricsCollector
from potato_ops.ops.database import Database

log = logging.getLogger("potato_ops")

DATABASE_UP = PREFIX + "exporter_database_up"


class LiveCollector:
    """Collects the figures (no scan), the last scan and the operations at every scrape."""

    def __init__(
        self, db: Database, since: str | None = None, slow_threshold_ms: float = DEFAULT_SLOW_THRESHOLD_MS
    ):
        self._db = db
        self._since = since
        self._slow = slow_threshold_ms

    def collect(self) -> Iterator[Metric]:
        """Yield every family, or only ``database_up 0`` when the database cannot be read."""
        try:
            figures = compute_metrics(self._db, since=self._since, scan=False, slow_threshold_ms=self._slow)
            families = [*MetricsCollector(figures).collect(), *OperationsCollector(self._db).collect()]
        except (PotatoOpsError, SQLAlchemyError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()
            log.warning("exporter: cannot read the database: %s", mask_secrets(detail[0] if detail else ""))
            yield GaugeMetricFamily(DATABASE_UP, "1 when the exporter could read the database.", value=0.0)
            return
        yield GaugeMetricFamily(DATABASE_UP, "1 when the exporter could read the database.", value=1.0)
        yield from families


@dataclass
class Exporter:
    """A running exporter: where it listens, and how to stop it."""

    host: str
    port: int
    server: WSGIServer
    thread: Thread

    @property
    def url(self) -> str:
        """Return the metrics URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def parse_listen(value: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` (``[::1]:9464`` for IPv6); ConfigError if malformed."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, such as 127.0.0.1:9464")
    return host, int(port_text)


def start_exporter(
    db: Database,
    listen: str,
    *,
    since: str | None = None,
    slow_threshold_ms: float = DEFAULT_SLOW_THRESHOLD_MS,
) -> Exporter:
    """Return a started exporter serving ``/metrics`` on ``listen`` (port 0: any free port)."""
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveCollector(db, since, slow_threshold_ms))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--listen {listen}: cannot listen: {exc.strerror or exc}") from None
    return Exporter(host, int(server.server_port), server, thread)
