"""Reading ``index.jsonl`` line by line, whatever damage it holds.

The index is the archive's own file, but anyone who can write the reports folder can damage it:
bytes that are not UTF-8, a line that is not JSON or nests too deeply to parse, numbers such as
``1e999``. Each line is read on its own, so one damaged line is reported as such (by
``reports verify``) instead of stopping the whole read, and ``chain_tail`` says, before a
notebook runs and again when its record is chained, whether a new entry can follow the last.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

from potato_ops.errors import ReportError

INDEX_FILE = "index.jsonl"
LOCK_FILE = ".index.lock"  # taken exclusively to append to the index, shared to read it
GENESIS_HASH = "0" * 64
_HASH = re.compile(r"[0-9a-f]{64}")


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """Return the JSON object on one line, or None when it is not one (not UTF-8, not JSON, ...)."""
    try:
        loaded = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return loaded if isinstance(loaded, dict) else None


def read_lines(path: Path) -> list[tuple[int, dict[str, Any] | None]]:
    """Return (line number, object or None) for every non-blank line of the file (none if absent)."""
    if not path.exists():
        return []
    found: list[tuple[int, dict[str, Any] | None]] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if raw.strip():
            found.append((number, parse_line(raw)))
    return found


def is_seq(value: object) -> bool:
    """Return whether value is a sequence number as the archive writes it (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def chain_tail(path: Path) -> tuple[int, str]:
    """Return the sequence number and hash a new entry chains to: the last entry's, or (0, genesis).

    Raises ReportError (naming the line, never its content) when the index cannot take another
    entry: it is a link or not a regular file, or its last line is not an entry.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0, GENESIS_HASH
    except OSError as exc:
        raise ReportError(f"{path} cannot be read: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ReportError(f"{path} is not a regular file (a link or a folder?): the chain cannot go on")
    lines = read_lines(path)
    if not lines:
        return 0, GENESIS_HASH
    number, last = lines[-1]
    if last is None:
        why = "not a JSON object"
    elif not is_seq(last.get("seq")):
        why = "its sequence number is not a whole number"
    elif not isinstance(last.get("entry_hash"), str) or not _HASH.fullmatch(last["entry_hash"]):
        why = "its entry hash is not 64 hex digits"
    else:
        return int(last["seq"]), str(last["entry_hash"])
    raise ReportError(
        f"{path} line {number} is damaged ({why}): a new run cannot be chained after it; "
        "run `potato-ops reports verify`, then restore the index or archive into another folder"
    )
