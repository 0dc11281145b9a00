"""``python -m sdxl_server keys add NAME | list | revoke NAME``: the keys of ``KEYS_FILE``.

``add`` prints a new random key once and writes only its hash; ``revoke`` marks a key revoked
(it is kept, so its name, which owns its jobs, is never given to another key); ``list`` shows
names, scopes and limits, never a hash. Edits keep the file's comments and layout (tomlkit), are
checked as the server checks the file, and replace it in one step, so a running server (which
re-reads it when it changes) never sees half of one. Never imports torch or aiohttp's server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import tomlkit

from ..api.key_file import (
    DEFAULT_SCOPES,
    LIMIT_FIELDS,
    SCOPES,
    KeyFileError,
    check_name,
    hash_text,
    new_secret,
    parse_keys,
    parse_limits,
)
from ..jobs.outputs import write_atomic

_LIST_LIMITS = ("models", "loras")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxl_server keys", description="Manage the API keys of KEYS_FILE.")
    parser.add_argument("--file", type=Path, help="the keys file (default: KEYS_FILE)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a key: prints it once, writes its hash")
    add.add_argument("name")
    add.add_argument("--scope", action="append", choices=list(SCOPES),
                     help=f"what it may do (repeat; default: {' and '.join(DEFAULT_SCOPES)})")
    add.add_argument("--limit", action="append", default=[], metavar="FIELD=VALUE",
                     help=f"one of {', '.join(LIMIT_FIELDS)} (models and loras: comma-separated names)")
    commands.add_parser("list", help="the keys: names, scopes, limits (never a hash)")
    revoke = commands.add_parser("revoke", help="revoke a key (its name stays taken)")
    revoke.add_argument("name")
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str], out: TextIO | None = None) -> int:
    """Run one keys command; 0 on success, 2 on a bad command or keys file (said on stderr)."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    path = args.file or (Path(environ["KEYS_FILE"]).expanduser() if environ.get("KEYS_FILE", "").strip() else None)
    if path is None:
        print("sdxl-server keys: error: say which keys file: KEYS_FILE=... or --file", file=sys.stderr)
        return 2
    try:
        document = _read(path)
        if args.command == "list":
            _list(document, out)
            return 0
        if args.command == "add":
            secret = _add(document, args.name, args.scope or list(DEFAULT_SCOPES), args.limit)
        else:
            _revoke(document, args.name)
        _write(path, document)
    except KeyFileError as exc:
        print(f"sdxl-server keys: error: {path}: {exc}", file=sys.stderr)
        return 2
    if args.command == "add":
        print(f"added key {args.name!r} to {path}; it is shown only now, keep it safe:", file=sys.stderr)
        print(secret, file=out)
    else:
        print(f"revoked key {args.name!r} in {path}", file=out)
    return 0


def _read(path: Path) -> tomlkit.TOMLDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tomlkit.document()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read it: {exc}") from None
    parse_keys(text)  # only a usable file is edited
    return tomlkit.parse(text)


def _keys_table(document: tomlkit.TOMLDocument) -> Any:
    if "keys" not in document:
        document["keys"] = tomlkit.table(is_super_table=True)
    return document["keys"]


def _add(document: tomlkit.TOMLDocument, name: str, scopes: list[str], limits: list[str]) -> str:
    check_name(name)
    table = _keys_table(document)
    if name in table:
        state = "a revoked key keeps its name, which owns its jobs" if table[name].get("revoked") else "remove it or choose another name"
        raise KeyFileError(f"a key named {name!r} exists ({state})")
    secret = new_secret()
    entry = tomlkit.table()
    entry["hash"] = hash_text(secret)
    entry["scopes"] = list(dict.fromkeys(scopes))
    values = _limit_values(limits)
    parse_limits(name, values)  # checked as the server checks them
    for field, value in values.items():
        entry[field] = value
    table[name] = entry
    return secret


def _limit_values(limits: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in limits:
        field, equals, raw = item.partition("=")
        field = field.strip()
        if not equals or field not in LIMIT_FIELDS:
            raise KeyFileError(f"--limit {item[:80]!r}: give FIELD=VALUE, FIELD one of {', '.join(LIMIT_FIELDS)}")
        values[field] = _limit_value(field, raw.strip())
    return values


def _limit_value(field: str, raw: str) -> Any:
    if field in _LIST_LIMITS:
        return [name.strip() for name in raw.split(",") if name.strip()]
    try:
        return float(raw) if field == "gpu_seconds_per_day" else int(raw)
    except ValueError:
        raise KeyFileError(f"--limit {field}={raw[:40]!r}: not a number") from None


def _revoke(document: tomlkit.TOMLDocument, name: str) -> None:
    table = document.get("keys", {})
    if name not in table:
        raise KeyFileError(f"no key named {name[:80]!r}")
    table[name]["revoked"] = True


def _list(document: tomlkit.TOMLDocument, out: TextIO) -> None:
    entries = parse_keys(tomlkit.dumps(document))
    if not entries:
        print("no keys", file=out)
    for entry in entries.values():
        scopes = ",".join(sorted(scope.value for scope in entry.scopes if scope.value != "public"))
        limits = " ".join(f"{field}={_shown(getattr(entry.limits, field))}" for field in LIMIT_FIELDS
                          if getattr(entry.limits, field) is not None and not (field == "weight" and entry.limits.weight == 1))
        print(f"{entry.name}\t{'REVOKED' if entry.revoked else 'active'}\t{scopes}\t{limits}".rstrip(), file=out)


def _shown(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _write(path: Path, document: tomlkit.TOMLDocument) -> None:
    """Check the new text as the server will, then replace the file in one step (owner-only)."""
    text = tomlkit.dumps(document)
    parse_keys(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda file: file.write(text.encode("utf-8")), mode=0o600, prefix=f".{path.name}.")
