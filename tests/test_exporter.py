"""``potato-ops exporter``: live bulk-operation series that move between scrapes, the last scan.

A bulk rebuild of four users, one user a batch and one worker, reports after each batch; the
report waits while the test scrapes the exporter, so each scrape sees exactly the users the
ledger holds then. The storage clock moves ten seconds per batch, so rate and ETA are known.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from potato_ops import BulkConfig, Storage
from potato_ops.monitoring.exporter import Exporter, start_exporter
from potato_ops.monitoring.operations import operation_families
from potato_ops.ops.bulk.results import Progress
from tests.conftest import NOW, MutableClock, add_user

USERS = ["u1", "u2", "u3", "u4"]


def scrape(url: str) -> dict[str, float]:
    """Return every sample at the URL as ``name{labels}`` -> value (labels sorted)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def of_operation(samples: dict[str, float], operation_id: str) -> dict[str, float]:
    """Return the samples labelled with this operation, the label itself left out of the key."""
    label = f'operation_id="{operation_id}"'
    return {
        name.replace(label + ",", "").replace("," + label, "").replace("{" + label + "}", ""): value
        for name, value in samples.items()
        if label in name
    }


@pytest.fixture
def exporter(storage: Storage) -> Iterator[Exporter]:
    running = start_exporter(storage.database, "127.0.0.1:0")
    try:
        yield running
    finally:
        running.stop()


def test_a_running_operations_series_move_between_two_scrapes(
    storage: Storage, clock: MutableClock, exporter: Exporter
) -> None:
    for user in USERS:
        add_user(storage, user, ["2024-03-01", "2024-03-02"])  # marks, no runs yet
    scrapes: dict[int, dict[str, float]] = {}

    def after_each_batch(progress: Progress) -> None:
        if 0 < progress.processed_users < len(USERS):
            scrapes[progress.processed_users] = scrape(exporter.url)
        clock.advance(seconds=10)  # the next batch finishes ten seconds later

    result = storage.bulk_rebuild_users(
        USERS,
        BulkConfig(batch_size=1, max_workers=1, dry_run=False, ignore_feature_flag=True),
        progress=after_each_batch,
    )
    after = of_operation(scrape(exporter.url), result.operation_id)
    first, third = (of_operation(scrapes[n], result.operation_id) for n in (1, 3))

    assert result.completed_users == len(USERS)
    assert first == {
        'potato_ops_operation_users{state="pending"}': 3.0,
        'potato_ops_operation_users{state="completed"}': 1.0,
        'potato_ops_operation_users{state="failed"}': 0.0,
        'potato_ops_operation_rebuilds_total{result="completed"}': 1.0,
        'potato_ops_operation_rebuilds_total{result="failed"}': 0.0,
        "potato_ops_operation_running": 1.0,
        'potato_ops_operation_status{reason="",status="running"}': 1.0,
        # The first user finished ten seconds after the start: 0.1 user/s, three left: 30 s.
        "potato_ops_operation_rate_users_per_second": pytest.approx(0.1),
        "potato_ops_operation_eta_seconds": pytest.approx(30.0),
        "potato_ops_operation_started_timestamp_seconds": NOW.timestamp(),
    }
    # Three users done, the last two ten seconds apart: 0.1 user/s, one user left: 10 s.
    assert third == {
        'potato_ops_operation_users{state="pending"}': 1.0,
        'potato_ops_operation_users{state="completed"}': 3.0,
        'potato_ops_operation_users{state="failed"}': 0.0,
        'potato_ops_operation_rebuilds_total{result="completed"}': 3.0,
        'potato_ops_operation_rebuilds_total{result="failed"}': 0.0,
        "potato_ops_operation_running": 1.0,
        'potato_ops_operation_status{reason="",status="running"}': 1.0,
        "potato_ops_operation_rate_users_per_second": pytest.approx(0.1),
        "potato_ops_operation_eta_seconds": pytest.approx(10.0),
        "potato_ops_operation_started_timestamp_seconds": NOW.timestamp(),
    }
    # Finished a moment ago: still shown, so its last values are scraped, and no longer running.
    assert after['potato_ops_operation_users{state="completed"}'] == 4.0
    assert after["potato_ops_operation_running"] == 0.0
    assert after['potato_ops_operation_status{reason="",status="completed"}'] == 1.0


def test_an_operation_finished_long_ago_is_not_shown(
    storage: Storage, clock: MutableClock, exporter: Exporter
) -> None:
    add_user(storage, "u1", ["2024-03-01"])
    result = storage.bulk_rebuild_users(["u1"], BulkConfig(dry_run=False, ignore_feature_flag=True))
    assert of_operation(scrape(exporter.url), result.operation_id)
    clock.advance(hours=1)

    assert of_operation(scrape(exporter.url), result.operation_id) == {}


def test_the_exporter_shows_the_last_scan_without_scanning(storage: Storage, exporter: Exporter) -> None:
    for user in USERS:
        add_user(storage, user, ["2024-03-01", "2024-03-02"])  # one uncovered-day violation each
    before = scrape(exporter.url)
    storage.validate_invariants()

    found = scrape(exporter.url)

    assert "potato_ops_invariant_violations" not in before  # no scan recorded yet: absent
    assert found["potato_ops_invariant_violations"] == 4.0
    assert found['potato_ops_invariant_violations_by_kind{kind="uncovered_day"}'] == 4.0
    assert found["potato_ops_last_scan_timestamp_seconds"] == NOW.timestamp()
    assert found["potato_ops_exporter_database_up"] == 1.0


def test_a_database_it_cannot_read_is_database_up_0(tmp_path: Path) -> None:
    storage = Storage.connect(f"sqlite:///{tmp_path / 'empty.sqlite3'}")  # no schema
    running = start_exporter(storage.database, "127.0.0.1:0")
    try:
        found = scrape(running.url)
    finally:
        running.stop()
        storage.close()

    assert found == {"potato_ops_exporter_database_up": 0.0}


def test_the_status_series_carries_why_an_operation_waits() -> None:
    progress = Progress(
        "op-1", "running", 2, 5, 2, 0, NOW, NOW, None, waiting="throttled: replica lag 6.1 MB > 1 MB"
    )

    [status] = [f for f in operation_families([progress]) if f.name == "potato_ops_operation_status"]

    assert [(s.labels, s.value) for s in status.samples] == [
        ({"operation_id": "op-1", "status": "running", "reason": "throttled: replica lag 6.1 MB > 1 MB"}, 1.0)
    ]


def test_the_command_serves_until_sigterm(storage: Storage, db_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "potato_ops", "exporter", "--listen", "127.0.0.1:0"],
        env=os.environ | {"POTATO_DATABASE_URL": db_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving http://127.0.0.1:"), first + (
            process.stderr.read() if process.stderr else ""
        )
        url = first.split()[1]
        found = scrape(url)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert found["potato_ops_exporter_database_up"] == 1.0
    assert (process.returncode, out, err) == (0, "stopped\n", "")
    assert "(database " in first  # shown as Storage.url shows it: password masked
