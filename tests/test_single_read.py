"""The single-user rebuild's one read, and partial rebuilds whose streaks reach past it."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from potato_ops import Storage
from potato_ops.db.reads import read_runs, read_user
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.domain.models import Run
from potato_ops.errors import UserNotFoundError
from tests.conftest import add_runs, add_user, spans

D = date.fromisoformat


def _described(found: list[Run]) -> list[tuple[str, str, int, bool]]:
    return [(r.start_date.isoformat(), r.end_date.isoformat(), r.day_count, r.active) for r in found]


def _days(first: str, count: int) -> list[date | str]:
    return [D(first) + timedelta(days=i) for i in range(count)]


def test_read_user_gives_user_flag_runs_and_grouping(storage: Storage) -> None:
    marks = [*_days("2024-01-01", 3), *_days("2024-01-10", 1), *_days("2024-02-01", 5)]
    add_user(storage, "u", marks, timezone="Europe/Paris", unmarked=["2024-01-05"])
    add_user(storage, "other", _days("2024-01-01", 40))
    add_runs(storage, "u", [("2024-01-10", "2024-01-10"), ("2024-01-01", "2024-01-02")], active=0)
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    with storage.engine.connect() as conn:
        full = read_user(conn, "u", RUNS_V2_FLAG)
        window = read_user(conn, "u", "no-such-flag", (D("2024-01-02"), D("2024-02-02")))
    assert (full.user.id, full.user.email, full.user.timezone, full.flag) == (
        "u",
        "u@example.com",
        "Europe/Paris",
        True,
    )
    got = [(r.start_date, r.end_date, r.day_count, r.active) for r in full.runs]
    assert got == [(D("2024-01-01"), D("2024-01-02"), 2, False), (D("2024-01-10"), D("2024-01-10"), 1, True)]
    assert all(r.id is not None and r.user_id == "u" for r in full.runs)
    assert full.grouping == [
        (D("2024-01-01"), D("2024-01-03"), 3),
        (D("2024-01-10"), D("2024-01-10"), 1),
        (D("2024-02-01"), D("2024-02-05"), 5),
    ]
    assert window.flag is False
    assert [r.id for r in window.runs] == [r.id for r in full.runs]  # every run, whatever the window
    # The marks in the window only: the streaks at its edges are cut there.
    assert window.grouping == [
        (D("2024-01-02"), D("2024-01-03"), 2),
        (D("2024-01-10"), D("2024-01-10"), 1),
        (D("2024-02-01"), D("2024-02-02"), 2),
    ]


def test_read_user_of_a_missing_user_raises(storage: Storage) -> None:
    with storage.engine.connect() as conn, pytest.raises(UserNotFoundError):
        read_user(conn, "nobody", RUNS_V2_FLAG)


@pytest.mark.parametrize("streak_days", [30, 61, 62, 63, 64, 200, 400])
@pytest.mark.parametrize("stored_right", [True, False])
def test_partial_rebuild_of_a_streak_reaching_past_the_read_ahead(
    storage: Storage, streak_days: int, stored_right: bool
) -> None:
    # One long streak ending inside the window [2024-03-01, 2024-03-05], another starting in it
    # and running on after it; the windows' streaks are whole whatever their length.
    before = [D("2024-03-02") - timedelta(days=i) for i in range(streak_days)]
    after = [D("2024-03-04") + timedelta(days=i) for i in range(streak_days)]
    add_user(storage, "u", [*before, *after])
    first = (min(before).isoformat(), "2024-03-02")
    second = ("2024-03-04", max(after).isoformat())
    wrong = [(first[0], "2024-03-01"), second] if not stored_right else [first, second]
    add_runs(storage, "u", wrong)
    result = storage.rebuild_user_runs("u", "2024-03-01", "2024-03-05")
    assert result.success, result.invariant_violations
    assert spans(storage, "u") == [first, second]
    assert result.runs_created == (0 if stored_right else 1)
    got = [(r.start_date.isoformat(), r.end_date.isoformat()) for r in result.runs_after]
    assert got == [first, second]


def test_read_runs_gives_one_users_runs_by_start(storage: Storage) -> None:
    add_user(storage, "u", [])
    add_user(storage, "v", [])
    add_runs(storage, "u", [("2024-02-01", "2024-02-03"), ("2024-01-01", "2024-01-01")], active=0)
    add_runs(storage, "v", [("2024-01-15", "2024-01-16")])
    with storage.engine.connect() as conn:
        got = [(r.user_id, r.start_date, r.end_date, r.day_count, r.active) for r in read_runs(conn, "u")]
        assert read_runs(conn, "nobody") == []
    assert got == [
        ("u", D("2024-01-01"), D("2024-01-01"), 1, False),
        ("u", D("2024-02-01"), D("2024-02-03"), 3, True),
    ]


def test_read_user_without_marks_has_no_grouping(storage: Storage) -> None:
    add_user(storage, "u", [], unmarked=["2024-01-01", "2024-01-02"])
    add_runs(storage, "u", [("2024-01-01", "2024-01-02")])
    with storage.engine.connect() as conn:
        full = read_user(conn, "u", RUNS_V2_FLAG)
        window = read_user(conn, "u", RUNS_V2_FLAG, (D("2023-12-01"), D("2024-02-01")))
    assert full.grouping == window.grouping == []
    assert [r.day_count for r in full.runs] == [r.day_count for r in window.runs] == [2]


def test_partial_rebuild_reports_every_run_it_leaves_with_the_flags_it_set(storage: Storage) -> None:
    # NOW is 2024-03-10. A streak far outside the window, wrongly flagged active; a damaged
    # run inside the window [2024-02-20, 2024-03-01]; the user's last streak ended 2024-03-05,
    # so no run should be active. The window rebuild re-reads only what is near it, yet its
    # runs_after must be the runs as stored afterwards, flags included.
    old = _days("2023-06-01", 4)
    middle = _days("2023-11-01", 2)
    in_window = _days("2024-02-24", 3)
    last = _days("2024-03-03", 3)
    add_user(storage, "u", [*old, *middle, *in_window, *last])
    add_runs(
        storage,
        "u",
        [
            ("2023-06-01", "2023-06-04"),
            ("2023-11-01", "2023-11-02"),
            ("2024-02-24", "2024-02-25"),
            ("2024-03-03", "2024-03-05"),
        ],
        active=0,
    )
    result = storage.rebuild_user_runs("u", "2024-02-20", "2024-03-01")
    assert result.success, result.invariant_violations
    assert result.runs_created == 1 and result.active_flags_changed == 1
    expected = [
        ("2023-06-01", "2023-06-04", 4, False),
        ("2023-11-01", "2023-11-02", 2, False),
        ("2024-02-24", "2024-02-26", 3, False),
        ("2024-03-03", "2024-03-05", 3, False),
    ]
    assert _described(storage.get_user_runs("u")) == expected
    assert _described(result.runs_after) == expected
    assert [r.id for r in result.runs_after] == [r.id for r in storage.get_user_runs("u")]


def test_read_runs_near_a_window_gives_those_touching_it_and_the_flagged_or_recent(storage: Storage) -> None:
    add_user(storage, "u", [])
    add_user(storage, "v", [])
    add_runs(
        storage,
        "u",
        [
            ("2023-01-01", "2023-01-03"),  # flagged active (wrongly): read
            ("2023-05-01", "2023-05-02"),  # far from everything: left out
            ("2023-06-09", "2023-06-10"),  # ends the day before the window: left out
            ("2023-06-11", "2023-06-12"),  # starts on the window's first day: read
            ("2023-06-20", "2023-06-30"),  # starts on its last day: read
            ("2023-07-01", "2023-07-01"),  # starts after it: left out
            ("2024-03-01", "2024-03-01"),  # ends on or after the recent date: read
        ],
        active=0,
    )
    add_runs(storage, "v", [("2023-06-15", "2023-06-15")])
    window = (D("2023-06-11"), D("2023-06-20"), D("2024-02-01"))
    with storage.engine.connect() as conn:
        got = [
            (r.start_date.isoformat(), r.end_date.isoformat(), r.active) for r in read_runs(conn, "u", window)
        ]
    assert got == [
        ("2023-01-01", "2023-01-03", True),
        ("2023-06-11", "2023-06-12", False),
        ("2023-06-20", "2023-06-30", False),
        ("2024-03-01", "2024-03-01", False),
    ]
