"""Signed URLs for result files, when keys are in use (``KEYS_FILE``): an output is private to
its owner, but OpenAI clients and ``<img>`` tags fetch ``image_url`` without headers, so the URL
itself carries the right to read it for ``URL_TTL`` seconds.

``/outputs/images/ID.png?expires=UNIX&sig=HMAC`` where the HMAC (SHA-256) covers the path and
the expiry, keyed by a random secret kept beside the job store (``url-signing.key``, owner-only),
so URLs stay good across restarts and no setting has to hold a secret. Expiries are rounded up to
:data:`STEP_S`, so one file keeps one URL for a while (browsers cache it). A URL unsigned, altered,
expired, or dated further ahead than the server would sign (a clock set back) is refused the same
way, before the file is looked for: the answer never says whether it exists. Never imports torch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

SECRET_FILE_NAME = "url-signing.key"
STEP_S = 60
URL_FIELDS = ("image_url", "meta_url")
OUTPUTS_PREFIX = "/outputs/"
_SIG_CHARS = 43  # the whole SHA-256, base64url without padding


class UrlSigner:
    """Signs output paths for ``ttl_s`` seconds and checks signed ones (``clock``: for tests)."""

    def __init__(self, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self.clock = clock

    def _signature(self, path: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{path}\n{expires}".encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode("ascii").rstrip("=")

    def sign(self, path: str) -> str:
        """``path`` with its expiry and signature as query parameters."""
        expires = math.ceil((self.clock() + self.ttl_s) / STEP_S) * STEP_S
        return f"{path}?expires={expires}&sig={self._signature(path, expires)}"

    def seconds_left(self, path: str, query: Mapping[str, str]) -> float | None:
        """How long a signed URL stays good; None when it is not a good one now."""
        expires_text, signature = query.get("expires", ""), query.get("sig", "")
        if not expires_text.isdigit() or len(expires_text) > 12 or len(signature) != _SIG_CHARS:
            return None
        expires = int(expires_text)
        good = hmac.compare_digest(signature.encode("ascii", "replace"), self._signature(path, expires).encode("ascii"))
        left = expires - self.clock()
        return left if good and 0 < left <= self.ttl_s + STEP_S else None

    def signed(self, body: Any) -> Any:
        """See :func:`signed`."""
        return signed(self, body)


def load_secret(path: Path) -> bytes:
    """The signing secret at ``path``, made (random, owner-only) the first time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text(encoding="ascii").strip()
        if len(text) < 64:
            raise ValueError(f"{path} is not a URL signing secret: delete it to make a new one") from None
        return bytes.fromhex(text)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secrets.token_hex(32) + "\n")
    return load_secret(path)


def signed(signer: UrlSigner, body: Any) -> Any:
    """``body`` (a job, an event, a result; lists and dicts within) with every output URL under
    :data:`URL_FIELDS` signed; a copy, the original (kept in memory and the job store) unchanged."""
    if isinstance(body, list):
        return [signed(signer, item) for item in body]
    if not isinstance(body, dict):
        return body
    copy: dict[str, Any] = {}
    for name, value in body.items():
        if name in URL_FIELDS and isinstance(value, str) and value.startswith(OUTPUTS_PREFIX) and "?" not in value:
            copy[name] = signer.sign(value)
        elif isinstance(value, (dict, list)) and name != "params":
            copy[name] = signed(signer, value)
        else:
            copy[name] = value
    return copy
