"""The figures pushed to a Prometheus Pushgateway: one group per database, credentials kept out of sight.

A push replaces the group ``job=potato_ops_audit, database=<host:port/name or file>`` (plus any
``--label k=v``), so two databases never overwrite each other. Credentials come from the URL
(``http://user:password@host:9091``) or from an auth file holding ``user:password``, and are
sent as HTTP basic auth; a query string (``?token=...``) is kept on every request. Every
message names the gateway with its password and query values masked. Groups of this job that
nobody pushed to for a while (a database retired, a label renamed) are listed and deleted by
``prune_stale_groups``: a Pushgateway keeps a group's last values forever otherwise.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from potato_ops.config import MASK, mask_secrets
from potato_ops.errors import ConfigError, PushError

PUSHGATEWAY_JOB = "potato_ops_audit"
TIMEOUT_SECONDS = 10.0
_MAX_AUTH_FILE_BYTES = 4096
_Handler = Callable[..., Callable[[], None]]


@dataclass(frozen=True)
class Gateway:
    """A Pushgateway: its base URL without credentials, the credentials, and how to name it."""

    base: str  # scheme://host[:port][/path], no user, no password, no query
    query: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """Return the URL as messages show it: the password and the query's values masked."""
        parts = urlsplit(self.base)
        netloc = parts.netloc
        if self.username is not None:
            netloc = f"{quote(self.username, safe='')}:{MASK}@{netloc}"
        query = urlencode([(k, MASK) for k, _ in parse_qsl(self.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def handler(self) -> _Handler:
        """Return a prometheus_client handler sending basic auth (if any) and the query string."""

        def handle(
            url: str,
            method: str,
            timeout: float | None,
            headers: list[tuple[str, str]],
            data: bytes,
        ) -> Callable[[], None]:
            if self.query:
                url = f"{url}?{self.query}"
            if self.username is not None:
                return basic_auth_handler(
                    url, method, timeout, headers, data, self.username, self.password or ""
                )
            return default_handler(url, method, timeout, headers, data)

        return handle


def parse_gateway(url: str, auth_file: str | os.PathLike[str] | None = None) -> Gateway:
    """Return the gateway a ``--pushgateway`` URL names; PushError (masked) when it is unusable.

    A URL with whitespace or control characters, another scheme than http/https, or no host is
    refused; so are credentials given both in the URL and in ``auth_file``.
    """
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise PushError(f"--pushgateway {_masked_text(url)!r}: the URL holds a space or a control character")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PushError(f"--pushgateway {_masked_text(url)}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise PushError(f"--pushgateway {_masked_text(url)}: the scheme must be http or https")
    if not parts.hostname:
        raise PushError(f"--pushgateway {_masked_text(url)}: no host")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    gateway = Gateway(base, parts.query, username, password)
    if auth_file is not None:
        if username is not None:
            raise PushError(
                f"--pushgateway {gateway.shown}: credentials are in the URL and in --pushgateway-auth-file; "
                "give them once"
            )
        username, password = read_auth_file(auth_file)
        gateway = Gateway(base, parts.query, username, password)
    return gateway


def read_auth_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Return (user, password) from a file holding ``user:password`` on its first line."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_AUTH_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"--pushgateway-auth-file {shown}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--pushgateway-auth-file {shown}: not UTF-8 text") from None
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    if len(raw) > _MAX_AUTH_FILE_BYTES or ":" not in first:
        raise ConfigError(f"--pushgateway-auth-file {shown}: expected one line USER:PASSWORD")
    user, _, password = first.partition(":")
    if not user:
        raise ConfigError(f"--pushgateway-auth-file {shown}: the user name is empty")
    return user, password


def _masked_text(url: str) -> str:
    """Return a URL that may not parse with its credentials and its query masked."""
    head, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = MASK + "@" + rest.split("@", 1)[1]
    masked = mask_secrets(head + sep + rest)
    path, qmark, _ = masked.partition("?")
    return path + (qmark + MASK if qmark else "")


def database_label(masked_url: str) -> str:
    """Return the ``database`` grouping label of a (masked) database URL: ``host:port/name`` or a file."""
    parts = urlsplit(masked_url)
    if parts.scheme.startswith("sqlite"):
        path = parts.path or ":memory:"
        return path[1:] if path.startswith("//") else path
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


def grouping_key(database: str, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the group's labels besides ``job``: the database, then the extra labels."""
    key = {"database": database}
    for name, value in (labels or {}).items():
        if name in ("job", "database"):
            raise ConfigError(f"--label {name}=...: {name} is set by potato-ops")
        key[name] = value
    return key


def _failure(gateway: Gateway, what: str, exc: BaseException) -> PushError:
    if isinstance(exc, urllib.error.HTTPError):
        detail = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        detail = str(exc.reason)
    else:
        detail = str(exc) or type(exc).__name__
    if gateway.password:
        detail = detail.replace(gateway.password, MASK)
    first = mask_secrets((detail.splitlines() or [""])[0])
    # "URL (push failed)": a masked query value (?token=***) must not swallow what follows it.
    return PushError(f"--pushgateway {gateway.shown} ({what} failed): {first}")


def push_registry(
    gateway: Gateway, registry: CollectorRegistry, key: Mapping[str, str], job: str = PUSHGATEWAY_JOB
) -> None:
    """Replace the group ``job`` + ``key`` with the registry's figures; PushError when refused."""
    try:
        push_to_gateway(
            gateway.base,
            job=job,
            registry=registry,
            grouping_key=dict(key),
            timeout=TIMEOUT_SECONDS,
            handler=gateway.handler(),
        )
    except Exception as exc:  # urllib and http.client raise many kinds; each is one line here
        raise _failure(gateway, "push", exc) from None


def delete_group(gateway: Gateway, key: Mapping[str, str], job: str = PUSHGATEWAY_JOB) -> None:
    """Delete the group ``job`` + ``key`` from the gateway and see it gone; PushError otherwise.

    A Pushgateway answers a delete with 202 Accepted and applies it later, so the group is
    listed until it no longer is (up to ``TIMEOUT_SECONDS``): a listing right after this
    returns never shows it.
    """
    try:
        delete_from_gateway(
            gateway.base, job=job, grouping_key=dict(key), timeout=TIMEOUT_SECONDS, handler=gateway.handler()
        )
    except Exception as exc:
        raise _failure(gateway, "delete", exc) from None
    wanted = {"job": job, **key}
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while any(g.labels == wanted for g in list_groups(gateway, job)):
        if time.monotonic() > deadline:
            raise PushError(
                f"--pushgateway {gateway.shown} (delete failed): accepted, but the group is "
                f"still listed after {TIMEOUT_SECONDS:.0f} s"
            )
        time.sleep(0.05)


@dataclass(frozen=True)
class PushedGroup:
    """One group the gateway holds for the job: its labels and when it was last pushed."""

    labels: dict[str, str]
    pushed_at: float | None  # Unix time of the last successful push; None if never


def list_groups(gateway: Gateway, job: str = PUSHGATEWAY_JOB) -> list[PushedGroup]:
    """Return the groups of ``job`` the gateway holds (its ``/api/v1/metrics``)."""
    url = gateway.base + "/api/v1/metrics" + (f"?{gateway.query}" if gateway.query else "")
    request = urllib.request.Request(url, method="GET")
    if gateway.username is not None:
        import base64

        token = base64.b64encode(f"{gateway.username}:{gateway.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            body = json.loads(response.read().decode("utf-8"))
    except Exception as exc:
        raise _failure(gateway, "listing the groups", exc) from None
    groups: list[PushedGroup] = []
    for entry in body.get("data", []) if isinstance(body, dict) else []:
        labels = {str(k): str(v) for k, v in (entry.get("labels") or {}).items()}
        if labels.get("job") != job:
            continue
        groups.append(PushedGroup(labels, _push_time(entry)))
    return groups


def _push_time(entry: Mapping[str, object]) -> float | None:
    family = entry.get("push_time_seconds")
    if not isinstance(family, Mapping):
        return None
    for metric in family.get("metrics") or []:
        try:
            return float(metric["value"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def prune_stale_groups(
    gateway: Gateway, older_than_seconds: float, *, job: str = PUSHGATEWAY_JOB, now: float | None = None
) -> list[PushedGroup]:
    """Delete the groups of ``job`` not pushed to for ``older_than_seconds``; return them."""
    limit = (time.time() if now is None else now) - older_than_seconds
    stale = [g for g in list_groups(gateway, job) if g.pushed_at is None or g.pushed_at < limit]
    for group in stale:
        key = {k: v for k, v in group.labels.items() if k != "job"}
        delete_group(gateway, key, job)
    return stale


def describe_group(group: PushedGroup) -> str:
    """Return ``k=v, ...`` (job first) and the push time, for one line of output."""
    labels = ", ".join(f"{k}={v}" for k, v in sorted(group.labels.items(), key=lambda kv: kv[0] != "job"))
    when = (
        "never"
        if group.pushed_at is None
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(group.pushed_at))
    )
    return f"{labels} (last push {when})"
