"""Prometheus text exposition of the metrics, and ``potato-ops metrics`` on both databases."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.exitcodes import ExitCode
from potato_ops.monitoring.metrics import Metrics
from potato_ops.monitoring.names import EXPOSED, METRIC_NAMES
from potato_ops.monitoring.prometheus import MetricsCollector, render_prometheus, write_textfile
from tests.conftest import add_user
from tests.test_metrics import add_history

WINDOW_END = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)

FIGURES: dict[str, float | int | None] = {
    "rebuild_success_rate": 0.75,
    "rebuild_failure_rate": 0.25,
    "rebuild_count": 4,
    "rebuild_avg_duration_ms": 250.0,
    "rebuild_p50_duration_ms": 250.0,
    "rebuild_p95_duration_ms": 385.0,
    "rebuild_max_duration_ms": 400.0,
    "users_processed": 3,
    "rebuild_invariant_violations": 1,
    "invariant_violations": 2,
    "users_with_violations": 1,
    "stale_active_flags": 0,
    "timezone_changes_pending": 5,
    "slow_users": 0,
    "backups_count": 7,
    "backup_oldest_age_hours": 30.5,
    "backup_newest_age_hours": 0.25,
    "operations_failed": 0,
    "operations_interrupted": 1,
    "last_scan_age_seconds": 600.0,
    "last_audit_age_seconds": 1200.0,
}


def metrics_of(figures: dict[str, float | int | None], **extra: Any) -> Metrics:
    """A Metrics of the last 24 hours holding these figures (ages counted back from its end)."""

    def back(age: float | int | None) -> datetime | None:
        return None if age is None else WINDOW_END - timedelta(seconds=age)

    fields: dict[str, Any] = dict(figures) | {
        "window_start": WINDOW_END - timedelta(hours=24),
        "window_end": WINDOW_END,
        "operation_id": None,
        "computed_at": WINDOW_END,
        "slow_threshold_ms": 1000.0,
        "scanned": figures["invariant_violations"] is not None,
        "last_scan_at": back(figures.get("last_scan_age_seconds")),
        "last_audit_at": back(figures.get("last_audit_age_seconds")),
    }
    return Metrics(**(fields | extra))


def samples(text: str) -> dict[str, float]:
    """Return every sample of an exposition as ``name{labels}`` -> value."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def test_every_figure_is_a_gauge_in_base_units() -> None:
    metrics = metrics_of(
        FIGURES,
        violations_by_kind={"overlap": 0, "phantom_day": 1, "stale_active": 1},
        last_bulk_completed_at=datetime(2024, 3, 10, 14, 0, tzinfo=UTC),
    )

    assert samples(render_prometheus(metrics, audit_succeeded_at=WINDOW_END)) == {
        "potato_ops_rebuild_success_ratio": 0.75,
        "potato_ops_rebuild_failure_ratio": 0.25,
        "potato_ops_window_rebuilds": 4.0,
        "potato_ops_rebuild_duration_mean_seconds": 0.25,
        "potato_ops_rebuild_duration_p50_seconds": 0.25,
        "potato_ops_rebuild_duration_p95_seconds": 0.385,
        "potato_ops_rebuild_duration_max_seconds": 0.4,
        "potato_ops_window_users_processed": 3.0,
        "potato_ops_window_rebuild_invariant_violations": 1.0,
        "potato_ops_invariant_violations": 2.0,
        "potato_ops_users_with_violations": 1.0,
        "potato_ops_stale_active_flags": 0.0,
        "potato_ops_timezone_changes_pending": 5.0,
        "potato_ops_window_slow_users": 0.0,
        "potato_ops_backups": 7.0,
        "potato_ops_backup_oldest_age_seconds": 30.5 * 3600,
        "potato_ops_backup_newest_age_seconds": 0.25 * 3600,
        "potato_ops_window_operations_failed": 0.0,
        "potato_ops_operations_interrupted": 1.0,
        'potato_ops_invariant_violations_by_kind{kind="overlap"}': 0.0,
        'potato_ops_invariant_violations_by_kind{kind="phantom_day"}': 1.0,
        'potato_ops_invariant_violations_by_kind{kind="stale_active"}': 1.0,
        "potato_ops_window_no_data": 0.0,
        "potato_ops_window_seconds": 86400.0,
        "potato_ops_slow_threshold_seconds": 1.0,
        "potato_ops_last_bulk_operation_completed_timestamp_seconds": 1710079200.0,
        # The newer of the audit time given and the one recorded in the database (1200 s back).
        "potato_ops_last_audit_success_timestamp_seconds": 1710082800.0,
        "potato_ops_last_scan_timestamp_seconds": 1710082800.0 - 600,
    }


def test_every_family_is_a_gauge_with_help_and_the_prefix() -> None:
    text = render_prometheus(metrics_of(FIGURES, violations_by_kind={"overlap": 1}), WINDOW_END)
    families = list(text_string_to_metric_families(text))

    assert {f.type for f in families} == {"gauge"}
    assert all(f.name.startswith("potato_ops_") and f.documentation.strip() for f in families)
    assert not [f.name for f in families if f.name.endswith(("_total", "_count", "_ms", "_hours"))]


def test_figures_without_data_are_absent_not_zero() -> None:
    empty = FIGURES | {
        "rebuild_success_rate": None,
        "rebuild_failure_rate": None,
        "rebuild_count": 0,
        "rebuild_avg_duration_ms": None,
        "rebuild_p50_duration_ms": None,
        "rebuild_p95_duration_ms": None,
        "rebuild_max_duration_ms": None,
        "invariant_violations": None,  # no scan ever recorded
        "users_with_violations": None,
        "backup_oldest_age_hours": None,
        "backup_newest_age_hours": None,
        "last_scan_age_seconds": None,
        "last_audit_age_seconds": None,
    }

    found = samples(render_prometheus(metrics_of(empty)))

    assert sorted(name for name in METRIC_NAMES if EXPOSED[name].name not in found) == sorted(
        [
            "rebuild_success_rate",
            "rebuild_failure_rate",
            "rebuild_avg_duration_ms",
            "rebuild_p50_duration_ms",
            "rebuild_p95_duration_ms",
            "rebuild_max_duration_ms",
            "invariant_violations",
            "users_with_violations",
            "backup_oldest_age_hours",
            "backup_newest_age_hours",
            "last_scan_age_seconds",
            "last_audit_age_seconds",
        ]
    )
    assert (found["potato_ops_window_rebuilds"], found["potato_ops_window_no_data"]) == (0.0, 1.0)
    assert not any(name.startswith("potato_ops_invariant_violations_by_kind") for name in found)
    assert not any("timestamp" in name for name in found)


# --- the command -------------------------------------------------------------------------------


def add_rebuilds(storage: Storage, *rows: tuple[str, float, bool, str]) -> None:
    """Record (user, duration ms, success, operation) rebuilds that finished an hour ago."""
    finished = datetime.now(UTC) - timedelta(hours=1)
    for user, ms, ok, op in rows:
        add_history(storage, user, finished, ms, success=ok, operation_id=op)


def invoke(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["metrics", *args], env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


def test_metrics_command_prints_the_exposition(storage: Storage, db_url: str) -> None:
    add_rebuilds(storage, ("a", 100, True, "op-1"), ("b", 300, False, "op-1"), ("c", 50, True, "x"))

    code, out, err = invoke(db_url)

    assert (code, err) == (0, "")
    found = samples(out)
    assert {
        name: found[name]
        for name in (
            "potato_ops_window_rebuilds",
            "potato_ops_rebuild_success_ratio",
            "potato_ops_rebuild_duration_max_seconds",
            "potato_ops_invariant_violations",
            "potato_ops_window_no_data",
        )
    } == {
        "potato_ops_window_rebuilds": 3.0,
        "potato_ops_rebuild_success_ratio": 2 / 3,
        "potato_ops_rebuild_duration_max_seconds": 0.3,
        "potato_ops_invariant_violations": 0.0,
        "potato_ops_window_no_data": 0.0,
    }


def test_metrics_command_as_json_for_one_operation(storage: Storage, db_url: str) -> None:
    add_rebuilds(storage, ("a", 100, True, "op-1"), ("b", 300, False, "op-1"), ("c", 50, True, "x"))

    code, out, _ = invoke(db_url, "--json", "--no-scan", "--operation", "op-1")

    assert code == 0
    data = json.loads(out)
    assert {name: data[name] for name in METRIC_NAMES} == {
        "rebuild_success_rate": 0.5,
        "rebuild_failure_rate": 0.5,
        "rebuild_count": 2,
        "rebuild_avg_duration_ms": 200.0,
        "rebuild_p50_duration_ms": 200.0,
        "rebuild_p95_duration_ms": 290.0,
        "rebuild_max_duration_ms": 300.0,
        "users_processed": 2,
        "rebuild_invariant_violations": 0,
        "invariant_violations": None,
        "users_with_violations": None,
        "stale_active_flags": 0,
        "timezone_changes_pending": 0,
        "slow_users": 0,
        "backups_count": 0,
        "backup_oldest_age_hours": None,
        "backup_newest_age_hours": None,
        "operations_failed": 0,
        "operations_interrupted": 0,
        "last_scan_age_seconds": None,
        "last_audit_age_seconds": None,
    }
    assert (data["operation_id"], data["no_data"], data["scanned"]) == ("op-1", False, False)


def test_metrics_command_refuses_an_unreadable_since(storage: Storage, db_url: str) -> None:
    code, out, err = invoke(db_url, "--since", "last tuesday")

    assert (code, out) == (1, "")
    assert err == ("error: since 'last tuesday' is neither a duration (24h, 7d, 90m) nor an ISO datetime\n")


# --- handing the figures over: textfile and Pushgateway --------------------------------------------


def test_textfile_is_replaced_whole_never_rewritten_in_place(tmp_path: Path) -> None:
    target = tmp_path / "potato_ops.prom"
    write_textfile(target, metrics_of(FIGURES))
    first = target.read_text()
    reader = target.open()  # a collector that opened the old file keeps reading all of it
    inode = target.stat().st_ino

    write_textfile(target, metrics_of(FIGURES | {"rebuild_count": 99}))

    assert reader.read() == first
    reader.close()
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert samples(target.read_text())["potato_ops_window_rebuilds"] == 99.0
    assert [p.name for p in tmp_path.iterdir()] == ["potato_ops.prom"]


def test_a_textfile_write_that_fails_leaves_the_old_file_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "potato_ops.prom"
    write_textfile(target, metrics_of(FIGURES))
    before = target.read_bytes()

    def half_then_fail(self: MetricsCollector) -> Iterator[Metric]:
        yield GaugeMetricFamily("potato_ops_half", "Half a file.", value=1.0)
        raise RuntimeError("disk went away")

    monkeypatch.setattr(MetricsCollector, "collect", half_then_fail)
    with pytest.raises(RuntimeError):
        write_textfile(target, metrics_of(FIGURES))

    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["potato_ops.prom"]


class _Gateway(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A stand-in Pushgateway on a free local port, recording what it receives."""
    _Gateway.received = []
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Gateway.received
    finally:
        server.shutdown()
        server.server_close()


def test_audit_pushes_and_writes_the_figures_with_its_success_time(
    storage: Storage, db_url: str, tmp_path: Path, gateway: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, received = gateway
    add_rebuilds(storage, ("a", 100, True, "op-1"))
    textfile = tmp_path / "potato_ops.prom"
    started = datetime.now(UTC).timestamp()

    result = CliRunner().invoke(
        app,
        ["audit", "--no-notebook", "--pushgateway", url, "--textfile", str(textfile)],
        env={"POTATO_DATABASE_URL": db_url},
    )

    assert (result.exit_code, result.stderr) == (0, ""), result.stdout
    [(method, path, body)] = received
    # One group per database: the job, then the database's host:port/name (or SQLite file).
    url_of_db = make_url(db_url)
    if url_of_db.get_backend_name() == "sqlite":
        database = str(url_of_db.database)
    else:
        database = f"{url_of_db.host}:{url_of_db.port}/{url_of_db.database}"
    encoded = base64.urlsafe_b64encode(database.encode()).decode()
    assert (method, path) == ("PUT", f"/metrics/job/potato_ops_audit/database@base64/{encoded}")
    pushed = samples(body.decode())
    written = samples(textfile.read_text())
    assert pushed == written
    assert (
        started <= pushed["potato_ops_last_audit_success_timestamp_seconds"] <= datetime.now(UTC).timestamp()
    )
    assert (pushed["potato_ops_window_rebuilds"], pushed["potato_ops_invariant_violations"]) == (1.0, 0.0)


def test_an_unreachable_gateway_is_one_line_exit_13(storage: Storage, db_url: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = CliRunner().invoke(
        app,
        ["audit", "--no-notebook", "--pushgateway", f"http://127.0.0.1:{port}"],
        env={"POTATO_DATABASE_URL": db_url},
    )

    assert result.exit_code == ExitCode.PUSH_FAILED
    assert result.stderr.startswith(f"error: --pushgateway http://127.0.0.1:{port} (push failed): ")
    assert result.stderr.count("\n") == 1


def test_metrics_textfile_holds_what_metrics_prints(storage: Storage, db_url: str, tmp_path: Path) -> None:
    add_rebuilds(storage, ("a", 100, True, "op-1"), ("b", 300, False, "op-1"))
    textfile = tmp_path / "potato_ops.prom"

    code, out, err = invoke(db_url, "--textfile", str(textfile))
    _, printed, _ = invoke(db_url, "--no-scan")  # the same figures: the same last scan, its time too

    assert (code, out, err) == (0, f"wrote {textfile}\n", "")
    assert samples(textfile.read_text()) == samples(printed)


def test_metrics_reads_the_last_successful_audit_from_the_archive(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    code, _, _ = invoke(db_url, "--reports-dir", str(reports))
    assert code == 0
    before = datetime.now(UTC).timestamp()

    audited = CliRunner().invoke(
        app, ["audit", "--reports-dir", str(reports)], env={"POTATO_DATABASE_URL": db_url}
    )
    code, out, err = invoke(db_url, "--no-scan", "--reports-dir", str(reports))

    assert audited.exit_code == 0, audited.stdout + audited.stderr
    assert (code, err) == (0, "")
    stamp = samples(out)["potato_ops_last_audit_success_timestamp_seconds"]
    assert before <= stamp <= datetime.now(UTC).timestamp()


def test_an_audit_without_its_notebook_is_seen_by_metrics(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    before = datetime.now(UTC).timestamp()
    audited = CliRunner().invoke(app, ["audit", "--no-notebook"], env={"POTATO_DATABASE_URL": db_url})

    code, out, err = invoke(db_url, "--no-scan", "--reports-dir", str(tmp_path / "empty"))

    assert audited.exit_code == 0, audited.stdout + audited.stderr
    assert (code, err) == (0, "")
    stamp = samples(out)["potato_ops_last_audit_success_timestamp_seconds"]
    assert before <= stamp <= datetime.now(UTC).timestamp()
    assert stamp == samples(out)["potato_ops_last_scan_timestamp_seconds"]  # the audit's own scan


def test_a_quick_run_keeps_the_last_scans_violations_in_the_textfile(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    # Two users whose runs are missing: two uncovered-day violations, counted here by hand.
    add_user(storage, "u1", ["2024-03-01", "2024-03-02"])
    add_user(storage, "u2", ["2024-03-05"])
    textfile = tmp_path / "potato_ops.prom"

    assert invoke(db_url, "--textfile", str(textfile))[0] == 0
    scanned = samples(textfile.read_text())
    assert invoke(db_url, "--no-scan", "--textfile", str(textfile))[0] == 0
    quick = samples(textfile.read_text())

    assert quick["potato_ops_invariant_violations"] == scanned["potato_ops_invariant_violations"] == 2.0
    assert quick["potato_ops_users_with_violations"] == 2.0
    assert quick['potato_ops_invariant_violations_by_kind{kind="uncovered_day"}'] == 2.0
    assert (
        quick["potato_ops_last_scan_timestamp_seconds"] == scanned["potato_ops_last_scan_timestamp_seconds"]
    )


def test_no_archived_audit_means_no_audit_timestamp(storage: Storage, db_url: str, tmp_path: Path) -> None:
    code, out, _ = invoke(db_url, "--no-scan", "--reports-dir", str(tmp_path / "empty"))

    assert code == 0
    assert "potato_ops_last_audit_success_timestamp_seconds" not in samples(out)
    assert not (tmp_path / "empty").exists()
