"""Pure: sizes of data as a person writes them (``16MB``, ``512kB``) and as they are shown."""

from __future__ import annotations

import re

from potato_ops.errors import ConfigError

# PostgreSQL's own units (its settings and pg_size_pretty): a kB is 1024 bytes.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
    "tb": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_TIME_UNITS = {"s", "sec", "ms", "min", "h", "m"}


def parse_size(value: int | str, name: str = "size") -> int:
    """Return a size in bytes from ``16MB``, ``1.5 GB``, ``512kB`` or a number of bytes.

    ConfigError for anything else (negative, unknown unit, a time such as ``10s``).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a size such as 16MB, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{name} must not be negative, not {value}")
        return value
    found = _SIZE.match(value) if isinstance(value, str) else None
    if found is None:
        raise ConfigError(f"{name} {value!r} is not a size (e.g. 16MB, 512kB)")
    unit = found[2].lower()
    if unit in _TIME_UNITS:
        raise ConfigError(
            f"{name} {value!r}: give the lag as a size (e.g. 16MB); a standby's lag in time is not "
            "measured reliably (the primary's replay_lag stops moving while replay is paused)"
        )
    if unit not in _UNITS:
        raise ConfigError(f"{name} {value!r}: unknown unit {found[2]!r} (use B, kB, MB, GB or TB)")
    return int(float(found[1]) * _UNITS[unit])


def format_size(n: float) -> str:
    """Return bytes as ``6.1 MB`` or ``1 MB`` (1024-based units, as PostgreSQL shows them)."""
    for unit, scale in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if abs(n) >= scale:
            shown = f"{n / scale:.1f}".removesuffix(".0")
            return f"{shown} {unit}"
    return f"{int(n)} bytes"
