"""Synthetic Project Potato data: streaky marks over many timezones, and injected corruption.

``seed`` writes users, day marks (marked and un-marked rows) and correct runs, corrupting a
fraction of users with one invariant kind each and saying which, so detection can be tested for
zero misses and zero false alarms. Kinds the database's constraints refuse (overlap and a
second active run on PostgreSQL, a second active run on SQLite) are skipped on that database.

It streams: users are generated, corrupted and written a chunk at a time, so memory does not
grow with the user count; on PostgreSQL several workers can write chunks at once. Everything
is drawn in user order from generators seeded by ``seed_value`` alone, so neither the chunk
size nor the workers change the data.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, overload

from potato_ops.db.engine import write_transaction
from potato_ops.db.reads import fetch_runs, fetch_user
from potato_ops.db.run_writes import delete_runs, insert_runs, update_run
from potato_ops.db.seed_sink import ORPHAN_DAYS, ORPHAN_START_DAYS_BACK, SeedChunk, write_chunk
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import Run, ViolationKind

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger("potato_ops")

ZONES: tuple[str, ...] = (
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/New_York",
    "Europe/London",
    "UTC",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "Europe/Berlin",
    "America/St_Johns",
    "Asia/Kathmandu",
)
# What each database can hold; the others are refused by its constraints.
CORRUPTIONS_POSTGRES: tuple[str, ...] = (
    ViolationKind.MALFORMED,
    ViolationKind.ADJACENT,
    ViolationKind.PHANTOM_DAY,
    ViolationKind.UNCOVERED_DAY,
    ViolationKind.STALE_ACTIVE,
    ViolationKind.ORPHAN,
)
CORRUPTIONS_SQLITE: tuple[str, ...] = (*CORRUPTIONS_POSTGRES, ViolationKind.OVERLAP)
# Rows (marks) buffered before a chunk is written: about 20 MB of Python objects.
CHUNK_ROWS = 100_000
STAY = 0.86  # P(mark tomorrow | marked today): streaks of about a week
MAX_USERS = 2**32  # the user's index takes four bytes of its id
_VERSION_MASK = 0xF << 76
_VERSION_8 = 0x8 << 76
_VARIANT_MASK = 0x3 << 62
_VARIANT_RFC4122 = 0x2 << 62


class SeededUserIds(Sequence[str]):
    """The seeded users' ids, in order, computed on demand (a million ids cost no memory).

    Ids sort in user order, so a seed appends to every index on ``user_id``.
    """

    def __init__(self, seed_value: int, count: int, prefix: str = "") -> None:
        if not 0 <= count <= MAX_USERS:
            raise ValueError(f"between 0 and {MAX_USERS:,} users can be seeded")
        self._seed = seed_value
        self._count = count
        self._prefix = prefix
        self._head = hashlib.blake2b(f"{seed_value}".encode(), digest_size=2).digest()

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._id(i) for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("user index out of range")
        return self._id(index)

    def __iter__(self) -> Iterator[str]:
        return (self._id(i) for i in range(self._count))

    def neighbour(self, i: int, bits: int) -> str:
        """Return an id that sorts beside user ``i``'s and is nobody's: other trailing bits.

        An orphan run's missing user takes one, so that every seeded id shares the layout: a
        random UUID among time-ordered ones widens the key range of each GiST page it lands in
        (the runs' no-overlap constraint on PostgreSQL), and each later insert then searches
        every page whose range covers its id.
        """
        tail = bits.to_bytes(16, "big")[6:]
        ghost = self._layout(i, tail)
        if ghost == self._id(i):  # one chance in 2**74; a bit the layout keeps tells them apart
            ghost = self._layout(i, bytes([tail[0] ^ 1]) + tail[1:])
        return ghost

    def _tail(self, i: int) -> bytes:
        return hashlib.blake2b(f"{self._seed}:{i}".encode(), digest_size=16).digest()[6:]

    def _id(self, i: int) -> str:
        # Ordered like a time-ordered UUID: two bytes of the seed, then the user's index, then
        # random bits, with the version-8 (custom layout) and RFC 4122 variant bits set. Users
        # are written in index order, so every index on user_id grows at its right edge
        # instead of being written at random places (which slowed a large seed tenfold).
        return self._layout(i, self._tail(i))

    def _layout(self, i: int, tail: bytes) -> str:
        value = int.from_bytes(self._head + i.to_bytes(4, "big") + tail, "big")
        value = (value & ~_VERSION_MASK) | _VERSION_8
        value = (value & ~_VARIANT_MASK) | _VARIANT_RFC4122
        return self._prefix + str(uuid.UUID(int=value))


@dataclass(frozen=True)
class SeedResult:
    """What ``seed`` wrote."""

    user_ids: SeededUserIds
    marks_written: int
    runs_written: int
    corrupted: dict[str, str]  # user id -> the invariant kind injected
    end_date: date
    skipped_kinds: list[str] = field(default_factory=list)

    @property
    def corrupted_users(self) -> set[str]:
        """Return the ids of every corrupted user (orphans included)."""
        return set(self.corrupted)


def _streaky_indices(
    rng: random.Random, days: int, density: float, unmarked_share: float
) -> tuple[list[int], list[int]]:
    """Return (marked day indices, un-marked day indices that get a ``false`` row), sorted."""
    # Chosen so that the long-run share of marked days is ``density``.
    start_again = min(max((1 - STAY) * density / (1 - density), 0.05), 0.95)
    rnd = rng.random
    marked: list[int] = []
    unmarked: list[int] = []
    on = rnd() < density
    for k in range(days):
        if on:
            marked.append(k)
        elif unmarked_share and rnd() < unmarked_share:
            unmarked.append(k)
        on = rnd() < (STAY if on else start_again)
    return marked, unmarked


def _group(marked: list[int]) -> list[list[int]]:
    """Return [start, end] index pairs of the consecutive stretches of sorted ``marked``."""
    spans: list[list[int]] = []
    for k in marked:
        if spans and spans[-1][1] == k - 1:
            spans[-1][1] = k
        else:
            spans.append([k, k])
    return spans


# A run as the seeder handles it: [start index, end index, day_count, active].
SeedRun = list[int]


def _corrupt_runs(runs: list[SeedRun], kind: str, today: int) -> bool:
    """Inject one kind of corruption into one user's runs in place; False if they can't hold it.

    Days are integers on any scale (day indices, date ordinals); ``runs`` are sorted by start.
    """
    if not runs:
        return False
    if kind == ViolationKind.MALFORMED:
        runs[len(runs) // 2][2] += 1
        return True
    if kind == ViolationKind.UNCOVERED_DAY:
        gone = next((x for x in runs if not x[3]), None)
        if gone is None:
            return False
        runs.remove(gone)
        return True
    if kind == ViolationKind.ADJACENT:
        split = next((x for x in runs if x[2] >= 2 and not x[3]), None)
        if split is None:
            return False
        runs.append([split[0] + 1, split[1], split[2] - 1, 0])
        split[1], split[2] = split[0], 1
        return True
    if kind == ViolationKind.PHANTOM_DAY:
        # Stretch an early run one day into an unmarked day, away from its neighbour.
        for a, b in pairwise(runs):
            if b[0] - a[1] >= 3 and not a[3]:
                a[1] += 1
                a[2] += 1
                return True
        return False
    if kind == ViolationKind.STALE_ACTIVE:
        flagged = next((x for x in runs if x[3]), None)
        if flagged is not None:
            flagged[3] = 0
            return True
        stale = next((x for x in runs if x[1] < today - 2), None)
        if stale is None:
            return False
        stale[3] = 1
        return True
    if kind == ViolationKind.OVERLAP:
        base = next((x for x in runs if x[2] >= 2 and not x[3]), None)
        if base is None:
            return False
        runs.append([base[0] + 1, base[1], base[2] - 1, 0])
        return True
    raise ValueError(f"unknown corruption kind {kind!r}")


@dataclass
class _Corrupter:
    """Picks exactly ``how_many`` users from a stream of ``total`` (selection sampling)."""

    rng: random.Random
    total: int
    how_many: int
    kinds: Sequence[str]
    done: dict[str, str]
    seen: int = 0

    def pick(self) -> str | None:
        """Return the kind to inject into the next user of the stream, or None to leave it."""
        left = self.total - self.seen
        self.seen += 1
        need = self.how_many - len(self.done)
        if need <= 0 or not self.kinds or self.rng.random() * left >= need:
            return None
        return self.kinds[len(self.done) % len(self.kinds)]

    def ghost_bits(self) -> int:
        """Return fresh random bits for an orphan run's missing user's id."""
        return self.rng.getrandbits(128)


@dataclass(frozen=True)
class SeedPlan:
    """What to generate: the users, their history, the damage, and the chunk size."""

    users_count: int
    now: datetime
    days: int = 365
    corrupt: float = 0.0
    seed_value: int = 42
    unmarked_rows: float = 0.25
    with_runs: bool = True
    id_prefix: str = ""
    chunk_rows: int = CHUNK_ROWS
    kinds: Sequence[str] = CORRUPTIONS_SQLITE

    def __post_init__(self) -> None:
        bad = self.users_count < 0 or self.days < 1 or self.chunk_rows < 1
        if bad or not 0 <= self.corrupt <= 1:
            raise ValueError(
                "users_count >= 0, days >= 1, chunk_rows >= 1 and 0 <= corrupt <= 1 are required"
            )

    @property
    def user_ids(self) -> SeededUserIds:
        """Return the users' ids, in order."""
        return SeededUserIds(self.seed_value, self.users_count, self.id_prefix)

    @property
    def end(self) -> date:
        """Return the last day of history."""
        return self.now.date()


def generate(plan: SeedPlan, corrupted: dict[str, str]) -> Iterator[SeedChunk]:
    """Yield chunks of whole users in order, each a new object the caller may keep.

    Fills ``corrupted`` (user id -> kind injected) as it goes.
    """
    rng = random.Random(plan.seed_value)
    corrupter = _Corrupter(
        random.Random(f"corrupt:{plan.seed_value}"),
        plan.users_count,
        round(plan.users_count * plan.corrupt),
        plan.kinds,
        corrupted,
    )
    days, end = plan.days, plan.end
    first = end - timedelta(days=days - 1)
    today_index = {tz: (local_today(tz, plan.now) - first).days for tz in ZONES}
    chunk = SeedChunk(first, days, end)
    for i, uid in enumerate(plan.user_ids):
        tz = ZONES[i % len(ZONES)] if i < len(ZONES) else rng.choice(ZONES)
        marked, unmarked = _streaky_indices(rng, days, 0.66, plan.unmarked_rows)
        user_runs: list[SeedRun] = []
        today = today_index[tz]
        if plan.with_runs:
            user_runs = [[s, e, e - s + 1, int(s <= today and e >= today - 1)] for s, e in _group(marked)]
        kind = corrupter.pick()
        if kind == ViolationKind.ORPHAN:
            ghost = plan.user_ids.neighbour(i, corrupter.ghost_bits())
            chunk.add_orphan(ghost)
            corrupted[ghost] = kind
        elif kind is not None and _corrupt_runs(user_runs, kind, today):
            corrupted[uid] = kind
        chunk.add_user(uid, f"{plan.id_prefix}user{i:06d}@example.com", tz, marked, unmarked, user_runs)
        if chunk.rows >= plan.chunk_rows:
            yield chunk
            chunk = SeedChunk(first, days, end)
    if chunk.users:
        yield chunk


def seed(
    engine: Engine,
    *,
    users_count: int,
    days: int = 365,
    corrupt: float = 0.0,
    seed_value: int = 42,
    now: datetime,
    unmarked_rows: float = 0.25,
    with_runs: bool = True,
    id_prefix: str = "",
    progress: Callable[[int], object] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    workers: int = 1,
) -> SeedResult:
    """Return what was written: users with streaky marks and correct runs, a share corrupted.

    Each chunk of about ``chunk_rows`` marks is generated, corrupted and written in its own
    transaction, then reported to ``progress`` as a number of users; a failure leaves the
    chunks already written (every user whole: with its marks and runs) and raises.

    ``workers`` > 1 (PostgreSQL only) writes that many chunks at once, each on a connection of
    its own, while the next are generated: the server's index maintenance, not Python, is what
    a large seed waits on, and each worker keeps a server process busy. At most two chunks per
    worker are held at a time, so memory stays flat; the rows are the same as with one worker,
    only the order in which chunks commit differs.
    """
    refusal = workers_refusal(engine.dialect.name, workers)
    if refusal:
        raise ValueError(refusal)
    kinds = CORRUPTIONS_POSTGRES if engine.dialect.name == "postgresql" else CORRUPTIONS_SQLITE
    plan = SeedPlan(
        users_count, now, days, corrupt, seed_value, unmarked_rows, with_runs, id_prefix, chunk_rows, kinds
    )
    corrupted: dict[str, str] = {}
    chunks = generate(plan, corrupted)
    written = _Written(progress)
    if workers == 1:
        for chunk in chunks:
            written.add(_write_whole(engine, chunk))
    else:
        _write_concurrently(engine, chunks, workers, written)
    skipped = sorted(set(CORRUPTIONS_SQLITE) - set(kinds))
    return SeedResult(plan.user_ids, written.marks, written.runs, corrupted, plan.end, skipped)


def workers_refusal(dialect: str, workers: int) -> str | None:
    """Return why ``workers`` chunks at once can't be written on ``dialect``, or None if they can."""
    if workers < 1:
        return f"--workers {workers}: at least 1 is needed"
    if workers > 1 and dialect != "postgresql":
        return f"--workers {workers} needs PostgreSQL; {dialect} takes one writer at a time"
    return None


@dataclass
class _Written:
    """Rows written so far, reported to the progress callback a chunk at a time."""

    progress: Callable[[int], object] | None
    marks: int = 0
    runs: int = 0

    def add(self, counts: tuple[int, int, int]) -> None:
        users, marks, runs = counts
        self.marks += marks
        self.runs += runs
        if self.progress:
            self.progress(users)


def _write_whole(engine: Engine, chunk: SeedChunk) -> tuple[int, int, int]:
    """Return (users, marks, runs) of the chunk, written in one transaction of its own."""
    with write_transaction(engine) as conn:
        marks, runs = write_chunk(conn, chunk)
    return len(chunk.users), marks, runs


def _write_concurrently(engine: Engine, chunks: Iterator[SeedChunk], workers: int, written: _Written) -> None:
    """Write the chunks on ``workers`` threads, holding at most two per worker.

    The first failure stops the generation, cancels the chunks not started, waits for those
    being written, and raises; every chunk committed is whole.
    """
    pending: set[Future[tuple[int, int, int]]] = set()

    def collect_down_to(held: int) -> None:
        nonlocal pending
        while len(pending) > held:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                written.add(future.result())

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seed-worker") as pool:
        try:
            for chunk in chunks:
                collect_down_to(2 * workers - 1)
                pending.add(pool.submit(_write_whole, engine, chunk))
            collect_down_to(0)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def inject_corruption(
    engine: Engine,
    user_ids: Sequence[str],
    how_many: int,
    kinds: Sequence[str],
    rng: random.Random,
    now: datetime,
) -> dict[str, str]:
    """Return user id -> kind injected: ``how_many`` users already stored, corrupted in place.

    Kinds cycle as in ``seed``; a user who can't hold the next kind is passed over. Only the
    corrupted runs change: the others keep their ids.
    """
    done: dict[str, str] = {}
    if how_many <= 0 or not kinds:
        return done
    candidates = list(user_ids)
    rng.shuffle(candidates)
    with write_transaction(engine) as conn:
        for uid in candidates:
            if len(done) >= how_many:
                break
            kind = kinds[len(done) % len(kinds)]
            if kind == ViolationKind.ORPHAN:
                ghost = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                start = now.date() - timedelta(days=ORPHAN_START_DAYS_BACK)
                end = start + timedelta(days=ORPHAN_DAYS - 1)
                insert_runs(conn, [Run(None, ghost, start, end, ORPHAN_DAYS, False)])
                done[ghost] = kind
            elif _corrupt_stored(conn, uid, kind, now):
                done[uid] = kind
    return done


def _corrupt_stored(conn: Connection, uid: str, kind: str, now: datetime) -> bool:
    """Corrupt one stored user's runs; False (nothing written) if they can't hold ``kind``."""
    rows = fetch_runs(conn, [uid]).get(uid, [])
    before = {
        r.id: [r.start_date.toordinal(), r.end_date.toordinal(), r.day_count, int(r.active)] for r in rows
    }
    after = [list(v) for v in before.values()]
    tz = fetch_user(conn, uid).timezone
    if not _corrupt_runs(after, kind, local_today(tz, now).toordinal()):
        return False
    # Runs are compared by position: the first len(before) entries are the stored runs (edited
    # or not), any further ones are new; a run that vanished is the one no entry matches.
    kept = list(before.items())
    if len(after) < len(kept):
        gone = next(i for i, (_id, v) in enumerate(kept) if i >= len(after) or after[i] != v)
        delete_runs(conn, [(uid, kept[gone][0])])
        kept.pop(gone)
    for (run_id, old), new in zip(kept, after, strict=False):
        if new != old:
            update_run(conn, _run(uid, run_id, new))
    insert_runs(conn, [_run(uid, None, new) for new in after[len(kept) :]])
    return True


def _run(user_id: str, run_id: int | None, run: SeedRun) -> Run:
    start, end, day_count, active = run
    return Run(run_id, user_id, date.fromordinal(start), date.fromordinal(end), day_count, bool(active))
