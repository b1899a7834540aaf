"""Keeping secrets out of archived reports and logs: find them, replace them, prove them gone.

``collect_secrets`` gathers the secrets of this process's environment; ``scrub_text`` replaces
every form of them that can be replaced without corrupting data; ``ensure_no_secrets`` looks for
every form it can recognise, including encodings scrubbing does not touch (base64), so that a
record that would still hold one is refused rather than written.

What counts as a secret, and how it is matched:

* the password of every URL in any environment variable (up to the URL's last ``@``), and the
  value of every variable named like PASSWORD, PASSWD, SECRET, TOKEN or API_KEY, when it has at
  least four characters. A secret-named value that is a boolean, a number or a plain word of
  fewer than twelve letters (``SOME_TOKEN=runs``, ``TOKEN_TTL=3600``) is configuration, not a
  secret; a URL's password always counts.
* a *strong* secret (twelve characters or more, or eight or more mixing letter cases, digits
  or symbols) is matched wherever it occurs, also inside longer words, and its base64
  encodings are looked for too: a chance match of eight such characters is negligible.
* a *weak* secret (shorter, or one kind of character) is matched only as a whole token (no
  letter, digit or underscore touching it), and never in base64: its short fragments occur by
  chance in any large encoded asset, and masking it inside other words would mangle the record.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote

from potato_ops.config import MASK, mask_secrets, raw_url_passwords, url_password
from potato_ops.errors import SecretLeakError

MIN_SECRET_LENGTH = 4
STRONG_SECRET_LENGTH = 8
# At this length even a secret of one kind of character (a long passphrase) is strong.
LONG_SECRET_LENGTH = 12

_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
_PASSWORD_NAME = re.compile(r"PASSWORD|PASSWD", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Values that secret-named variables often hold without being secret (TOKENIZERS_PARALLELISM=false,
# TOKEN_TTL=3600). Treating them as secrets would flag every JSON boolean or number in a record.
_NOT_SECRET = re.compile(r"(?i:true|false|yes|no|on|off|none|null)|[+\-]?\d{1,7}(?:\.\d*)?")
# A plain word in a secret-named variable (SOME_TOKEN=runs, SECRET_BACKEND=vault) names a
# setting; masking it would turn every such word of a record into ***.
_PLAIN_WORD = re.compile(rf"[A-Za-z]{{1,{LONG_SECRET_LENGTH - 1}}}")
_WORD_CHAR = "A-Za-z0-9_"
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{64,}={0,2}")


def collect_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the secrets held in the environment, longest first.

    Secrets are the passwords inside URLs held by any variable (``POTATO_DATABASE_URL`` above
    all), and the values of variables whose names contain PASSWORD, PASSWD, SECRET, TOKEN or
    API_KEY. Values shorter than four characters are left out; so are values of TOKEN, SECRET
    or API_KEY variables that are booleans, plain numbers or plain words of fewer than twelve
    letters (settings such as ``TOKEN_TTL=3600``); a PASSWORD variable's value always counts.
    """
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if "://" in value and "@" in value:
            found.update(url_passwords(value))
        if _PASSWORD_NAME.search(name) or (_SECRET_NAME.search(name) and not _is_setting(value)):
            found.add(value)
    return sorted((s for s in found if len(s) >= MIN_SECRET_LENGTH), key=lambda s: (-len(s), s))


def _is_setting(value: str) -> bool:
    return bool(_NOT_SECRET.fullmatch(value) or _PLAIN_WORD.fullmatch(value))


def is_strong_secret(secret: str) -> bool:
    """Return True when a chance occurrence of the secret in unrelated text is negligible."""
    if len(secret) >= LONG_SECRET_LENGTH:
        return True
    kinds = sum(
        bool(re.search(pattern, secret)) for pattern in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]")
    )
    return len(secret) >= STRONG_SECRET_LENGTH and kinds >= 2


def url_passwords(value: str) -> set[str]:
    """Return the passwords of the URLs inside ``value``, decoded and as written."""
    passwords: set[str] = set()
    for match in _URL.finditer(value):
        url = match.group(0)
        decoded = url_password(url)
        if decoded:
            passwords.add(decoded)
        for raw in raw_url_passwords(url):
            # An unencoded "@" makes SQLAlchemy stop at the first one; the whole is the secret.
            passwords.update((raw, unquote(raw)))
    return passwords


def secret_forms(secret: str) -> list[str]:
    """Return the spellings of ``secret`` that a text may hold, longest first.

    Raw, URL-encoded, HTML-escaped and Python-escaped spellings, each also as it appears inside
    a JSON string.
    """
    base = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        html.escape(secret, quote=True),
        html.escape(secret, quote=False),
        secret.encode("unicode_escape").decode("ascii"),
    }
    forms = set(base)
    for form in base:
        forms.add(json.dumps(form)[1:-1])
        forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
    return sorted(forms, key=lambda f: (-len(f), f))


@functools.lru_cache(maxsize=256)
def secret_pattern(secret: str) -> re.Pattern[str]:
    """Return the pattern that finds the plain forms of ``secret``: anywhere when it is strong,
    only as a whole token when it is weak."""
    alternatives = "|".join(re.escape(form) for form in secret_forms(secret))
    if is_strong_secret(secret):
        return re.compile(alternatives)
    return re.compile(f"(?<![{_WORD_CHAR}])(?:{alternatives})(?![{_WORD_CHAR}])")


def _replace_forms(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = secret_pattern(secret).sub(MASK, text)
    return text


def _holds_plain_form(text: str, secrets: Iterable[str]) -> bool:
    return any(secret_pattern(secret).search(text) for secret in secrets)


def strip_ansi(text: str) -> str:
    """Return text without ANSI colour and cursor escape sequences."""
    return _ANSI.sub("", text)


def scrub_text(text: str, secrets: Iterable[str], *, mask_patterns: bool = True) -> str:
    """Return text with every replaceable form of each secret turned into ``***``.

    Colour codes are removed only where they split a secret (tracebacks colour tokens), then,
    unless ``mask_patterns`` is False, ``config.mask_secrets`` masks the URL passwords and
    ``password=...`` values it recognises.
    """
    wanted = [s for s in secrets if s]
    text = _replace_forms(text, wanted)
    if "\x1b" in text and _holds_plain_form(strip_ansi(text), wanted):
        text = _replace_forms(strip_ansi(text), wanted)
    return mask_secrets(text) if mask_patterns else text


def base64_fragments(secret: str) -> list[str]:
    """Return the base64 runs that encode ``secret`` at any byte alignment inside longer data."""
    raw = secret.encode("utf-8")
    fragments: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        start = -(-8 * offset // 6)
        end = (8 * offset + 8 * len(raw)) // 6
        fragment = encoded[start:end]
        if len(fragment) >= MIN_SECRET_LENGTH:
            fragments.add(fragment)
            fragments.add(fragment.replace("+", "-").replace("/", "_"))
    return sorted(fragments)


def base64_runs(text: str) -> frozenset[str]:
    """Return the long base64 runs of text (embedded images, fonts, icons)."""
    return frozenset(_BASE64_RUN.findall(text))


def find_secret(text: str, secrets: Iterable[str], *, known_assets: Collection[str] = ()) -> str | None:
    """Return how a secret shows in text ("plain", "base64", ...), or None when none does.

    Base64 is looked for only for strong secrets, and never inside ``known_assets``: encoded
    blobs that the renderer itself adds to every page whatever the run held.
    """
    wanted = [s for s in secrets if s]
    if not wanted:
        return None
    if _holds_plain_form(text, wanted):
        return "plain"
    if _holds_plain_form(strip_ansi(text), wanted):
        return "colour-split"
    strong = [s for s in wanted if is_strong_secret(s)]
    if not strong:
        return None
    for asset in known_assets:
        text = text.replace(asset, " ")
    compact = re.sub(r"\s+|\\n|\\r", "", text)
    for secret in strong:
        if any(fragment in compact for fragment in base64_fragments(secret)):
            return "base64-encoded"
    return None


def ensure_no_secrets(
    data: bytes | str, secrets: Iterable[str], what: str, *, known_assets: Collection[str] = ()
) -> None:
    """Return nothing if ``data`` holds no secret; else raise SecretLeakError naming ``what``."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    form = find_secret(text, secrets, known_assets=known_assets)
    if form is not None:
        raise SecretLeakError(
            f"{what} would hold a secret ({form}) that cannot be scrubbed; nothing was archived"
        )


class SecretScrubFilter(logging.Filter):
    """A logging filter that scrubs secrets out of every record it lets through."""

    def __init__(self, secrets: Iterable[str] | None = None) -> None:
        super().__init__()
        self.secrets = list(collect_secrets() if secrets is None else secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Return True after replacing the record's message with its scrubbed text."""
        record.msg = scrub_text(record.getMessage(), self.secrets)
        record.args = None
        return True
