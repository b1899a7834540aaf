"""The audit's push to a Pushgateway: one group per database, credentials sent and never shown,
a failed push its own exit code (an alert's code kept), stale groups deleted when asked.

A stand-in gateway records what it receives (and may refuse); the group tests run Debian's
``prometheus-pushgateway`` on a free loopback port.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.errors import PushError
from potato_ops.exitcodes import ExitCode
from potato_ops.monitoring import pushgateway as gateway_api
from tests.conftest import add_user
from tests.prom_servers import Server, binary, free_port, get_json, running

PASSWORD = "s3cr3t-Pw-9q"
TOKEN = "tok-4711-abcdef"
runner = CliRunner()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class StandIn:
    url: str
    received: list[Received] = field(default_factory=list)
    status: int = 200
    groups: list[dict[str, str]] = field(default_factory=list)  # what GET /api/v1/metrics lists
    linger: int = 0  # listings that still show the groups after a DELETE (-1: forever)


class _Handler(BaseHTTPRequestHandler):
    gateway: ClassVar[StandIn]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.gateway.received.append(Received(self.command, self.path, dict(self.headers.items())))
        self.send_response(self.gateway.status)
        self.end_headers()

    do_PUT = do_POST = do_DELETE = _answer

    def do_GET(self) -> None:
        gateway = self.gateway
        gateway.received.append(Received(self.command, self.path, dict(self.headers.items())))
        if any(r.method == "DELETE" for r in gateway.received) and gateway.linger == 0:
            gateway.groups = []
        elif gateway.linger > 0 and any(r.method == "DELETE" for r in gateway.received):
            gateway.linger -= 1
        body = json.dumps({"status": "success", "data": [{"labels": g} for g in gateway.groups]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.gateway = StandIn(f"127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Handler.gateway
    finally:
        server.shutdown()
        server.server_close()


def audit(db_url: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["audit", "--no-notebook", *args], env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def corrupt(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01"])  # a marked day in no run: a P0 for the scan


def test_url_credentials_are_basic_auth_the_token_stays_and_nothing_is_shown(
    storage: Storage, db_url: str, stand_in: StandIn
) -> None:
    code, out, err = audit(
        db_url,
        "--pushgateway",
        f"http://admin:{PASSWORD}@{stand_in.url}/?token={TOKEN}",
        "--label",
        "env=prod",
    )

    assert (code, err) == (0, ""), out
    [push] = stand_in.received
    assert push.method == "PUT"
    assert push.path.startswith("/metrics/job/potato_ops_audit/database@base64/")
    assert push.path.endswith(f"/env/prod?token={TOKEN}")
    assert push.headers["Authorization"] == basic("admin", PASSWORD)
    assert PASSWORD not in out + err and TOKEN not in out + err


def test_credentials_from_an_auth_file(
    storage: Storage, db_url: str, stand_in: StandIn, tmp_path: Path
) -> None:
    auth = tmp_path / "pushgateway.auth"
    auth.write_text(f"ops:{PASSWORD}\n")

    code, out, err = audit(
        db_url, "--pushgateway", f"http://{stand_in.url}", "--pushgateway-auth-file", str(auth)
    )

    assert (code, err) == (0, ""), out
    assert [r.headers["Authorization"] for r in stand_in.received] == [basic("ops", PASSWORD)]


def test_a_refused_push_is_one_masked_line_and_exit_13(
    storage: Storage, db_url: str, stand_in: StandIn
) -> None:
    stand_in.status = 401

    code, out, err = audit(db_url, "--pushgateway", f"http://admin:{PASSWORD}@{stand_in.url}/?token={TOKEN}")

    assert code == ExitCode.PUSH_FAILED
    shown = f"http://admin:***@{stand_in.url}?token=***"
    assert err == f"error: --pushgateway {shown} (push failed): HTTP 401 Unauthorized\n"
    assert PASSWORD not in out + err and TOKEN not in out + err


def test_a_failed_push_keeps_the_p0_exit_code(storage: Storage, db_url: str) -> None:
    corrupt(storage)

    code, out, err = audit(db_url, "--pushgateway", f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}/")

    assert code == ExitCode.ALERT_P0
    assert "FIRING P0 Invariant Violations Found By Scan" in out
    assert err.startswith("error: --pushgateway http://admin:***@127.0.0.1:") and err.count("\n") == 1
    assert PASSWORD not in out + err


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:9/ x", id="space"),
        pytest.param("http://127.0.0.1:9/\nmetrics", id="newline"),
        pytest.param(f"http://admin:{PASSWORD} x@127.0.0.1:9/", id="space-in-the-password"),
        pytest.param("ftp://127.0.0.1:9/", id="another-scheme"),
        pytest.param("http://127.0.0.1:99999/", id="port-out-of-range"),
    ],
)
@pytest.mark.parametrize("corrupted", [True, False], ids=["p0-firing", "healthy"])
def test_a_malformed_gateway_url_is_one_line_and_the_alert_code_stays(
    storage: Storage, db_url: str, url: str, corrupted: bool
) -> None:
    if corrupted:
        corrupt(storage)

    code, out, err = audit(db_url, "--pushgateway", url)

    assert code == (ExitCode.ALERT_P0 if corrupted else ExitCode.PUSH_FAILED)
    assert err.startswith("error: --pushgateway ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err and PASSWORD not in out + err


def test_an_auth_file_without_a_gateway_is_a_usage_error(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    code, _, err = audit(db_url, "--pushgateway-auth-file", str(tmp_path / "x"))

    assert (code, err) == (ExitCode.USAGE, "error: --pushgateway-auth-file needs --pushgateway\n")


# --- Debian's Pushgateway -------------------------------------------------------------------------


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    with running(
        "pushgateway",
        # Debian's build persists to one file under /var/lib by default: each test's gateway
        # starts empty with a file of its own.
        [
            binary("prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],
        port,
        tmp_path,
    ) as server:
        yield server


def groups(gateway: Server) -> list[dict[str, str]]:
    data = get_json(gateway.url + "/api/v1/metrics")["data"]
    return sorted((entry["labels"] for entry in data), key=json.dumps)


def test_two_databases_keep_two_groups_and_stale_ones_go_when_asked(
    db_url: str, tmp_path: Path, pushgateway: Server
) -> None:
    other = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    Storage.connect(other).create_schema()
    Storage.connect(db_url).create_schema()

    for url in (db_url, other):
        code, out, err = audit(url, "--pushgateway", pushgateway.url)
        assert (code, err) == (0, ""), out
    found = groups(pushgateway)

    assert len(found) == 2
    assert {g["job"] for g in found} == {"potato_ops_audit"}
    assert str(tmp_path / "other.sqlite3") in {g["database"] for g in found}

    # This database's group, deleted by name; then nothing is older than a day.
    deleted = runner.invoke(
        app, ["pushgateway", "delete", "--pushgateway", pushgateway.url], env={"POTATO_DATABASE_URL": other}
    )
    assert deleted.exit_code == 0, deleted.stdout + deleted.stderr
    assert [g["database"] for g in groups(pushgateway)] == [
        g["database"] for g in found if "other" not in g["database"]
    ]
    kept = runner.invoke(
        app, ["pushgateway", "prune", "--pushgateway", pushgateway.url, "--older-than", "1d"]
    )
    assert (kept.exit_code, kept.stdout.splitlines()[-1]) == (
        0,
        f"0 stale group(s) deleted from {pushgateway.url}",
    )
    assert len(groups(pushgateway)) == 1

    # Everything pushed before now is older than 0 s: the last group goes.
    pruned = runner.invoke(
        app, ["pushgateway", "prune", "--pushgateway", pushgateway.url, "--older-than", "0s"]
    )
    assert pruned.exit_code == 0, pruned.stdout + pruned.stderr
    assert pruned.stdout.splitlines()[0].startswith("deleted job=potato_ops_audit, database=")
    assert groups(pushgateway) == []


# --- a delete is accepted, then applied -----------------------------------------------------------


def test_a_delete_returns_once_the_gateway_no_longer_lists_the_group(stand_in: StandIn) -> None:
    """A Pushgateway answers DELETE with 202 and applies it later: the tool waits to see it gone."""
    stand_in.status, stand_in.linger = 202, 3
    stand_in.groups = [{"job": gateway_api.PUSHGATEWAY_JOB, "database": "db1"}]

    gateway_api.delete_group(gateway_api.parse_gateway(f"http://{stand_in.url}"), {"database": "db1"})

    methods = [r.method for r in stand_in.received]
    assert methods[0] == "DELETE"
    assert methods[1:] == ["GET"] * 4  # three listings still showing it, then one without


def test_a_delete_never_applied_is_an_error(stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_api, "TIMEOUT_SECONDS", 0.3)
    stand_in.status, stand_in.linger = 202, -1
    stand_in.groups = [{"job": gateway_api.PUSHGATEWAY_JOB, "database": "db1"}]

    with pytest.raises(PushError, match="still listed"):
        gateway_api.delete_group(gateway_api.parse_gateway(f"http://{stand_in.url}"), {"database": "db1"})
