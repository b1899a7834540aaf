"""The run archive: what a record holds, the hash chain, verification, and failing closed."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import pytest
import typer
from typer.testing import CliRunner

from potato_ops.errors import SecretLeakError
from potato_ops.notebook_runs.archive import (
    ArchivedExecution,
    archive_execution,
    entry_hash,
    list_executions,
    new_execution_id,
    verify_reports,
)
from potato_ops.notebook_runs.index_lines import GENESIS_HASH

SECRET = "Sup3rS3cret"
URL = f"postgresql+psycopg://ops:{SECRET}@localhost/x"


def _notebook(*outputs: dict[str, Any], source: str = "print(answer_total)") -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    params = nbformat.v4.new_code_cell("threshold: int = 3  # how many")  # type: ignore[no-untyped-call]
    params.metadata["tags"] = ["parameters"]
    cell = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
    cell.outputs = [nbformat.from_dict(o) for o in outputs]  # type: ignore[no-untyped-call]
    nb.cells = [params, cell]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["papermill"] = {"parameters": {"threshold": 5}}
    result: dict[str, Any] = nb
    return result


def _stream(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text}


def _archive(
    reports: Path,
    name: str = "01_demo",
    status: str = "ok",
    notebook: dict[str, Any] | None = None,
    secrets: tuple[str, ...] = (),
    verdict: str = "all good",
) -> ArchivedExecution:
    started = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    run_id = new_execution_id(name, started)
    result = {
        "run_id": run_id,
        "notebook": name,
        "status": status,
        "verdict": verdict,
        "started_at": started.isoformat(),
        "finished_at": (started + dt.timedelta(seconds=2)).isoformat(),
    }
    return archive_execution(
        run_id=run_id,
        notebook_name=name,
        notebook=notebook if notebook is not None else _notebook(_stream("42\n")),
        result=result,
        reports_dir=reports,
        secrets=secrets,
    )


def _files_under(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_run_id_names_time_notebook_and_random_part() -> None:
    run_id = new_execution_id("03_bulk_recovery", dt.datetime(2024, 5, 1, 14, 3, 9, tzinfo=dt.UTC))
    prefix, _, tail = run_id.rpartition("_")
    assert prefix == "20240501T140309Z_03_bulk_recovery"
    assert len(tail) == 8 and int(tail, 16) >= 0


def test_archive_writes_notebook_renderings_result_and_manifest(tmp_path: Path) -> None:
    run = _archive(tmp_path)

    assert sorted(p.name for p in run.run_dir.iterdir()) == [
        "01_demo.html",
        "01_demo.ipynb",
        "01_demo.result.json",
        "01_demo.summary.html",
        "MANIFEST.sha256",
    ]
    manifest = run.manifest_path.read_text().splitlines()
    assert manifest == [
        f"{hashlib.sha256((run.run_dir / name).read_bytes()).hexdigest()}  {name}"
        for name in sorted(p.name for p in run.run_dir.iterdir() if p.name != "MANIFEST.sha256")
    ]
    assert json.loads(run.result_path.read_text())["verdict"] == "all good"
    assert "answer_total" in run.html_path.read_text()
    assert "answer_total" not in run.summary_path.read_text()
    assert "42" in run.summary_path.read_text()
    executed = nbformat.read(str(run.notebook_path), as_version=4)  # type: ignore[no-untyped-call]
    assert executed.cells[1].outputs[0]["text"] == "42\n"


def test_index_is_a_hash_chain(tmp_path: Path) -> None:
    runs = [_archive(tmp_path, name=f"0{i}_demo") for i in range(1, 4)]

    entries = list_executions(tmp_path)
    assert [(e.seq, e.run_id, e.notebook) for e in entries] == [
        (1, runs[0].run_dir.name, "01_demo"),
        (2, runs[1].run_dir.name, "02_demo"),
        (3, runs[2].run_dir.name, "03_demo"),
    ]
    assert [e.prev_hash for e in entries] == [
        GENESIS_HASH,
        entries[0].entry_hash,
        entries[1].entry_hash,
    ]
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    for line, entry in zip(lines, entries, strict=True):
        assert entry_hash(json.loads(line)) == entry.entry_hash
        assert (
            entry.manifest_sha256
            == hashlib.sha256((tmp_path / entry.dir / "MANIFEST.sha256").read_bytes()).hexdigest()
        )


def test_index_html_lists_runs_newest_first(tmp_path: Path) -> None:
    first = _archive(tmp_path, name="01_demo", status="ok", verdict="nothing wrong")
    second = _archive(tmp_path, name="02_demo", status="problem", verdict="3 <bad> runs")

    page = (tmp_path / "index.html").read_text()
    assert page.index("02_demo") < page.index("01_demo")
    assert "3 &lt;bad&gt; runs" in page and "nothing wrong" in page
    for run in (first, second):
        name = run.run_dir.name
        notebook = name.split("_", 1)[1].rsplit("_", 1)[0]
        assert f'href="{name}/{notebook}.summary.html"' in page
        assert f'href="{name}/{notebook}.html"' in page
    assert ">problem<" in page and ">ok<" in page


def test_verify_accepts_an_intact_archive(tmp_path: Path) -> None:
    for i in range(3):
        _archive(tmp_path, name=f"0{i}_demo")
    assert verify_reports(tmp_path).ok
    assert verify_reports(tmp_path).checked == 3
    assert verify_reports(tmp_path / "missing").ok
    assert list_executions(tmp_path / "missing") == []
    assert not (tmp_path / "missing").exists()


def _modify_result(reports: Path, runs: list[ArchivedExecution]) -> None:
    path = runs[1].result_path
    path.write_text(path.read_text().replace("all good", "all fine"))


def _modify_manifest(reports: Path, runs: list[ArchivedExecution]) -> None:
    path = runs[1].manifest_path
    path.write_text(path.read_text() + "")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")


def _rehash_manifest_after_edit(reports: Path, runs: list[ArchivedExecution]) -> None:
    path = runs[1].result_path
    path.write_text(path.read_text().replace("all good", "all fine"))
    manifest = runs[1].manifest_path
    rows = [
        f"{hashlib.sha256((runs[1].run_dir / n).read_bytes()).hexdigest()}  {n}"
        for n in sorted(p.name for p in runs[1].run_dir.iterdir() if p.name != "MANIFEST.sha256")
    ]
    manifest.write_text("\n".join(rows) + "\n")


def _index_lines(reports: Path) -> list[str]:
    return (reports / "index.jsonl").read_text().splitlines()


def _write_index(reports: Path, lines: list[str]) -> None:
    (reports / "index.jsonl").write_text("".join(f"{line}\n" for line in lines))


def _delete_middle_line(reports: Path, runs: list[ArchivedExecution]) -> None:
    lines = _index_lines(reports)
    _write_index(reports, [lines[0], lines[2]])


def _delete_last_line(reports: Path, runs: list[ArchivedExecution]) -> None:
    _write_index(reports, _index_lines(reports)[:2])


def _reorder_lines(reports: Path, runs: list[ArchivedExecution]) -> None:
    lines = _index_lines(reports)
    _write_index(reports, [lines[0], lines[2], lines[1]])


def _edit_entry(reports: Path, runs: list[ArchivedExecution]) -> None:
    lines = _index_lines(reports)
    lines[1] = lines[1].replace('"status":"ok"', '"status":"problem"')
    _write_index(reports, lines)


def _add_file(reports: Path, runs: list[ArchivedExecution]) -> None:
    (runs[1].run_dir / "notes.txt").write_text("added later")


def _remove_file(reports: Path, runs: list[ArchivedExecution]) -> None:
    runs[1].summary_path.unlink()


Tamper = Callable[[Path, list[ArchivedExecution]], None]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_modify_result, ["{1}/01_demo.result.json: content differs from MANIFEST.sha256"]),
        (
            _modify_manifest,
            [
                "{1}: MANIFEST.sha256 was modified (its hash differs from the index)",
                "{1}/01_demo.summary.html: extra file, not in MANIFEST.sha256",
            ],
        ),
        (
            _rehash_manifest_after_edit,
            ["{1}: MANIFEST.sha256 was modified (its hash differs from the index)"],
        ),
        (
            _delete_middle_line,
            [
                "index.jsonl line 2 ({2}): chain broken (an entry before it was removed, edited or "
                "reordered)",
                "index.jsonl line 2 ({2}): sequence number 3, expected 2",
                "{1}: run folder is not in index.jsonl (entry removed?)",
            ],
        ),
        (_delete_last_line, ["{2}: run folder is not in index.jsonl (entry removed?)"]),
        (
            _reorder_lines,
            [
                "index.jsonl line 2 ({2}): chain broken (an entry before it was removed, edited or "
                "reordered)",
                "index.jsonl line 2 ({2}): sequence number 3, expected 2",
                "index.jsonl line 3 ({1}): chain broken (an entry before it was removed, edited or "
                "reordered)",
                "index.jsonl line 3 ({1}): sequence number 2, expected 3",
            ],
        ),
        (
            _edit_entry,
            ["index.jsonl line 2 ({1}): entry was edited (its hash does not match)"],
        ),
        (_add_file, ["{1}/notes.txt: extra file, not in MANIFEST.sha256"]),
        (_remove_file, ["{1}/01_demo.summary.html: missing"]),
    ],
    ids=[
        "result-modified",
        "manifest-line-removed",
        "manifest-rehashed",
        "middle-index-line-deleted",
        "last-index-line-deleted",
        "index-lines-reordered",
        "index-entry-edited",
        "extra-file",
        "missing-file",
    ],
)
def test_verify_reports_tampering(tmp_path: Path, tamper: Tamper, expected: list[str]) -> None:
    runs = [_archive(tmp_path, name=f"0{i}_demo") for i in range(3)]
    assert verify_reports(tmp_path).ok

    tamper(tmp_path, runs)

    report = verify_reports(tmp_path)
    assert not report.ok
    names = [r.run_dir.name for r in runs]
    assert report.problems == [line.format(*names) for line in expected]


def test_secrets_are_scrubbed_from_every_archived_file(tmp_path: Path) -> None:
    traceback = [f"\x1b[31mConnectionError\x1b[39m: could not connect to \x1b[32m'{URL}'\x1b[39m"]
    notebook = _notebook(
        _stream(f"connecting to {URL}\npassword {SECRET}\n"),
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {"text/html": f"<b>{SECRET}</b>", "text/plain": json.dumps({"pw": SECRET})},
        },
        {
            "output_type": "error",
            "ename": "ConnectionError",
            "evalue": f"could not connect to {URL}",
            "traceback": traceback,
        },
        source=f'url = "{URL}"',
    )
    notebook["metadata"]["papermill"]["parameters"]["note"] = SECRET
    run = _archive(tmp_path, notebook=notebook, secrets=(SECRET,), verdict=f"failed with {SECRET}")

    for name, data in _files_under(tmp_path).items():
        assert SECRET.encode() not in data, name
    assert json.loads(run.result_path.read_text())["verdict"] == "failed with ***"
    assert "postgresql+psycopg://ops:***@localhost/x" in run.html_path.read_text()
    assert verify_reports(tmp_path).ok


def test_a_secret_that_cannot_be_scrubbed_fails_closed(tmp_path: Path) -> None:
    _archive(tmp_path, name="01_before")
    before = _files_under(tmp_path)
    encoded = base64.b64encode(f"user=ops password={SECRET}".encode()).decode()
    notebook = _notebook(_stream(f"{encoded}\n"))

    with pytest.raises(SecretLeakError) as caught:
        _archive(tmp_path, name="02_leak", notebook=notebook, secrets=(SECRET,))

    assert "02_leak.ipynb" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert _files_under(tmp_path) == before
    assert verify_reports(tmp_path).ok


def test_concurrent_archiving_keeps_one_chain(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: _archive(tmp_path, name=f"{i:02d}_demo"), range(6)))

    entries = list_executions(tmp_path)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert verify_reports(tmp_path).ok


def _cli() -> typer.Typer:
    from potato_ops.cli import notebooks as notebooks_cli

    app = typer.Typer()
    notebooks_cli.register(app)
    return app


def test_cli_reports_list_and_verify(tmp_path: Path) -> None:
    runs = [_archive(tmp_path, name=f"0{i}_demo") for i in range(2)]
    runner = CliRunner()

    listed = runner.invoke(_cli(), ["reports", "list", "--reports-dir", str(tmp_path)])
    assert listed.exit_code == 0
    assert [line.split()[-1] for line in listed.output.splitlines()] == [
        runs[1].run_dir.name,
        runs[0].run_dir.name,
    ]

    clean = runner.invoke(_cli(), ["reports", "verify", "--reports-dir", str(tmp_path)])
    assert (clean.exit_code, clean.output) == (0, "ok: 2 runs intact (folder only: no database given)\n")

    _modify_result(tmp_path, [runs[0], runs[1]])
    broken = runner.invoke(_cli(), ["reports", "verify"], env={"POTATO_OPS_REPORTS_DIR": str(tmp_path)})
    assert broken.exit_code == 3
    assert f"{runs[1].run_dir.name}/01_demo.result.json: content differs" in broken.output


def test_cli_reports_list_on_a_malformed_index_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "index.jsonl").write_text("not json\n")
    result = CliRunner().invoke(_cli(), ["reports", "list", "--reports-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "line 1 is not an index entry" in result.output


def test_a_short_password_does_not_block_archiving(tmp_path: Path) -> None:
    # "S3cr" has base64 fragments inside the icons every HTML page embeds; plain, it is masked.
    run = _archive(tmp_path, notebook=_notebook(_stream("login S3cr failed\n")), secrets=("S3cr",))

    assert "login *** failed" in run.notebook_path.read_text()
    assert verify_reports(tmp_path).ok


def test_a_failed_index_append_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _archive(tmp_path, name="01_before")
    before = _files_under(tmp_path)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _archive(tmp_path, name="02_lost")
    monkeypatch.undo()

    assert _files_under(tmp_path) == before
    assert verify_reports(tmp_path).ok
