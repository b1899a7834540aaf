"""The monitoring metrics as Prometheus text exposition, for an existing monitoring stack.

Every alert metric becomes a gauge named ``potato_<metric>`` with the rules' help text. A metric
without data (a success rate with no rebuilds, the scan when skipped) is left out rather than
exposed as 0 or NaN, so Prometheus alerting sees "absent", as the rules here see None.
``potato_metrics_no_data`` says when the window held no rebuild at all.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from potato_ops.monitoring.metrics import METRIC_HELP, Metrics

PREFIX = "potato_"


class MetricsCollector:
    """A prometheus_client collector that exposes one computed ``Metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge family per metric with a value, then the window's own gauges."""
        metrics = self._metrics
        for name, value in metrics.as_dict().items():
            if value is not None:
                yield GaugeMetricFamily(PREFIX + name, METRIC_HELP[name], value=float(value))
        if metrics.violations_by_kind:
            by_kind = GaugeMetricFamily(
                PREFIX + "invariant_violations_by_kind",
                "invariant violations found by the fresh scan, by kind",
                labels=["kind"],
            )
            for kind, count in metrics.violations_by_kind.items():
                by_kind.add_metric([kind], float(count))
            yield by_kind
        yield GaugeMetricFamily(
            PREFIX + "metrics_no_data",
            "1 when the window holds no rebuild, so rates and durations are absent",
            value=1.0 if metrics.no_data else 0.0,
        )
        if metrics.window_start is not None and metrics.window_end is not None:
            yield GaugeMetricFamily(
                PREFIX + "metrics_window_seconds",
                "length of the window the rebuild metrics cover, in seconds",
                value=(metrics.window_end - metrics.window_start).total_seconds(),
            )
        yield GaugeMetricFamily(
            PREFIX + "slow_threshold_ms",
            "rebuild duration above which a user counts as slow, in milliseconds",
            value=metrics.slow_threshold_ms,
        )


def metrics_registry(metrics: Metrics) -> CollectorRegistry:
    """Return a fresh registry holding only these metrics (never the process-wide one)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MetricsCollector(metrics))
    return registry


def render_prometheus(metrics: Metrics) -> str:
    """Return the metrics in the Prometheus text exposition format."""
    return generate_latest(metrics_registry(metrics)).decode("utf-8")
