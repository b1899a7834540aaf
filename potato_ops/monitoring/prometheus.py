"""The monitoring figures as Prometheus exposition: rendered, written for node_exporter, pushed.

Every rule metric becomes a gauge under its Prometheus name (``names.EXPOSED``: a
``potato_ops_`` prefix, seconds and ratios, help on every family). A figure without data (a
success rate with no rebuilds, a scan never recorded) is left out rather than exposed as 0 or
NaN, so Prometheus sees "absent" where the audit's rules see None. The ages the rules read
(``last_scan_age_seconds``, ``last_audit_age_seconds``) are exposed as the Unix time they count
from (``potato_ops_last_scan_timestamp_seconds``, ...), which grows old by itself in
Prometheus when nothing writes it any more.

Besides the rule metrics: the scan's violations by kind, whether the window held data, its
length, the slow threshold and when the newest bulk operation completed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric

from potato_ops.errors import ConfigError
from potato_ops.monitoring.metrics import Metrics
from potato_ops.monitoring.names import EXPOSED, PREFIX

TEXTFILE_SUFFIX = ".prom"

LAST_AUDIT_SUCCESS = EXPOSED["last_audit_age_seconds"].name
LAST_SCAN = EXPOSED["last_scan_age_seconds"].name
LAST_BULK_COMPLETED = PREFIX + "last_bulk_operation_completed_timestamp_seconds"


class MetricsCollector:
    """A prometheus_client collector that exposes one computed ``Metrics``."""

    def __init__(self, metrics: Metrics, audit_succeeded_at: datetime | None = None) -> None:
        self._metrics = metrics
        self._audit_succeeded_at = audit_succeeded_at

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge family per rule metric with a value, then the window's own gauges."""
        metrics = self._metrics
        for name, value in metrics.as_dict().items():
            exposed = EXPOSED[name]
            if value is not None and not exposed.age:
                yield GaugeMetricFamily(exposed.name, exposed.help, value=float(value) * exposed.scale)
        audited = [t for t in (self._audit_succeeded_at, metrics.last_audit_at) if t is not None]
        for exposed, instant in (
            (EXPOSED["last_scan_age_seconds"], metrics.last_scan_at),
            (EXPOSED["last_audit_age_seconds"], max(audited) if audited else None),
        ):
            if instant is not None:
                yield GaugeMetricFamily(exposed.name, exposed.help, value=instant.timestamp())
        if metrics.violations_by_kind:
            by_kind = GaugeMetricFamily(
                PREFIX + "invariant_violations_by_kind",
                "Invariant violations found by the last whole-database scan, by kind.",
                labels=["kind"],
            )
            for kind, count in metrics.violations_by_kind.items():
                by_kind.add_metric([kind], float(count))
            yield by_kind
        yield GaugeMetricFamily(
            PREFIX + "window_no_data",
            "1 when the window holds no rebuild, so rates and durations are absent.",
            value=1.0 if metrics.no_data else 0.0,
        )
        if metrics.window_start is not None and metrics.window_end is not None:
            yield GaugeMetricFamily(
                PREFIX + "window_seconds",
                "Length of the window the rebuild figures cover.",
                value=(metrics.window_end - metrics.window_start).total_seconds(),
            )
        yield GaugeMetricFamily(
            PREFIX + "slow_threshold_seconds",
            "Rebuild duration above which a user counts as slow.",
            value=metrics.slow_threshold_ms / 1000,
        )
        if metrics.last_bulk_completed_at is not None:
            yield GaugeMetricFamily(
                LAST_BULK_COMPLETED,
                "When the newest completed bulk operation finished (Unix time).",
                value=metrics.last_bulk_completed_at.timestamp(),
            )


def metrics_registry(metrics: Metrics, audit_succeeded_at: datetime | None = None) -> CollectorRegistry:
    """Return a fresh registry holding only these metrics (never the process-wide one)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MetricsCollector(metrics, audit_succeeded_at))
    return registry


def render_prometheus(metrics: Metrics, audit_succeeded_at: datetime | None = None) -> str:
    """Return the metrics in the Prometheus text exposition format."""
    return generate_latest(metrics_registry(metrics, audit_succeeded_at)).decode("utf-8")


def write_textfile(
    path: str | os.PathLike[str], metrics: Metrics, audit_succeeded_at: datetime | None = None
) -> Path:
    """Return the path written: the exposition, replacing the file at once for node_exporter.

    prometheus_client writes a temporary file in the same folder and renames it over ``path``,
    so the textfile collector never reads half a file. ConfigError when the folder is missing
    or the name does not end in ``.prom`` (the collector reads nothing else).
    """
    target = Path(path)
    if target.suffix != TEXTFILE_SUFFIX:
        raise ConfigError(f"--textfile {target}: node_exporter's textfile collector reads only *.prom files")
    if not target.parent.is_dir():
        raise ConfigError(f"--textfile {target}: folder {target.parent} does not exist")
    registry = metrics_registry(metrics, audit_succeeded_at)
    try:
        write_to_textfile(str(target), registry)
    except OSError as exc:
        raise ConfigError(f"--textfile {target}: cannot write: {exc.strerror or exc}") from None
    return target
