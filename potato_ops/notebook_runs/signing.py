"""Signing the head of the archive's chain with an ed25519 key (``cryptography``).

The index chains every run to the one before it, so whoever signs the newest entry vouches for
all of them: someone able to rewrite the folder cannot forge a chain that verifies against the
public key. The signature is kept in ``HEAD.sig`` next to the index (and with the run's record
in the database). Removing the newest runs together with the signature they carried is what
the database's copy of the hashes catches (``potato_ops.notebook_runs.records``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from potato_ops.config import SIGNING_KEY_ENV
from potato_ops.errors import ConfigError

HEAD_SIGNATURE_FILE = "HEAD.sig"


@dataclass(frozen=True)
class HeadSignature:
    """The signature of the chain's newest entry, as ``HEAD.sig`` holds it."""

    seq: int
    entry_hash: str
    key_id: str
    signature: str  # base64

    def to_json(self) -> str:
        """Return the file's text."""
        return json.dumps(self.__dict__, sort_keys=True) + "\n"


def _message(seq: int, entry_hash: str) -> bytes:
    return f"potato-ops chain head\n{seq}\n{entry_hash}\n".encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return a short fingerprint of the public key (16 hex digits of its SHA-256)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(private_path: Path) -> Path:
    """Return the public key's path after writing a new key pair (private file mode 0600).

    Refuses (ConfigError) to overwrite an existing key.
    """
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise ConfigError(f"cannot write the key pair at {private_path}: {exc.strerror or exc}") from None
    return public_path


def configured_signing_key() -> Ed25519PrivateKey | None:
    """Return the key named by $POTATO_OPS_SIGNING_KEY, or None when signing is off."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if not path:
        return None
    key = _load(Path(path), private=True)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Return the ed25519 public key in a PEM file; ConfigError when it is not one."""
    key = _load(path, private=False)
    assert isinstance(key, Ed25519PublicKey)
    return key


def _load(path: Path, *, private: bool) -> Any:
    what = "private" if private else "public"
    try:
        data = path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} key {path}: {exc.strerror or exc}") from None
    try:
        key: Any = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError):
        key = None
    wanted = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, wanted):
        raise ConfigError(f"{path} is not an unencrypted ed25519 {what} key in PEM form")
    return key


def sign_head(key: Ed25519PrivateKey, seq: int, entry_hash: str) -> HeadSignature:
    """Return the signature of the chain entry ``seq`` whose hash is ``entry_hash``."""
    signature = base64.b64encode(key.sign(_message(seq, entry_hash))).decode("ascii")
    return HeadSignature(seq, entry_hash, key_id(key.public_key()), signature)


def check_head_signature(
    text: str | None, head_seq: int | None, head_hash: str | None, public_key: Ed25519PublicKey
) -> list[str]:
    """Return what is wrong with ``HEAD.sig`` (its text, None when missing) for the chain's head."""
    if head_seq is None or head_hash is None:
        return [] if text is None else [f"{HEAD_SIGNATURE_FILE}: signs a chain that has no entry"]
    if text is None:
        return [f"{HEAD_SIGNATURE_FILE}: missing, the chain's head (entry {head_seq}) is not signed"]
    try:
        data = json.loads(text)
        found = HeadSignature(
            int(data["seq"]), str(data["entry_hash"]), str(data["key_id"]), str(data["signature"])
        )
        raw = base64.b64decode(found.signature, validate=True)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, binascii.Error):
        return [f"{HEAD_SIGNATURE_FILE}: malformed"]
    problems: list[str] = []
    if found.seq != head_seq:
        problems.append(
            f"{HEAD_SIGNATURE_FILE}: signs entry {found.seq}, but the chain's head is entry {head_seq}"
        )
    elif found.entry_hash != head_hash:
        problems.append(f"{HEAD_SIGNATURE_FILE}: entry {head_seq} is not the entry that was signed")
    try:
        public_key.verify(raw, _message(found.seq, found.entry_hash))
    except InvalidSignature:
        problems.append(f"{HEAD_SIGNATURE_FILE}: the signature does not verify with the public key")
    return problems
