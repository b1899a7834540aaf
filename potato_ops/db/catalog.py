"""What the database's catalog says: the tables present, the keys and indexes of a table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import inspect

if TYPE_CHECKING:
    from sqlalchemy import Engine


def table_names(engine: Engine) -> set[str]:
    """Return the names of the tables the database holds."""
    return set(inspect(engine).get_table_names())


def primary_key(engine: Engine, table: str) -> list[str]:
    """Return the table's primary key columns, in order."""
    return [str(c) for c in inspect(engine).get_pk_constraint(table).get("constrained_columns") or []]


def indexes(engine: Engine, table: str) -> list[list[str]]:
    """Return each index of the table as its columns, in order."""
    return [
        [str(c) for c in ix["column_names"] if c is not None] for ix in inspect(engine).get_indexes(table)
    ]
