"""``Database``: what every operation takes: an engine, a clock, schema checks and feature flags.

Operations never take ``Storage`` (the public facade above them); they take this small handle,
so the facade can delegate to them without an import cycle.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_url, resolve_database_url
from potato_ops.db.capture import install_capture
from potato_ops.db.catalog import table_names
from potato_ops.db.engine import make_engine, read_connection, server_version, write_transaction
from potato_ops.db.feature_flags import fetch_feature_flag, store_feature_flag
from potato_ops.db.schema import RUNS_V2_FLAG, check_schema, create_schema, metadata
from potato_ops.domain.dates import Clock, system_clock
from potato_ops.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine


class Rollback(Exception):
    """Raised inside a transaction to roll it back on purpose (failed validation, dry run)."""


class Database:
    """One database and one clock: the handle operations read, write and stamp time with."""

    def __init__(self, engine: Engine, clock: Clock = system_clock) -> None:
        self.engine = engine
        self.clock = clock
        self._schema_ok = False  # set by the first successful schema check

    @classmethod
    def connect(
        cls, url: str | None = None, *, clock: Clock | None = None, env_var: str = "POTATO_DATABASE_URL"
    ) -> Database:
        """Return a handle for url, else $POTATO_DATABASE_URL (or env_var), else embedded SQLite."""
        resolved = resolve_database_url(url, env_var)
        try:
            engine = make_engine(resolved)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"cannot use database {mask_url(resolved)}: {exc}") from exc
        return cls(engine, clock or system_clock)

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self.engine.url.render_as_string(hide_password=True))

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    def now(self) -> datetime:
        """Return the clock's current instant."""
        return self.clock()

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    def create_schema(self) -> None:
        """Create missing tables (idempotent); app tables with data are left untouched."""
        try:
            create_schema(self.engine)
            install_capture(self.engine)
            self._schema_ok = True
        except SQLAlchemyError as exc:
            raise SchemaError(f"cannot create the schema on {self.url}: {getattr(exc, 'orig', exc)}") from exc

    def check_schema(self) -> None:
        """Raise SchemaError if tables or columns the contract needs are missing."""
        try:
            check_schema(self.engine)
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise SchemaError(f"cannot read the schema of {self.url}: {first}") from exc

    def require_schema(self) -> None:
        """Raise SchemaError if the contract's tables are missing; checked once, on first use."""
        if self._schema_ok:
            return
        # A database that can't be reached raises here as on any first query (not SchemaError).
        present = table_names(self.engine)
        if any(t.name not in present for t in metadata.sorted_tables):
            self.check_schema()  # raises, naming every missing table and column
        self._schema_ok = True

    def read(self) -> AbstractContextManager[Connection]:
        """A connection for reading (schema checked first)."""
        self.require_schema()
        return read_connection(self.engine)

    def write(self) -> AbstractContextManager[Connection]:
        """A writing transaction (schema checked first); commits on success, rolls back on error."""
        self.require_schema()
        return write_transaction(self.engine)

    def describe(self) -> dict[str, str]:
        """Return the dialect, server version and masked URL (for reports)."""
        with read_connection(self.engine) as conn:  # needs no table
            version = server_version(conn)
        return {"dialect": self.dialect, "server_version": version, "url": self.url}

    def get_feature_flag(self, name: str = RUNS_V2_FLAG) -> bool:
        """Return the flag's state; a missing flag is off."""
        with self.read() as conn:
            return fetch_feature_flag(conn, name)

    def set_feature_flag(self, name: str, enabled: bool) -> None:
        """Turn a feature flag on or off (creating it)."""
        with self.write() as conn:
            store_feature_flag(conn, name, enabled)
