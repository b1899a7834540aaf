"""Single-user rebuilds on both backends: literal marks in, literal runs out."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from potato_ops import InvalidTimezoneError, Run, Storage
from potato_ops.db.schema import RUNS_V2_FLAG, day_marks, ops_rebuild_history, ops_timezone_changes, runs
from potato_ops.domain.models import ViolationKind
from potato_ops.ops.rebuild import rebuild_user_runs
from tests.conftest import NOW, MutableClock, add_runs, add_user, snapshot, spans

D = date.fromisoformat
RunRow = tuple[str, str, int, bool]


def days(first: str, last: str) -> list[date | str]:
    """Return every ISO date from first to last inclusive."""
    lo, hi = D(first), D(last)
    return [(lo + timedelta(days=i)).isoformat() for i in range((hi - lo).days + 1)]


def rows(storage: Storage, user_id: str) -> list[RunRow]:
    """Return the user's stored runs as (start, end, day_count, active)."""
    return [
        (r.start_date.isoformat(), r.end_date.isoformat(), r.day_count, r.active)
        for r in storage.get_user_runs(user_id)
    ]


def ids(storage: Storage, user_id: str) -> dict[tuple[str, str], int | None]:
    """Return the user's run ids keyed by (start, end)."""
    return {(r.start_date.isoformat(), r.end_date.isoformat()): r.id for r in storage.get_user_runs(user_id)}


def history(storage: Storage, user_id: str) -> list[dict[str, Any]]:
    """Return the user's rebuild history rows, oldest first."""
    h = ops_rebuild_history
    with storage.engine.connect() as conn:
        found = conn.execute(select(h).where(h.c.user_id == user_id).order_by(h.c.id)).mappings()
        return [dict(r) for r in found]


# ---------------------------------------------------------------------------- full rebuild


@pytest.mark.parametrize(
    ("marks", "unmarked", "stored", "timezone", "expected", "deleted_created"),
    [
        (
            [*days("2024-03-01", "2024-03-03"), "2024-03-05", *days("2024-03-08", "2024-03-10")],
            ["2024-03-04"],
            [],
            "UTC",
            [
                ("2024-03-01", "2024-03-03", 3, False),
                ("2024-03-05", "2024-03-05", 1, False),
                ("2024-03-08", "2024-03-10", 3, True),
            ],
            (0, 3),
        ),
        (
            ["2024-03-01", "2024-03-03"],
            ["2024-03-02"],
            [("2024-03-01", "2024-03-03")],
            "UTC",
            [("2024-03-01", "2024-03-01", 1, False), ("2024-03-03", "2024-03-03", 1, False)],
            (1, 2),
        ),
        (
            [*days("2024-02-01", "2024-02-03"), *days("2024-03-01", "2024-03-09")],
            [],
            [("2024-01-20", "2024-02-10"), ("2024-03-01", "2024-03-02"), ("2024-03-03", "2024-03-09")],
            "UTC",
            [("2024-02-01", "2024-02-03", 3, False), ("2024-03-01", "2024-03-09", 9, True)],
            (3, 2),
        ),
        (
            ["2023-12-31", "2024-01-01", "2024-02-28", "2024-02-29", "2024-03-01"],
            [],
            [("2023-12-31", "2024-01-01")],
            "UTC",
            [("2023-12-31", "2024-01-01", 2, False), ("2024-02-28", "2024-03-01", 3, False)],
            (0, 1),
        ),
        (
            days("2024-03-11", "2024-03-12"),
            [],
            [],
            "UTC",
            [("2024-03-11", "2024-03-12", 2, False)],
            (0, 1),
        ),
        (
            days("2024-03-11", "2024-03-12"),
            [],
            [],
            "Pacific/Kiritimati",
            [("2024-03-11", "2024-03-12", 2, True)],
            (0, 1),
        ),
        (
            days("2024-03-01", "2024-03-08"),
            [],
            [],
            "Pacific/Pago_Pago",
            [("2024-03-01", "2024-03-08", 8, False)],
            (0, 1),
        ),
        ([], days("2024-03-01", "2024-03-05"), [("2024-03-01", "2024-03-05")], "UTC", [], (1, 0)),
    ],
    ids=[
        "from-nothing",
        "unmarked-row-splits",
        "replaces-garbage",
        "year-end-and-leap-day",
        "future-marks-utc",
        "future-marks-kiritimati-is-today",
        "pago-pago-yesterday-is-two-days-ago",
        "no-marks-no-runs",
    ],
)
def test_full_rebuild_gives_the_runs_of_the_marks(
    storage: Storage,
    marks: list[str],
    unmarked: list[str],
    stored: list[tuple[str, str]],
    timezone: str,
    expected: list[RunRow],
    deleted_created: tuple[int, int],
) -> None:
    add_user(storage, "u", list(marks), timezone=timezone, unmarked=list(unmarked))
    add_runs(storage, "u", stored)
    result = storage.rebuild_user_runs("u")
    assert result.success, result.invariant_violations
    assert (result.runs_deleted, result.runs_created) == deleted_created
    assert result.total_days_processed == len(marks)
    assert rows(storage, "u") == expected
    assert storage.validate_invariants(["u"]).ok


def test_full_rebuild_touches_only_that_user(storage: Storage) -> None:
    add_user(storage, "u", days("2024-03-01", "2024-03-02"))
    add_user(storage, "other", days("2024-03-01", "2024-03-02"))
    add_runs(storage, "other", [("2024-03-01", "2024-03-01")])
    storage.rebuild_user_runs("u")
    assert spans(storage, "other") == [("2024-03-01", "2024-03-01")]
    assert spans(storage, "u") == [("2024-03-01", "2024-03-02")]


# ---------------------------------------------------------------------------- partial rebuild


@pytest.mark.parametrize(
    ("marks", "stored", "from_to", "expected", "kept"),
    [
        (
            [*days("2024-02-01", "2024-02-02"), *days("2024-03-01", "2024-03-05"), "2024-03-08"],
            [("2024-02-01", "2024-02-02"), ("2024-03-01", "2024-03-03"), ("2024-03-08", "2024-03-08")],
            ("2024-03-04", "2024-03-04"),
            [("2024-02-01", "2024-02-02"), ("2024-03-01", "2024-03-05"), ("2024-03-08", "2024-03-08")],
            [("2024-02-01", "2024-02-02"), ("2024-03-08", "2024-03-08")],
        ),
        (
            days("2024-03-01", "2024-03-06"),
            [],
            ("2024-03-03", "2024-03-03"),
            [("2024-03-01", "2024-03-06")],
            [],
        ),
        (
            days("2024-02-20", "2024-02-25"),
            [("2024-02-20", "2024-02-22")],
            ("2024-02-23", "2024-02-24"),
            [("2024-02-20", "2024-02-25")],
            [],
        ),
        (
            [*days("2024-01-01", "2024-01-05"), *days("2024-03-01", "2024-03-02")],
            [("2024-01-01", "2024-01-03")],
            ("2024-03-01", "2024-03-02"),
            [("2024-01-01", "2024-01-03"), ("2024-03-01", "2024-03-02")],
            [("2024-01-01", "2024-01-03")],
        ),
        (
            [*days("2024-03-01", "2024-03-02"), *days("2024-03-04", "2024-03-05")],
            [("2024-03-01", "2024-03-05")],
            ("2024-03-03", "2024-03-03"),
            [("2024-03-01", "2024-03-02"), ("2024-03-04", "2024-03-05")],
            [],
        ),
        (
            days("2023-01-01", "2024-03-10"),
            [],
            ("2024-03-05", "2024-03-05"),
            [("2023-01-01", "2024-03-10")],
            [],
        ),
        (
            [*days("2024-01-01", "2024-01-02"), *days("2024-02-01", "2024-02-03")],
            [("2024-01-01", "2024-01-02"), ("2024-02-05", "2024-02-06")],
            ("2024-02-01", None),
            [("2024-01-01", "2024-01-02"), ("2024-02-01", "2024-02-03")],
            [("2024-01-01", "2024-01-02")],
        ),
        (
            [*days("2024-01-01", "2024-01-02"), *days("2024-03-09", "2024-03-10")],
            [("2024-01-01", "2024-01-03"), ("2024-03-09", "2024-03-10")],
            (None, "2024-01-31"),
            [("2024-01-01", "2024-01-02"), ("2024-03-09", "2024-03-10")],
            [("2024-03-09", "2024-03-10")],
        ),
    ],
    ids=[
        "widens-to-whole-run",
        "picks-up-adjacent-marks",
        "run-touching-from-minus-one-is-redone",
        "wrong-run-outside-is-left-alone",
        "unmark-splits-a-run",
        "streak-longer-than-the-read-pad",
        "from-only",
        "to-only",
    ],
)
def test_partial_rebuild(
    storage: Storage,
    marks: list[str],
    stored: list[tuple[str, str]],
    from_to: tuple[str | None, str | None],
    expected: list[tuple[str, str]],
    kept: list[tuple[str, str]],
) -> None:
    add_user(storage, "u", list(marks))
    add_runs(storage, "u", stored)
    before = ids(storage, "u")
    result = storage.rebuild_user_runs("u", *from_to)
    assert result.success, result.invariant_violations
    assert spans(storage, "u") == expected
    after = ids(storage, "u")
    assert {span: after[span] for span in kept} == {span: before[span] for span in kept}
    assert result.from_date == (None if from_to[0] is None else D(from_to[0]))
    assert result.to_date == (None if from_to[1] is None else D(from_to[1]))


def test_partial_rebuild_that_would_overlap_a_run_outside_fails_and_changes_nothing(
    storage: Storage,
) -> None:
    # The run outside [from-1, to+1] is wrong: its streak goes on into the range. A partial
    # rebuild may not touch it, so it cannot produce correct runs and must refuse whole.
    add_user(storage, "u", days("2024-03-01", "2024-03-10"))
    add_runs(storage, "u", [("2024-03-01", "2024-03-03")])
    before = snapshot(storage)
    result = storage.rebuild_user_runs("u", "2024-03-07", "2024-03-07")
    assert not result.success
    assert result.error is not None or result.invariant_violations
    after = snapshot(storage)
    assert {k: v for k, v in after.items() if k != "ops_rebuild_history"} == {
        k: v for k, v in before.items() if k != "ops_rebuild_history"
    }
    [entry] = history(storage, "u")
    assert not entry["success"] and entry["error"]
    # A full rebuild puts it right.
    assert storage.rebuild_user_runs("u").success
    assert spans(storage, "u") == [("2024-03-01", "2024-03-10")]


# ---------------------------------------------------------------------------- dry run, idempotence


@pytest.mark.parametrize(
    "from_to",
    [(None, None), ("2024-03-04", "2024-03-04")],
    ids=["full", "partial"],
)
def test_dry_run_returns_the_diff_and_changes_nothing(
    storage: Storage, from_to: tuple[str | None, str | None]
) -> None:
    add_user(storage, "u", [*days("2024-03-01", "2024-03-05"), *days("2024-03-08", "2024-03-09")])
    add_runs(storage, "u", [("2024-03-01", "2024-03-03"), ("2024-03-08", "2024-03-09")])
    before = snapshot(storage)
    result = storage.rebuild_user_runs("u", *from_to, dry_run=True)
    assert snapshot(storage) == before
    assert result.success and result.dry_run
    assert (result.runs_deleted, result.runs_created) == (1, 1)
    assert [r.span for r in result.deleted_runs] == [(D("2024-03-01"), D("2024-03-03"))]
    assert [(r.span, r.day_count, r.active) for r in result.created_runs] == [
        ((D("2024-03-01"), D("2024-03-05")), 5, False)
    ]
    assert result.backup is not None and result.backup.id is None
    assert storage.get_backups("u") == []
    assert history(storage, "u") == []


def test_second_rebuild_changes_nothing(storage: Storage) -> None:
    add_user(storage, "u", [*days("2024-02-01", "2024-02-03"), *days("2024-03-08", "2024-03-10")])
    add_runs(storage, "u", [("2024-02-01", "2024-02-02")])
    first = storage.rebuild_user_runs("u")
    assert (first.runs_deleted, first.runs_created) == (1, 2)
    before = storage.get_user_runs("u")
    second = storage.rebuild_user_runs("u", backup=False)
    assert second.success
    assert (second.runs_deleted, second.runs_created, second.active_flags_changed) == (0, 0, 0)
    assert second.runs_unchanged == 2
    assert storage.get_user_runs("u") == before
    partial = storage.rebuild_user_runs("u", "2024-02-01", "2024-03-10", backup=False)
    assert (partial.runs_deleted, partial.runs_created, partial.active_flags_changed) == (0, 0, 0)
    assert storage.get_user_runs("u") == before


# ---------------------------------------------------------------------------- active flags


@pytest.mark.parametrize(
    "from_to",
    [(None, None), ("2024-01-10", "2024-01-10")],
    ids=["full", "partial-far-from-the-runs"],
)
def test_rebuild_puts_stale_active_flags_right(
    storage: Storage, from_to: tuple[str | None, str | None]
) -> None:
    add_user(storage, "u", [*days("2024-03-01", "2024-03-03"), *days("2024-03-06", "2024-03-09")])
    add_runs(storage, "u", [("2024-03-01", "2024-03-03"), ("2024-03-06", "2024-03-09")], active=0)
    before = ids(storage, "u")
    result = storage.rebuild_user_runs("u", *from_to)
    assert result.success
    assert (result.runs_deleted, result.runs_created, result.active_flags_changed) == (0, 0, 2)
    assert rows(storage, "u") == [
        ("2024-03-01", "2024-03-03", 3, False),
        ("2024-03-06", "2024-03-09", 4, True),
    ]
    assert ids(storage, "u") == before


@pytest.mark.parametrize(
    ("timezone", "instant", "flags"),
    [
        ("America/New_York", "2024-03-10T04:59:00+00:00", [True, False]),
        ("America/New_York", "2024-03-10T05:00:00+00:00", [False, True]),
        ("America/New_York", "2024-03-10T07:00:00+00:00", [False, True]),
        ("Pacific/Kiritimati", "2024-03-10T10:30:00+00:00", [False, True]),
        ("Pacific/Pago_Pago", "2024-03-10T10:30:00+00:00", [True, False]),
        ("UTC", "2024-03-09T23:59:59+00:00", [True, False]),
        ("Europe/Berlin", "2024-03-09T23:59:59+00:00", [False, True]),
    ],
    ids=[
        "ny-dst-day-before-local-midnight",
        "ny-dst-day-local-midnight",
        "ny-dst-day-after-spring-forward",
        "kiritimati-on-03-11",
        "pago-pago-on-03-09",
        "utc-before-midnight",
        "berlin-after-midnight-same-instant",
    ],
)
def test_active_flag_after_rebuild_follows_local_today(
    storage: Storage, clock: MutableClock, timezone: str, instant: str, flags: list[bool]
) -> None:
    add_user(storage, "u", ["2024-03-07", "2024-03-08", "2024-03-10"], timezone=timezone)
    clock.set(datetime.fromisoformat(instant))
    assert storage.rebuild_user_runs("u").success
    assert [(r.span, r.active) for r in storage.get_user_runs("u")] == [
        ((D("2024-03-07"), D("2024-03-08")), flags[0]),
        ((D("2024-03-10"), D("2024-03-10")), flags[1]),
    ]
    active = storage.get_active_run("u")
    assert (active.start_date if active else None) == (
        D("2024-03-07") if flags[0] else D("2024-03-10") if flags[1] else None
    )


def test_get_active_run_follows_the_rule_not_the_stored_flag(storage: Storage) -> None:
    add_user(storage, "u", [*days("2024-03-01", "2024-03-03"), *days("2024-03-06", "2024-03-09")])
    add_runs(storage, "u", [("2024-03-01", "2024-03-03"), ("2024-03-06", "2024-03-09")], active=0)
    active = storage.get_active_run("u")
    assert active is not None and active.span == (D("2024-03-06"), D("2024-03-09"))
    add_user(storage, "lapsed", days("2024-03-01", "2024-03-08"))
    storage.rebuild_user_runs("lapsed")
    assert storage.get_active_run("lapsed") is None
    add_user(storage, "nobody-marks")
    assert storage.get_active_run("nobody-marks") is None


def test_refresh_active_runs_after_local_midnight(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "utc", days("2024-03-09", "2024-03-10"), timezone="UTC")
    add_user(storage, "ny", ["2024-03-11"], timezone="America/New_York")
    add_user(storage, "kiri", days("2024-03-09", "2024-03-10"), timezone="Pacific/Kiritimati")
    for uid in ("utc", "ny", "kiri"):
        assert storage.rebuild_user_runs(uid).success
    flags = {uid: [r.active for r in storage.get_user_runs(uid)] for uid in ("utc", "ny", "kiri")}
    assert flags == {"utc": [True], "ny": [False], "kiri": [True]}
    assert storage.refresh_active_runs() == 0

    # 00:30 in New York on 2024-03-11 (EDT since the day before): the future run starts.
    clock.set(datetime.fromisoformat("2024-03-11T04:30:00+00:00"))
    assert storage.validate_invariants().users_with_violations == ["ny"]
    assert storage.refresh_active_runs() == 1
    assert [r.active for r in storage.get_user_runs("ny")] == [True]

    # 00:30 UTC on 2024-03-12: the UTC and Kiritimati runs ended two local days ago.
    clock.set(datetime.fromisoformat("2024-03-12T00:30:00+00:00"))
    report = storage.validate_invariants()
    assert report.users_with_violations == ["kiri", "utc"]
    assert report.stale_active == 2
    assert storage.refresh_active_runs() == 2
    assert storage.refresh_active_runs() == 0
    flags = {uid: [r.active for r in storage.get_user_runs(uid)] for uid in ("utc", "ny", "kiri")}
    assert flags == {"utc": [False], "ny": [True], "kiri": [False]}
    assert storage.validate_invariants().ok


# ---------------------------------------------------------------------------- history


def test_history_rows_for_success_and_failure(storage: Storage) -> None:
    add_user(storage, "u", days("2024-03-01", "2024-03-10"))
    add_runs(storage, "u", [("2024-03-01", "2024-03-03")])
    assert not storage.rebuild_user_runs("u", "2024-03-07", "2024-03-07").success
    assert storage.rebuild_user_runs("u").success
    assert storage.rebuild_user_runs("u", "2024-03-02", "2024-03-02").success
    storage.rebuild_user_runs("u", dry_run=True)
    found = [
        (h["kind"], h["success"], h["runs_deleted"], h["runs_created"], h["from_date"], h["to_date"])
        for h in history(storage, "u")
    ]
    assert found[1:] == [
        ("rebuild", True, 1, 1, None, None),
        ("partial_rebuild", True, 0, 0, D("2024-03-02"), D("2024-03-02")),
    ]
    kind, success, *_rest, from_date, to_date = found[0]
    assert (kind, success, from_date, to_date) == (
        "partial_rebuild",
        False,
        D("2024-03-07"),
        D("2024-03-07"),
    )
    entries = history(storage, "u")
    assert entries[0]["error"] and all(e["error"] is None for e in entries[1:])
    assert all(e["duration_ms"] > 0 for e in entries)
    assert storage.get_users_with_slow_rebuild_history(threshold_ms=0) == ["u"]
    assert storage.get_users_with_slow_rebuild_history(threshold_ms=10**9) == []


# ---------------------------------------------------------------------------- validation


def run(start: str, end: str, active: bool = False) -> Run:
    return Run(None, "u", D(start), D(end), (D(end) - D(start)).days + 1, active)


@pytest.mark.parametrize(
    ("after", "kinds"),
    [
        ([run("2024-03-01", "2024-03-03"), run("2024-03-08", "2024-03-09", True)], []),
        ([run("2024-03-01", "2024-03-03"), run("2024-03-08", "2024-03-09")], [ViolationKind.STALE_ACTIVE]),
        (
            [run("2024-03-01", "2024-03-02"), run("2024-03-08", "2024-03-09", True)],
            [ViolationKind.UNCOVERED_DAY],
        ),
        (
            [run("2024-03-01", "2024-03-04"), run("2024-03-08", "2024-03-09", True)],
            [ViolationKind.PHANTOM_DAY],
        ),
        (
            [
                run("2024-03-01", "2024-03-01"),
                run("2024-03-02", "2024-03-03"),
                run("2024-03-08", "2024-03-09", True),
            ],
            [ViolationKind.ADJACENT],
        ),
        (
            [
                run("2024-03-01", "2024-03-03"),
                run("2024-03-02", "2024-03-03"),
                run("2024-03-08", "2024-03-09", True),
            ],
            [ViolationKind.OVERLAP],
        ),
    ],
    ids=["valid", "stale-flag", "uncovered", "phantom", "adjacent", "overlap"],
)
def test_validate_rebuild_results(storage: Storage, after: list[Run], kinds: list[str]) -> None:
    add_user(storage, "u", [*days("2024-03-01", "2024-03-03"), *days("2024-03-08", "2024-03-09")])
    before = storage.get_user_runs("u")
    result = storage.validate_rebuild_results("u", before, after)
    assert result.valid is (not kinds)
    assert sorted(v.kind for v in result.invariant_violations) == kinds


# ---------------------------------------------------------------------------- timezones


def test_timezone_change_keeps_marks_and_lists_the_user_until_a_real_rebuild(
    storage: Storage, clock: MutableClock
) -> None:
    add_user(storage, "u", days("2024-03-05", "2024-03-09"), unmarked=["2024-03-04"])
    add_user(storage, "v", days("2024-03-05", "2024-03-09"))
    for uid in ("u", "v"):
        assert storage.rebuild_user_runs(uid).success
    assert rows(storage, "u") == [("2024-03-05", "2024-03-09", 5, True)]
    with storage.engine.connect() as conn:
        marks_before = conn.execute(select(day_marks).order_by(day_marks.c.user_id, day_marks.c.date)).all()
    before_ids = ids(storage, "u")

    clock.advance(minutes=5)
    changed_at = clock()
    user = storage.update_user("u", timezone="Pacific/Kiritimati")
    assert user.timezone == "Pacific/Kiritimati"
    with storage.engine.connect() as conn:
        marks_after = conn.execute(select(day_marks).order_by(day_marks.c.user_id, day_marks.c.date)).all()
    assert marks_after == marks_before
    assert storage.get_users_with_timezone_changes() == ["u"]
    assert storage.get_users_with_timezone_changes(since=changed_at - timedelta(seconds=1)) == ["u"]
    assert storage.get_users_with_timezone_changes(since=changed_at + timedelta(seconds=1)) == []

    clock.advance(minutes=5)
    dry = storage.rebuild_user_runs("u", dry_run=True)
    assert dry.success and dry.active_flags_changed == 1
    assert storage.get_users_with_timezone_changes() == ["u"]

    clock.advance(minutes=5)
    # Kiritimati's today is 2024-03-11: the streak that ended on the 9th is no longer active.
    real = storage.rebuild_user_runs("u")
    assert real.success
    assert (real.runs_deleted, real.runs_created, real.active_flags_changed) == (0, 0, 1)
    assert rows(storage, "u") == [("2024-03-05", "2024-03-09", 5, False)]
    assert ids(storage, "u") == before_ids
    assert storage.get_users_with_timezone_changes() == []

    clock.advance(minutes=5)
    storage.update_user("u", timezone="UTC")
    assert storage.get_users_with_timezone_changes() == ["u"]
    clock.advance(minutes=5)
    storage.rebuild_user_runs("u", "2024-01-01", "2024-01-01")
    assert storage.get_users_with_timezone_changes() == []
    assert rows(storage, "u") == [("2024-03-05", "2024-03-09", 5, True)]


def test_a_failed_rebuild_does_not_clear_a_timezone_change(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "u", days("2024-03-01", "2024-03-10"))
    add_runs(storage, "u", [("2024-03-01", "2024-03-03")])
    storage.update_user("u", timezone="Asia/Tokyo")
    clock.advance(minutes=1)
    assert not storage.rebuild_user_runs("u", "2024-03-07", "2024-03-07").success
    assert storage.get_users_with_timezone_changes() == ["u"]


def test_same_timezone_is_not_a_change(storage: Storage) -> None:
    add_user(storage, "u", ["2024-03-10"], timezone="Europe/London")
    assert storage.update_user("u", timezone="Europe/London").timezone == "Europe/London"
    assert storage.get_users_with_timezone_changes() == []


def test_unknown_timezone_is_refused(storage: Storage) -> None:
    add_user(storage, "u", ["2024-03-10"], timezone="Europe/London")
    with pytest.raises(InvalidTimezoneError):
        storage.update_user("u", timezone="Europe/Atlantis")
    assert storage.get_user("u").timezone == "Europe/London"
    assert storage.get_users_with_timezone_changes() == []


# ---------------------------------------------------------------------------- flag, backups


def test_feature_flag_state_is_reported(storage: Storage) -> None:
    add_user(storage, "u", ["2024-03-10"])
    missing = storage.rebuild_user_runs("u")
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    on = storage.rebuild_user_runs("u")
    storage.set_feature_flag(RUNS_V2_FLAG, False)
    off = storage.rebuild_user_runs("u")
    assert [missing.feature_flag_enabled, on.feature_flag_enabled, off.feature_flag_enabled] == [
        False,
        True,
        False,
    ]
    assert missing.success and on.success and off.success


def test_rebuild_backs_up_the_runs_it_replaces(storage: Storage) -> None:
    add_user(storage, "u", days("2024-03-01", "2024-03-03"))
    add_runs(storage, "u", [("2024-03-01", "2024-03-02")])
    old = storage.get_user_runs("u")
    result = storage.rebuild_user_runs("u")
    assert result.backup is not None and result.backup.id is not None
    [saved] = storage.get_backups("u")
    assert saved.id == result.backup.id
    assert saved.runs == old
    assert saved.metadata.reason == "rebuild"
    assert saved.metadata.operation_id == result.operation_id
    assert storage.rebuild_user_runs("u", backup=False).backup is None
    assert len(storage.get_backups("u")) == 1


def test_rebuild_accepts_dates_and_iso_strings_alike(storage: Storage) -> None:
    add_user(storage, "u", days("2024-03-01", "2024-03-03"))
    add_user(storage, "v", days("2024-03-01", "2024-03-03"))
    a = storage.rebuild_user_runs("u", "2024-03-02", "2024-03-02")
    b = storage.rebuild_user_runs("v", D("2024-03-02"), D("2024-03-02"))
    assert (a.from_date, a.to_date) == (b.from_date, b.to_date) == (D("2024-03-02"), D("2024-03-02"))
    assert spans(storage, "u") == spans(storage, "v") == [("2024-03-01", "2024-03-03")]


def test_clock_is_the_one_that_stamps_history(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "u", ["2024-03-10"])
    clock.advance(days=3)
    storage.rebuild_user_runs("u")
    [entry] = history(storage, "u")
    finished = entry["finished_at"]
    assert finished.replace(tzinfo=None) == (NOW + timedelta(days=3)).replace(tzinfo=None)
    # Three days on, the streak of 2024-03-10 has lapsed.
    assert rows(storage, "u") == [("2024-03-10", "2024-03-10", 1, False)]


def test_app_flag_write_is_seen_by_refresh(storage: Storage) -> None:
    add_user(storage, "u", days("2024-03-08", "2024-03-10"))
    storage.rebuild_user_runs("u")
    with storage.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.user_id == "u").values(active=False))
    assert storage.get_users_with_multiple_active_runs() == []
    assert storage.validate_invariants().stale_active == 1
    assert storage.refresh_active_runs() == 1
    assert rows(storage, "u") == [("2024-03-08", "2024-03-10", 3, True)]


def test_a_rebuild_with_a_zone_change_shows_the_moved_flags_and_a_dry_run_keeps_nothing(
    storage: Storage,
) -> None:
    # NOW is 2024-03-10 15:00 UTC: local today is 03-10 in UTC and already 03-11 at UTC+14,
    # so a streak that ended on 03-09 is active in UTC and over in Kiritimati.
    add_user(storage, "tz", ["2024-03-07", "2024-03-08", "2024-03-09"])
    add_runs(storage, "tz", [("2024-03-07", "2024-03-09")], active=0)
    before = snapshot(storage)
    dry = rebuild_user_runs(storage.database, "tz", dry_run=True, timezone="Pacific/Kiritimati")
    assert dry.success
    assert [(r.start_date.isoformat(), r.end_date.isoformat(), r.active) for r in dry.runs_after] == [
        ("2024-03-07", "2024-03-09", False)
    ]
    assert snapshot(storage) == before
    done = rebuild_user_runs(storage.database, "tz", timezone="Pacific/Kiritimati")
    assert done.success
    assert storage.get_user("tz").timezone == "Pacific/Kiritimati"
    assert [r.active for r in storage.get_user_runs("tz")] == [False]
    with storage.engine.connect() as conn:
        logged = conn.execute(select(ops_timezone_changes.c.new_timezone)).scalars().all()
    assert logged == ["Pacific/Kiritimati"]
