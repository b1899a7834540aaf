"""The tamper-evident archive of notebook runs under ``reports/``.

Each run gets a folder ``<UTC yyyymmddTHHMMSSZ>_<notebook>_<8 hex>/`` holding the executed
notebook, its full and summary HTML renderings, ``<notebook>.result.json`` and
``MANIFEST.sha256`` (``sha256sum`` format). ``index.jsonl`` chains the runs: each entry holds
the hash of its run's manifest and of the entry before it, so editing, removing or reordering
anything shows up in ``verify_reports``. Everything is scrubbed of secrets before it is
written; a record that would still hold one is refused whole (``SecretLeakError``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import functools
import hashlib
import html
import json
import logging
import os
import re
import secrets as random_tokens
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from potato_ops.config import reports_dir as default_reports_dir
from potato_ops.errors import ReportError
from potato_ops.notebook_runs.folder_writes import (
    open_no_follow,
    replace_file,
    temporary_name,
    write_new,
)
from potato_ops.notebook_runs.index_lines import (
    GENESIS_HASH,
    INDEX_FILE,
    LOCK_FILE,
    chain_tail,
    is_seq,
    read_lines,
)
from potato_ops.notebook_runs.jupyter import HTMLExporter, nbformat
from potato_ops.notebook_runs.signing import (
    HEAD_SIGNATURE_FILE,
    HeadSignature,
    check_head_signature,
    sign_head,
)
from potato_ops.notebook_runs.summary import render_summary
from potato_ops.redact import base64_runs, collect_secrets, ensure_no_secrets, scrub_text

logger = logging.getLogger("potato_ops")

INDEX_HTML = "index.html"
MANIFEST_FILE = "MANIFEST.sha256"
RUN_DIR_PATTERN = re.compile(r"^\d{8}T\d{6}Z_[A-Za-z0-9_.\-]+_[0-9a-f]{8}$")

_render_lock = threading.Lock()
_STATUS_COLOURS = {
    "ok": "#1a7f37",
    "problem": "#bf8700",
    "refused": "#bf8700",
    "error": "#cf222e",
    "timeout": "#8250df",
    "interrupted": "#8250df",
}


@dataclass(frozen=True)
class IndexEntry:
    """One line of ``index.jsonl``: a run and its links in the hash chain."""

    seq: int
    run_id: str
    notebook: str
    status: str
    started_at: str
    finished_at: str
    dir: str
    manifest_sha256: str
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class ArchivedExecution:
    """Where one archived execution's files are, with the result as archived (scrubbed)."""

    run_dir: Path
    notebook_path: Path
    html_path: Path
    summary_path: Path
    result_path: Path
    manifest_path: Path
    result: dict[str, Any]
    entry: IndexEntry
    signature: HeadSignature | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of checking the archive: ``ok`` when ``problems`` is empty."""

    ok: bool
    checked: int
    problems: list[str]


def new_execution_id(notebook_name: str, started_at: dt.datetime) -> str:
    """Return a fresh run id (also the run's folder name): ``<UTC time>_<notebook>_<8 hex>``."""
    stamp = started_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    safe_name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", notebook_name).strip("-.") or "notebook"
    return f"{stamp}_{safe_name}_{random_tokens.token_hex(4)}"


def sha256_hex(data: bytes) -> str:
    """Return the SHA-256 of data as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """Return the hash of an index entry: SHA-256 of its canonical JSON without ``entry_hash``."""
    body = {k: v for k, v in entry.items() if k != "entry_hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_hex(canonical.encode("utf-8"))


def scrub_data(value: Any, secrets: Sequence[str]) -> Any:
    """Return a copy of JSON-like data with every string (keys too) scrubbed of secrets."""
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, Mapping):
        return {scrub_text(str(k), secrets): scrub_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(v, secrets) for v in value]
    return copy.deepcopy(value)


@functools.cache
def _html_exporter(summary: bool) -> Any:
    # Building an exporter compiles its templates (about half a second); reuse one per kind.
    options: dict[str, Any] = {}
    if summary:
        options = {
            "exclude_input": True,
            "exclude_input_prompt": True,
            "exclude_output_prompt": True,
        }
    return HTMLExporter(**options)  # type: ignore[no-untyped-call]


def render_html(notebook: Any, title: str, *, summary: bool) -> str:
    """Return the notebook as standalone HTML; the summary leaves out code and prompts."""
    with _render_lock:
        body, _ = _html_exporter(summary).from_notebook_node(
            notebook, resources={"metadata": {"name": title}}
        )
    return str(body)


@functools.cache
def renderer_assets() -> frozenset[str]:
    """Return the base64 blobs (icons, fonts) the HTML renderer puts in every page.

    They come from the renderer's templates, not from the run, so a secret's base64 fragment
    found inside one is a chance match, not a leak.
    """
    empty = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    pages = (render_html(empty, "empty", summary=summary) for summary in (False, True))
    return frozenset().union(*(base64_runs(page) for page in pages))


def _notebook_json(notebook: Any) -> str:
    text: str = nbformat.writes(notebook)  # type: ignore[no-untyped-call]
    return text


def _scrub_html(page: str, secrets: Sequence[str]) -> str:
    # The notebook it renders is already masked; the page adds only escaping and the template,
    # whose large inline styles make pattern masking slow, so only secret forms are replaced.
    return scrub_text(page, secrets, mask_patterns=False)


def archive_execution(
    *,
    run_id: str,
    notebook_name: str,
    notebook: Mapping[str, Any],
    result: Mapping[str, Any],
    reports_dir: str | os.PathLike[str] | None = None,
    secrets: Iterable[str] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> ArchivedExecution:
    """Return the archived run after writing its folder and chaining it into the index.

    Every file is scrubbed first and then checked; if any would still hold a secret, raise
    SecretLeakError and write nothing. With ``signing_key``, the new head of the chain is
    signed into ``HEAD.sig``. An OSError while writing (disk full) leaves nothing behind.
    """
    reports = default_reports_dir(reports_dir)
    if not RUN_DIR_PATTERN.match(run_id):
        raise ReportError(f"not a run id: {run_id!r}")
    wanted = list(collect_secrets() if secrets is None else secrets)
    clean_nb = nbformat.from_dict(scrub_data(notebook, wanted))  # type: ignore[no-untyped-call]
    clean_result: dict[str, Any] = scrub_data(dict(result), wanted)
    names = {
        "notebook": f"{notebook_name}.ipynb",
        "html": f"{notebook_name}.html",
        "summary": f"{notebook_name}.summary.html",
        "result": f"{notebook_name}.result.json",
    }
    texts = {
        names["notebook"]: _notebook_json(clean_nb),
        names["html"]: _scrub_html(render_html(clean_nb, notebook_name, summary=False), wanted),
        names["summary"]: _scrub_html(render_summary(clean_nb, clean_result, notebook_name), wanted),
        names["result"]: json.dumps(clean_result, indent=2, ensure_ascii=False) + "\n",
    }
    payload = {name: text.encode("utf-8") for name, text in texts.items()}
    manifest = "".join(f"{sha256_hex(payload[n])}  {n}\n" for n in sorted(payload)).encode()
    payload[MANIFEST_FILE] = manifest
    for filename, data in payload.items():
        assets = renderer_assets() if filename.endswith(".html") else frozenset()
        ensure_no_secrets(data, wanted, f"{run_id}/{filename}", known_assets=assets)

    reports.mkdir(parents=True, exist_ok=True)
    staging = reports / f".tmp-{run_id}"
    staging.mkdir()
    signature: HeadSignature | None = None
    try:
        write_execution_files(staging, payload)
        with _index_lock(reports, exclusive=True):
            run_dir = reports / run_id
            staging.rename(run_dir)
            try:
                body = _next_entry(reports, run_id, notebook_name, clean_result, sha256_hex(manifest))
                if signing_key is not None:
                    signature = sign_head(signing_key, body["seq"], body["entry_hash"])
                _chain_entry(reports, body, signature)
            except BaseException:
                # Nothing half-written: a folder the index does not name would fail verification.
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            entry = IndexEntry(**body)
            _refresh_index_html(reports)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("archived %s in %s", run_id, run_dir)
    return ArchivedExecution(
        run_dir=run_dir,
        notebook_path=run_dir / names["notebook"],
        html_path=run_dir / names["html"],
        summary_path=run_dir / names["summary"],
        result_path=run_dir / names["result"],
        manifest_path=run_dir / MANIFEST_FILE,
        result=clean_result,
        entry=entry,
        signature=signature,
    )


def write_execution_files(folder: Path, payload: Mapping[str, bytes]) -> None:
    """Write each file of a run's record into ``folder`` (its staging copy)."""
    for filename, data in payload.items():
        write_new(folder / filename, data)


@contextlib.contextmanager
def _index_lock(reports: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the archive's lock: exclusive to append, shared to read (no lock file: no writer yet)."""
    if not exclusive and not (reports / LOCK_FILE).exists():
        yield
        return
    try:
        lock = open_no_follow(reports / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    except OSError:
        if exclusive:
            raise
        # A reader never writes: a lock file that is a planted link only costs it the lock.
        yield
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(lock)  # releases the lock


def _next_entry(
    reports: Path, run_id: str, notebook_name: str, result: Mapping[str, Any], manifest_hash: str
) -> dict[str, Any]:
    last_seq, last_hash = chain_tail(reports / INDEX_FILE)
    body: dict[str, Any] = {
        "seq": last_seq + 1,
        "run_id": run_id,
        "notebook": notebook_name,
        "status": str(result.get("status", "")),
        "started_at": str(result.get("started_at", "")),
        "finished_at": str(result.get("finished_at", "")),
        "dir": run_id,
        "manifest_sha256": manifest_hash,
        "prev_hash": last_hash,
    }
    body["entry_hash"] = entry_hash(body)
    return body


def _chain_entry(reports: Path, body: Mapping[str, Any], signature: HeadSignature | None) -> None:
    """Append the entry to the index and, when signed, replace ``HEAD.sig``; all or nothing."""
    line = json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n"
    path = reports / INDEX_FILE
    # Never through a link: O_NOFOLLOW refuses one planted at the index's name.
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    signature_staging = temporary_name(reports / HEAD_SIGNATURE_FILE)
    with os.fdopen(fd, "r+b") as index:
        size = os.fstat(fd).st_size
        if size:
            index.seek(size - 1)
            if index.read(1) != b"\n":
                line = "\n" + line
        try:
            if signature is not None:
                write_new(signature_staging, signature.to_json().encode("utf-8"))
            index.write(line.encode("utf-8"))
            index.flush()
            os.fsync(fd)
            if signature is not None:
                os.replace(signature_staging, reports / HEAD_SIGNATURE_FILE)
        except BaseException:
            index.truncate(size)
            signature_staging.unlink(missing_ok=True)
            raise


def _refresh_index_html(reports: Path) -> None:
    # The page is a view of the index, rebuilt on every run; the record is already complete.
    try:
        _write_index_html(reports)
    except OSError as exc:
        logger.warning("could not refresh %s: %s", reports / INDEX_HTML, exc)


def _read_index(reports: Path) -> list[tuple[int, dict[str, Any]]]:
    """Return (line number, entry) for every line of the index; damaged lines as {}."""
    return [(number, data or {}) for number, data in read_lines(reports / INDEX_FILE)]


def _as_entry(data: Mapping[str, Any]) -> IndexEntry | None:
    names = [f.name for f in fields(IndexEntry)]
    if set(data) != set(names) or not is_seq(data.get("seq")):
        return None
    if not all(isinstance(data[n], str) for n in names if n != "seq"):
        return None
    return IndexEntry(**{n: data[n] for n in names})


def list_executions(reports_dir: str | os.PathLike[str] | None = None) -> list[IndexEntry]:
    """Return the runs of the index, oldest first; raise ReportError on a malformed line."""
    reports = default_reports_dir(reports_dir)
    with _index_lock(reports, exclusive=False):
        raw = _read_index(reports)
    entries: list[IndexEntry] = []
    for number, data in raw:
        entry = _as_entry(data)
        if entry is None:
            raise ReportError(f"{reports / INDEX_FILE} line {number} is not an index entry")
        entries.append(entry)
    return entries


def readable_entries(reports_dir: str | os.PathLike[str] | None = None) -> list[IndexEntry]:
    """Return the index's well-formed entries, oldest first (malformed lines are left out)."""
    reports = default_reports_dir(reports_dir)
    if not reports.exists():
        return []
    with _index_lock(reports, exclusive=False):
        raw = _read_index(reports)
    return [entry for _, data in raw if (entry := _as_entry(data)) is not None]


def _write_index_html(reports: Path) -> None:
    rows: list[str] = []
    for _, data in reversed(_read_index(reports)):
        entry = _as_entry(data)
        if entry is None:
            continue
        verdict = _verdict(reports / entry.dir / f"{entry.notebook}.result.json")
        colour = _STATUS_COLOURS.get(entry.status, "#57606a")
        link = html.escape(quote(f"{entry.dir}/{entry.notebook}"), quote=True)
        rows.append(
            "<tr>"
            f"<td>{html.escape(entry.started_at)}</td>"
            f"<td>{html.escape(entry.notebook)}</td>"
            f'<td style="color:{colour};font-weight:bold">{html.escape(entry.status)}</td>'
            f"<td>{html.escape(verdict)}</td>"
            f'<td><a href="{link}.summary.html">summary</a> · <a href="{link}.html">full</a></td>'
            f"<td><code>{html.escape(entry.manifest_sha256[:16])}</code></td>"
            "</tr>"
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>potato-ops runs</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #d0d7de;padding:.3em .8em;text-align:left}"
        "</style></head><body><h1>potato-ops runs</h1>"
        f"<p>{len(rows)} runs, newest first. "
        "Check them with <code>potato-ops reports verify</code>.</p>"
        "<table><thead><tr><th>started (UTC)</th><th>notebook</th><th>status</th><th>verdict</th>"
        "<th>reports</th><th>manifest sha256</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table></body></html>\n"
    )
    replace_file(reports / INDEX_HTML, page.encode("utf-8"))


def _verdict(result_path: Path) -> str:
    try:
        loaded = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "(result missing)"
    return str(loaded.get("verdict", "")) if isinstance(loaded, dict) else ""


def verify_reports(
    reports_dir: str | os.PathLike[str] | None = None, *, public_key: Ed25519PublicKey | None = None
) -> VerifyReport:
    """Return what is wrong with the archive: files against manifests, manifests against the
    index, the index's hash chain and, given the public key, the signature of its head."""
    reports = default_reports_dir(reports_dir)
    if not reports.exists() and public_key is None:
        return VerifyReport(ok=True, checked=0, problems=[])
    with _index_lock(reports, exclusive=False):
        raw = _read_index(reports) if reports.exists() else []
        problems: list[str] = []
        head: IndexEntry | None = None
        previous_hash = GENESIS_HASH
        indexed: set[str] = set()
        for expected_seq, (number, data) in enumerate(raw, start=1):
            where = f"{INDEX_FILE} line {number}"
            entry = _as_entry(data)
            if entry is None:
                problems.append(f"{where}: not a valid index entry")
                previous_hash = str(data.get("entry_hash", "")) or previous_hash
                continue
            where = f"{where} ({entry.run_id})"
            if entry_hash(asdict(entry)) != entry.entry_hash:
                problems.append(f"{where}: entry was edited (its hash does not match)")
            if entry.prev_hash != previous_hash:
                problems.append(
                    f"{where}: chain broken (an entry before it was removed, edited or reordered)"
                )
            if entry.seq != expected_seq:
                problems.append(f"{where}: sequence number {entry.seq}, expected {expected_seq}")
            previous_hash = entry.entry_hash
            head = entry
            indexed.add(entry.dir)
            problems.extend(_check_execution(reports, entry))
        for child in sorted(reports.iterdir()) if reports.exists() else []:
            if child.is_dir() and RUN_DIR_PATTERN.match(child.name) and child.name not in indexed:
                problems.append(f"{child.name}: run folder is not in {INDEX_FILE} (entry removed?)")
        if public_key is not None:
            signature_path = reports / HEAD_SIGNATURE_FILE
            text = _signature_text(signature_path)
            if signature_path.is_symlink():
                problems.append(f"{HEAD_SIGNATURE_FILE}: is a link, not the file the archive wrote")
            problems.extend(
                check_head_signature(
                    text, head.seq if head else None, head.entry_hash if head else None, public_key
                )
            )
    return VerifyReport(ok=not problems, checked=len(raw), problems=problems)


def _signature_text(path: Path) -> str | None:
    """Return HEAD.sig's text (bytes that are not UTF-8 replaced, so it reads as malformed)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace") if path.is_file() else None
    except OSError:
        return ""


def _check_execution(reports: Path, entry: IndexEntry) -> list[str]:
    run_dir = reports / entry.dir
    if Path(entry.dir).name != entry.dir or not run_dir.is_dir():
        return [f"{entry.dir}: run folder is missing"]
    manifest_path = run_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        return [f"{entry.dir}: {MANIFEST_FILE} is missing"]
    manifest = manifest_path.read_bytes()
    problems: list[str] = []
    if sha256_hex(manifest) != entry.manifest_sha256:
        problems.append(f"{entry.dir}: {MANIFEST_FILE} was modified (its hash differs from the index)")
    listed: dict[str, str] = {}
    for line in manifest.decode("utf-8", errors="replace").splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or Path(name).name != name:
            problems.append(f"{entry.dir}: {MANIFEST_FILE} has a malformed line")
            continue
        listed[name] = digest
    for name, digest in sorted(listed.items()):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{entry.dir}/{name}: missing")
        elif sha256_hex(path.read_bytes()) != digest:
            problems.append(f"{entry.dir}/{name}: content differs from {MANIFEST_FILE}")
    for path in sorted(run_dir.iterdir()):
        if path.name != MANIFEST_FILE and path.name not in listed:
            problems.append(f"{entry.dir}/{path.name}: extra file, not in {MANIFEST_FILE}")
    return problems
