"""The app's latency while a bulk rebuild runs, unthrottled and throttled, on a primary with a standby.

An app workload, as Project Potato's clients make it: ``--clients`` threads, each in a loop
marking a day of a random user (an upsert of ``day_marks`` in its own short transaction) and
reading that user's runs, with a short pause between requests. Three phases, the same workload:

* idle: the app alone, ``--idle-seconds``;
* unthrottled: a real bulk rebuild of every user (every run deleted first, so each user's runs
  are written again) with ``--workers`` and ``--batch-size``, flat out;
* throttled: the same bulk with the throttle on: ``--nice-ratio``, ``--max-replica-lag``,
  ``--batch-seconds`` and one worker.

For each phase: the app's request count, p50 and p99 latency (and p99 as a ratio to idle), the
bulk's wall time, and the standby's peak replay lag (sampled from ``pg_stat_replication``
every 0.1 s). The database is a fresh one made on the primary at ``--url`` (default
``$POTATO_TEST_REPLICA_URL``, the pair ``.ci/run`` starts with ``shared/replica/pair.sh``)
and dropped after.

    bash ../shared/replica/pair.sh start /var/tmp/pair 9740
    POTATO_TEST_REPLICA_URL=postgresql+psycopg://postgres@127.0.0.1:9740/postgres \\
        .venv/bin/python benchmarks/online.py

Prints one table; exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, create_engine, text

from potato_ops import BulkConfig, Storage
from potato_ops.db.health import standby_lags
from potato_ops.demo.synth import seed
from potato_ops.domain.sizes import format_size

NOW = datetime.now(UTC)


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    bulk_seconds: float | None = None
    peak_lag: int = 0
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


class App:
    """The app's clients: mark a day, read the runs, pause, again; latencies into the phase."""

    def __init__(self, engine: Engine, user_ids: list[str], clients: int, think_s: float) -> None:
        self.engine, self.user_ids, self.clients, self.think_s = engine, user_ids, clients, think_s
        self.phase: Phase | None = None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, seed_value: int) -> None:
        rng = random.Random(seed_value)
        mark = text(
            "INSERT INTO day_marks (user_id, date, value) VALUES (:u, :d, true) "
            "ON CONFLICT (user_id, date) DO UPDATE SET value = NOT day_marks.value, updated_at = now()"
        )
        read = text(
            "SELECT start_date, end_date, day_count, active FROM runs WHERE user_id = :u ORDER BY start_date"
        )
        while not self.stop.is_set():
            uid = rng.choice(self.user_ids)
            day = NOW.date() - timedelta(days=rng.randrange(0, 400))
            t0 = time.perf_counter()
            with self.engine.begin() as conn:
                conn.execute(mark, {"u": uid, "d": day})
            with self.engine.connect() as conn:
                conn.execute(read, {"u": uid}).all()
            ms = (time.perf_counter() - t0) * 1000
            phase = self.phase
            if phase is not None:
                phase.latencies_ms.append(ms)
            self.stop.wait(self.think_s)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


class LagSampler:
    """The standby's replay lag, sampled every 0.1 s; the peak kept for the current phase."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.phase: Phase | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.standbys = 0

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            with self.engine.connect() as conn:
                lags = standby_lags(conn)
            self.standbys = len(lags)
            phase = self.phase
            if phase is not None:
                phase.peak_lag = max([phase.peak_lag, *(s.lag_bytes or 0 for s in lags)])

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def measure(name: str, app: App, sampler: LagSampler, work: Callable[[Phase], None]) -> Phase:
    """Run one phase: the app's latencies and the standby's peak lag while ``work`` runs."""
    phase = Phase(name)
    app.phase = sampler.phase = phase
    work(phase)
    app.phase = sampler.phase = None
    return phase


def bulk_phase(storage: Storage, config: BulkConfig) -> Callable[[Phase], None]:
    def work(phase: Phase) -> None:
        with storage.engine.begin() as conn:
            conn.execute(text("DELETE FROM runs"))  # every user's runs to write again
        t0 = time.perf_counter()
        result = storage.bulk_rebuild_users(None, config)
        phase.bulk_seconds = time.perf_counter() - t0
        waited = sum(result.throttled_seconds.values())
        phase.note = f"{result.status}, {result.completed_users} users" + (
            f", waited {waited:.1f} s" if waited else ""
        )

    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("POTATO_TEST_REPLICA_URL"), help="the primary's URL")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--think-ms", type=float, default=20.0, help="each client's pause between requests")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--nice-ratio", type=float, default=2.0)
    parser.add_argument("--max-replica-lag", default="4MB")
    parser.add_argument("--batch-seconds", type=float, default=0.05)
    args = parser.parse_args(argv)
    if not args.url:
        print("give --url or set POTATO_TEST_REPLICA_URL (a primary with a standby)", file=sys.stderr)
        return 1

    name = f"potato_online_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.url.rsplit("/", 1)[0] + "/" + name
    storage = Storage.connect(url)
    app_engine = create_engine(url, pool_size=args.clients + 2)
    try:
        storage.create_schema()
        storage.set_feature_flag("ff.potato.runs_v2", True)
        seeded = seed(storage.engine, users_count=args.users, days=args.days, now=NOW)
        with storage.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
        app = App(app_engine, list(seeded.user_ids), args.clients, args.think_ms / 1000)
        sampler = LagSampler(storage.engine)
        app.start()
        sampler.start()
        try:

            def idle(_: Phase) -> None:
                threading.Event().wait(args.idle_seconds)

            phases = [measure("idle", app, sampler, idle)]
            flat = BulkConfig(
                batch_size=args.batch_size, max_workers=args.workers, dry_run=False, skip_backup=True
            )
            phases.append(measure("bulk, unthrottled", app, sampler, bulk_phase(storage, flat)))
            gentle = BulkConfig(
                batch_size=args.batch_size,
                max_workers=1,
                dry_run=False,
                skip_backup=True,
                nice_ratio=args.nice_ratio,
                max_replica_lag=args.max_replica_lag,
                batch_seconds=args.batch_seconds,
                min_batch_size=5,
                max_batch_size=max(args.batch_size * 5, 5),
            )
            phases.append(measure("bulk, throttled", app, sampler, bulk_phase(storage, gentle)))
        finally:
            app.close()
            sampler.close()
    finally:
        storage.close()
        app_engine.dispose()
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    idle_p99 = phases[0].pct(0.99)
    print(
        f"online: {args.users:,} users x {args.days} days, {args.clients} app clients "
        f"(mark a day + read runs, {args.think_ms:g} ms apart), standbys seen: {sampler.standbys}; "
        f"throttled = --nice-ratio {args.nice_ratio:g} --max-replica-lag {args.max_replica_lag} "
        f"--batch-seconds {args.batch_seconds:g} --workers 1; unthrottled = --workers {args.workers} "
        f"--batch-size {args.batch_size}; {os.cpu_count()} cores, {date.today()}"
    )
    print(
        f"{'phase':<20} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99/idle':>9} "
        f"{'bulk s':>8} {'peak lag':>10}  bulk"
    )
    for p in phases:
        bulk = "-" if p.bulk_seconds is None else f"{p.bulk_seconds:.1f}"
        print(
            f"{p.name:<20} {len(p.latencies_ms):>8} {p.pct(0.5):>8.1f} {p.pct(0.99):>8.1f} "
            f"{p.pct(0.99) / idle_p99:>9.2f} {bulk:>8} {format_size(p.peak_lag):>10}  {p.note}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
