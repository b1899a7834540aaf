"""Nothing lost, nothing removed unnoticed: the reports folder is checked before a run, a run
whose archive fails keeps its record in the database, and the database anchors the archive
(with an optional ed25519 signature of the chain's head)."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.db.run_records import StoredRecord
from potato_ops.db.schema import ops_rebuild_history, ops_run_records
from potato_ops.errors import ReportError, SecretLeakError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs import archive
from potato_ops.notebook_runs.archive import IndexEntry, list_executions, new_execution_id
from potato_ops.notebook_runs.index_lines import INDEX_FILE
from potato_ops.notebook_runs.preflight import check_reports_dir
from potato_ops.notebook_runs.records import (
    archive_location,
    archive_with_record,
    compare_with_database,
)
from potato_ops.notebook_runs.signing import configured_signing_key
from tests.conftest import add_runs, add_user, snapshot

MARKS: list[dt.date | str] = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-05", "2024-03-06"]
WRONG_RUNS = [("2024-03-01", "2024-03-06")]


def expected_spans(marks: list[dt.date | str]) -> list[tuple[str, str]]:
    """Group ISO dates into (start, end) runs of consecutive days, by hand."""
    days = sorted(dt.date.fromisoformat(str(m)) for m in marks)
    spans: list[list[dt.date]] = []
    for day in days:
        if spans and (day - spans[-1][1]).days == 1:
            spans[-1][1] = day
        else:
            spans.append([day, day])
    return [(s.isoformat(), e.isoformat()) for s, e in spans]


def stored_spans(storage: Storage, user_id: str) -> list[tuple[str, str]]:
    return [(r.start_date.isoformat(), r.end_date.isoformat()) for r in storage.get_user_runs(user_id)]


def record_rows(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(ops_run_records)).mappings()]
    finally:
        engine.dispose()


def one_error_line(stderr: str) -> str:
    """Return the one ``error:`` line, the last of stderr (a run logs its progress before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.endswith(errors[0] + "\n"), stderr
    assert "Traceback" not in stderr
    return errors[0]


# -- 1. the reports folder is checked before the kernel starts ----------------------------------


def _file_in_the_way(tmp_path: Path) -> Path:
    path = tmp_path / "reports"
    path.write_text("not a folder\n")
    return path


def _under_a_file(tmp_path: Path) -> Path:
    # What a read-only file system does to root as well: the folder cannot be made.
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    return blocker / "reports"


@pytest.mark.parametrize("where", [_file_in_the_way, _under_a_file], ids=["a-file", "under-a-file"])
def test_run_refuses_a_reports_folder_that_cannot_take_the_record(
    storage: Storage, db_url: str, tmp_path: Path, where: Any
) -> None:
    add_user(storage, "U", MARKS)
    add_runs(storage, "U", WRONG_RUNS)
    before = snapshot(storage)
    reports = where(tmp_path)

    result = CliRunner().invoke(
        app,
        [
            *("run", "01_single_user_recovery", "-p", "user_id", "U", "-p", "dry_run", "false"),
            *("-p", "confirm", db_url.split("?", 1)[0].rsplit("/", 1)[1]),
        ],
        env={"POTATO_DATABASE_URL": db_url, "POTATO_OPS_REPORTS_DIR": str(reports)},
    )

    assert result.exit_code == ExitCode.ERROR, result.output
    line = one_error_line(result.stderr)
    assert f"error: reports folder {reports}" in line
    assert snapshot(storage) == before  # no kernel started, nothing rebuilt, nothing recorded


def test_audit_refuses_a_reports_folder_that_cannot_take_the_record(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    before = snapshot(storage)
    reports = _file_in_the_way(tmp_path)

    result = CliRunner().invoke(app, ["audit", "--reports-dir", str(reports), "--database-url", db_url])

    assert result.exit_code == ExitCode.ERROR, result.output
    assert f"error: reports folder {reports} cannot be used: a file is in the way" in one_error_line(
        result.stderr
    )
    assert result.stdout == ""
    assert snapshot(storage) == before


def test_a_nearly_full_reports_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"MiB free, a run's record needs at least"):
        check_reports_dir(tmp_path / "reports", min_free_bytes=2**62)
    assert [p.name for p in (tmp_path / "reports").iterdir()] == []  # the probe is gone


def _no_space_left(folder: Path, payload: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.notebook
def test_a_committed_run_whose_archive_fails_keeps_its_record_in_the_database(
    storage: Storage, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_user(storage, "U", MARKS)
    add_runs(storage, "U", WRONG_RUNS)
    reports = tmp_path / "reports"
    monkeypatch.setenv("POTATO_DATABASE_URL", db_url)
    # The disk fills up after the rebuild committed, while the record is being written.
    monkeypatch.setattr(archive, "write_execution_files", _no_space_left)

    result = CliRunner().invoke(
        app,
        [
            "run",
            "01_single_user_recovery",
            "-p",
            "user_id",
            "U",
            "-p",
            "dry_run",
            "false",
            "-p",
            "operator",
            "ana",
            *("-p", "confirm", db_url.split("?", 1)[0].rsplit("/", 1)[1]),
        ],
        env={"POTATO_OPS_REPORTS_DIR": str(reports)},
    )

    assert result.exit_code == ExitCode.ERROR, result.output
    line = one_error_line(result.stderr)
    assert "01_single_user_recovery ended (ok) but its record could not be archived" in line
    assert "No space left on device" in line
    assert stored_spans(storage, "U") == expected_spans(MARKS)  # the change committed
    with storage.engine.connect() as conn:
        operation_ids = [r.operation_id for r in conn.execute(select(ops_rebuild_history.c.operation_id))]
    [row] = record_rows(db_url)
    assert f"the record is kept in ops_run_records (run_id {row['run_id']})" in line
    assert (row["notebook"], row["status"], row["operator"]) == ("01_single_user_recovery", "ok", "ana")
    assert json.loads(row["operation_ids"]) == operation_ids and len(operation_ids) == 1
    assert json.loads(row["parameters"])["user_id"] == "U"
    assert json.loads(row["parameters"])["dry_run"] is False
    assert "No space left on device" in row["archive_error"]
    assert row["manifest_sha256"] is None and row["seq"] is None
    assert json.loads(row["result"])["verdict"] == row["verdict"] != ""
    # Nothing half-written in the folder.
    assert sorted(p.name for p in reports.iterdir() if not p.name.startswith(".")) == []


# -- 5. the database anchors the archive --------------------------------------------------------


def _notebook() -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]  # type: ignore[no-untyped-call]
    result: dict[str, Any] = nb
    return result


def archive_one(reports: Path, db_url: str, name: str, *, signed: bool = False) -> str:
    """Archive a small run the way the runner does; return its run id."""
    started = dt.datetime.now(dt.UTC)
    run_id = new_execution_id(name, started)
    result = {
        "run_id": run_id,
        "notebook": name,
        "status": "ok",
        "verdict": "fine",
        "parameters": {"operator": "ana"},
        "operation_ids": [],
        "started_at": started.isoformat(),
        "finished_at": started.isoformat(),
    }
    archived, not_in_database = archive_with_record(
        run_id=run_id,
        notebook_name=name,
        notebook=_notebook(),
        result=result,
        reports=reports,
        database_url=db_url,
        signing_key=configured_signing_key() if signed else None,
    )
    assert not_in_database is None
    return archived.run_dir.name


def verify(reports: Path, db_url: str, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, ["reports", "verify", "--reports-dir", str(reports), "--database-url", db_url, *extra]
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.usefixtures("storage")
def test_each_archived_run_is_anchored_in_the_database(db_url: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    run_ids = [archive_one(reports, db_url, f"0{i}_demo") for i in (1, 2)]

    rows = sorted(record_rows(db_url), key=lambda r: r["seq"])
    entries = list_executions(reports)
    assert [(r["run_id"], r["seq"], r["manifest_sha256"], r["entry_hash"]) for r in rows] == [
        (e.run_id, e.seq, e.manifest_sha256, e.entry_hash) for e in entries
    ]
    assert [e.run_id for e in entries] == run_ids
    assert {r["archive"] for r in rows} == {archive_location(reports)}
    assert verify(reports, db_url) == (
        0,
        "ok: 2 runs intact (matching the database's records)\n",
        "",
    )


@pytest.mark.usefixtures("storage")
def test_removing_the_newest_run_and_its_index_line_is_found(db_url: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    archive_one(reports, db_url, "01_demo")
    newest = archive_one(reports, db_url, "02_demo")
    assert verify(reports, db_url)[0] == 0

    lines = (reports / INDEX_FILE).read_text().splitlines(keepends=True)
    (reports / INDEX_FILE).write_text("".join(lines[:-1]))
    for path in (reports / newest).iterdir():
        path.unlink()
    (reports / newest).rmdir()
    folder_only = CliRunner().invoke(app, ["reports", "verify", "--reports-dir", str(reports)])
    assert folder_only.exit_code == 0  # what the folder alone cannot tell

    code, out, err = verify(reports, db_url)

    assert code == ExitCode.PROBLEM_FOUND
    assert out == f"{newest}: recorded in the database (entry 2, ok) but missing from the folder\n"
    assert err == "1 problems in 1 runs\n"


@pytest.mark.usefixtures("storage")
def test_signed_chain_head_verifies_and_a_tampered_signature_is_found(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "keys" / "archive.key"
    key.parent.mkdir()
    made = CliRunner().invoke(app, ["reports", "keygen", str(key)])
    assert made.exit_code == 0, made.output
    assert key.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("POTATO_OPS_SIGNING_KEY", str(key))
    reports = tmp_path / "reports"
    archive_one(reports, db_url, "01_demo", signed=True)
    newest = archive_one(reports, db_url, "02_demo", signed=True)
    public = ["--public-key", f"{key}.pub"]
    assert verify(reports, db_url, *public) == (
        0,
        "ok: 2 runs intact (matching the database's records; head signature verified)\n",
        "",
    )
    [row] = [r for r in record_rows(db_url) if r["run_id"] == newest]
    head = json.loads((reports / "HEAD.sig").read_text())
    assert (head["seq"], head["signature"]) == (2, row["signature"])

    raw = bytearray(base64.b64decode(head["signature"]))
    raw[0] ^= 1
    head["signature"] = base64.b64encode(bytes(raw)).decode()
    (reports / "HEAD.sig").write_text(json.dumps(head))

    code, out, _ = verify(reports, db_url, *public)
    assert code == ExitCode.PROBLEM_FOUND
    assert out == "HEAD.sig: the signature does not verify with the public key\n"


@pytest.mark.usefixtures("storage")
def test_a_rewritten_chain_fails_the_signature_and_the_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "archive.key"
    assert CliRunner().invoke(app, ["reports", "keygen", str(key)]).exit_code == 0
    monkeypatch.setenv("POTATO_OPS_SIGNING_KEY", str(key))
    reports = tmp_path / "reports"
    only = archive_one(reports, db_url, "01_demo", signed=True)
    # Someone able to rewrite the folder edits the result and re-hashes everything after it.
    result_path = reports / only / "01_demo.result.json"
    result_path.write_text(result_path.read_text().replace("fine", "forged"))
    manifest = "".join(
        f"{archive.sha256_hex((reports / only / n).read_bytes())}  {n}\n"
        for n in sorted(p.name for p in (reports / only).iterdir() if p.name != "MANIFEST.sha256")
    )
    (reports / only / "MANIFEST.sha256").write_text(manifest)
    entry = json.loads((reports / INDEX_FILE).read_text())
    entry["manifest_sha256"] = archive.sha256_hex(manifest.encode())
    entry["entry_hash"] = archive.entry_hash(entry)
    (reports / INDEX_FILE).write_text(json.dumps(entry) + "\n")
    assert CliRunner().invoke(app, ["reports", "verify", "--reports-dir", str(reports)]).exit_code == 0

    code, out, _ = verify(reports, db_url, "--public-key", f"{key}.pub")

    assert code == ExitCode.PROBLEM_FOUND
    assert out.splitlines() == [
        "HEAD.sig: entry 1 is not the entry that was signed",
        f"{only}: its manifest or index entry differs from the database's copy",
    ]


def test_compare_with_database_reports_missing_changed_and_extra_runs() -> None:
    def entry(run_id: str, seq: int, manifest: str) -> IndexEntry:
        return IndexEntry(seq, run_id, "n", "ok", "", "", run_id, manifest, "p", f"e{seq}")

    def row(run_id: str, seq: int | None, manifest: str | None) -> StoredRecord:
        entry_hash = f"e{seq}" if seq is not None else None
        now = dt.datetime.now(dt.UTC)
        return StoredRecord(run_id, "n", "ok", "here", seq, manifest, entry_hash, None, None, now)

    folder = [entry("a", 1, "m1"), entry("b", 2, "CHANGED"), entry("x", 3, "m3")]
    database = [row("a", 1, "m1"), row("b", 2, "m2"), row("c", 4, "m4"), row("never", None, None)]

    assert compare_with_database(folder, database) == [
        "b: its manifest or index entry differs from the database's copy",
        "c: recorded in the database (entry 4, ok) but missing from the folder",
        "x: in the folder but not recorded in the database",
    ]


@pytest.mark.notebook
@pytest.mark.usefixtures("storage")
def test_the_audit_prints_the_hash_the_database_keeps(db_url: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"

    result = CliRunner().invoke(app, ["audit", "--reports-dir", str(reports), "--database-url", db_url])

    assert result.exit_code == ExitCode.OK, result.output
    [entry] = list_executions(reports)
    [row] = record_rows(db_url)
    assert f"manifest sha256: {entry.manifest_sha256}\n" in result.stdout
    assert (row["run_id"], row["manifest_sha256"], row["seq"]) == (entry.run_id, entry.manifest_sha256, 1)
    assert verify(reports, db_url)[0] == 0


@pytest.mark.usefixtures("storage")
def test_a_record_refused_for_a_secret_is_still_kept_in_the_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Sup3rS3cret"
    monkeypatch.setenv("PGPASSWORD", secret)
    reports = tmp_path / "reports"
    leaky = _notebook()
    encoded = base64.b64encode(f"password={secret}".encode()).decode()
    leaky["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": encoded}]
    started = dt.datetime.now(dt.UTC)
    run_id = new_execution_id("02_leaky", started)
    result = {"run_id": run_id, "notebook": "02_leaky", "status": "ok", "verdict": f"pw {secret}"}

    with pytest.raises(SecretLeakError) as caught:
        archive_with_record(
            run_id=run_id,
            notebook_name="02_leaky",
            notebook=leaky,
            result=result,
            reports=reports,
            database_url=db_url,
        )

    assert f"the record is kept in ops_run_records (run_id {run_id})" in str(caught.value)
    assert secret not in str(caught.value)
    assert not reports.exists() or list(reports.iterdir()) == []
    [row] = record_rows(db_url)
    assert (row["run_id"], row["verdict"], row["manifest_sha256"]) == (run_id, "pw ***", None)
    assert "would hold a secret" in row["archive_error"]
    assert all(secret not in str(value) for value in row.values())
