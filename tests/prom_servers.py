"""Debian's Prometheus servers, started by a test on a free loopback port and always stopped.

``binary(name)`` finds one (skipping loudly without it, failing under CI=true); ``running``
starts it in a session of its own with its data in a temporary folder, waits until it answers
``/-/ready`` and, whatever happens in the test, stops it (SIGTERM, then SIGKILL to the whole
process group). ``get_json`` and ``wait_for`` read their HTTP APIs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "prometheus-node-exporter": "prometheus-node-exporter",
    "prometheus-pushgateway": "prometheus-pushgateway",
}
# Generous: a loaded machine may take a while to start a Go server; nothing is timed by it.
READY_SECONDS = 60.0
WAIT_SECONDS = 90.0


def binary(name: str) -> str:
    """Return the path of a Debian Prometheus binary; skip (fail under CI=true) without it."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found:
        return found
    message = f"{name} not found (Debian package {PACKAGES.get(name, name)}): this test is NOT RUN"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


def free_port() -> int:
    """Return a loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A started server: its base URL, its process and its log."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        """Return the end of the server's log, for a failure message."""
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def running(name: str, args: list[str], port: int, workdir: Path) -> Iterator[Server]:
    """Start ``args`` (its binary first), wait for ``/-/ready`` on ``port``; stop it on exit."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(server.url + "/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never became ready:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)


def get_json(url: str) -> Any:
    """Return the JSON a GET of the URL answers."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode("utf-8"))


def wait_for(what: str, probe: Callable[[], T | None], servers: list[Server]) -> T:
    """Return the first non-None answer of ``probe``, polled; fail naming ``what`` and the logs."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            found = probe()
        except (OSError, urllib.error.URLError, ValueError):
            found = None
        if found is not None:
            return found
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in servers)
            raise AssertionError(f"gave up waiting for {what}\n{logs}")
        time.sleep(0.2)
