"""Monitoring metrics on both databases, against figures computed by hand from a small history.

The clock is frozen at NOW = 2024-03-10 15:00 UTC, so the default window is
2024-03-09 15:00 .. 2024-03-10 15:00 (both ends included).
"""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from matplotlib.figure import Figure
from polars.testing import assert_frame_equal
from sqlalchemy import insert

from potato_ops import Storage
from potato_ops.charts.canvas import NoData
from potato_ops.charts.monitoring import (
    duration_histogram,
    slowest_users_chart,
    success_rate_chart,
    violations_by_kind_chart,
)
from potato_ops.db.schema import ops_operations, ops_rebuild_history
from potato_ops.domain.dates import parse_since
from potato_ops.errors import InvalidDateRangeError
from potato_ops.monitoring.metrics import (
    HISTORY_SCHEMA,
    compute_metrics,
    history_frame,
    metrics_frame,
    slowest_users_frame,
    success_rate_frame,
)
from potato_ops.monitoring.names import METRIC_NAMES
from tests.conftest import NOW, MutableClock, add_runs, add_user


def at(text: str) -> datetime:
    """2024-03-10 at HH:MM UTC, or a full ISO instant."""
    if len(text) == 5:
        text = f"2024-03-10T{text}"
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def add_history(
    storage: Storage,
    user_id: str,
    finished: str | datetime,
    duration_ms: float,
    *,
    success: bool = True,
    kind: str = "rebuild",
    violations: int = 0,
    operation_id: str = "single",
) -> None:
    """Record one rebuild (or restore) outcome directly in the history table."""
    end = finished if isinstance(finished, datetime) else at(finished)
    with storage.engine.begin() as conn:
        conn.execute(
            insert(ops_rebuild_history).values(
                operation_id=operation_id,
                user_id=user_id,
                kind=kind,
                started_at=end - timedelta(milliseconds=duration_ms),
                finished_at=end,
                duration_ms=duration_ms,
                success=success,
                violations=violations,
            )
        )


def add_operation(storage: Storage, op_id: str, status: str, finished: str | None) -> None:
    """Put a bulk operation in the ledger with this status (finished at that time, if any)."""
    with storage.engine.begin() as conn:
        conn.execute(
            insert(ops_operations).values(
                id=op_id,
                kind="bulk_rebuild",
                status=status,
                dry_run=False,
                config="{}",
                total_users=10,
                created_at=at("2024-03-07T00:00"),
                finished_at=at(finished) if finished else None,
            )
        )


# (user, finished, duration ms, success, kind, violations, operation)
HISTORY: list[tuple[str, str, float, bool, str, int, str]] = [
    ("u1", "14:00", 100, True, "rebuild", 0, "bulk-1"),
    ("u2", "13:00", 200, False, "rebuild", 0, "bulk-1"),
    ("u1", "13:30", 9000, True, "restore", 0, "restore-1"),  # a restore: never counted
    ("u3", "12:30", 300, True, "partial_rebuild", 0, "single-3"),
    ("u1", "10:00", 400, True, "rebuild", 2, "single-1"),
    ("u4", "2024-03-09T15:00", 1500, True, "rebuild", 0, "single-4"),  # window's first instant
    ("u5", "2024-03-09T14:59", 5000, False, "rebuild", 0, "single-5"),  # a minute too early
]


@pytest.fixture
def seeded(storage: Storage, clock: MutableClock) -> Storage:
    """Users, runs, history, backups, a timezone change and operations, as described inline."""
    add_user(storage, "u1", ["2024-03-01", "2024-03-02", "2024-03-03"])  # no runs: uncovered
    add_user(storage, "u2", ["2024-02-01", "2024-02-02", "2024-02-03"])
    add_runs(storage, "u2", [("2024-02-01", "2024-02-03")], active=0)  # ended weeks ago: stale
    # Local today is 2024-03-11 in Kiritimati (UTC+14): a run ending 03-09 is no longer active.
    add_user(storage, "u3", ["2024-03-07", "2024-03-08", "2024-03-09"], timezone="Pacific/Kiritimati")
    add_runs(storage, "u3", [("2024-03-07", "2024-03-09")], active=0)
    # Local today is 2024-03-10 in Pago Pago (UTC-11): ended yesterday, rightly active.
    add_user(storage, "u4", ["2024-03-08", "2024-03-09"], timezone="Pacific/Pago_Pago")
    add_runs(storage, "u4", [("2024-03-08", "2024-03-09")], active=0)
    add_user(storage, "u5")
    for user, finished, ms, ok, kind, violations, op in HISTORY:
        add_history(
            storage, user, finished, ms, success=ok, kind=kind, violations=violations, operation_id=op
        )
    clock.set(at("11:00"))
    storage.update_user("u1", timezone="Europe/London")  # rebuilt at 14:00 since: not pending
    storage.update_user("u5", timezone="Asia/Tokyo")  # never rebuilt since: pending
    clock.set(NOW - timedelta(hours=48))
    storage.backup_user_runs("u2")
    clock.set(NOW - timedelta(hours=6))
    storage.backup_user_runs("u4")
    clock.set(NOW)
    add_operation(storage, "op-failed", "failed", "13:00")
    add_operation(storage, "op-failed-yesterday", "failed", "2024-03-09T09:00")
    add_operation(storage, "op-interrupted", "interrupted", None)
    add_operation(storage, "op-completed", "completed", "12:00")
    return storage


# Durations in the window, sorted: 100 200 300 400 1500 (n = 5).
# p50: rank 0.5 * 4 = 2 -> 300.  p95: rank 0.95 * 4 = 3.8 -> 400 + 0.8 * (1500 - 400) = 1280.
EXPECTED_DEFAULT_WINDOW: dict[str, float | int | None] = {
    "rebuild_success_rate": 4 / 5,
    "rebuild_failure_rate": 1 / 5,
    "rebuild_count": 5,
    "rebuild_avg_duration_ms": 2500 / 5,
    "rebuild_p50_duration_ms": 300.0,
    "rebuild_p95_duration_ms": 1280.0,
    "rebuild_max_duration_ms": 1500.0,
    "users_processed": 4,  # u1 u2 u3 u4
    "rebuild_invariant_violations": 2,
    "invariant_violations": 3,  # u1 uncovered days, u2 and u3 stale flags
    "users_with_violations": 3,
    "stale_active_flags": 2,  # u2, u3
    "timezone_changes_pending": 1,  # u5
    "slow_users": 1,  # u4 (1500 > 1000)
    "backups_count": 2,
    "backup_oldest_age_hours": 48.0,
    "backup_newest_age_hours": 6.0,
    "operations_failed": 1,  # op-failed; yesterday's failure is outside the window
    "operations_interrupted": 1,
    "last_scan_age_seconds": 0.0,  # this very scan, at the frozen clock's now
    "last_audit_age_seconds": None,  # no audit ever recorded
}


def test_metrics_of_the_default_window(seeded: Storage) -> None:
    metrics = compute_metrics(seeded.database)

    assert metrics.as_dict() == pytest.approx(EXPECTED_DEFAULT_WINDOW)
    assert list(metrics.as_dict()) == list(METRIC_NAMES)
    assert metrics.no_data is False
    assert (metrics.window_start, metrics.window_end) == (at("2024-03-09T15:00"), NOW)
    assert metrics.violations_by_kind == {
        "malformed": 0,
        "overlap": 0,
        "adjacent": 0,
        "phantom_day": 0,
        "uncovered_day": 1,
        "multiple_active": 0,
        "stale_active": 2,
        "orphan": 0,
    }


def test_metrics_of_one_operation(seeded: Storage) -> None:
    metrics = compute_metrics(seeded.database, operation_id="bulk-1", scan=False)

    # bulk-1 rebuilt u1 (100 ms, ok) and u2 (200 ms, failed).
    # p50: rank 0.5 -> 150.  p95: rank 0.95 -> 100 + 0.95 * 100 = 195.
    assert metrics.as_dict() == pytest.approx(
        EXPECTED_DEFAULT_WINDOW
        | {
            "rebuild_success_rate": 0.5,
            "rebuild_failure_rate": 0.5,
            "rebuild_count": 2,
            "rebuild_avg_duration_ms": 150.0,
            "rebuild_p50_duration_ms": 150.0,
            "rebuild_p95_duration_ms": 195.0,
            "rebuild_max_duration_ms": 200.0,
            "users_processed": 2,
            "rebuild_invariant_violations": 0,
            "invariant_violations": None,
            "users_with_violations": None,
            "slow_users": 0,
            "operations_failed": 0,  # bulk-1 is not in the ledger
            "operations_interrupted": 0,
            "last_scan_age_seconds": None,  # no scan ever recorded
        }
    )
    assert metrics.window_text() == "operation bulk-1"
    assert metrics.violations_by_kind == {}


SINCE_CASES: list[tuple[str, list[float]]] = [
    ("2h", [100, 200]),  # since 13:00, which is included
    ("150m", [100, 200, 300]),
    ("6h", [100, 200, 300, 400]),
    ("24h", [100, 200, 300, 400, 1500]),
    ("1d", [100, 200, 300, 400, 1500]),
    ("2d", [100, 200, 300, 400, 1500, 5000]),
    ("2024-03-10", [100, 200, 300, 400]),  # midnight UTC
    ("2024-03-10T12:00:00+12:00", [100, 200, 300, 400]),  # midnight UTC too
    ("2024-03-09T14:59:00+00:00", [100, 200, 300, 400, 1500, 5000]),
]


@pytest.mark.parametrize(("since", "durations"), SINCE_CASES, ids=[c[0] for c in SINCE_CASES])
def test_since_selects_the_window(seeded: Storage, since: str, durations: list[float]) -> None:
    metrics = compute_metrics(seeded.database, since=since, scan=False)

    assert metrics.rebuild_count == len(durations)
    assert metrics.rebuild_max_duration_ms == max(durations)
    assert metrics.rebuild_avg_duration_ms == pytest.approx(sum(durations) / len(durations))


def test_an_empty_window_has_no_data_and_no_division_by_zero(seeded: Storage) -> None:
    metrics = compute_metrics(seeded.database, since="2024-03-10T14:30:00+00:00", scan=False)

    assert metrics.no_data is True
    assert metrics.as_dict() == pytest.approx(
        EXPECTED_DEFAULT_WINDOW
        | {
            "rebuild_success_rate": None,
            "rebuild_failure_rate": None,
            "rebuild_count": 0,
            "rebuild_avg_duration_ms": None,
            "rebuild_p50_duration_ms": None,
            "rebuild_p95_duration_ms": None,
            "rebuild_max_duration_ms": None,
            "users_processed": 0,
            "rebuild_invariant_violations": 0,
            "invariant_violations": None,
            "users_with_violations": None,
            "slow_users": 0,
            "operations_failed": 0,
            "last_scan_age_seconds": None,
        }
    )
    assert metrics.summary().startswith(
        "no data: no rebuilds recorded in 2024-03-10T14:30:00+00:00 .. 2024-03-10T15:00:00+00:00"
    )


def test_an_empty_database_has_no_data(storage: Storage) -> None:
    metrics = compute_metrics(storage.database)

    assert metrics.no_data is True
    assert metrics.as_dict() == {
        "rebuild_success_rate": None,
        "rebuild_failure_rate": None,
        "rebuild_count": 0,
        "rebuild_avg_duration_ms": None,
        "rebuild_p50_duration_ms": None,
        "rebuild_p95_duration_ms": None,
        "rebuild_max_duration_ms": None,
        "users_processed": 0,
        "rebuild_invariant_violations": 0,
        "invariant_violations": 0,
        "users_with_violations": 0,
        "stale_active_flags": 0,
        "timezone_changes_pending": 0,
        "slow_users": 0,
        "backups_count": 0,
        "backup_oldest_age_hours": None,
        "backup_newest_age_hours": None,
        "operations_failed": 0,
        "operations_interrupted": 0,
        "last_scan_age_seconds": 0.0,
        "last_audit_age_seconds": None,
    }


def test_slow_threshold_is_a_parameter(seeded: Storage) -> None:
    assert compute_metrics(seeded.database, scan=False, slow_threshold_ms=250).slow_users == 3  # u1 u3 u4
    assert compute_metrics(seeded.database, scan=False, slow_threshold_ms=1500).slow_users == 0


def test_a_single_rebuild_is_every_percentile(storage: Storage) -> None:
    add_history(storage, "u1", "14:00", 42.5)

    metrics = compute_metrics(storage.database, scan=False)

    assert (
        metrics.rebuild_avg_duration_ms,
        metrics.rebuild_p50_duration_ms,
        metrics.rebuild_p95_duration_ms,
        metrics.rebuild_max_duration_ms,
    ) == (42.5, 42.5, 42.5, 42.5)


@pytest.mark.parametrize("n", [2, 3, 7, 20, 21, 101])
def test_percentiles_interpolate_between_ranks(storage: Storage, n: int) -> None:
    rng = random.Random(n)
    durations = [round(rng.uniform(1, 5000), 3) for _ in range(n)]
    for i, ms in enumerate(durations):
        add_history(storage, f"u{i}", "14:00", ms)

    metrics = compute_metrics(storage.database, scan=False)

    # statistics' "inclusive" quantiles are percentile_cont: linear between adjacent ranks.
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    assert (metrics.rebuild_p50_duration_ms, metrics.rebuild_p95_duration_ms) == pytest.approx(
        (cuts[49], cuts[94])
    )


def test_a_real_rebuild_is_counted(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-09", "2024-03-10"])
    storage.rebuild_user_runs("u1")
    storage.rebuild_user_runs("u1", dry_run=True)  # a dry run records nothing

    metrics = compute_metrics(storage.database)

    assert (metrics.rebuild_count, metrics.users_processed, metrics.rebuild_success_rate) == (
        1,
        1,
        1.0,
    )
    assert metrics.invariant_violations == 0


# --- the window's parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", "2024-03-09T15:00:00+00:00"),
        (" 7d ", "2024-03-03T15:00:00+00:00"),
        ("90m", "2024-03-10T13:30:00+00:00"),
        ("1w", "2024-03-03T15:00:00+00:00"),
        ("30s", "2024-03-10T14:59:30+00:00"),
        ("1.5h", "2024-03-10T13:30:00+00:00"),
        ("2024-03-01", "2024-03-01T00:00:00+00:00"),
        ("2024-03-01T06:00", "2024-03-01T06:00:00+00:00"),
        ("2024-03-01T06:00:00+02:00", "2024-03-01T04:00:00+00:00"),
    ],
)
def test_parse_since(text: str, expected: str) -> None:
    assert parse_since(text, NOW) == datetime.fromisoformat(expected)


@pytest.mark.parametrize("text", ["", "yesterday", "24", "h", "-3h", "24 hours", "3y"])
def test_parse_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(InvalidDateRangeError, match="neither a duration"):
        parse_since(text, NOW)


def test_a_window_ending_before_it_starts_is_refused(storage: Storage) -> None:
    with pytest.raises(InvalidDateRangeError, match="is after until"):
        compute_metrics(storage.database, since="2024-03-10T12:00", until=at("11:00"))


def test_a_window_and_an_operation_together_are_refused(storage: Storage) -> None:
    with pytest.raises(InvalidDateRangeError, match="either a window"):
        compute_metrics(storage.database, since="24h", operation_id="bulk-1")


# --- frames ------------------------------------------------------------------------------------


def test_history_frame_holds_the_rows_the_metrics_count(seeded: Storage) -> None:
    assert_frame_equal(
        history_frame(seeded.database, "6h"),
        pl.DataFrame(
            [
                (at("10:00"), "u1", "rebuild", 400.0, True, 2),
                (at("12:30"), "u3", "partial_rebuild", 300.0, True, 0),
                (at("13:00"), "u2", "rebuild", 200.0, False, 0),
                (at("14:00"), "u1", "rebuild", 100.0, True, 0),
            ],
            schema=HISTORY_SCHEMA,
            orient="row",
        ),
    )


def test_history_frame_of_an_empty_window_keeps_its_columns(storage: Storage) -> None:
    assert_frame_equal(history_frame(storage.database), pl.DataFrame(schema=HISTORY_SCHEMA))


HISTORY_FRAME = pl.DataFrame(
    [
        (at("10:05"), "a", "rebuild", 400.0, True, 0),
        (at("10:55"), "b", "rebuild", 1200.0, False, 1),
        (at("11:10"), "a", "rebuild", 100.0, True, 0),
        (at("13:00"), "c", "rebuild", 50.0, True, 0),
        (at("13:59"), "b", "partial_rebuild", 700.0, True, 0),
    ],
    schema=HISTORY_SCHEMA,
    orient="row",
)


def test_success_rate_per_hour() -> None:
    assert_frame_equal(
        success_rate_frame(HISTORY_FRAME),
        pl.DataFrame(
            {
                "period": [at("10:00"), at("11:00"), at("13:00")],
                "rebuilds": [2, 1, 2],
                "successes": [1, 1, 2],
                "success_rate": [0.5, 1.0, 1.0],
            },
            schema={
                "period": pl.Datetime("us", "UTC"),
                "rebuilds": pl.Int64,
                "successes": pl.Int64,
                "success_rate": pl.Float64,
            },
        ),
    )


def test_slowest_users() -> None:
    assert_frame_equal(
        slowest_users_frame(HISTORY_FRAME, top=2),
        pl.DataFrame(
            {"user_id": ["b", "a"], "max_duration_ms": [1200.0, 400.0], "rebuilds": [2, 2]},
            schema={"user_id": pl.String, "max_duration_ms": pl.Float64, "rebuilds": pl.Int64},
        ),
    )


def test_metrics_frame_has_one_row_per_metric(seeded: Storage) -> None:
    frame = metrics_frame(compute_metrics(seeded.database, since="2024-03-10T14:30", scan=False))

    assert frame.columns == ["metric", "value", "help"]
    assert frame["metric"].to_list() == list(METRIC_NAMES)
    values = dict(zip(frame["metric"], frame["value"], strict=True))
    assert (values["rebuild_count"], values["rebuild_success_rate"], values["backups_count"]) == (
        0.0,
        None,
        2.0,
    )


# --- charts ------------------------------------------------------------------------------------


def _texts(figure: Figure | NoData) -> tuple[str, str, str]:
    assert isinstance(figure, Figure), figure
    axes = figure.axes[0]
    return axes.get_title(), axes.get_xlabel(), axes.get_ylabel()


def test_charts_are_labelled_and_of_fixed_size(seeded: Storage) -> None:
    history = history_frame(seeded.database)
    metrics = compute_metrics(seeded.database)
    figures = [
        duration_histogram(history, slow_threshold_ms=1000),
        success_rate_chart(success_rate_frame(history)),
        slowest_users_chart(slowest_users_frame(history)),
        violations_by_kind_chart(metrics.violations_by_kind),
    ]

    assert [_texts(f) for f in figures] == [
        ("Rebuild duration (5 rebuilds; 1 slow rebuild)", "duration (ms)", "rebuilds"),
        ("Rebuild success rate per hour (5 rebuilds)", "hour (UTC)", "success rate (%)"),
        ("Slowest 4 users", "slowest rebuild (ms)", "user"),
        ("Invariant violations by kind (3 violations in all)", "violations", "kind"),
    ]
    assert {tuple(f.get_size_inches()) for f in figures if isinstance(f, Figure)} == {(8.0, 4.5)}


def test_charts_of_no_data_say_so_in_one_line(storage: Storage) -> None:
    empty = history_frame(storage.database)
    drawn = [
        duration_histogram(empty),
        success_rate_chart(success_rate_frame(empty)),
        slowest_users_chart(slowest_users_frame(empty)),
        violations_by_kind_chart({}),
    ]

    assert [type(d).__name__ for d in drawn] == ["NoData"] * 4
