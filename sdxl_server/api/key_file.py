"""``KEYS_FILE``: the API keys of a server shared by several users, as TOML, one table a key.

```toml
[keys.alice]
hash = "sha256:9f86d0..."        # of the secret, never the secret itself
scopes = ["generate", "read"]     # admin: every scope, and every owner's jobs
requests_per_minute = 30          # any Limits field (jobs/owners.py); absent: no limit
models = ["sdxl-base"]

[keys.old-bot]
hash = "sha256:..."
revoked = true                    # kept, so the name is never given to another key
```

The secrets are random (``new_secret``: 256 bits), so a plain SHA-256 is as strong as a salted
slow hash would be, and lets a presented key be hashed once and compared with every entry in
constant time (:mod:`.key_ring`). Parsing checks everything and raises :class:`KeyFileError`
naming the key and the field. Never imports torch or aiohttp.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from ..jobs.owners import Limits
from .route_table import Scope

HASH_PREFIX = "sha256:"
SECRET_PREFIX = "sdxl-"  # makes a leaked key recognisable (secret scanners, logs)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A key's name is a job's owner, a metrics label and a log word: short, plain, no spaces.
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SCOPES = {"generate": Scope.GENERATE, "read": Scope.READ, "admin": Scope.ADMIN}
DEFAULT_SCOPES = ("generate", "read")
# Limits fields: (what a value must be, its smallest value)
_INT_LIMITS = {"requests_per_minute": 1, "running": 1, "waiting": 0, "images_per_day": 0, "weight": 1}
_NAME_LISTS = ("models", "loras")
LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))
KEY_FIELDS = ("hash", "scopes", "revoked", "webhook", *LIMIT_FIELDS)
MAX_WEBHOOK_URL = 2048
MAX_WEIGHT = 100


class KeyFileError(ValueError):
    """The keys file cannot be used; the message names the key and field, in one line."""


@dataclass(frozen=True)
class KeyEntry:
    """One key of the file: its name, the SHA-256 of its secret, what it may do and how much."""

    name: str
    digest: bytes
    scopes: frozenset[Scope]
    limits: Limits
    revoked: bool = False
    webhook: str | None = None  # where its jobs' events go when a request names no webhook


def new_secret() -> str:
    """A new random key (printed once by ``keys add``; only its hash is kept)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    """The SHA-256 of a key as it was sent (any text, a header's undecodable bytes included)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def hash_text(secret: str) -> str:
    """The ``hash`` a keys file holds for ``secret``."""
    return HASH_PREFIX + digest(secret).hex()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"key name {name[:80]!r} is not usable: {NAME_RULE}")
    return name


def parse_keys(text: str) -> dict[str, KeyEntry]:
    """The keys of a keys file's text (revoked ones included); raises :class:`KeyFileError`."""
    try:
        document = tomlkit.parse(text).unwrap()
    except (TOMLKitError, ValueError) as exc:
        if "already exists" in str(exc):  # tomlkit's words for a table or field given twice
            raise KeyFileError(f"a key name or field is given twice: {exc}") from None
        raise KeyFileError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"keys"})
    if unknown:
        raise KeyFileError(f"unknown top-level entry {unknown[0]!r}: each key is a [keys.NAME] table")
    tables = document.get("keys", {})
    if not isinstance(tables, dict):
        raise KeyFileError("'keys' must be tables: [keys.NAME]")
    entries = {name: _entry(check_name(name), table) for name, table in tables.items()}
    seen: dict[bytes, str] = {}
    for entry in entries.values():
        if entry.digest in seen:
            raise KeyFileError(f"keys {seen[entry.digest]!r} and {entry.name!r} have the same hash: one secret, two names")
        seen[entry.digest] = entry.name
    return entries


def _entry(name: str, table: Any) -> KeyEntry:
    if not isinstance(table, dict):
        raise KeyFileError(f"key {name!r} must be a table ([keys.{name}])")
    unknown = sorted(set(table) - set(KEY_FIELDS))
    if unknown:
        raise KeyFileError(f"key {name!r}: unknown field {unknown[0]!r} (known: {', '.join(KEY_FIELDS)})")
    revoked = table.get("revoked", False)
    if not isinstance(revoked, bool):
        raise KeyFileError(f"key {name!r}: revoked must be true or false")
    return KeyEntry(name, _digest(name, table.get("hash")), _scopes(name, table.get("scopes", list(DEFAULT_SCOPES))),
                    parse_limits(name, table), revoked, _webhook(name, table.get("webhook")))


def _webhook(name: str, value: Any) -> str | None:
    """A key's default webhook: an http(s) URL (the SSRF guard checks where it leads when used)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) > MAX_WEBHOOK_URL:
        raise KeyFileError(f"key {name!r}: webhook must be an http:// or https:// URL of at most {MAX_WEBHOOK_URL} characters")
    return value


def _digest(name: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith(HASH_PREFIX) or not _HEX64.fullmatch(value[len(HASH_PREFIX):]):
        raise KeyFileError(f"key {name!r}: hash must be 'sha256:' and 64 lowercase hex digits "
                           "(python -m sdxl_server keys add writes it)")
    return bytes.fromhex(value[len(HASH_PREFIX):])


def _scopes(name: str, value: Any) -> frozenset[Scope]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise KeyFileError(f"key {name!r}: scopes must be a list of {', '.join(SCOPES)}")
    unknown = [item for item in value if item not in SCOPES]
    if unknown:
        raise KeyFileError(f"key {name!r}: unknown scope {unknown[0][:40]!r} (known: {', '.join(SCOPES)})")
    scopes = {SCOPES[item] for item in value}
    if Scope.ADMIN in scopes:  # the server's shared state and every owner's jobs: all the rest too
        scopes |= {Scope.READ, Scope.GENERATE}
    return frozenset({Scope.PUBLIC, *scopes})


def parse_limits(name: str, table: Mapping[str, Any]) -> Limits:
    """The :class:`Limits` of a key's table (only the fields it names; the others: no limit)."""
    values: dict[str, Any] = {}
    for field, least in _INT_LIMITS.items():
        if field in table:
            value = table[field]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise KeyFileError(f"key {name!r}: {field} must be a whole number, at least {least}")
            if field == "weight" and value > MAX_WEIGHT:
                raise KeyFileError(f"key {name!r}: weight must be at most {MAX_WEIGHT}")
            values[field] = value
    if "gpu_seconds_per_day" in table:
        value = table["gpu_seconds_per_day"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise KeyFileError(f"key {name!r}: gpu_seconds_per_day must be a number of seconds, at least 0")
        values["gpu_seconds_per_day"] = float(value)
    for field in _NAME_LISTS:
        if field in table:
            value = table[field]
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise KeyFileError(f"key {name!r}: {field} must be a list of names")
            values[field] = tuple(value)
    return Limits(**values)
