"""SQLite's ISO date texts as dates, each text parsed once per process.

PostgreSQL hands back dates; SQLite the stored ISO texts, and SQLAlchemy's parsing of them costs
several times ``date.fromisoformat``, so the hot reads take the texts raw and parse them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

# SQLite's ISO date texts seen, parsed: the same few thousand days recur in every read.
_PARSED: dict[str, date] = {}
_PARSED_MAX = 200_000


def as_date(value: date | str) -> date:
    """Return a date column's value as a date: PostgreSQL gives dates, SQLite its ISO text."""
    if isinstance(value, date):
        return value
    found = _PARSED.get(value)
    return found if found is not None else iso_dates([value])[0]


def iso_dates(texts: Sequence[str]) -> list[date]:
    """Return the dates of ISO date texts (SQLite's), each text parsed once per process."""
    try:
        return list(map(_PARSED.__getitem__, texts))
    except KeyError:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        for t in texts:
            if t not in _PARSED:
                _PARSED[t] = date.fromisoformat(t[:10])
        return list(map(_PARSED.__getitem__, texts))


def iso_ordinals(texts: Sequence[str]) -> list[int]:
    """Return the day ordinals of ISO date texts (see ``iso_dates``)."""
    return [d.toordinal() for d in iso_dates(texts)]
