"""Backups on both backends: persisted, listed newest first, restored exactly, pruned."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import update

from potato_ops import Storage
from potato_ops.db.backups import _payload, backup_checksum
from potato_ops.db.schema import runs
from potato_ops.domain.models import Run
from tests.conftest import NOW, MutableClock, add_runs, add_user, spans

Spans = list[tuple[str, str]]


def listing(storage: Storage, user_id: str) -> list[tuple[int | None, str, int]]:
    """Return the user's backups as (id, timestamp, total_runs), in the order listed."""
    return [(b.id, b.timestamp.isoformat(), b.metadata.total_runs) for b in storage.get_backups(user_id)]


def test_backup_is_persisted_with_its_runs_and_metadata(storage: Storage) -> None:
    add_user(storage, "u", ["2024-03-01", "2024-03-02", "2024-03-09", "2024-03-10"])
    add_runs(storage, "u", [("2024-03-01", "2024-03-02"), ("2024-03-09", "2024-03-10")], active=1)
    backup = storage.backup_user_runs("u")
    assert backup.id is not None
    assert backup.user_id == "u"
    assert backup.timestamp == NOW
    assert backup.runs == storage.get_user_runs("u")
    assert backup.metadata.total_runs == 2
    assert backup.metadata.reason == "manual"
    assert len(backup.metadata.checksum) == 64
    assert set(backup.metadata.checksum) <= set("0123456789abcdef")
    assert storage.get_backup(backup.id) == backup
    assert storage.get_backups("u") == [backup]


def test_checksum_depends_on_the_runs_and_the_user(storage: Storage) -> None:
    add_user(storage, "u", ["2024-03-01"])
    add_user(storage, "v", ["2024-03-01"])
    first = storage.backup_user_runs("u")
    again = storage.backup_user_runs("u")
    add_runs(storage, "u", [("2024-03-01", "2024-03-01")])
    changed = storage.backup_user_runs("u")
    empty_v = storage.backup_user_runs("v")
    assert first.metadata.checksum == again.metadata.checksum
    assert (first.metadata.total_runs, changed.metadata.total_runs) == (0, 1)
    assert changed.metadata.checksum != first.metadata.checksum
    assert empty_v.metadata.checksum != first.metadata.checksum  # same (no) runs, other user


def test_backups_are_listed_newest_first(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "u", ["2024-03-01"])
    add_user(storage, "v", ["2024-03-01"])
    a = storage.backup_user_runs("u")
    clock.advance(hours=2)
    add_runs(storage, "u", [("2024-03-01", "2024-03-01")])
    b = storage.backup_user_runs("u")
    storage.backup_user_runs("v")
    clock.advance(days=1)
    c = storage.backup_user_runs("u")
    d = storage.backup_user_runs("u")  # same instant as c: the later one first
    assert listing(storage, "u") == [
        (d.id, "2024-03-11T17:00:00+00:00", 1),
        (c.id, "2024-03-11T17:00:00+00:00", 1),
        (b.id, "2024-03-10T17:00:00+00:00", 1),
        (a.id, "2024-03-10T15:00:00+00:00", 0),
    ]
    assert [x.user_id for x in storage.get_backups("v")] == ["v"]
    assert storage.get_backups("nobody") == []


@pytest.mark.parametrize(
    ("stored", "active", "after_corruption"),
    [
        ([("2024-03-01", "2024-03-02"), ("2024-03-09", "2024-03-10")], 1, [("2024-03-01", "2024-03-10")]),
        ([("2024-01-01", "2024-01-01")], None, []),
        ([], None, [("2024-03-05", "2024-03-06")]),
    ],
    ids=["two-runs", "one-run-restored-over-nothing", "no-runs-restored-over-one"],
)
def test_restore_round_trip(
    storage: Storage,
    clock: MutableClock,
    stored: Spans,
    active: int | None,
    after_corruption: Spans,
) -> None:
    add_user(storage, "u", ["2024-03-01"])
    add_runs(storage, "u", stored, active=active)
    before = storage.get_user_runs("u")
    backup = storage.backup_user_runs("u")
    with storage.engine.begin() as conn:
        conn.execute(runs.delete().where(runs.c.user_id == "u"))
    add_runs(storage, "u", after_corruption)
    clock.advance(hours=1)
    restored = storage.restore_user_runs("u", backup)
    assert restored == before
    assert storage.get_user_runs("u") == before
    assert spans(storage, "u") == stored
    # Restoring again (by id this time) is a no-op on the runs.
    assert storage.restore_user_runs("u", backup.id or 0) == before


def test_restore_sets_active_flags_by_the_rule_at_restore_time(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "u", ["2024-03-09", "2024-03-10"])
    add_runs(storage, "u", [("2024-03-09", "2024-03-10")], active=0)
    backup = storage.backup_user_runs("u")
    clock.advance(days=3)
    [restored] = storage.restore_user_runs("u", backup)
    assert (restored.id, restored.active) == (backup.runs[0].id, False)


def test_restore_leaves_other_users_alone(storage: Storage) -> None:
    add_user(storage, "u", ["2024-03-01"])
    add_user(storage, "v", ["2024-03-01"])
    add_runs(storage, "u", [("2024-03-01", "2024-03-01")])
    add_runs(storage, "v", [("2024-03-01", "2024-03-03")])
    backup = storage.backup_user_runs("u")
    v_before = storage.get_user_runs("v")
    with storage.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.user_id == "u").values(day_count=9))
    storage.restore_user_runs("u", backup)
    assert storage.get_user_runs("v") == v_before
    assert [r.day_count for r in storage.get_user_runs("u")] == [1]


def test_prune_backups_keeps_the_newest_per_user(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "u", ["2024-03-01"])
    add_user(storage, "v", ["2024-03-01"])
    add_user(storage, "w", ["2024-03-01"])
    made: dict[str, list[int | None]] = {"u": [], "v": [], "w": []}
    for _day in range(3):
        made["u"].append(storage.backup_user_runs("u").id)
        clock.advance(days=1)
    made["v"].append(storage.backup_user_runs("v").id)
    clock.advance(days=10)  # 2024-03-23 15:00
    made["w"].append(storage.backup_user_runs("w").id)

    def kept() -> dict[str, list[int | None]]:
        return {uid: [b.id for b in storage.get_backups(uid)] for uid in made}

    # Nothing older than 30 days: nothing goes.
    assert storage.prune_backups(timedelta(days=30)) == 0
    # Older than 5 days: u's two oldest go; u's newest, v's only and w's recent one stay.
    assert storage.prune_backups(timedelta(days=5), keep_latest=1) == 2
    assert kept() == {"u": [made["u"][2]], "v": made["v"], "w": made["w"]}
    # keep_latest=0: every old backup goes, recent ones stay.
    assert storage.prune_backups(timedelta(days=5), keep_latest=0) == 2
    assert kept() == {"u": [], "v": [], "w": made["w"]}


def test_prune_backups_with_keep_latest_two(storage: Storage, clock: MutableClock) -> None:
    add_user(storage, "u", ["2024-03-01"])
    ids = []
    for _day in range(4):
        ids.append(storage.backup_user_runs("u").id)
        clock.advance(days=1)
    clock.advance(days=30)
    assert storage.prune_backups(NOW + timedelta(days=100), keep_latest=2) == 2
    assert [b.id for b in storage.get_backups("u")] == [ids[3], ids[2]]


run_st = st.builds(
    Run,
    st.none() | st.integers(min_value=1, max_value=2**62),
    st.just("u"),
    st.dates(),
    st.dates(),
    st.integers(min_value=0, max_value=10**6),
    st.booleans(),
)


@given(backup_runs=st.lists(run_st, max_size=6), user_id=st.text(max_size=12))
def test_checksum_and_payload_are_the_canonical_json_of_the_runs(
    backup_runs: list[Run], user_id: str
) -> None:
    # Backups taken before the JSON was written by hand must still verify: the canonical text
    # is json.dumps of the fields, compact with sorted keys, whoever writes it.
    fields = [
        {
            "id": r.id,
            "start_date": r.start_date.isoformat(),
            "end_date": r.end_date.isoformat(),
            "day_count": r.day_count,
            "active": r.active,
        }
        for r in backup_runs
    ]
    canonical = json.dumps({"user_id": user_id, "runs": fields}, sort_keys=True, separators=(",", ":"))
    assert backup_checksum(user_id, backup_runs) == hashlib.sha256(canonical.encode()).hexdigest()
    assert json.loads(_payload(backup_runs)) == fields
