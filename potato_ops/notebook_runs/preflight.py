"""Whether the reports folder can take a run's record, checked before any kernel starts.

A notebook may commit a change; its record is the incident trail. So a folder that does not
exist and cannot be made, is a file, is read-only or is nearly full refuses the run up front,
and so does an archive whose own files are damaged so that a new record could not be chained
(``index.jsonl`` not UTF-8, a last line that is not an entry, a link where the index or its
lock should be).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from potato_ops.errors import ReportError
from potato_ops.notebook_runs.index_lines import INDEX_FILE, LOCK_FILE, chain_tail

# A run's record (notebook, two HTML pages, result, manifest) takes about 1 MB; charts more.
MIN_FREE_BYTES = 32 * 1024 * 1024


def check_reports_dir(reports: Path, *, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Return nothing when ``reports`` (made if missing) can take a record; else raise ReportError."""
    try:
        reports.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"reports folder {reports} cannot be used: {_reason(exc)}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=reports, prefix=".write-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise ReportError(f"reports folder {reports} is not writable: {_reason(exc)}") from None
    free = shutil.disk_usage(reports).free
    if free < min_free_bytes:
        raise ReportError(
            f"reports folder {reports} has {free // 1024**2} MiB free, "
            f"a run's record needs at least {min_free_bytes // 1024**2} MiB: free some space"
        )
    _check_archive_files(reports)


def _check_archive_files(reports: Path) -> None:
    """Raise ReportError when the archive's own files would stop a new record being chained."""
    lock = reports / LOCK_FILE
    try:
        if not stat.S_ISREG(lock.lstat().st_mode):
            raise ReportError(
                f"reports folder {reports}: {LOCK_FILE} is not a regular file (a link or a folder?): "
                "remove it"
            )
    except FileNotFoundError:
        pass
    try:
        chain_tail(reports / INDEX_FILE)
    except ReportError as exc:
        raise ReportError(f"reports folder {reports} cannot take the record: {exc}") from None


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return "a file is in the way (it must be a folder)"
    return exc.strerror or type(exc).__name__
