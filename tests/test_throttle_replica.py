"""The standby-lag throttle on a real PostgreSQL primary with a streaming standby.

The pair is ``shared/replica/pair.sh`` (beside the repository, or ``$POTATO_TEST_REPLICA_SCRIPT``):
``.ci/run`` starts one and names its folder in ``$POTATO_TEST_REPLICA_DIR``; without it the
test starts a pair of its own on a free port pair under /var/tmp (as root) and stops it after.
When no pair can be had the test is skipped loudly, and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from potato_ops import BulkConfig, Storage
from potato_ops.demo.synth import seed
from potato_ops.domain.dates import fixed_clock
from tests.conftest import NOW, _pg_unavailable, drop_pg_database, fresh_pg_database
from tests.test_bulk_shared import wrong_users
from tests.test_throttle import (
    Background,
    held_batches,
    item_statuses,
    until,
    waited_while_closed,
)

ROOT = Path(__file__).parents[1]
REPLICA_DIR_VAR = "POTATO_TEST_REPLICA_DIR"
REPLICA_SCRIPT_VAR = "POTATO_TEST_REPLICA_SCRIPT"
WHAT = "PostgreSQL replica pair"
LIMIT = 1024**2  # --max-replica-lag 1MB


@dataclass(frozen=True)
class Pair:
    """A running primary and standby, driven by pair.sh."""

    script: Path
    folder: Path

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(self.script), *args], capture_output=True, text=True, check=True, timeout=120
        )
        return done.stdout.strip()

    @property
    def url(self) -> str:
        return self.run("url", str(self.folder))

    def lag(self) -> int:
        return int(self.run("lag", str(self.folder)))

    def pause_replay(self) -> None:
        self.run("pause", str(self.folder))

    def resume_replay(self) -> None:
        self.run("resume", str(self.folder))


def pair_script() -> Path | None:
    """Return pair.sh: named by the environment, or in the shared folder beside the checkout."""
    named = os.environ.get(REPLICA_SCRIPT_VAR)
    candidates = [Path(named)] if named else [p / "shared/replica/pair.sh" for p in ROOT.parents]
    return next((p for p in candidates if p.is_file()), None)


def free_port_pair() -> int:
    """Return a port p such that p and p + 1 are both free on the loopback."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port > 65000:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two free neighbouring ports")


@pytest.fixture(scope="module")
def replica_pair() -> Iterator[Pair]:
    """Yield the CI's pair, or one started here and stopped after."""
    script = pair_script()
    if script is None:
        _pg_unavailable(f"pair.sh not found (set ${REPLICA_SCRIPT_VAR})", WHAT)
    assert script is not None
    given = os.environ.get(REPLICA_DIR_VAR)
    if given:
        yield Pair(script, Path(given))
        return
    if os.geteuid() != 0:
        _pg_unavailable(f"pair.sh needs root, and ${REPLICA_DIR_VAR} is not set", WHAT)
    folder = Path(tempfile.mkdtemp(prefix="potato-replica-", dir="/var/tmp"))
    folder.chmod(0o755)
    pair = Pair(script, folder / "pair")
    try:
        pair.run("start", str(pair.folder), str(free_port_pair()))
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        _pg_unavailable(f"pair.sh start failed: {(exc.stderr or '').strip()[:200]}", WHAT)
    try:
        yield pair
    finally:
        pair.run("stop", str(pair.folder))
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
def test_a_lagging_standby_holds_the_bulk_until_its_replay_resumes(replica_pair: Pair) -> None:
    url, admin = fresh_pg_database(replica_pair.url)
    storage = Storage.connect(url, clock=fixed_clock(NOW))
    paused = False
    try:
        storage.create_schema()
        storage.set_feature_flag("ff.potato.runs_v2", True)
        seeded = seed(storage.engine, users_count=40, days=40, corrupt=0.5, now=NOW)
        ids = list(seeded.user_ids)
        assert wrong_users(storage, NOW)

        replica_pair.pause_replay()
        paused = True
        with storage.engine.begin() as conn:  # some WAL the standby receives but does not replay
            conn.execute(
                text(
                    "CREATE TABLE ballast AS "
                    "SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
                )
            )
        until(lambda: replica_pair.lag() > LIMIT, "the standby's lag over the limit")

        config = BulkConfig(batch_size=5, max_workers=2, dry_run=False, max_replica_lag="1MB")
        run = Background(lambda report: storage.bulk_rebuild_users(ids, config, progress=report)).start()
        operation_id = run.operation_id
        waited_while_closed(storage, operation_id, runners=1)

        progress = storage.get_rebuild_progress(operation_id)
        assert (progress.status, progress.processed_users, progress.waiting_kind) == (
            "running",
            0,
            "replica_lag",
        )
        assert progress.waiting is not None
        assert progress.waiting.startswith("throttled: replica lag ") and progress.waiting.endswith(
            " MB > 1 MB"
        )
        assert item_statuses(storage, operation_id) == Counter({"pending": len(ids)})
        assert held_batches(storage, operation_id) == 0

        replica_pair.resume_replay()  # the standby catches up: the bulk goes on by itself
        paused = False
        result = run.join()

        assert (result.status, result.completed_users, result.failed_users) == ("completed", len(ids), 0)
        assert wrong_users(storage, NOW) == set()
        assert set(result.throttled_seconds) == {"replica_lag"}
        assert storage.get_rebuild_progress(operation_id).waiting is None
        until(lambda: replica_pair.lag() < LIMIT, "the standby caught up")
    finally:
        if paused:
            replica_pair.resume_replay()
        storage.close()
        drop_pg_database(url, admin)
