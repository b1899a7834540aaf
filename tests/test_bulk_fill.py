"""Bulk batches whose users hold no runs: filled set-based, with the same outcome as the engine's."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from potato_ops import BulkConfig, Storage
from potato_ops.db.schema import RUNS_V2_FLAG, ops_backups, ops_operation_items, ops_rebuild_history
from potato_ops.ops.bulk import fill
from tests.conftest import add_runs, add_user

REAL = BulkConfig(batch_size=10, max_workers=1, dry_run=False)


@pytest.fixture
def flag_on(storage: Storage) -> Storage:
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    return storage


def stored(storage: Storage, user_id: str) -> list[tuple[str, str, int, bool]]:
    return [
        (r.start_date.isoformat(), r.end_date.isoformat(), r.day_count, r.active)
        for r in storage.get_user_runs(user_id)
    ]


def seed_mixed(storage: Storage) -> None:
    """Users without runs (two timezones, one with no marks) beside users holding runs.

    The clock is 2024-03-10 15:00 UTC: local today is 03-10 in UTC and 03-11 in Kiritimati.
    """
    add_user(storage, "e-utc", ["2024-03-01", "2024-03-02", "2024-03-05", "2024-03-09", "2024-03-10"])
    add_user(storage, "e-unmarked", ["2024-03-01", "2024-03-03"], unmarked=["2024-03-02"])
    add_user(storage, "e-kiri-ended", ["2024-03-08", "2024-03-09"], timezone="Pacific/Kiritimati")
    add_user(storage, "e-kiri-live", ["2024-03-09", "2024-03-10"], timezone="Pacific/Kiritimati")
    add_user(storage, "e-none")
    add_user(storage, "held-right", ["2024-03-01", "2024-03-02", "2024-03-03"])
    add_runs(storage, "held-right", [("2024-03-01", "2024-03-03")])
    add_user(storage, "held-wrong", ["2024-02-01", "2024-02-02", "2024-02-03"])
    add_runs(storage, "held-wrong", [("2024-02-01", "2024-02-02")])


# Written by hand from the marks above and the rule (active: starts by today, ends today or yesterday).
EXPECTED = {
    "e-utc": [
        ("2024-03-01", "2024-03-02", 2, False),
        ("2024-03-05", "2024-03-05", 1, False),
        ("2024-03-09", "2024-03-10", 2, True),
    ],
    "e-unmarked": [("2024-03-01", "2024-03-01", 1, False), ("2024-03-03", "2024-03-03", 1, False)],
    "e-kiri-ended": [("2024-03-08", "2024-03-09", 2, False)],  # yesterday there is 03-10
    "e-kiri-live": [("2024-03-09", "2024-03-10", 2, True)],
    "e-none": [],
    "held-right": [("2024-03-01", "2024-03-03", 3, False)],
    "held-wrong": [("2024-02-01", "2024-02-03", 3, False)],
}
CREATED = {"e-utc": 3, "e-unmarked": 2, "e-kiri-ended": 1, "e-kiri-live": 1, "e-none": 0, "held-right": 0}
DAYS = {"e-utc": 5, "e-unmarked": 2, "e-kiri-ended": 2, "e-kiri-live": 2, "e-none": 0, "held-right": 3}


def test_users_without_runs_are_filled_with_their_marks_runs_backed_up_and_recorded(flag_on: Storage) -> None:
    seed_mixed(flag_on)

    result = flag_on.bulk_rebuild_users(sorted(EXPECTED), REAL)

    assert (result.status, result.completed_users, result.failed_users) == ("completed", 7, 0)
    for uid, runs in EXPECTED.items():
        assert stored(flag_on, uid) == runs, uid
    i, h, b = ops_operation_items, ops_rebuild_history, ops_backups
    op = result.operation_id
    with flag_on.engine.connect() as conn:
        ledger = {
            u: (st, int(n), bool(ch), rc)
            for u, st, n, ch, rc in conn.execute(
                select(i.c.user_id, i.c.status, i.c.attempts, i.c.changed, i.c.runs_created).where(
                    i.c.operation_id == op
                )
            )
        }
        history = {
            u: (bool(ok), rc, days)
            for u, ok, rc, days in conn.execute(
                select(h.c.user_id, h.c.success, h.c.runs_created, h.c.days_processed).where(
                    h.c.operation_id == op
                )
            )
        }
        backups = {
            u: (n, json.loads(payload))
            for u, n, payload in conn.execute(
                select(b.c.user_id, b.c.run_count, b.c.payload).where(b.c.operation_id == op)
            )
        }
    created = {**CREATED, "held-wrong": 1}
    assert ledger == {u: ("completed", 1, created[u] > 0, created[u]) for u in EXPECTED}  # one try each
    assert {u: v for u, v in history.items() if u in DAYS} == {u: (True, CREATED[u], DAYS[u]) for u in DAYS}
    # A backup of each changed user: zero runs for those that held none, none for the unchanged.
    assert backups.pop("held-wrong")[0] == 1
    assert backups == {u: (0, []) for u in ("e-utc", "e-unmarked", "e-kiri-ended", "e-kiri-live")}


def test_a_dry_run_fills_nothing_but_tells_what_it_would_create(flag_on: Storage) -> None:
    seed_mixed(flag_on)

    result = flag_on.bulk_rebuild_users(sorted(EXPECTED), BulkConfig(batch_size=10, max_workers=1))

    assert result.completed_users == 7
    assert {c.user_id: c.runs_to_create for c in result.changes} == {
        **{u: n for u, n in CREATED.items() if n},
        "held-wrong": 1,
    }
    assert stored(flag_on, "e-utc") == [] and stored(flag_on, "e-none") == []


def test_filled_runs_that_do_not_validate_send_the_batch_user_by_user(
    flag_on: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Told that nobody holds runs, the fill adds a second copy of the held users' runs: the
    # validation (or PostgreSQL's no-overlap constraint) refuses it, the batch is rolled back
    # and each user redone alone by the ordinary engine.
    seed_mixed(flag_on)
    monkeypatch.setattr(fill, "users_holding_runs", lambda conn, ids: set())

    result = flag_on.bulk_rebuild_users(sorted(EXPECTED), REAL)

    assert (result.status, result.completed_users, result.failed_users) == ("completed", 7, 0)
    for uid, runs in EXPECTED.items():
        assert stored(flag_on, uid) == runs, uid
    with flag_on.engine.connect() as conn:
        i = ops_operation_items
        tries = set(
            conn.execute(select(i.c.attempts).where(i.c.operation_id == result.operation_id)).scalars()
        )
    assert tries == {2}
