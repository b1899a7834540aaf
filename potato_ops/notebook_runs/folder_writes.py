"""Writing files into the reports folder without following a symbolic link planted there.

The reports folder may be shared (a root cron job archives into it, operators read it), so a
name in it may already be a symbolic link to a file elsewhere. Every file the archive writes is
either created under a fresh name that this process makes exclusively (``O_EXCL``: a planted
name fails instead of being followed) and then renamed over its final name (a rename replaces a
link itself, never its target), or opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import os
import secrets as random_tokens
from pathlib import Path

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EXISTING = os.O_NOFOLLOW | os.O_CLOEXEC


def write_new(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write data to a file that must not exist yet (FileExistsError otherwise), synced to disk."""
    fd = os.open(path, _NEW_FILE, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with a new file holding data: written under a fresh exclusive name first,
    then renamed over it (a symbolic link at ``path`` is replaced, its target never written)."""
    staging = temporary_name(path)
    write_new(staging, data)
    try:
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def temporary_name(path: Path) -> Path:
    """Return a fresh hidden name beside ``path`` that nobody can have planted in advance."""
    return path.with_name(f".{path.name}.{random_tokens.token_hex(8)}.tmp")


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """Return a descriptor of ``path`` opened with ``flags``; OSError (ELOOP) when it is a link."""
    return os.open(path, flags | _EXISTING, mode)
