"""08 troubleshooting's database-wide checks: the invariant scan, each kind named with its remedy."""

from __future__ import annotations

import random

import pytest

from potato_ops import Storage
from potato_ops.demo.synth import CORRUPTIONS_POSTGRES, CORRUPTIONS_SQLITE, inject_corruption, seed
from potato_ops.domain.models import ViolationKind
from potato_ops.runbook.params import Common, UserRef, check_troubleshooting
from potato_ops.runbook.session import Session
from potato_ops.runbook.single_user_recovery import identify_user
from potato_ops.runbook.troubleshooting import (
    check_invariant_causes,
    check_rebuild_speed,
    debug_rebuild,
    troubleshooting_verdict,
)
from tests.conftest import NOW, add_runs, add_user

# What the playbook's guide recommends for each kind the demo can inject (written out here,
# not read from the code under test).
PROCEDURE = {
    ViolationKind.MALFORMED: "05_error_recovery",
    ViolationKind.OVERLAP: "05_error_recovery",
    ViolationKind.ADJACENT: "02_partial_rebuild",
    ViolationKind.PHANTOM_DAY: "02_partial_rebuild",
    ViolationKind.UNCOVERED_DAY: "02_partial_rebuild",
    ViolationKind.STALE_ACTIVE: "potato-ops refresh-active",
    ViolationKind.ORPHAN: "05_error_recovery",
}
PARAMS = check_troubleshooting(
    user_email="",
    user_id="",
    slow_threshold_ms=10000.0,
    many_marks=1000,
    calendar_days=120,
    operator="ana",
    ticket="INC-8",
    database_url_env="POTATO_DATABASE_URL",
)


def _session(storage: Storage) -> Session:
    return Session(
        storage, Common("ana", "INC-8", "POTATO_DATABASE_URL"), storage.describe(), False, False, True
    )


def test_every_injectable_kind_has_an_expected_procedure() -> None:
    assert set(PROCEDURE) == set(CORRUPTIONS_SQLITE)


@pytest.mark.parametrize("kind", CORRUPTIONS_SQLITE, ids=str)
def test_troubleshooting_names_each_kind_of_corruption_and_its_procedure(
    storage: Storage, backend: str, kind: ViolationKind
) -> None:
    if backend == "postgres" and kind not in CORRUPTIONS_POSTGRES:
        pytest.skip(f"PostgreSQL's constraints refuse {kind} runs: the database cannot hold them")
    seeded = seed(storage.engine, users_count=12, days=60, now=NOW, seed_value=3)
    session = _session(storage)
    snapshot = identify_user(session, UserRef("", ""))
    clean = check_invariant_causes(session, snapshot, debug_rebuild(session, snapshot))
    assert clean.problems == 0, clean.items

    injected = inject_corruption(storage.engine, seeded.user_ids, 1, [kind], random.Random(5), NOW)
    assert list(injected.values()) == [kind]

    findings = check_invariant_causes(session, snapshot, debug_rebuild(session, snapshot))
    named = [text for state, text in findings.items if state == "problem" and text.startswith(f"{kind}:")]
    assert len(named) == 1, findings.items
    assert "Likely cause:" in named[0] and PROCEDURE[kind] in named[0]
    verdict = troubleshooting_verdict(PARAMS, snapshot, findings)
    assert verdict.status == "problem" and verdict.figures["needing_attention"] >= 2


def test_with_a_user_the_dry_run_says_whether_the_stored_runs_are_what_the_marks_give(
    storage: Storage,
) -> None:
    add_user(storage, "u1", ["2024-03-01", "2024-03-02", "2024-03-03"])
    add_runs(storage, "u1", [("2024-03-01", "2024-03-01"), ("2024-03-02", "2024-03-03")])  # adjacent
    add_user(storage, "u2", ["2024-03-01"])
    add_runs(storage, "u2", [("2024-03-01", "2024-03-01")])
    session = _session(storage)
    broken = identify_user(session, UserRef("", "u1"))
    found = check_invariant_causes(session, broken, debug_rebuild(session, broken))
    texts = [text for _, text in found.items]
    # Two runs of one streak: the rebuild deletes both and creates the one run the marks give.
    assert any("would delete 2, create 1 runs" in t for t in texts), texts
    assert sum(t.startswith("adjacent:") for t in texts) == 2  # the database's, then the user's
    fine = identify_user(session, UserRef("", "u2"))
    found = check_invariant_causes(session, fine, debug_rebuild(session, fine))
    assert any("stored runs equal the 1 runs the marks give" in t for _, t in found.items)


def test_for_one_user_the_verdict_leads_with_that_users_own_findings(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01", "2024-03-02"], email="u1@example.com")
    add_runs(storage, "u1", [("2024-03-01", "2024-03-01"), ("2024-03-02", "2024-03-02")])  # adjacent
    add_user(storage, "u2", ["2024-03-01"], email="u2@example.com")
    add_runs(storage, "u2", [("2024-03-01", "2024-03-01")])
    session = _session(storage)

    def verdict_for(user_id: str) -> str:
        snapshot = identify_user(session, UserRef("", user_id))
        debug = debug_rebuild(session, snapshot)
        found = [
            check_rebuild_speed(session, snapshot, PARAMS),
            check_invariant_causes(session, snapshot, debug),
        ]
        return troubleshooting_verdict(PARAMS, snapshot, *found).text

    damaged, wide = verdict_for("u1").split("; whole database: ")
    assert damaged.startswith("troubleshooting user u1@example.com: ")
    assert damaged.endswith("findings for this user, first: violations in this user's stored runs now: 1")
    clean = verdict_for("u2")
    assert (
        clean
        == f"troubleshooting user u2@example.com: nothing wrong found for this user; whole database: {wide}"
    )
