"""A damaged or booby-trapped reports folder: refused before the kernel starts, or the record
kept in the database; ``reports verify`` reports tampering in one line per problem, never a
traceback; nothing is written through a planted link; an environment variable's value is
never echoed."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.config import resolve_database_url
from potato_ops.errors import ConfigError, RecordNotArchivedError, ReportError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs import archive, preflight
from potato_ops.notebook_runs.archive import new_execution_id
from potato_ops.notebook_runs.index_lines import GENESIS_HASH, INDEX_FILE
from potato_ops.notebook_runs.preflight import check_reports_dir
from potato_ops.notebook_runs.records import archive_with_record, keep_record
from potato_ops.runbook.params import RunbookParameterError, url_env_param
from tests.conftest import add_runs, add_user, snapshot
from tests.test_execution_records import (
    MARKS,
    WRONG_RUNS,
    _notebook,
    archive_one,
    one_error_line,
    record_rows,
    verify,
)

SECRET = "correct-Horse-battery-9-staple"  # what an operator's variable might hold by mistake

# Damage of the index's last line, as a person or a bad disk leaves it.
DAMAGED_INDEX: dict[str, bytes] = {
    "not-utf8": b"\xff\xfe garbage\n",
    "seq-text": b'{"seq":"x"}\n',
    "seq-overflow": b'{"seq":1e999}\n',
    "seq-null": b'{"seq":null}\n',
    "seq-bool": b'{"seq":true,"entry_hash":"' + b"a" * 64 + b'"}\n',
    "too-deep": b"[" * 100_000 + b"\n",
}


def _database_name(db_url: str) -> str:
    """Return the name a live run is confirmed with: the SQLite file's or the PostgreSQL database's."""
    return db_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _run_01(db_url: str, reports: Path, *extra: str) -> Any:
    live = ["-p", "dry_run", "false", "-p", "confirm", _database_name(db_url)]
    return CliRunner().invoke(
        app,
        ["run", "01_single_user_recovery", "-p", "user_id", "U", *live, *extra],
        env={"POTATO_DATABASE_URL": db_url, "POTATO_OPS_REPORTS_DIR": str(reports)},
    )


# -- 1. a damaged index: refused before the kernel, or the record kept in the database --------


@pytest.mark.parametrize("damage", list(DAMAGED_INDEX), ids=list(DAMAGED_INDEX))
def test_a_damaged_index_refuses_the_run_before_the_kernel_starts(
    storage: Storage, db_url: str, tmp_path: Path, damage: str
) -> None:
    add_user(storage, "U", MARKS)
    add_runs(storage, "U", WRONG_RUNS)
    before = snapshot(storage)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / INDEX_FILE).write_bytes(DAMAGED_INDEX[damage])

    result = _run_01(db_url, reports)

    assert result.exit_code == ExitCode.ERROR, result.output
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: reports folder {reports} cannot take the record: ")
    assert f"{INDEX_FILE} line 1 is damaged" in line
    assert snapshot(storage) == before  # nothing ran, nothing was rebuilt
    assert record_rows(db_url) == []
    assert sorted(p.name for p in reports.iterdir() if not p.name.startswith(".")) == [INDEX_FILE]


def _result(run_id: str, name: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).isoformat()
    return {
        "run_id": run_id,
        "notebook": name,
        "status": "ok",
        "verdict": "rebuilt U",
        "parameters": {"operator": "ana", "user_id": "U"},
        "operation_ids": ["op-1"],
        "started_at": now,
        "finished_at": now,
    }


def _archive_after_damage(reports: Path, db_url: str) -> tuple[str, RecordNotArchivedError]:
    run_id = new_execution_id("01_demo", dt.datetime.now(dt.UTC))
    with pytest.raises(RecordNotArchivedError) as raised:
        archive_with_record(
            run_id=run_id,
            notebook_name="01_demo",
            notebook=_notebook(),
            result=_result(run_id, "01_demo"),
            reports=reports,
            database_url=db_url,
        )
    return run_id, raised.value


@pytest.mark.usefixtures("storage")
@pytest.mark.parametrize("damage", list(DAMAGED_INDEX), ids=list(DAMAGED_INDEX))
def test_an_index_damaged_after_the_preflight_keeps_the_record_in_the_database(
    db_url: str, tmp_path: Path, damage: str
) -> None:
    reports = tmp_path / "reports"
    archive_one(reports, db_url, "00_first")
    with (reports / INDEX_FILE).open("ab") as index:  # damaged while the notebook ran
        index.write(DAMAGED_INDEX[damage])

    run_id, error = _archive_after_damage(reports, db_url)

    assert f"the record is kept in ops_run_records (run_id {run_id})" in str(error)
    assert "\n" not in str(error)
    [row] = [r for r in record_rows(db_url) if r["run_id"] == run_id]
    assert (row["status"], row["operator"], json.loads(row["operation_ids"])) == ("ok", "ana", ["op-1"])
    assert row["manifest_sha256"] is None and "is damaged" in row["archive_error"]
    assert not any(p.name.endswith("01_demo_" + run_id[-8:]) for p in reports.iterdir())


@pytest.mark.usefixtures("storage")
def test_any_unexpected_error_while_archiving_keeps_the_record(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_renderer(*args: object, **kwargs: object) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(archive, "render_summary", broken_renderer)

    run_id, error = _archive_after_damage(tmp_path / "reports", db_url)

    assert "UnicodeDecodeError" in str(error) and "kept in ops_run_records" in str(error)
    assert [r["run_id"] for r in record_rows(db_url)] == [run_id]


# -- 2. an environment variable's value is never echoed -----------------------------------------


def test_a_variable_holding_no_url_is_refused_without_its_value(
    storage: Storage, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_user(storage, "U", MARKS)
    before = snapshot(storage)
    monkeypatch.setenv("MY_DSN", SECRET)
    reports = tmp_path / "reports"

    result = _run_01(db_url, reports, "-p", "database_url_env", "MY_DSN")

    assert result.exit_code == ExitCode.INVALID_PARAMETERS, result.output
    line = one_error_line(result.stderr)
    assert line == (
        "error: parameter database_url_env: $MY_DSN is not a database URL (its value is not "
        "shown): expected postgresql+psycopg://USER@HOST/DB or sqlite:///PATH"
    )
    assert SECRET not in result.output
    assert snapshot(storage) == before
    assert not reports.exists() or not any(reports.iterdir())


def test_the_check_cell_and_the_library_never_echo_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DSN", SECRET)
    with pytest.raises(RunbookParameterError) as in_cell:
        url_env_param("MY_DSN")
    with pytest.raises(ConfigError) as in_library:
        resolve_database_url(None, "MY_DSN")
    with pytest.raises(ConfigError) as given:
        resolve_database_url(SECRET)
    with pytest.raises(ReportError) as kept:
        keep_record(SECRET, {"run_id": "r"})

    messages = [str(e.value) for e in (in_cell, in_library, given, kept)]
    assert all(SECRET not in m and "not shown" in m for m in messages), messages
    assert "$MY_DSN is not a database URL" in messages[0]


# -- 5. reports verify reports tampering instead of crashing ------------------------------------


def _head_sig_overflow(reports: Path) -> None:
    (reports / "HEAD.sig").write_text('{"seq":1e999,"entry_hash":"x","key_id":"k","signature":"c2ln"}\n')


def _head_sig_binary(reports: Path) -> None:
    (reports / "HEAD.sig").write_bytes(b"\xff\xfe\x00\x01binary")


def _index_line_not_utf8(reports: Path) -> None:
    with (reports / INDEX_FILE).open("ab") as index:
        index.write(b"\xff\xfe\n")


def _index_line_too_deep(reports: Path) -> None:
    with (reports / INDEX_FILE).open("ab") as index:
        index.write(b"[" * 100_000 + b"\n")


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "head-sig-1e999": (_head_sig_overflow, "HEAD.sig: malformed"),
    "head-sig-binary": (_head_sig_binary, "HEAD.sig: malformed"),
    "index-not-utf8": (_index_line_not_utf8, "index.jsonl line 2: not a valid index entry"),
    "index-too-deep": (_index_line_too_deep, "index.jsonl line 2: not a valid index entry"),
}


@pytest.mark.parametrize("tamper", list(TAMPERING), ids=list(TAMPERING))
def test_verify_reports_tampered_files_in_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    key = tmp_path / "archive.key"
    assert CliRunner().invoke(app, ["reports", "keygen", str(key)]).exit_code == 0
    monkeypatch.setenv("POTATO_OPS_SIGNING_KEY", str(key))
    reports = tmp_path / "reports"
    archive.archive_execution(
        run_id=new_execution_id("01_demo", dt.datetime.now(dt.UTC)),
        notebook_name="01_demo",
        notebook=_notebook(),
        result={"status": "ok", "verdict": "fine"},
        reports_dir=reports,
        secrets=[],
        signing_key=archive_signing_key(),
    )
    damage, expected = TAMPERING[tamper]
    damage(reports)

    result = CliRunner().invoke(
        app, ["reports", "verify", "--reports-dir", str(reports), "--public-key", f"{key}.pub"]
    )

    assert result.exit_code == ExitCode.PROBLEM_FOUND, result.output
    assert expected in result.stdout.splitlines()
    assert isinstance(result.exception, SystemExit)  # an exit code, not a crash


def archive_signing_key() -> Any:
    from potato_ops.notebook_runs.signing import configured_signing_key

    return configured_signing_key()


@pytest.mark.usefixtures("storage")
def test_verify_with_the_key_fails_when_head_sig_is_deleted(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "archive.key"
    assert CliRunner().invoke(app, ["reports", "keygen", str(key)]).exit_code == 0
    monkeypatch.setenv("POTATO_OPS_SIGNING_KEY", str(key))
    reports = tmp_path / "reports"
    archive_one(reports, db_url, "01_demo", signed=True)
    (reports / "HEAD.sig").unlink()

    code, out, err = verify(reports, db_url, "--public-key", f"{key}.pub")

    assert code == ExitCode.PROBLEM_FOUND
    assert out == "HEAD.sig: missing, the chain's head (entry 1) is not signed\n"
    assert err == "1 problems in 1 runs\n"


@pytest.mark.usefixtures("storage")
def test_verify_without_the_key_says_head_sig_was_not_checked(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "archive.key"
    assert CliRunner().invoke(app, ["reports", "keygen", str(key)]).exit_code == 0
    monkeypatch.setenv("POTATO_OPS_SIGNING_KEY", str(key))
    reports = tmp_path / "reports"
    archive_one(reports, db_url, "01_demo", signed=True)

    assert verify(reports, db_url) == (
        0,
        "ok: 1 runs intact (matching the database's records; "
        "HEAD.sig present but NOT checked: give --public-key)\n",
        "",
    )


@pytest.mark.usefixtures("storage")
def test_an_edited_entry_rehashed_with_its_manifest_kept_is_caught_by_the_database(
    db_url: str, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    first = archive_one(reports, db_url, "01_demo")
    second = archive_one(reports, db_url, "02_demo")
    # Someone turns the first run's status around and re-hashes the chain; manifests untouched.
    entries = [json.loads(line) for line in (reports / INDEX_FILE).read_text().splitlines()]
    entries[0]["status"] = "problem"
    previous = GENESIS_HASH
    for entry in entries:
        entry["prev_hash"] = previous
        entry["entry_hash"] = previous = archive.entry_hash(entry)
    (reports / INDEX_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))
    folder_only = CliRunner().invoke(app, ["reports", "verify", "--reports-dir", str(reports)])
    assert folder_only.exit_code == 0, folder_only.output  # the folder alone cannot tell

    code, out, _ = verify(reports, db_url)

    assert code == ExitCode.PROBLEM_FOUND
    assert out.splitlines() == [
        f"{run}: its manifest or index entry differs from the database's copy" for run in (first, second)
    ]


# -- the preflight's write probe -----------------------------------------------------------------


def test_a_folder_that_takes_no_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root writes anywhere, so a read-only file system is simulated: creating a file in the
    # folder fails as it does on a read-only mount.
    reports = tmp_path / "reports"
    reports.mkdir()
    real_open = os.open

    def read_only_mount(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and Path(os.fsdecode(path)).parent == reports:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_mount)

    with pytest.raises(ReportError, match=r"is not writable: Read-only file system"):
        check_reports_dir(reports)


# -- 6. nothing written through a planted link ---------------------------------------------------


@pytest.mark.parametrize("planted", [".HEAD.sig.tmp", "HEAD.sig", "index.html", ".index.html.tmp"])
def test_a_planted_link_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    key = tmp_path / "archive.key"
    assert CliRunner().invoke(app, ["reports", "keygen", str(key)]).exit_code == 0
    monkeypatch.setenv("POTATO_OPS_SIGNING_KEY", str(key))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours\n")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / planted).symlink_to(elsewhere)

    check_reports_dir(reports)
    archive.archive_execution(
        run_id=new_execution_id("01_demo", dt.datetime.now(dt.UTC)),
        notebook_name="01_demo",
        notebook=_notebook(),
        result={"status": "ok", "verdict": "fine"},
        reports_dir=reports,
        secrets=[],
        signing_key=archive_signing_key(),
    )

    assert elsewhere.read_text() == "not yours\n"
    for name in ("HEAD.sig", "index.html", INDEX_FILE):
        assert not (reports / name).is_symlink() and (reports / name).is_file()
    assert json.loads((reports / "HEAD.sig").read_text())["seq"] == 1


@pytest.mark.usefixtures("storage")
@pytest.mark.parametrize("planted", [INDEX_FILE, ".index.lock"])
def test_a_link_at_the_index_or_its_lock_is_refused_and_the_record_kept(
    db_url: str, tmp_path: Path, planted: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours\n")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / planted).symlink_to(elsewhere)

    with pytest.raises(ReportError, match=f"{planted} is not a regular file"):
        preflight.check_reports_dir(reports)
    run_id, error = _archive_after_damage(reports, db_url)

    assert "kept in ops_run_records" in str(error)
    assert [r["run_id"] for r in record_rows(db_url)] == [run_id]
    assert elsewhere.read_text() == "not yours\n"
    checked = CliRunner().invoke(app, ["reports", "verify", "--reports-dir", str(reports)])
    assert checked.exception is None or isinstance(checked.exception, SystemExit), checked.output


# -- 8. a parameter too large for the procedure is refused before the kernel ---------------------


def test_a_huge_calendar_is_refused_before_the_kernel(storage: Storage, db_url: str, tmp_path: Path) -> None:
    add_user(storage, "U", MARKS)

    result = _run_01(db_url, tmp_path / "reports", "-p", "calendar_days", "99999999999999999999999")

    assert result.exit_code == ExitCode.INVALID_PARAMETERS, result.output
    assert one_error_line(result.stderr) == (
        "error: parameter calendar_days = '99999999999999999999999' is not valid: "
        "expected a whole number between 7 and 36600"
    )
