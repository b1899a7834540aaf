"""Where the database URL comes from, and how secrets are kept out of everything shown."""

from __future__ import annotations

import os
import re
from pathlib import Path

from potato_ops.errors import ConfigError

DATABASE_URL_ENV = "POTATO_DATABASE_URL"
HOME_ENV = "POTATO_OPS_HOME"
REPORTS_DIR_ENV = "POTATO_OPS_REPORTS_DIR"
SIGNING_KEY_ENV = "POTATO_OPS_SIGNING_KEY"  # path of the ed25519 private key that signs the chain head
VERIFY_KEY_ENV = "POTATO_OPS_VERIFY_KEY"  # path of the public key `reports verify` checks it with
MASK = "***"

# scheme://user:password@host -> the password part; the user part may be empty. A password
# may hold an unencoded "@" (postgres:S3cr@tPw9q@host): the password runs to the LAST "@" that
# is followed by a host (no further "@" before the end of the authority), so no tail of it is
# shown. Where that is ambiguous, more is masked rather than less.
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^\s'\"]+)(?P<at>@)"
    r"(?=[^@\s'\"/?#]*(?:[/?#\s'\"]|$))"
)
# key=value / key: value pairs whose key names a secret (password=..., PGPASSWORD=..., token: ...).
_SECRET_ASSIGN = re.compile(
    r"(?P<key>\b[A-Za-z_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY)[A-Za-z_]*\b\s*[=:]\s*['\"]?)"
    r"(?P<val>[^\s'\"&;,]+)",
    re.IGNORECASE,
)


def home_dir() -> Path:
    """Return the folder for the embedded database (``$POTATO_OPS_HOME`` or ~/.local/share)."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "potato-ops"


def default_sqlite_path() -> Path:
    """Return the path of the embedded SQLite database used when no URL is configured."""
    return home_dir() / "potato.sqlite3"


def reports_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """Return the reports folder: the argument, else ``$POTATO_OPS_REPORTS_DIR``, else ./reports."""
    if configured is not None:
        return Path(configured)
    from_env = os.environ.get(REPORTS_DIR_ENV)
    return Path(from_env) if from_env else Path("reports")


def normalize_url(url: str) -> str:
    """Return the URL with PostgreSQL pinned to the psycopg 3 driver and an ``@`` inside its
    password encoded (``%40``), so the host is what follows the last ``@``."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
            break
    # SQLAlchemy ends the password at the first "@" and takes the rest of it for the host, so
    # the connection would fail and the driver's message would show the password's tail.
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{m['pw'].replace('@', '%40')}{m['at']}", url, 1)


def resolve_database_url(url: str | None = None, env_var: str = DATABASE_URL_ENV) -> str:
    """Return the database URL: the argument, else the environment variable, else embedded SQLite."""
    chosen = url or os.environ.get(env_var)
    # A value that is not a URL may be any secret (a password in the wrong variable): never shown.
    source = "the database URL given" if url else f"${env_var}"
    if not chosen:
        path = default_sqlite_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    chosen = normalize_url(chosen.strip())
    # Imported here so that a command which never opens the database starts without SQLAlchemy.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(chosen)
    except ArgumentError as exc:
        raise ConfigError(
            f"{source} is not a database URL (its value is not shown): "
            "expected postgresql+psycopg://USER@HOST/DB or sqlite:///PATH"
        ) from exc
    except ValueError:
        # make_url reads the port with int(): "host:abc" fails there.
        raise ConfigError(f"not a database URL (the port must be a number): {mask_url(chosen)!r}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r} in {mask_url(chosen)!r}: "
            "use postgresql+psycopg:// or sqlite:///"
        )
    return chosen


def database_url_in(env_var: str) -> str | None:
    """Return the database URL held by an environment variable, None when it is unset or empty.

    Raises ConfigError, without showing the value, when it is not a database URL.
    """
    if not os.environ.get(env_var, "").strip():
        return None
    return resolve_database_url(None, env_var)


def mask_url(url: str) -> str:
    """Return the URL with its password replaced by ``***``."""
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Return text with URL passwords and ``password=...``-style values replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    return _SECRET_ASSIGN.sub(lambda m: f"{m['key']}{MASK}", text)


def raw_url_passwords(text: str) -> list[str]:
    """Return the passwords of the URLs in text as written, each up to the last ``@``."""
    return [m["pw"] for m in _URL_PASSWORD.finditer(text)]


def url_password(url: str) -> str | None:
    """Return the password inside a database URL, or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(normalize_url(url)).password
    except (ArgumentError, ValueError):
        return None
