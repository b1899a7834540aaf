"""What an insert into ``runs`` costs as the table grows, by the shape of the user ids.

On PostgreSQL every run inserted is checked against the no-overlap exclusion constraint of the
contract, ``EXCLUDE USING gist (user_id WITH =, span WITH &&)``: an index search and an index
insert in a GiST over text keys (btree_gist). This loads runs (34 a user, as a year of marks
gives, each user's spans of its own: a run every 11 days, 1 to 8 days long, starting a day
early or late) into tables of that shape a chunk at a time, all variants in turn chunk by
chunk so that the machine's load falls on each alike, and prints the time of each chunk:

* ``seeded``: the contract's constraint, ids as ``potato-ops seed`` makes them (time-ordered
  layout: every id shares the seed's and the index's leading digits), written in user order;
* ``mixed``: the seeded ids with one random UUID every ``--mixed-every`` users, as the seed
  once gave an orphan run's missing user (1% of users damaged, a sixth of them orphans);
* ``random``: the contract's constraint, random UUIDs (as the app gives a user with no id);
* ``hashed``: the seeded ids under ``EXCLUDE USING gist ((hashtext(user_id)) WITH =, user_id
  WITH =, span WITH &&)``, the same rule (equal ids have equal hashes) led by an integer key;
* ``btree`` (the baseline): the seeded ids with no exclusion constraint, only the btree on
  ``(user_id, start_date)`` every shape has.

The growth column is the last chunk's time over the first's: 1.0 is an insert whose cost does
not depend on the table's size.

    .venv/bin/python benchmarks/runs_constraint.py --runs 1000000

Exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find the sibling
from benchmarks.bulk import DEFAULT_PG_ADMIN_URL, database, print_machine
from potato_ops.demo.synth import SeededUserIds

RUNS_PER_USER = 34
VARIANTS = {
    "seeded": ("seeded_ids", "EXCLUDE USING gist (user_id WITH =, span WITH &&)"),
    "mixed": ("mixed_ids", "EXCLUDE USING gist (user_id WITH =, span WITH &&)"),
    "random": ("random_ids", "EXCLUDE USING gist (user_id WITH =, span WITH &&)"),
    "hashed": ("seeded_ids", "EXCLUDE USING gist ((hashtext(user_id)) WITH =, user_id WITH =, span WITH &&)"),
    "btree": ("seeded_ids", None),
}


def _load_ids(conn: psycopg.Connection, users: int, mixed_every: int) -> None:
    rng = random.Random(1)
    conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    for table in ("seeded_ids", "mixed_ids", "random_ids"):
        conn.execute(f"CREATE TABLE {table} (n integer PRIMARY KEY, user_id text NOT NULL)")
    with conn.cursor() as cur:
        with cur.copy("COPY seeded_ids (n, user_id) FROM STDIN") as copy:
            for n, uid in enumerate(SeededUserIds(42, users), start=1):
                copy.write_row((n, uid))
        with cur.copy("COPY mixed_ids (n, user_id) FROM STDIN") as copy:
            for n, uid in enumerate(SeededUserIds(42, users), start=1):
                if n % mixed_every == 0:
                    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                copy.write_row((n, uid))
        with cur.copy("COPY random_ids (n, user_id) FROM STDIN") as copy:
            for n in range(1, users + 1):
                copy.write_row((n, str(uuid.UUID(int=rng.getrandbits(128), version=4))))
    for name, (_ids, exclusion) in VARIANTS.items():
        extra = f", {exclusion}" if exclusion else ""
        conn.execute(
            f"CREATE TABLE runs_{name} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            f"user_id text NOT NULL, start_date date NOT NULL, end_date date NOT NULL, "
            f"span daterange GENERATED ALWAYS AS (daterange(start_date, end_date, '[]')) STORED{extra})"
        )
        conn.execute(f"CREATE INDEX ON runs_{name} (user_id, start_date)")
    conn.commit()


def _insert_chunk(conn: psycopg.Connection, name: str, first: int, last: int) -> float:
    ids = VARIANTS[name][0]
    t0 = time.perf_counter()
    conn.execute(
        f"INSERT INTO runs_{name} (user_id, start_date, end_date) "
        f"SELECT i.user_id, s, s + (hashint4(i.n * 64 + k) & 7) "
        f"FROM {ids} i CROSS JOIN generate_series(0, {RUNS_PER_USER - 1}) k, "
        f"LATERAL (SELECT DATE '2025-01-01' + k * 11 + (hashint4(i.n * 64 + k) >> 8 & 1) AS s) d "
        f"WHERE i.n BETWEEN %s AND %s ORDER BY i.n, k",
        (first, last),
    )
    conn.commit()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs loaded into each table")
    parser.add_argument("--chunk", type=int, default=100_000, help="runs per insert")
    parser.add_argument("--mixed-every", type=int, default=600, help="users per random id in 'mixed'")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    users_per_chunk = max(1, args.chunk // RUNS_PER_USER)
    chunks = max(1, args.runs // (users_per_chunk * RUNS_PER_USER))
    print_machine()
    per_run = users_per_chunk * RUNS_PER_USER
    print(f"{chunks} chunks of {per_run:,} runs ({users_per_chunk:,} users) per table")
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with (
        database("postgres", args.pg_admin_url) as url,
        psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn,
    ):
        _load_ids(conn, chunks * users_per_chunk, args.mixed_every)
        print(f"{'runs so far':>12}" + "".join(f"{name:>10}" for name in VARIANTS), flush=True)
        for c in range(chunks):
            first = c * users_per_chunk + 1
            for name in VARIANTS:
                seconds[name].append(_insert_chunk(conn, name, first, first + users_per_chunk - 1))
            if c in (0, chunks - 1) or (c + 1) % max(1, chunks // 10) == 0:
                row = "".join(f"{seconds[name][-1]:>9.2f}s" for name in VARIANTS)
                print(f"{(c + 1) * per_run:>12,}{row}", flush=True)
    base = sum(seconds["btree"])
    print(f"\n{'table':>8}{'first':>9}{'last':>9}{'growth':>8}{'total':>9}{'us/run':>8}{'/ btree':>9}")
    for name, times in seconds.items():
        total = sum(times)
        print(
            f"{name:>8}{times[0]:>8.2f}s{times[-1]:>8.2f}s{times[-1] / times[0]:>8.2f}"
            f"{total:>8.1f}s{total / (per_run * len(times)) * 1e6:>8.1f}{total / base:>9.2f}"
        )


if __name__ == "__main__":
    main()
