"""Which backup answers "what was there before this incident": the one taken before its first change.

An incident's changes are the operations its runbook runs recorded for its ticket
(``ops_run_records``); the backup each of those changes took holds the runs as they were just
before it, so the oldest of them holds the runs from before the incident. Without a ticket, the
oldest backup since a given time (the incident's start) is taken; with neither, the newest.
The choice always says which rule chose it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from potato_ops.domain.models import Backup
from potato_ops.storage import Storage


@dataclass(frozen=True)
class IncidentBackup:
    """The backup chosen for an incident (None when there is none) and why it was chosen."""

    backup: Backup | None
    why: str


def incident_backup(
    storage: Storage,
    user_id: str,
    *,
    ticket: str = "",
    since: datetime | None = None,
    also: Sequence[Backup] = (),
) -> IncidentBackup:
    """Return the user's backup taken before the incident's first change.

    ``also`` adds backups not yet linked to the ticket (the one a rebuild of this very run
    just took). The ticket rules when its runs recorded a change of this user; then ``since``;
    then the newest backup.
    """
    found = {b.id: b for b in [*storage.get_backups(user_id), *also] if b.id is not None}
    backups = sorted(found.values(), key=lambda b: (b.timestamp, b.id or 0))
    if not backups:
        return IncidentBackup(None, f"user {user_id} has no backups")
    if ticket:
        changes = storage.get_ticket_operation_ids(ticket)
        linked = [b for b in backups if b.metadata.operation_id in changes or b in also]
        if linked:
            first = linked[0]
            return IncidentBackup(
                first,
                f"backup {first.id}: taken before the first change of ticket {ticket} to this user "
                f"(operation {first.metadata.operation_id}, {first.timestamp:%Y-%m-%d %H:%M:%S %Z})",
            )
    if since is not None:
        later = [b for b in backups if b.timestamp >= since]
        if later:
            first = later[0]
            return IncidentBackup(
                first,
                f"backup {first.id}: the oldest since {since:%Y-%m-%d %H:%M:%S %Z}, taken before the "
                f"first change after it ({first.timestamp:%Y-%m-%d %H:%M:%S %Z})",
            )
    newest = backups[-1]
    hint = ""
    if not (ticket or since):
        hint = ": give the ticket (or since) to choose the one from before the incident"
    return IncidentBackup(
        newest,
        f"backup {newest.id}: the newest ({newest.timestamp:%Y-%m-%d %H:%M:%S %Z}), "
        f"as no backup of this user is linked to the incident{hint}",
    )
