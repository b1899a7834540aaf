"""Feature flags: read one (a missing flag is off), turn one on or off."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update

from potato_ops.db.schema import feature_flags

if TYPE_CHECKING:
    from sqlalchemy import Connection


def fetch_feature_flag(conn: Connection, name: str) -> bool:
    """Return the flag's state; a missing flag is off."""
    value = conn.execute(select(feature_flags.c.enabled).where(feature_flags.c.name == name)).scalar()
    return bool(value)


def store_feature_flag(conn: Connection, name: str, enabled: bool) -> None:
    """Turn a feature flag on or off, creating it if missing."""
    done = conn.execute(
        update(feature_flags).where(feature_flags.c.name == name).values(enabled=enabled)
    ).rowcount
    if not done:
        conn.execute(insert(feature_flags).values(name=name, enabled=enabled))
