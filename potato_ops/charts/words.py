"""The words on charts: counted nouns with the right plural, and users named by email."""

from __future__ import annotations

from collections.abc import Mapping


def plural(noun: str, count: int) -> str:
    """Return ``noun`` for a count of one and its plural otherwise (``"user"`` -> ``"users"``)."""
    if count == 1:
        return noun
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def counted(count: int, noun: str) -> str:
    """Return the count with thousands separators and the noun agreeing with it: ``"1,200 users"``."""
    return f"{count:,} {plural(noun, count)}"


def user_label(user_id: str, emails: Mapping[str, str | None] | None) -> str:
    """Return the user's email when known, else the whole user id (never a truncated id)."""
    email = (emails or {}).get(user_id)
    return email if email else user_id
