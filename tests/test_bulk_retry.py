"""A worker whose database connection is cut retries its batch; only a connection lost again
and again fails the operation, with a one-line error (PostgreSQL and the Citus coordinator)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from potato_ops import BulkConfig, Storage
from potato_ops.db import claims
from potato_ops.db.schema import ops_operation_batches, ops_operation_items
from potato_ops.ops.bulk import retry
from tests.conftest import POSTGRES_AND_CITUS
from tests.test_bulk_shared import bulk_cli, check_processed_once, corrupted, wrong_users

__all__ = ["corrupted"]  # the fixture, shared with the multi-host tests


def cut_connection(storage: Storage, conn: Connection) -> None:
    """Terminate the server process behind conn, from another connection (as an operator would)."""
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with storage.engine.connect() as admin:
        assert admin.execute(
            text("SELECT pg_terminate_backend(CAST(:p AS integer), CAST(5000 AS bigint))"), {"p": pid}
        ).scalar_one()


@POSTGRES_AND_CITUS
def test_a_cut_connection_costs_a_retry_of_the_batch_not_the_operation(
    corrupted: tuple[Storage, list[str], set[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage, ids, changed = corrupted
    real_fence, real_claim = claims.fence, claims.claim_batch
    cuts: list[str] = []

    def fence(conn: Connection, operation_id: str, claim: claims.Claim, runner: Any, epoch: int) -> None:
        if claim.batch_no == 1 and "batch" not in cuts:  # inside the batch's own transaction
            cuts.append("batch")
            cut_connection(storage, conn)
        real_fence(conn, operation_id, claim, runner, epoch)

    def claim_batch(conn: Connection, *args: Any) -> Any:
        if len(cuts) == 1 and "claim" not in cuts:  # the next claim after the cut batch
            cuts.append("claim")
            cut_connection(storage, conn)
        return real_claim(conn, *args)

    monkeypatch.setattr(claims, "fence", fence)
    monkeypatch.setattr(claims, "claim_batch", claim_batch)

    with caplog.at_level(logging.WARNING, logger="potato_ops"):
        result = storage.bulk_rebuild_users(ids, BulkConfig(batch_size=5, max_workers=2, dry_run=False))

    assert sorted(cuts) == ["batch", "claim"]
    assert (result.status, result.completed_users, result.failed_users) == ("completed", len(ids), 0)
    check_processed_once(storage, result.operation_id, ids, changed)
    retried = [r.getMessage() for r in caplog.records if "lost the database connection" in r.getMessage()]
    assert len(retried) == 2, retried
    assert any("(batch 1; try 1 of 4)" in m for m in retried)
    assert any("(claiming a batch; try 1 of 4)" in m for m in retried)


@POSTGRES_AND_CITUS
def test_a_connection_lost_again_and_again_fails_the_operation_in_one_line(
    corrupted: tuple[Storage, list[str], set[str]], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, ids, _ = corrupted
    real_fence = claims.fence
    cuts = [0]

    def fence(conn: Connection, operation_id: str, claim: claims.Claim, runner: Any, epoch: int) -> None:
        if claim.batch_no == 0:  # this batch's connection is cut every time
            cuts[0] += 1
            cut_connection(storage, conn)
        real_fence(conn, operation_id, claim, runner, epoch)

    monkeypatch.setattr(claims, "fence", fence)
    before = wrong_users(storage)

    with pytest.raises(retry.ConnectionLostError, match=r"4 times in a row \(batch 0\)"):
        storage.bulk_rebuild_users(ids, BulkConfig(batch_size=5, max_workers=1, dry_run=False))

    assert cuts[0] == retry.MAX_TRIES
    [operation] = storage.list_operations(limit=1)
    with storage.engine.connect() as conn:
        token = conn.execute(
            select(ops_operation_batches.c.claim_token).where(
                ops_operation_batches.c.operation_id == operation.operation_id,
                ops_operation_batches.c.batch_no == 0,
            )
        ).scalar_one()
        first_five = set(
            conn.execute(
                select(ops_operation_items.c.user_id).where(
                    ops_operation_items.c.operation_id == operation.operation_id,
                    ops_operation_items.c.position <= 5,
                    ops_operation_items.c.status == "pending",
                )
            ).scalars()
        )
    assert len(first_five) == 5 and before & first_five == wrong_users(storage) & first_five  # untouched

    code, out, err = bulk_cli(db_url, "progress", operation.operation_id)

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{operation.operation_id}  failed")
    assert lines[1] == (
        "error: ConnectionLostError: lost the database connection 4 times in a row (batch 0): "
        "AdminShutdown: terminating connection due to administrator command"
    )
    assert token and token not in out and "SELECT" not in out
