"""Pure run logic: grouping, local today, the active rule, diffs and invariants, on plain data."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potato_ops.domain.dates import local_today
from potato_ops.domain.invariants import check_invariants
from potato_ops.domain.models import Run, ViolationKind
from potato_ops.domain.runs import (
    diff_runs,
    earliest_active_end,
    expected_runs,
    group_consecutive_dates,
    should_be_active,
)
from potato_ops.errors import InvalidDateRangeError

D = date.fromisoformat


def days(first: str, last: str) -> list[date]:
    """Return every date from first to last inclusive."""
    lo, hi = D(first), D(last)
    return [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]


def run(
    start: str,
    end: str,
    active: bool = False,
    *,
    count: int | None = None,
    id: int | None = None,
    user: str = "u",
) -> Run:
    """Return a Run literal; day_count follows the dates unless given."""
    n = (D(end) - D(start)).days + 1 if count is None else count
    return Run(id, user, D(start), D(end), n, active)


def pairs(groups: list[tuple[date, date]]) -> list[tuple[str, str]]:
    return [(s.isoformat(), e.isoformat()) for s, e in groups]


# ---------------------------------------------------------------------------- grouping

ALTERNATING = [D("2020-01-01") + timedelta(days=2 * i) for i in range(1500)]

GROUPING_CASES: list[tuple[str, list[date | str], list[tuple[str, str]]]] = [
    ("empty", [], []),
    ("one-day", [D("2024-03-10")], [("2024-03-10", "2024-03-10")]),
    (
        "unsorted",
        [D("2024-03-05"), D("2024-03-01"), D("2024-03-04"), D("2024-03-02")],
        [("2024-03-01", "2024-03-02"), ("2024-03-04", "2024-03-05")],
    ),
    (
        "duplicates",
        [D("2024-03-01"), D("2024-03-01"), D("2024-03-02"), D("2024-03-02"), D("2024-03-02")],
        [("2024-03-01", "2024-03-02")],
    ),
    (
        "iso-strings",
        ["2024-03-03", "2024-03-01", "2024-03-02", "2024-03-07"],
        [("2024-03-01", "2024-03-03"), ("2024-03-07", "2024-03-07")],
    ),
    (
        "strings-and-dates-mixed",
        ["2024-03-01", D("2024-03-02"), " 2024-03-03 ", D("2024-03-01")],
        [("2024-03-01", "2024-03-03")],
    ),
    (
        "month-ends",
        [D("2024-01-31"), D("2024-02-01"), D("2024-04-30"), D("2024-05-01"), D("2024-06-01")],
        [("2024-01-31", "2024-02-01"), ("2024-04-30", "2024-05-01"), ("2024-06-01", "2024-06-01")],
    ),
    (
        "leap-day-2024",
        [D("2024-02-28"), D("2024-02-29"), D("2024-03-01")],
        [("2024-02-28", "2024-03-01")],
    ),
    (
        "leap-day-missing-splits",
        [D("2024-02-28"), D("2024-03-01")],
        [("2024-02-28", "2024-02-28"), ("2024-03-01", "2024-03-01")],
    ),
    (
        "non-leap-february",
        [D("2023-02-28"), D("2023-03-01")],
        [("2023-02-28", "2023-03-01")],
    ),
    (
        "year-end",
        [D("2023-12-30"), D("2023-12-31"), D("2024-01-01"), D("2024-01-03")],
        [("2023-12-30", "2024-01-01"), ("2024-01-03", "2024-01-03")],
    ),
    (
        "run-of-3000-days",
        list(reversed(days("2015-01-01", "2023-03-19"))),
        [("2015-01-01", "2023-03-19")],
    ),
    (
        "first-and-last-dates",
        [date.min, date.max],
        [
            (date.min.isoformat(), date.min.isoformat()),
            (date.max.isoformat(), date.max.isoformat()),
        ],
    ),
]


@pytest.mark.parametrize(
    ("dates", "expected"),
    [pytest.param(given_, want, id=name) for name, given_, want in GROUPING_CASES],
)
def test_group_consecutive_dates(dates: list[date | str], expected: list[tuple[str, str]]) -> None:
    assert pairs(group_consecutive_dates(dates)) == expected


def test_3000_day_run_has_one_group_of_3000_days() -> None:
    marks = days("2015-01-01", "2023-03-19")
    assert len(marks) == 3000
    [only] = expected_runs("u", marks, D("2024-03-10"))
    assert (only.start_date, only.end_date, only.day_count, only.active) == (
        D("2015-01-01"),
        D("2023-03-19"),
        3000,
        False,
    )


def test_1500_alternating_days_are_1500_single_day_groups() -> None:
    groups = group_consecutive_dates(reversed(ALTERNATING))
    assert len(groups) == 1500
    assert groups[0] == (D("2020-01-01"), D("2020-01-01"))
    assert groups[-1] == (ALTERNATING[-1], ALTERNATING[-1])
    assert all(s == e for s, e in groups)
    assert [s for s, _ in groups] == ALTERNATING


@pytest.mark.parametrize(
    "bad",
    ["2024-02-30", "2023-02-29", "10/03/2024", "", "yesterday", 20240310],
    ids=["feb-30", "non-leap-feb-29", "us-format", "empty", "word", "int"],
)
def test_grouping_refuses_what_is_not_a_date(bad: object) -> None:
    with pytest.raises(InvalidDateRangeError):
        group_consecutive_dates([D("2024-03-01"), bad])  # type: ignore[list-item]


# ---------------------------------------------------------------------------- local today


def at(instant: str) -> datetime:
    return datetime.fromisoformat(instant).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "instant", "today"),
    [
        ("UTC", "2024-03-09T23:30", "2024-03-09"),
        ("Europe/Berlin", "2024-03-09T23:30", "2024-03-10"),
        ("America/New_York", "2024-03-10T04:59:59", "2024-03-09"),
        ("America/New_York", "2024-03-10T05:00:00", "2024-03-10"),
        ("America/New_York", "2024-03-10T06:59:59", "2024-03-10"),
        ("America/New_York", "2024-03-10T07:00:00", "2024-03-10"),
        # The DST day is 23 hours long: the next midnight is 04:00Z, not 05:00Z.
        ("America/New_York", "2024-03-11T03:59:59", "2024-03-10"),
        ("America/New_York", "2024-03-11T04:00:00", "2024-03-11"),
        ("Pacific/Kiritimati", "2024-03-10T10:30", "2024-03-11"),
        ("Pacific/Pago_Pago", "2024-03-10T10:30", "2024-03-09"),
        ("Asia/Kathmandu", "2024-03-09T18:14:59", "2024-03-09"),
        ("Asia/Kathmandu", "2024-03-09T18:15:00", "2024-03-10"),
    ],
    ids=[
        "utc-before-midnight",
        "berlin-after-midnight-same-instant",
        "ny-dst-day-just-before-midnight",
        "ny-dst-day-midnight",
        "ny-just-before-spring-forward",
        "ny-just-after-spring-forward",
        "ny-23h-day-last-second",
        "ny-23h-day-next-midnight",
        "kiritimati-two-days-ahead",
        "pago-pago-behind",
        "kathmandu-quarter-hour-before",
        "kathmandu-quarter-hour-midnight",
    ],
)
def test_local_today(zone: str, instant: str, today: str) -> None:
    assert local_today(zone, at(instant)) == D(today)


def test_local_today_refuses_a_naive_instant() -> None:
    with pytest.raises(ValueError):
        local_today("UTC", datetime(2024, 3, 10, 12, 0))


# ---------------------------------------------------------------------------- the active rule


@pytest.mark.parametrize(
    ("start", "end", "today", "active"),
    [
        ("2024-03-01", "2024-03-10", "2024-03-10", True),
        ("2024-03-01", "2024-03-09", "2024-03-10", True),
        ("2024-03-01", "2024-03-08", "2024-03-10", False),
        ("2024-03-10", "2024-03-10", "2024-03-10", True),
        ("2024-03-11", "2024-03-12", "2024-03-10", False),
        ("2024-03-01", "2024-03-20", "2024-03-10", True),
        ("2024-02-27", "2024-02-29", "2024-03-01", True),
        ("2023-12-25", "2023-12-31", "2024-01-01", True),
        ("2024-03-10", "2024-03-09", "2024-03-10", False),
        ("2024-03-11", "2024-03-09", "2024-03-10", False),
    ],
    ids=[
        "ends-today",
        "ended-yesterday",
        "ended-two-days-ago",
        "one-day-today",
        "starts-tomorrow",
        "spans-today-into-future",
        "ended-on-leap-day",
        "ended-new-years-eve",
        "malformed-start-today-end-yesterday",
        "malformed-start-tomorrow-end-yesterday",
    ],
)
def test_should_be_active(start: str, end: str, today: str, active: bool) -> None:
    assert should_be_active(D(start), D(end), D(today)) is active


@pytest.mark.parametrize("today", ["2024-03-10", "2024-01-01", "2024-03-01"])
def test_no_run_ending_before_the_earliest_active_end_is_active(today: str) -> None:
    t = D(today)
    ends = [t + timedelta(days=k) for k in range(-5, 3)]
    active_ends = [e for e in ends if should_be_active(e - timedelta(days=3), e, t)]
    assert min(active_ends) == earliest_active_end(t) == t - timedelta(days=1)


# Each row: zone, instant, then which of these runs is active at that instant for that user.
RUNS_TO_JUDGE = [
    ("2024-03-01", "2024-03-08"),
    ("2024-03-01", "2024-03-09"),
    ("2024-03-10", "2024-03-10"),
    ("2024-03-11", "2024-03-11"),
]


@pytest.mark.parametrize(
    ("zone", "instant", "verdicts"),
    [
        ("UTC", "2024-03-09T23:30", [True, True, False, False]),
        ("Europe/Berlin", "2024-03-09T23:30", [False, True, True, False]),
        ("America/New_York", "2024-03-10T04:59", [True, True, False, False]),
        ("America/New_York", "2024-03-10T05:00", [False, True, True, False]),
        ("America/New_York", "2024-03-10T06:59", [False, True, True, False]),
        ("America/New_York", "2024-03-10T07:00", [False, True, True, False]),
        ("America/New_York", "2024-03-11T03:59", [False, True, True, False]),
        ("America/New_York", "2024-03-11T04:00", [False, False, True, True]),
        ("Pacific/Kiritimati", "2024-03-10T10:30", [False, False, True, True]),
        ("Pacific/Pago_Pago", "2024-03-10T10:30", [True, True, False, False]),
        ("UTC", "2024-03-10T10:30", [False, True, True, False]),
    ],
    ids=[
        "utc-just-before-midnight",
        "berlin-just-after-midnight",
        "ny-0459z",
        "ny-0500z-local-midnight",
        "ny-0659z",
        "ny-0700z-spring-forward",
        "ny-next-day-0359z",
        "ny-next-day-0400z-local-midnight",
        "kiritimati-on-03-11",
        "pago-pago-on-03-09",
        "utc-on-03-10",
    ],
)
def test_active_rule_across_local_midnight(zone: str, instant: str, verdicts: list[bool]) -> None:
    today = local_today(zone, at(instant))
    got = [should_be_active(D(s), D(e), today) for s, e in RUNS_TO_JUDGE]
    assert got == verdicts


def test_expected_runs_flag_at_most_one_active() -> None:
    marks = [*days("2024-03-01", "2024-03-03"), *days("2024-03-05", "2024-03-09")]
    assert expected_runs("u", marks, D("2024-03-10")) == [
        run("2024-03-01", "2024-03-03"),
        run("2024-03-05", "2024-03-09", True),
    ]
    assert expected_runs("u", marks, D("2024-03-04")) == [
        run("2024-03-01", "2024-03-03", True),
        run("2024-03-05", "2024-03-09"),
    ]


# ---------------------------------------------------------------------------- diff


def test_diff_keeps_right_runs_and_replaces_wrong_ones() -> None:
    stored = [
        run("2024-03-01", "2024-03-03", id=1),
        run("2024-03-05", "2024-03-06", id=2),
        run("2024-03-08", "2024-03-09", True, id=3),
        run("2024-02-01", "2024-02-02", count=5, id=4),
    ]
    expected = [
        run("2024-02-01", "2024-02-02"),
        run("2024-03-01", "2024-03-03"),
        run("2024-03-05", "2024-03-09", True),
    ]
    diff = diff_runs(stored, expected)
    assert [r.id for r in diff.keep] == [1]
    assert sorted(r.id or 0 for r in diff.delete) == [2, 3, 4]
    assert diff.create == [run("2024-02-01", "2024-02-02"), run("2024-03-05", "2024-03-09", True)]
    assert diff.activate == []
    assert diff.deactivate == []
    assert diff.changed


def test_diff_fixes_flags_on_kept_runs() -> None:
    stored = [run("2024-03-01", "2024-03-03", True, id=1), run("2024-03-05", "2024-03-09", id=2)]
    expected = [run("2024-03-01", "2024-03-03"), run("2024-03-05", "2024-03-09", True)]
    diff = diff_runs(stored, expected)
    assert [r.id for r in diff.keep] == [1, 2]
    assert [r.id for r in diff.deactivate] == [1]
    assert [r.id for r in diff.activate] == [2]
    assert (diff.delete, diff.create) == ([], [])
    assert diff.changed


def test_diff_deletes_duplicates_keeping_the_lowest_id() -> None:
    stored = [run("2024-03-01", "2024-03-03", id=7), run("2024-03-01", "2024-03-03", id=5)]
    diff = diff_runs(stored, [run("2024-03-01", "2024-03-03")])
    assert [r.id for r in diff.keep] == [5]
    assert [r.id for r in diff.delete] == [7]
    assert diff.create == []


def test_diff_of_equal_runs_changes_nothing() -> None:
    stored = [run("2024-03-01", "2024-03-03", id=1), run("2024-03-09", "2024-03-10", True, id=2)]
    diff = diff_runs(stored, [run("2024-03-01", "2024-03-03"), run("2024-03-09", "2024-03-10", True)])
    assert not diff.changed
    assert [r.id for r in diff.keep] == [1, 2]


def test_diff_from_nothing_creates_everything_sorted() -> None:
    expected = [run("2024-03-05", "2024-03-05"), run("2024-03-01", "2024-03-02")]
    diff = diff_runs([], expected)
    assert diff.create == [run("2024-03-01", "2024-03-02"), run("2024-03-05", "2024-03-05")]
    assert diff.keep == diff.delete == []


# ---------------------------------------------------------------------------- invariants

TODAY = D("2024-03-20")
MARKS_1_TO_5 = days("2024-03-01", "2024-03-05")


@pytest.mark.parametrize(
    ("stored", "marks", "today", "user_exists", "kinds"),
    [
        ([run("2024-03-01", "2024-03-05")], MARKS_1_TO_5, TODAY, True, []),
        ([run("2024-03-05", "2024-03-01", count=1)], [], TODAY, True, [ViolationKind.MALFORMED]),
        ([run("2024-03-01", "2024-03-05", count=4)], MARKS_1_TO_5, TODAY, True, [ViolationKind.MALFORMED]),
        (
            [run("2024-03-01", "2024-03-03"), run("2024-03-03", "2024-03-05")],
            MARKS_1_TO_5,
            TODAY,
            True,
            [ViolationKind.OVERLAP],
        ),
        (
            [run("2024-03-01", "2024-03-05"), run("2024-03-01", "2024-03-05")],
            MARKS_1_TO_5,
            TODAY,
            True,
            [ViolationKind.OVERLAP],
        ),
        (
            [run("2024-03-01", "2024-03-02"), run("2024-03-03", "2024-03-05")],
            MARKS_1_TO_5,
            TODAY,
            True,
            [ViolationKind.ADJACENT],
        ),
        ([run("2024-03-01", "2024-03-06")], MARKS_1_TO_5, TODAY, True, [ViolationKind.PHANTOM_DAY]),
        ([run("2024-03-01", "2024-03-03")], MARKS_1_TO_5, TODAY, True, [ViolationKind.UNCOVERED_DAY]),
        (
            [run("2024-03-01", "2024-03-03", True), run("2024-03-05", "2024-03-05", True)],
            [*days("2024-03-01", "2024-03-03"), D("2024-03-05")],
            D("2024-03-05"),
            True,
            [ViolationKind.MULTIPLE_ACTIVE, ViolationKind.STALE_ACTIVE],
        ),
        ([run("2024-03-01", "2024-03-05", True)], MARKS_1_TO_5, TODAY, True, [ViolationKind.STALE_ACTIVE]),
        (
            [run("2024-03-01", "2024-03-05")],
            MARKS_1_TO_5,
            D("2024-03-06"),
            True,
            [ViolationKind.STALE_ACTIVE],
        ),
        (
            [run("2024-03-01", "2024-03-05")],
            [],
            TODAY,
            False,
            [ViolationKind.ORPHAN, ViolationKind.PHANTOM_DAY],
        ),
    ],
    ids=[
        "correct",
        "malformed-start-after-end",
        "malformed-day-count",
        "overlap",
        "duplicate-is-overlap",
        "adjacent",
        "phantom-day",
        "uncovered-day",
        "multiple-active",
        "stale-flagged-but-ended",
        "stale-active-but-unflagged",
        "orphan",
    ],
)
def test_check_invariants_kinds(
    stored: list[Run], marks: list[date], today: date, user_exists: bool, kinds: list[str]
) -> None:
    found = check_invariants("u", stored, marks, today, user_exists=user_exists)
    assert sorted(v.kind for v in found) == sorted(kinds)
    assert all(v.user_id == "u" and v.detail for v in found)


@pytest.mark.parametrize(
    ("stored", "marks", "kind", "counts"),
    [
        (
            [run("2024-03-01", "2024-03-10")],
            [*days("2024-03-01", "2024-03-02"), *days("2024-03-06", "2024-03-08"), D("2024-03-10")],
            ViolationKind.PHANTOM_DAY,
            [3, 1],
        ),
        (
            [run("2024-03-04", "2024-03-04")],
            [*days("2024-03-01", "2024-03-04"), *days("2024-03-07", "2024-03-08")],
            ViolationKind.UNCOVERED_DAY,
            [3, 2],
        ),
    ],
    ids=["phantom-stretches", "uncovered-stretches"],
)
def test_day_violations_come_one_per_stretch_with_day_counts(
    stored: list[Run], marks: list[date], kind: str, counts: list[int]
) -> None:
    found = check_invariants("u", stored, marks, TODAY)
    assert [(v.kind, v.count) for v in found] == [(kind, n) for n in counts]


def test_window_limits_coverage_and_completeness() -> None:
    marks = [*days("2024-01-01", "2024-01-03"), *days("2024-03-01", "2024-03-05")]
    stored = [run("2024-03-01", "2024-03-05")]  # January's marks have no run
    assert [v.kind for v in check_invariants("u", stored, marks, TODAY)] == [ViolationKind.UNCOVERED_DAY]
    window = (D("2024-02-15"), D("2024-03-31"))
    assert check_invariants("u", stored, marks, TODAY, window=window) == []


# ---------------------------------------------------------------------------- properties

BASE = D("2024-01-01")
offsets = st.lists(st.integers(min_value=-400, max_value=400), max_size=120)


def _dates(offs: list[int]) -> list[date]:
    return [BASE + timedelta(days=o) for o in offs]


@settings(max_examples=200, deadline=None)
@given(offs=offsets, today_off=st.integers(min_value=-410, max_value=410))
def test_expected_runs_break_no_invariant(offs: list[int], today_off: int) -> None:
    marks = _dates(offs)
    today = BASE + timedelta(days=today_off)
    runs = expected_runs("u", marks, today)
    assert check_invariants("u", runs, marks, today) == []
    assert sum(r.active for r in runs) <= 1


@settings(max_examples=200, deadline=None)
@given(offs=offsets, data=st.data())
def test_grouping_ignores_order_and_duplicates(offs: list[int], data: st.DataObject) -> None:
    marks = _dates(offs)
    shuffled = data.draw(st.permutations(marks + marks[: len(marks) // 2]))
    as_strings = [d.isoformat() for d in shuffled]
    assert group_consecutive_dates(shuffled) == group_consecutive_dates(sorted(set(marks)))
    assert group_consecutive_dates(as_strings) == group_consecutive_dates(marks)


@settings(max_examples=200, deadline=None)
@given(offs=offsets)
def test_every_date_is_covered_exactly_once_by_maximal_groups(offs: list[int]) -> None:
    marks = set(_dates(offs))
    groups = group_consecutive_dates(marks)
    covered: list[date] = []
    for s, e in groups:
        assert s <= e
        covered += [s + timedelta(days=i) for i in range((e - s).days + 1)]
    assert sorted(covered) == sorted(marks)  # every date once, nothing else
    assert groups == sorted(groups)
    for (_, prev_end), (next_start, _) in pairwise(groups):
        assert (next_start - prev_end).days >= 2  # maximal: an unmarked day between groups
