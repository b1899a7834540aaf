"""Fixtures: a fresh database on each backend, a frozen clock, and a clean environment.

PostgreSQL tests use a server at $POTATO_TEST_PG_URL (default the local one on 127.0.0.1:5432,
user postgres). Each test session creates its own database there and drops it at the end.
When the server can't be reached the PostgreSQL tests are skipped with a loud reason, except
under CI (CI=true), where they fail.

Citus tests (a representative subset: the core procedures, bulk with SIGKILL and resume, the
scan, the audit; ``@with_citus`` or ``citus`` in a parametrization of ``backend``) use the
cluster whose coordinator is at $POTATO_TEST_CITUS_URL (``cluster.sh start DIR PORT`` prints
it): each test session makes a schema of its own there, with the distributed layout, and drops
it at the end. Unset or unreachable, they are skipped loudly, and fail under CI.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, text

from potato_ops import Storage
from potato_ops.db.schema import day_marks, metadata, runs, users

PG_ADMIN_URL = os.environ.get("POTATO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CITUS_URL_VAR = "POTATO_TEST_CITUS_URL"
NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
BACKENDS = ["sqlite", "postgres"]
CITUS = pytest.param("citus", marks=[pytest.mark.citus, pytest.mark.postgres])
# The representative subset that also runs on the Citus coordinator.
with_citus = pytest.mark.parametrize("backend", [*BACKENDS, CITUS])
POSTGRES_AND_CITUS = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres), CITUS]
)


class MutableClock:
    """A clock tests can set and advance."""

    def __init__(self, instant: datetime = NOW) -> None:
        self.instant = instant

    def __call__(self) -> datetime:
        return self.instant

    def advance(self, **kwargs: float) -> datetime:
        self.instant += timedelta(**kwargs)
        return self.instant

    def set(self, instant: datetime) -> None:
        self.instant = instant


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the developer's database URL or write to their home."""
    for name in ("POTATO_DATABASE_URL", "POTATO_OPS_REPORTS_DIR", "POTATO_OPS_NOTEBOOKS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POTATO_OPS_HOME", str(tmp_path / "home"))


def _pg_unavailable(reason: str, what: str = "PostgreSQL test server") -> None:
    message = f"{what} unreachable ({reason}); {what.split()[0]} tests NOT RUN"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - required under CI=true")
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """Create a session database on the test server; yield its URL; drop it after."""
    try:
        url, admin = fresh_pg_database()
    except Exception as exc:  # any failure to reach the server means: no PostgreSQL here
        _pg_unavailable(f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    yield url
    drop_pg_database(url, admin)


@pytest.fixture(scope="session")
def citus_server_url() -> Iterator[str]:
    """Make a schema with the distributed layout on the Citus coordinator; yield its URL; drop it."""
    from potato_ops.db.distributed import distribute_schema

    admin_url = os.environ.get(CITUS_URL_VAR, "")
    if not admin_url:
        _pg_unavailable(f"${CITUS_URL_VAR} is not set", "Citus test cluster")
    name = f"potato_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    except Exception as exc:
        admin.dispose()
        _pg_unavailable(f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}", "Citus test cluster")
    url = f"{admin_url}{'&' if '?' in admin_url else '?'}options=-csearch_path%3D{name}"
    engine = create_engine(url)
    metadata.create_all(engine)
    distribute_schema(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


def fresh_pg_database(admin_url: str = PG_ADMIN_URL) -> tuple[str, Engine]:
    """Create an empty database (no schema); return its URL and the admin engine to drop it."""
    name = f"potato_empty_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return admin_url.rsplit("/", 1)[0] + "/" + name, admin


def drop_pg_database(url: str, admin: Engine) -> None:
    """Drop a database made by fresh_pg_database."""
    name = url.rsplit("/", 1)[1]
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


def _truncate_all(engine: Engine) -> None:
    # DELETE, not TRUNCATE: the tables are tiny and TRUNCATE costs a quarter second per test.
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each database test runs once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    return str(request.param)


@pytest.fixture
def clock() -> MutableClock:
    """A clock frozen at NOW that the test may move."""
    return MutableClock()


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database with the schema, on the test's backend."""
    if backend in ("postgres", "citus"):
        url: str = request.getfixturevalue("pg_server_url" if backend == "postgres" else "citus_server_url")
        engine = create_engine(url)
        metadata.create_all(engine)
        _truncate_all(engine)
        engine.dispose()
        return url
    url = f"sqlite:///{tmp_path / 'potato.sqlite3'}"
    return url


@pytest.fixture
def storage(db_url: str, clock: MutableClock) -> Iterator[Storage]:
    """Storage on a fresh database with the schema, clock frozen at NOW."""
    s = Storage.connect(db_url, clock=clock)
    s.create_schema()
    yield s
    s.close()


def add_user(
    storage: Storage,
    user_id: str,
    marks: list[date | str] | None = None,
    *,
    timezone: str = "UTC",
    email: str | None = None,
    unmarked: list[date | str] | None = None,
) -> None:
    """Insert a user with marked (and optionally un-marked) days; no runs."""
    with storage.engine.begin() as conn:
        conn.execute(
            insert(users).values(id=user_id, email=email or f"{user_id}@example.com", timezone=timezone)
        )
        rows = [{"user_id": user_id, "date": _d(d), "value": True} for d in marks or []]
        rows += [{"user_id": user_id, "date": _d(d), "value": False} for d in unmarked or []]
        if rows:
            conn.execute(insert(day_marks), rows)


def add_runs(storage: Storage, user_id: str, spans: list[tuple[str, str]], active: int | None = None) -> None:
    """Insert stored runs as given (correct or not); ``active`` is the index flagged active."""
    with storage.engine.begin() as conn:
        for i, (s, e) in enumerate(spans):
            ds, de = _d(s), _d(e)
            conn.execute(
                insert(runs).values(
                    user_id=user_id,
                    start_date=ds,
                    end_date=de,
                    day_count=(de - ds).days + 1,
                    active=(i == active),
                )
            )


def spans(storage: Storage, user_id: str) -> list[tuple[str, str]]:
    """Return the user's stored runs as ISO (start, end) pairs."""
    return [(r.start_date.isoformat(), r.end_date.isoformat()) for r in storage.get_user_runs(user_id)]


def snapshot(storage: Storage) -> dict[str, list[tuple[object, ...]]]:
    """Return every table's rows, sorted, for byte-for-byte before/after comparisons."""
    out: dict[str, list[tuple[object, ...]]] = {}
    with storage.engine.connect() as conn:
        for table in [*metadata.sorted_tables]:
            rows = conn.execute(table.select()).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def _d(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)
