"""Runs of ids that are not users: backed up, then removed; users' runs never touched."""

from __future__ import annotations

from potato_ops import Storage
from tests.conftest import add_runs, add_user, snapshot, spans


def test_orphan_runs_are_backed_up_and_removed(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01", "2024-03-02"])
    add_runs(storage, "u1", [("2024-03-01", "2024-03-02")])
    add_runs(storage, "ghost", [("2024-01-01", "2024-01-03"), ("2024-02-01", "2024-02-01")])
    assert storage.validate_invariants().orphan_runs == 2

    before = snapshot(storage)
    planned = storage.remove_orphan_runs(["ghost", "u1", "nobody"], dry_run=True)
    assert list(planned) == ["ghost"]
    assert planned["ghost"].id is None
    assert planned["ghost"].metadata.total_runs == 2
    assert snapshot(storage) == before

    done = storage.remove_orphan_runs(["ghost", "u1", "nobody"])
    assert list(done) == ["ghost"]
    assert spans(storage, "ghost") == []
    assert spans(storage, "u1") == [("2024-03-01", "2024-03-02")]
    kept = storage.get_backups("ghost")
    assert [b.id for b in kept] == [done["ghost"].id]
    assert [(r.start_date.isoformat(), r.end_date.isoformat()) for r in kept[0].runs] == [
        ("2024-01-01", "2024-01-03"),
        ("2024-02-01", "2024-02-01"),
    ]
    assert storage.validate_invariants().ok


def test_nothing_to_remove_writes_nothing(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01"])
    before = snapshot(storage)
    assert storage.remove_orphan_runs([]) == {}
    assert storage.remove_orphan_runs(["u1"]) == {}
    assert snapshot(storage) == before
