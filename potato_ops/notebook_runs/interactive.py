"""Interactive executions (a person in JupyterLab) kept as records, like headless ones.

A notebook opened in JupyterLab runs in a kernel the Jupyter server started: it sets
``JPY_SESSION_NAME`` to the notebook's path (``POTATO_OPS_INTERACTIVE=1`` does the same for a
kernel started otherwise; the headless runner's kernel says ``POTATO_OPS_EXECUTION=headless``).
In such a kernel each successful parameters check begins an *execution*:

* every write a step makes is recorded at once in ``ops_run_records`` (status ``incomplete``,
  with the operator, the ticket and the operation ids), so a notebook that stops before its
  verdict still leaves the database row;
* ``record_result`` archives the execution as a headless run is archived: the notebook with the
  outputs this kernel showed since the check, its HTML and summary, the result JSON, the chain
  entry and the ``ops_run_records`` row, in ``$POTATO_OPS_REPORTS_DIR`` (else ``./reports``),
  and says where; the ``incomplete`` row is then removed.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import os
import platform
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_url
from potato_ops.config import reports_dir as default_reports_dir
from potato_ops.db.engine import make_engine
from potato_ops.db.run_records import delete_run_record, replace_run_record
from potato_ops.domain.models import jsonable
from potato_ops.errors import PotatoOpsError, ReportError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.result import archive_results_with
from potato_ops.redact import collect_secrets

if TYPE_CHECKING:
    from sqlalchemy import Connection

logger = logging.getLogger("potato_ops")

SESSION_ENV = "JPY_SESSION_NAME"  # set by the Jupyter server for the kernels it starts
INTERACTIVE_ENV = "POTATO_OPS_INTERACTIVE"
EXECUTION_ENV = "POTATO_OPS_EXECUTION"  # "headless" in the runner's kernel
HEADLESS = "headless"
INCOMPLETE = "incomplete"
PENDING_SUFFIX = "~incomplete"
_STATUS_CODES = {"ok": ExitCode.OK, "problem": ExitCode.PROBLEM_FOUND}


def enabled() -> bool:
    """Return True in a kernel a person drives (a Jupyter server's, or one marked interactive)."""
    if os.environ.get(EXECUTION_ENV) == HEADLESS:
        return False
    marked = os.environ.get(INTERACTIVE_ENV, "").lower() in ("1", "true", "yes")
    if not (marked or os.environ.get(SESSION_ENV)):
        return False
    return _shell() is not None


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return None
    return get_ipython()


# -- what the kernel showed, cell by cell ---------------------------------------------------------


@dataclass
class _Cell:
    count: int
    source: str
    outputs: list[dict[str, Any]] = field(default_factory=list)


class _Capture:
    """Collects each cell's source and outputs (displays, its value, its error) as it runs."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.cells: list[_Cell] = []
        self.running: _Cell | None = None
        publisher = shell.display_pub
        original = publisher.publish

        def publish(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> Any:
            if self.running is not None and not kwargs.get("update"):
                self.running.outputs.append(
                    {
                        "output_type": "display_data",
                        "data": copy.deepcopy(dict(data or {})),
                        "metadata": copy.deepcopy(dict(metadata or {})),
                    }
                )
            return original(data, metadata, *args, **kwargs)

        publisher.publish = publish
        shell.events.register("pre_run_cell", self.before)
        shell.events.register("post_run_cell", self.after)

    def before(self, info: Any) -> None:
        self.running = _Cell(int(self.shell.execution_count), str(getattr(info, "raw_cell", "") or ""))

    def after(self, result: Any) -> None:
        cell, self.running = self.running, None
        if cell is None:
            return
        value = getattr(result, "result", None)
        if value is not None:
            data, meta = self.shell.display_formatter.format(value)
            cell.outputs.append(
                {
                    "output_type": "execute_result",
                    "execution_count": cell.count,
                    "data": dict(data),
                    "metadata": dict(meta),
                }
            )
        error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        if error is not None:
            cell.outputs.append(_error_output(error))
        self.cells.append(cell)
        del self.cells[:-500]  # a long session: keep the recent cells only

    def since(self, count: int) -> list[_Cell]:
        found = [c for c in self.cells if c.count >= count]
        if self.running is not None:
            found.append(self.running)
        return found


def _error_output(error: BaseException) -> dict[str, Any]:
    render = getattr(error, "_render_traceback_", None)
    lines = render() if callable(render) else [f"{type(error).__name__}: {error}"]
    return {
        "output_type": "error",
        "ename": type(error).__name__,
        "evalue": str(error),
        "traceback": [str(line) for line in lines],
    }


def _capture(shell: Any) -> _Capture:
    found = getattr(shell, "_potato_ops_capture", None)
    if not isinstance(found, _Capture):
        found = _Capture(shell)
        shell._potato_ops_capture = found
    return found


# -- one execution ---------------------------------------------------------------------------------


@dataclass
class Execution:
    """An interactive execution: from a successful parameters check to its recorded result."""

    run_id: str
    notebook: str
    source: Path | None
    parameters: dict[str, Any]
    started_at: dt.datetime
    first_count: int
    operation_ids: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    pending_kept: str | None = None
    archived: str | None = None


_current: Execution | None = None


def current() -> Execution | None:
    """Return the execution this kernel is in, or None (headless, or no check passed yet)."""
    return _current


def begin(check: str, parameters: Mapping[str, Any]) -> Execution | None:
    """Start a new execution after a successful check; None when this kernel is not interactive."""
    global _current
    _current = None
    archive_results_with(None)
    if not enabled():
        return None
    from potato_ops.notebook_runs.archive import new_execution_id

    shell = _shell()
    capture = _capture(shell)
    session = os.environ.get(SESSION_ENV, "")
    source = Path(session) if session else None
    name = source.stem if source is not None else check.removeprefix("check_")
    started = dt.datetime.now(dt.UTC)
    first = capture.running.count if capture.running is not None else int(shell.execution_count)
    before = [c for c in capture.cells if c.count < first]
    if before and "database_url_env" in before[-1].source:  # the parameters cell, run just before
        first = before[-1].count
    checked = jsonable(dict(parameters))
    _current = Execution(new_execution_id(name, started), name, source, checked, started, first)
    archive_results_with(finish)
    return _current


def note_write(step: str, operation_ids: Sequence[str]) -> None:
    """Record at once, in ops_run_records, that a step of the current execution wrote."""
    execution = _current
    if execution is None:
        return
    execution.writes.append(step)
    execution.operation_ids.extend(op for op in operation_ids if op not in execution.operation_ids)
    result = _result(execution, status=INCOMPLETE, verdict=_incomplete_verdict(execution))
    try:
        execution.pending_kept = _keep_pending(execution, result)
    except PotatoOpsError as exc:
        _show(f"⚠ this change is NOT recorded in the database yet: {exc}")
        return
    _show(
        f"• recorded in {execution.pending_kept} as {INCOMPLETE}; the full record is archived "
        "when the notebook's last cell (record_result) runs"
    )


def _incomplete_verdict(execution: Execution) -> str:
    return f"interactive run stopped after {', '.join(execution.writes)} wrote (record_result not reached)"


def finish(payload: Mapping[str, Any]) -> str | None:
    """Archive the current execution with its result; return the line saying where (or why not)."""
    execution = _current
    if execution is None:
        return None
    if execution.archived is not None:
        return f"already archived: {execution.archived}"
    from potato_ops.errors import RecordNotArchivedError
    from potato_ops.notebook_runs import records
    from potato_ops.notebook_runs.signing import configured_signing_key

    status = str(payload.get("status", "ok"))
    operation_ids = [*execution.operation_ids]
    operation_ids += [str(op) for op in payload.get("operation_ids") or [] if op not in operation_ids]
    result = _result(
        execution,
        status=status,
        verdict=str(payload.get("verdict", "")),
        figures=dict(payload.get("figures") or {}),
        operation_ids=operation_ids,
        database=dict(payload.get("database") or {}),
    )
    reports = default_reports_dir().resolve()
    notebook = executed_notebook(execution)
    try:
        archived, not_in_database = records.archive_with_record(
            run_id=execution.run_id,
            notebook_name=execution.notebook,
            notebook=notebook,
            result=result,
            reports=reports,
            database_url=records.database_url_of_execution(execution.parameters),
            signing_key=configured_signing_key(),
        )
    except (RecordNotArchivedError, ReportError) as exc:
        execution.archived = f"NOT archived: {exc}"
        return f"⚠ this run's record could not be archived: {exc}"
    _drop_pending(execution)
    execution.archived = str(archived.run_dir)
    where = f"archived in {archived.run_dir}"
    if not_in_database:
        return f"{where}; ⚠ its hash is not in the database: {not_in_database}"
    return f"{where}; recorded in ops_run_records (run_id {execution.run_id})"


def _result(
    execution: Execution,
    *,
    status: str,
    verdict: str,
    figures: Mapping[str, Any] | None = None,
    operation_ids: Sequence[str] | None = None,
    database: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    finished = dt.datetime.now(dt.UTC)
    source = execution.source
    try:
        source_hash = hashlib.sha256(source.read_bytes()).hexdigest() if source else None
    except OSError:
        source_hash = None
    return {
        "run_id": execution.run_id,
        "notebook": execution.notebook,
        "execution": "interactive",
        "source": str(source) if source else None,
        "source_sha256": source_hash,
        "status": status,
        "exit_code": int(_STATUS_CODES.get(status, ExitCode.EXECUTION_FAILED)),
        "verdict": verdict,
        "parameters": execution.parameters,
        "figures": dict(figures or {}),
        "operation_ids": list(operation_ids if operation_ids is not None else execution.operation_ids),
        "database": dict(database or {}),
        "error": None,
        "started_at": execution.started_at.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_s": round((finished - execution.started_at).total_seconds(), 3),
        "kernel_name": "interactive",
        "potato_ops_version": _package_version(),
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
    }


def _keep_pending(execution: Execution, result: Mapping[str, Any]) -> str:
    from potato_ops.notebook_runs import records

    url = records.database_url_of_execution(execution.parameters)
    if url is None:
        raise ReportError("there is no database to keep it in")
    row = records.record_row(
        {**result, "run_id": execution.run_id + PENDING_SUFFIX},
        archive=records.archive_location(default_reports_dir().resolve()),
        secrets=collect_secrets(),
        archive_error=f"{INCOMPLETE}: {result['verdict']}",
    )
    _in_records_table(url, lambda conn: replace_run_record(conn, row))
    return f"{records.RECORDS_TABLE} (run_id {row['run_id']}) of {mask_url(url)}"


def _drop_pending(execution: Execution) -> None:
    if execution.pending_kept is None:
        return
    from potato_ops.notebook_runs import records

    url = records.database_url_of_execution(execution.parameters)
    if url is None:
        return
    try:
        _in_records_table(url, lambda conn: delete_run_record(conn, execution.run_id + PENDING_SUFFIX))
    except ReportError as exc:
        logger.warning("the incomplete row of %s stays: %s", execution.run_id, exc)


def _in_records_table(url: str, work: Callable[[Connection], None]) -> None:
    """Run work in one transaction on the database at url; ReportError when it refuses."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            work(conn)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ReportError(f"cannot write ops_run_records of {mask_url(url)}: {detail}") from None
    finally:
        engine.dispose()


def executed_notebook(execution: Execution) -> dict[str, Any]:
    """Return the notebook as this kernel ran it since the check: the source file's cells (its
    headings and tags) with the outputs shown, cells edited but not saved in their place."""
    from potato_ops.notebook_runs.jupyter import nbformat

    shell = _shell()
    ran = _capture(shell).since(execution.first_count) if shell is not None else []
    skeleton = _read_source(execution.source)
    if skeleton is None:
        skeleton = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
        skeleton.cells.append(
            nbformat.v4.new_markdown_cell(f"# {execution.notebook}")  # type: ignore[no-untyped-call]
        )
    nb: dict[str, Any] = copy.deepcopy(dict(skeleton))
    nb.setdefault("metadata", {})["potato_ops"] = {"execution": "interactive", "run_id": execution.run_id}
    code = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    for cell in code:
        cell["outputs"], cell["execution_count"] = [], None
    latest: dict[str, _Cell] = {}
    for ran_cell in ran:
        latest[ran_cell.source.strip()] = ran_cell
    used: set[int] = set()
    unmatched: list[dict[str, Any]] = []
    for cell in code:
        found = latest.get(_text(cell.get("source", "")).strip())
        if found is None:
            unmatched.append(cell)
            continue
        _fill(cell, found)
        used.add(id(found))
    leftovers = [c for c in ran if id(c) not in used and latest.get(c.source.strip()) is c]
    for cell, ran_cell in zip(unmatched, leftovers, strict=False):
        cell["source"] = ran_cell.source
        _fill(cell, ran_cell)
    for ran_cell in leftovers[len(unmatched) :]:
        extra = nbformat.v4.new_code_cell(ran_cell.source)  # type: ignore[no-untyped-call]
        _fill(extra, ran_cell)
        nb["cells"].append(extra)
    return nb


def _fill(cell: dict[str, Any], ran: _Cell) -> None:
    cell["execution_count"] = ran.count
    cell["outputs"] = [
        {**o, "execution_count": ran.count} if o["output_type"] == "execute_result" else o
        for o in ran.outputs
    ]


def _text(source: Any) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def _read_source(path: Path | None) -> Any:
    if path is None or not path.is_file():
        return None
    try:
        if path.suffix == ".py":
            import jupytext

            return jupytext.read(str(path))
        from potato_ops.notebook_runs.jupyter import nbformat

        return nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
    except (ImportError, OSError, ValueError) as exc:
        logger.warning("cannot read %s for the record: %s", path, exc)
        return None


def _show(line: str) -> None:
    from IPython.display import display

    display({"text/plain": line}, raw=True)  # type: ignore[no-untyped-call]


def _package_version() -> str:
    try:
        return metadata.version("potato-ops")
    except metadata.PackageNotFoundError:
        return "unknown"
