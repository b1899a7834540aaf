"""What change capture costs the app, and what the app's writes cost a bulk rebuild.

Measured on SQLite and PostgreSQL, each on a fresh database of ``--users`` users x ``--days``
days:

* the app's write latency (p50/p99): one transaction that marks a day, or flips it, for a
  random user (an upsert, then commit), with the capture trigger disabled and enabled, in
  alternating rounds so that load drift hits both alike; the target is under 20% added at p50.
  Twice: with the commit flushed to disk (as the app runs), and without waiting for the disk,
  where the trigger's share of the write is largest;
* a bulk rebuild's wall time (batch 200, workers 2, a quarter of the users with one run
  deleted) alone, and again while an app thread toggles random users' marks until the
  operation is 60% done; with the second: the app's writes, the users caught up, and whether
  the invariant scan is clean afterwards.

    python benchmarks/app_writes.py [--users 5000] [--days 60] [--writes 1500] [--backends sqlite,postgres]

``--scenario`` runs instead the whole story as an operator and the app would, through the
command: ``potato-ops seed``, one run deleted for a quarter of the users, then
``potato-ops bulk-rebuild --all --execute --batch-size 200 --workers 2`` while an app process
(this script with ``--app``) toggles random users' marks in its own short transactions until
the operation is 60% done, then ``potato-ops validate``:

    python benchmarks/app_writes.py --scenario --users 30000 --days 60 [--backends sqlite,postgres]

PostgreSQL: the server at $POTATO_BENCH_PG_URL (default postgres@127.0.0.1:5432); the script
creates its own database there and drops it at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from potato_ops import BulkConfig, Storage
from potato_ops.db.capture import TRIGGER, install_capture
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.demo.synth import seed
from potato_ops.ops.bulk.results import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find the sibling
from benchmarks.bulk import database

PG_ADMIN_URL = os.environ.get("POTATO_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ROUNDS = 10


def set_capture(engine: Engine, on: bool) -> None:
    """Enable or disable the capture trigger(s) on day_marks."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE day_marks {'ENABLE' if on else 'DISABLE'} TRIGGER {TRIGGER}"))
        elif not on:
            for suffix in ("insert", "update", "delete"):
                conn.execute(text(f"DROP TRIGGER IF EXISTS {TRIGGER}_{suffix}"))
    if on and engine.dialect.name == "sqlite":
        install_capture(engine)


def toggle(engine: Engine, uid: str, day: object) -> None:
    """The app's write: mark the day, or flip it, in a transaction of its own."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO day_marks (user_id, date, value) VALUES (:u, :d, true) "
                "ON CONFLICT (user_id, date) DO UPDATE SET value = NOT day_marks.value"
            ),
            {"u": uid, "d": day},
        )


def write_latency(
    url: str, users: list[str], days: int, writes: int, *, flush: bool
) -> dict[bool, list[float]]:
    """Return the app's write latencies (ms) with capture off (False) and on (True).

    ``flush`` False: the app's commits do not wait for the disk (``synchronous_commit = off``,
    SQLite ``synchronous = OFF``), which leaves the statement's own cost and shows capture's
    share at its largest.
    """
    app = create_engine(url)
    if not flush:
        setting = (
            "SET synchronous_commit = off" if app.dialect.name == "postgresql" else "PRAGMA synchronous = OFF"
        )

        @event.listens_for(app, "connect")
        def _no_flush(dbapi_connection: Any, _record: Any) -> None:
            cur = dbapi_connection.cursor()
            cur.execute(setting)
            cur.close()

    admin = create_engine(url)
    rng = random.Random(5)
    first = datetime.now(UTC).date() - timedelta(days=days)
    found: dict[bool, list[float]] = {False: [], True: []}
    per_round = max(writes // ROUNDS, 1)
    for k in range(2 * ROUNDS):
        on = k % 2 == 1
        set_capture(admin, on)
        for _ in range(per_round):
            uid, day = rng.choice(users), first + timedelta(days=rng.randrange(days))
            t0 = time.perf_counter()
            toggle(app, uid, day)
            found[on].append((time.perf_counter() - t0) * 1000)
    set_capture(admin, True)
    app.dispose()
    admin.dispose()
    return found


def damage(storage: Storage, users: list[str], share: float) -> int:
    """Delete one run of a share of the users; return how many users were damaged."""
    picked = random.Random(9).sample(users, int(len(users) * share))
    with storage.engine.begin() as conn:
        for uid in picked:
            conn.execute(
                text(
                    "DELETE FROM runs WHERE user_id = :u "
                    "AND id = (SELECT min(id) FROM runs WHERE user_id = :u)"
                ),
                {"u": uid},
            )
    return len(picked)


def bulk(storage: Storage, url: str, users: list[str], days: int, *, app_writes: bool) -> dict[str, float]:
    """Run a bulk rebuild (optionally with the app writing until 60%); return its figures."""
    stop = threading.Event()
    count = [0]
    app = create_engine(url)
    first = datetime.now(UTC).date() - timedelta(days=days)

    def writer() -> None:
        rng = random.Random(13)
        while not stop.is_set():
            toggle(app, rng.choice(users), first + timedelta(days=rng.randrange(days)))
            count[0] += 1

    def progress(p: Progress) -> None:
        if p.processed_users >= 0.6 * p.total_users and not stop.is_set():
            stop.set()
            if app_writes:
                thread.join()

    thread = threading.Thread(target=writer, daemon=True)
    if app_writes:
        thread.start()
    t0 = time.perf_counter()
    result = storage.bulk_rebuild_users(
        users, BulkConfig(batch_size=200, max_workers=2, dry_run=False), progress=progress
    )
    wall = time.perf_counter() - t0
    stop.set()
    if thread.is_alive():
        thread.join()
    app.dispose()
    clean = storage.validate_invariants().total == 0
    return {
        "wall_s": wall,
        "status_completed": float(result.status == "completed"),
        "app_writes": float(count[0]),
        "caught_up": float(result.caught_up_users),
        "clean": float(clean),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def run(backend: str, users_count: int, days: int, writes: int) -> None:
    with database(backend, PG_ADMIN_URL) as url:
        storage = Storage.connect(url)
        storage.create_schema()
        storage.set_feature_flag(RUNS_V2_FLAG, True)
        seeded = seed(storage.engine, users_count=users_count, days=days, now=storage.now())
        users = list(seeded.user_ids)

        print(f"{backend}: {users_count:,} users x {days} days, {writes} app writes per mode")
        for flush in (True, False):
            lat = write_latency(url, users, days, writes, flush=flush)
            off50, on50 = statistics.median(lat[False]), statistics.median(lat[True])
            off99, on99 = pct(lat[False], 0.99), pct(lat[True], 0.99)
            how = "commit flushed to disk" if flush else "commit not waiting for the disk"
            print(
                f"  app write, {how}: p50 capture off {off50:.3f} ms, on {on50:.3f} ms "
                f"({on50 / off50 - 1:+.1%}; target < +20%); p99 off {off99:.3f} ms, on {on99:.3f} ms "
                f"({on99 / off99 - 1:+.1%})"
            )

        damage(storage, users, 0.25)
        alone = bulk(storage, url, users, days, app_writes=False)
        damage(storage, users, 0.25)
        busy = bulk(storage, url, users, days, app_writes=True)
        print(
            f"  bulk (batch 200, workers 2, a quarter damaged): alone {alone['wall_s']:.2f} s; "
            f"with the app writing until 60% {busy['wall_s']:.2f} s "
            f"({busy['wall_s'] / alone['wall_s']:.2f}x), "
            f"{busy['app_writes']:.0f} app writes, {busy['caught_up']:.0f} users caught up, "
            f"completed {'yes' if busy['status_completed'] else 'NO'}, "
            f"validate {'clean' if busy['clean'] and alone['clean'] else 'NOT CLEAN'}"
        )
        storage.close()


def app_process(url: str, days: int) -> int:
    """The app: toggle random users' marks until the running operation is 60% done."""
    engine = create_engine(url)
    with engine.connect() as conn:
        users = [u for (u,) in conn.execute(text("SELECT id FROM users"))]
    rng = random.Random(17)
    first = datetime.now(UTC).date() - timedelta(days=days)
    writes: list[tuple[str, datetime]] = []
    committed: list[datetime] = []
    progress_sql = text(
        "SELECT o.id, o.status, count(*), sum(CASE WHEN i.status <> 'pending' THEN 1 ELSE 0 END) "
        "FROM ops_operations o JOIN ops_operation_items i ON i.operation_id = o.id "
        "WHERE NOT o.dry_run GROUP BY o.id, o.status"
    )
    operation = None
    while True:
        with engine.connect() as conn:
            found = conn.execute(progress_sql).first()
        if found is not None:
            operation = found[0]
            if found[1] != "running" or found[3] >= 0.6 * found[2]:
                if found[1] != "running":
                    print(f"app: the operation was {found[1]} before the app saw it 60% done", flush=True)
                break
        uid = rng.choice(users)
        before = datetime.now(UTC)
        toggle(engine, uid, first + timedelta(days=rng.randrange(days + 2)))
        writes.append((uid, before))
        committed.append(datetime.now(UTC))
    ended = None
    while ended is None:  # the app has stopped; wait for the operation to end, for the figures
        time.sleep(0.5)
        with engine.connect() as conn:
            status, at = conn.execute(
                text("SELECT status, finished_at FROM ops_operations WHERE id = :op"), {"op": operation}
            ).one()
        if status != "running":
            ended = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
    ended = ended if ended.tzinfo else ended.replace(tzinfo=UTC)
    late = sum(at > ended for at in committed)
    with engine.connect() as conn:
        finished = {
            uid: at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
            for uid, at in conn.execute(
                text(
                    "SELECT user_id, finished_at FROM ops_operation_items "
                    "WHERE operation_id = :op AND finished_at IS NOT NULL"
                ),
                {"op": operation},
            )
        }
    after = 0
    for uid, at in writes:
        done = finished.get(uid)
        if done is not None and at > (done if done.tzinfo else done.replace(tzinfo=UTC)):
            after += 1
    print(
        f"app: {len(writes)} writes, {after} of them after their user's batch had finished; "
        f"{late} still committing after the operation ended",
        flush=True,
    )
    engine.dispose()
    return 0


def scenario(backend: str, users_count: int, days: int) -> None:
    """Seed, damage, bulk-rebuild through the command while the app writes, then validate."""
    import subprocess

    command = str(Path(sys.executable).parent / "potato-ops")
    with database(backend, PG_ADMIN_URL) as url:
        env = {**os.environ, "POTATO_DATABASE_URL": url}

        def sh(*args: str) -> subprocess.CompletedProcess[str]:
            done = subprocess.run([command, *args], env=env, capture_output=True, text=True)
            print(f"$ potato-ops {' '.join(args)}  -> exit {done.returncode}")
            for line in (done.stdout + done.stderr).strip().splitlines()[-6:]:
                print(f"    {line}")
            return done

        print(f"{backend}: scenario, {users_count:,} users x {days} days")
        sh("init-db")
        t0 = time.perf_counter()
        sh("seed", "--users", str(users_count), "--days", str(days))
        print(f"    seeded in {time.perf_counter() - t0:.0f} s")
        storage = Storage.connect(url)
        print(f"    damaged {damage(storage, [u.id for u in storage.get_all_users()], 0.25)} users")
        storage.close()
        app = subprocess.Popen(
            [sys.executable, __file__, "--app", url, "--days", str(days)], env=env, text=True
        )
        t0 = time.perf_counter()
        sh("bulk-rebuild", "--all", "--execute", "--batch-size", "200", "--workers", "2", "-q")
        print(f"    bulk wall time {time.perf_counter() - t0:.1f} s")
        app.wait()
        sh("validate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--writes", type=int, default=1500, help="app writes per mode (off / on)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--scenario", action="store_true", help="the whole story, through the command")
    parser.add_argument("--app", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.app:
        return app_process(args.app, args.days)
    for backend in args.backends.split(","):
        if args.scenario:
            scenario(backend.strip(), args.users, args.days)
        else:
            run(backend.strip(), args.users, args.days, args.writes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
