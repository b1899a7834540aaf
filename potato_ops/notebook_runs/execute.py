"""Running runbook notebooks headless: find them, check their parameters, execute, archive.

``execute_notebook`` is the one way the CLI and the tests run a notebook. Parameters are checked
against the notebook's ``parameters`` cell before any kernel starts (see
``potato_ops.notebook_runs.parameters``); the kernel is pinned to this interpreter; every run
that starts is archived (see ``potato_ops.notebook_runs.archive``), whatever its outcome, and
its status becomes an exit code. A notebook whose verdict is a problem ends on ``ProblemFound``
(raised by ``record_result`` after the record): that is the status "problem" (exit 3), told
apart from a cell that failed (exit 5).

A run stopped by Ctrl-C or SIGTERM is archived too, with the status "interrupted". The kernel
runs in a session of its own, so the signal reaches only this process; the kernel's shutdown
interrupts its cell first (what the cell was doing stops as on Ctrl-C: a bulk finishes the
batches in hand and is recorded interrupted, to be resumed) and gives it ``KERNEL_STOP_GRACE_S``
to end before it is killed. Once the record is written the interrupt goes on to the caller, with
a note saying where the record is, so that the CLI exits 130 (143 for SIGTERM) and a caller's
own loop stops.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from potato_ops.config import reports_dir as default_reports_dir
from potato_ops.domain.models import jsonable
from potato_ops.errors import NotebookError, Terminated
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs import archive, records
from potato_ops.notebook_runs.catalog import resolve_notebook
from potato_ops.notebook_runs.interactive import EXECUTION_ENV, HEADLESS
from potato_ops.notebook_runs.jupyter import (
    ERROR_MARKER_TAG,
    CellTimeoutError,
    PapermillExecutionError,
    nbformat,
    papermill,
)
from potato_ops.notebook_runs.parameters import (
    check_parameters,
)
from potato_ops.notebook_runs.preflight import check_reports_dir
from potato_ops.notebook_runs.result import RESULT_MIMETYPE, RESULT_STATUSES, ProblemFound
from potato_ops.notebook_runs.signing import configured_signing_key

logger = logging.getLogger("potato_ops")

PINNED_KERNEL = "python3"
KERNEL_START_TIMEOUT_S = 60
# How long a kernel being shut down (interrupted first) gets to end its cell and exit before it
# is killed: Jupyter's 5 s can cut a bulk's batch in hand short.
KERNEL_STOP_GRACE_S = 30.0

EXIT_CODES = {
    "ok": ExitCode.OK,
    "problem": ExitCode.PROBLEM_FOUND,
    "refused": ExitCode.INVALID_PARAMETERS,
    "error": ExitCode.EXECUTION_FAILED,
    "timeout": ExitCode.EXECUTION_FAILED,
    "interrupted": ExitCode.INTERRUPTED,  # ExitCode.TERMINATED when the stop was SIGTERM
}
# What a notebook's own check cell raises for a value it cannot use (runbook.params): the run is
# refused for its parameters (exit 4), as when `potato-ops run` refuses them before the kernel.
_PARAMETER_ERRORS = ("RunbookParameterError", "NotebookParameterError")


@dataclass(frozen=True)
class ExecutionRecord:
    """The record of one notebook execution: status, exit code and where the record lives."""

    status: str
    exit_code: ExitCode
    run_dir: Path
    notebook_path: Path
    html_path: Path
    result_path: Path
    result: dict[str, Any]
    summary_path: Path
    manifest_sha256: str = ""
    not_in_database: str | None = None  # why the run's hash is not in ops_run_records


def read_notebook(path: Path) -> Any:
    """Return the notebook at ``path`` as an nbformat v4 node; NotebookError if unreadable."""
    try:
        return nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        raise NotebookError(f"cannot read notebook {path}: {exc}") from exc


# -- the kernel ----------------------------------------------------------------------------------


def _write_pinned_kernelspec(kernels_dir: Path) -> None:
    """Write a ``python3`` kernelspec that starts this interpreter's ipykernel."""
    spec_dir = kernels_dir / PINNED_KERNEL
    spec_dir.mkdir(parents=True)
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding potato_ops/
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {platform.python_version()} (potato-ops)",
        "language": "python",
        # The kernel knows it is headless: the runner archives it (see notebook_runs.interactive).
        "env": {"PYTHONPATH": python_path, EXECUTION_ENV: HEADLESS},
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")


def _pinned_kernel_manager(kernels_dir: Path, kernel_log: IO[str]) -> type[AsyncKernelManager]:
    """Return a kernel manager class that looks in ``kernels_dir`` before any installed spec."""

    class PinnedKernelManager(AsyncKernelManager):
        @default("shutdown_wait_time")
        def _stop_grace(self) -> float:
            return KERNEL_STOP_GRACE_S

        @default("kernel_spec_manager")
        def _pinned_spec_manager(self) -> KernelSpecManager:
            manager = KernelSpecManager(data_dir=self.data_dir)
            manager.kernel_dirs = [str(kernels_dir), *manager.kernel_dirs]
            return manager

        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]  # async like its parent
            # The kernel's own stdout/stderr carry start-up chatter, not cell output.
            kw.setdefault("stdout", kernel_log)
            kw.setdefault("stderr", kernel_log)
            await super().start_kernel(**kw)

    return PinnedKernelManager


# -- running -------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: str = "ok"
    verdict: str = ""
    error: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    interrupt: KeyboardInterrupt | None = None  # what stopped the run, raised again once archived

    @property
    def exit_code(self) -> ExitCode:
        if isinstance(self.interrupt, Terminated):
            return ExitCode.TERMINATED
        return EXIT_CODES[self.status]


def execute_notebook(
    notebook: str | os.PathLike[str],
    parameters: Mapping[str, object] | None = None,
    *,
    reports_dir: str | os.PathLike[str] | None = None,
    cell_timeout: float | None = 600,
    kernel_name: str = PINNED_KERNEL,
    log_output: bool = False,
    progress_bar: bool = False,
) -> ExecutionRecord:
    """Return the archived record of executing the notebook headless with these parameters.

    Raises NotebookParameterError before anything runs (and archives nothing) when a
    parameter is refused, and ReportError when the reports folder cannot take the record
    or the signing key cannot be read; every execution that starts is archived, whatever its
    outcome, or its record kept in the database (RecordNotArchivedError says where).
    """
    path = resolve_notebook(notebook)
    checked = check_parameters(path, parameters or {})
    reports = default_reports_dir(reports_dir)
    # An execution that commits a change and then cannot archive it loses its record: refuse first.
    check_reports_dir(reports)
    signing_key = configured_signing_key()
    kernel = _KernelSettings(cell_timeout, kernel_name, log_output, progress_bar)
    done = _execute_in_workspace(path, checked, kernel)
    archived, not_in_database = records.archive_with_record(
        run_id=done.run_id,
        notebook_name=path.stem,
        notebook=done.notebook,
        result=_result(path, checked, done, kernel),
        reports=reports,
        database_url=records.database_url_of_execution(checked),
        signing_key=signing_key,
    )
    status = done.outcome.status
    logger.info(
        "%s: %s (%s), archived in %s", path.stem, status, archived.result.get("verdict", ""), archived.run_dir
    )
    stop = done.outcome.interrupt
    if stop is not None:
        stop.add_note(f"{path.stem}: {done.outcome.verdict}; archived in {archived.run_dir}")
        raise stop
    return ExecutionRecord(
        status=status,
        exit_code=done.outcome.exit_code,
        run_dir=archived.run_dir,
        notebook_path=archived.notebook_path,
        html_path=archived.html_path,
        result_path=archived.result_path,
        result=archived.result,
        summary_path=archived.summary_path,
        manifest_sha256=archived.entry.manifest_sha256,
        not_in_database=not_in_database,
    )


@dataclass(frozen=True)
class _KernelSettings:
    """How the kernel runs the cells (the caller's choices, kept in the result)."""

    cell_timeout: float | None
    kernel_name: str
    log_output: bool
    progress_bar: bool


@dataclass(frozen=True)
class _Done:
    """One finished execution: its id, its outcome, the executed notebook and when it ran."""

    run_id: str
    outcome: _Outcome
    notebook: Any
    started_at: dt.datetime
    finished_at: dt.datetime
    duration_s: float


def _execute_in_workspace(path: Path, checked: dict[str, object], kernel: _KernelSettings) -> _Done:
    """Return the execution of the notebook in a temporary folder, its cells marked for the archive."""
    name = path.stem
    started_at = dt.datetime.now(dt.UTC)
    run_id = archive.new_execution_id(name, started_at)
    logger.info("running %s as %s", name, run_id)
    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="potato-ops-run-") as tmp:
        work = Path(tmp)
        output = work / f"{name}.ipynb"
        with _kernel_log(work) as kernel_log:
            outcome = _execute(
                path,
                output,
                checked,
                work,
                kernel_log,
                cell_timeout=kernel.cell_timeout,
                kernel_name=kernel.kernel_name,
                log_output=kernel.log_output,
                progress_bar=kernel.progress_bar,
            )
        duration = time.monotonic() - clock
        finished_at = dt.datetime.now(dt.UTC)
        executed = read_notebook(output if output.exists() else path)
    if outcome.status in _STOP_MARKERS:
        _mark_stopped(executed, outcome.status, outcome.verdict)
    if outcome.status == "problem":
        _drop_error_markers(executed)
    return _Done(run_id, outcome, executed, started_at, finished_at, duration)


def _result(path: Path, checked: dict[str, object], done: _Done, kernel: _KernelSettings) -> dict[str, Any]:
    """Return the execution's result as archived: what ran, how it ended, where and with what."""
    outcome = done.outcome
    return {
        "run_id": done.run_id,
        "notebook": path.stem,
        "source": str(path),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "status": outcome.status,
        "exit_code": int(outcome.exit_code),
        "verdict": outcome.verdict,
        "parameters": jsonable(checked, "parameters"),
        "figures": outcome.record.get("figures", {}),
        "operation_ids": outcome.record.get("operation_ids", []),
        "database": outcome.record.get("database", {}),
        "error": outcome.error,
        "started_at": done.started_at.isoformat(),
        "finished_at": done.finished_at.isoformat(),
        "duration_s": round(done.duration_s, 3),
        "kernel_start_s": _kernel_start_seconds(done.notebook),
        "cell_timeout_s": kernel.cell_timeout,
        "kernel_name": kernel.kernel_name,
        "potato_ops_version": _package_version(),
        "python_version": platform.python_version(),
        "papermill_version": papermill.__version__,
        "hostname": socket.gethostname(),
    }


@contextmanager
def _kernel_log(work: Path) -> Iterator[IO[str]]:
    log_path = work / "kernel.log"
    with log_path.open("w", encoding="utf-8") as sink:
        yield sink
    text = log_path.read_text(encoding="utf-8", errors="replace").strip()
    if text:
        logger.debug("kernel output:\n%s", text)


def _execute(
    path: Path,
    output: Path,
    parameters: dict[str, object],
    work: Path,
    kernel_log: IO[str],
    *,
    cell_timeout: float | None,
    kernel_name: str,
    log_output: bool,
    progress_bar: bool,
) -> _Outcome:
    kernels_dir = work / "kernels"
    _write_pinned_kernelspec(kernels_dir)
    try:
        with _checked_parameters_not_reported():
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=parameters,
                kernel_name=kernel_name,
                progress_bar=progress_bar,
                log_output=log_output,
                start_timeout=KERNEL_START_TIMEOUT_S,
                execution_timeout=cell_timeout,
                kernel_manager_class=_pinned_kernel_manager(kernels_dir, kernel_log),
            )
    except PapermillExecutionError as exc:
        found = _find_record(read_notebook(output)) if output.exists() else None
        if exc.ename == ProblemFound.__name__ and found is not None and found["status"] == "problem":
            # The verdict cell raised on purpose, after the record: a problem, not a failed cell.
            return _Outcome("problem", found["verdict"], None, found)
        error = {
            "cell_index": exc.cell_index,
            "execution_count": exc.exec_count,
            "ename": exc.ename,
            "evalue": exc.evalue,
        }
        if exc.ename in _PARAMETER_ERRORS:
            return _failed("refused", error, f"parameters refused: {exc.evalue}", output)
        where = f"cell {exc.cell_index + 1} (In [{exc.exec_count}])"
        return _failed("error", error, f"{where} raised {exc.ename}: {exc.evalue}", output)
    except CellTimeoutError:
        index = _last_started_cell(output)
        error = {
            "cell_index": index,
            "ename": "CellTimeoutError",
            "evalue": f"the cell did not finish within {cell_timeout} s",
        }
        where = f"cell {index + 1}" if index is not None else "a cell"
        return _failed("timeout", error, f"{where} did not finish within {cell_timeout} s", output)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated) under the CLI
        # The kernel has been shut down on the way out of papermill, its cell interrupted first.
        index = _last_started_cell(output)
        how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C (SIGINT)"
        error = {"cell_index": index, "ename": type(exc).__name__, "evalue": f"stopped by {how}"}
        where = f"in cell {index + 1}" if index is not None else "before its first cell"
        verdict = f"stopped by {how} {where}, before the notebook finished"
        outcome = _failed("interrupted", error, verdict, output)
        outcome.interrupt = exc
        return outcome
    except Exception as exc:  # a dead kernel, a kernel that never started, ...
        error = {
            "cell_index": _last_started_cell(output),
            "ename": type(exc).__name__,
            "evalue": str(exc),
        }
        return _failed("error", error, f"the run failed: {type(exc).__name__}: {exc}", output)
    record = _find_record(read_notebook(output))
    if record is None:
        error = {
            "cell_index": None,
            "ename": "ResultMissing",
            "evalue": "the notebook finished without calling potato_ops.notebook_runs.result.record_result",
        }
        return _Outcome("error", error["evalue"], error)
    return _Outcome(record["status"], record["verdict"], None, record)


class _DropUnknownParameterWarning(logging.Filter):
    """Papermill cannot read every annotation (``str | None``); execute_notebook has checked them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Passed unknown parameter")


@contextmanager
def _checked_parameters_not_reported() -> Iterator[None]:
    papermill_log = logging.getLogger("papermill")
    quiet = _DropUnknownParameterWarning()
    papermill_log.addFilter(quiet)
    try:
        yield
    finally:
        papermill_log.removeFilter(quiet)


def _failed(status: str, error: dict[str, Any], verdict: str, output: Path) -> _Outcome:
    record = _find_record(read_notebook(output)) if output.exists() else None
    return _Outcome(status, " ".join(verdict.split()), error, record or {})


def _find_record(nb: Any) -> dict[str, Any] | None:
    """Return the last result record the notebook displayed, or None."""
    found: dict[str, Any] | None = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {}) if out.get("output_type") != "stream" else {}
            payload = data.get(RESULT_MIMETYPE)
            if isinstance(payload, str):
                try:
                    payload = json.loads(payload)
                except ValueError:
                    payload = None
            if (
                isinstance(payload, Mapping)
                and payload.get("status") in RESULT_STATUSES
                and isinstance(payload.get("verdict"), str)
            ):
                found = {
                    "verdict": payload["verdict"],
                    "status": payload["status"],
                    "figures": dict(payload.get("figures") or {}),
                    "operation_ids": list(payload.get("operation_ids") or []),
                    "database": dict(payload.get("database") or {}),
                }
    return found


def _last_started_cell(output: Path) -> int | None:
    if not output.exists():
        return None
    index = None
    for i, cell in enumerate(read_notebook(output).cells):
        if cell.get("metadata", {}).get("papermill", {}).get("start_time"):
            index = i
    return index


# The statuses whose notebook gets a first cell saying how it was stopped: (word, cell tag).
_STOP_MARKERS = {
    "timeout": ("Timed out", "potato-ops-timeout"),
    "interrupted": ("Interrupted", "potato-ops-interrupted"),
}


def _mark_stopped(nb: Any, status: str, verdict: str) -> None:
    word, tag = _STOP_MARKERS[status]
    marker = nbformat.v4.new_markdown_cell(f"**{word}:** {verdict}.")  # type: ignore[no-untyped-call]
    marker.metadata["tags"] = [tag]
    nb.cells.insert(0, marker)


def _drop_error_markers(nb: Any) -> None:
    """Remove papermill's "An Exception was encountered" cells: a problem verdict is no crash."""
    nb.cells = [c for c in nb.cells if ERROR_MARKER_TAG not in c.get("metadata", {}).get("tags", [])]


def _kernel_start_seconds(nb: Any) -> float | None:
    """Return seconds from papermill's start to the first cell's start (kernel start-up)."""
    try:
        begun = dt.datetime.fromisoformat(nb.metadata["papermill"]["start_time"])
        first = next(
            c.metadata["papermill"]["start_time"]
            for c in nb.cells
            if c.get("metadata", {}).get("papermill", {}).get("start_time")
        )
        return round((dt.datetime.fromisoformat(first) - begun).total_seconds(), 3)
    except (KeyError, TypeError, ValueError, StopIteration):
        return None


def _package_version() -> str:
    try:
        return metadata.version("potato-ops")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
