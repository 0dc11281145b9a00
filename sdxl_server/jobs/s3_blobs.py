"""``OUTPUT_STORE=s3://bucket/prefix``: the output store's blobs in an S3-compatible bucket (AWS,
SeaweedFS, MinIO, R2 ...), through boto3 (docs/performance.md, "Object storage": why boto3).

Credentials and the region come the usual AWS way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and the shared files, SSO, instance roles; ``S3_REGION`` overrides the region);
``S3_ENDPOINT_URL`` names a server other than AWS. Each put is one object (multipart above
``MULTIPART_BYTES``, by boto3's transfer manager), retried by botocore's standard retry mode; an
object exists whole or not at all. Clients fetch objects at ``OUTPUT_PUBLIC_URL`` (a CDN or a
public bucket) or at URLs presigned for ``URL_TTL`` seconds. Nothing here imports torch or aiohttp;
boto3 is imported only when this store is used (the ``s3`` extra).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .blobs import StorageUnavailable

log = logging.getLogger(__name__)

MULTIPART_BYTES = 8 * 1024 * 1024  # larger objects go in 8 MiB parts
ATTEMPTS = 4  # botocore's standard mode: exponential backoff with jitter between them
TIMEOUT_S = 10.0
SIGNED_KEPT = 4096  # presigned URLs remembered (least recently used forgotten first)


def parse_location(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as ``(bucket, prefix)`` (the prefix without slashes at its ends)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


class S3Blobs:
    """Blobs as objects ``{prefix}/{folder}/{name}`` in ``bucket``."""

    def __init__(
        self, uri: str, *, endpoint_url: str | None = None, region: str | None = None,
        public_url: str | None = None, url_ttl: float = 3600.0, attempts: int = ATTEMPTS,
    ) -> None:
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise StorageUnavailable("OUTPUT_STORE=s3://... needs boto3: pip install -e '.[s3]'") from None
        self.bucket, self.prefix = parse_location(uri)
        self.where = uri
        self.public_url = public_url.rstrip("/") if public_url else None
        self.url_ttl = url_ttl
        self._signed: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (URL, reused until)
        self._signing = threading.Lock()
        config = Config(
            retries={"mode": "standard", "max_attempts": attempts}, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
            signature_version="s3v4", s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        session = boto3.session.Session(region_name=region)
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                       use_threads=False)

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def prepare(self) -> None:
        """Reach the bucket once (``HeadBucket``), so a wrong endpoint, credentials or bucket stops
        start-up with a clear line rather than failing the first job."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise StorageUnavailable(self._refusal(exc)) from None
        except BotoCoreError as exc:
            raise StorageUnavailable(f"OUTPUT_STORE {self.where} cannot be reached: {exc}") from None

    def _refusal(self, exc: Any) -> str:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"OUTPUT_STORE {self.where}: the bucket {self.bucket!r} does not exist: create it first"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (f"OUTPUT_STORE {self.where}: access refused ({code}): check the credentials "
                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket's policy")
        return f"OUTPUT_STORE {self.where} answered {code or 'an error'}: {exc}"

    def _call(self, what: str, call, *args: Any, **kwargs: Any) -> Any:
        """One call to the storage, its failures as ``OSError`` (a missing object as ``FileNotFoundError``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{what}: no such object") from None
            raise OSError(f"{what} in {self.where}: {code or exc}") from None
        except BotoCoreError as exc:
            raise OSError(f"{what} in {self.where}: {exc}") from None

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._call(f"writing {key}", self.client.upload_fileobj, io.BytesIO(body), self.bucket, self.key(key),
                   ExtraArgs={"ContentType": content_type}, Config=self.transfer)

    def get(self, key: str) -> bytes:
        answer = self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=self.key(key))
        return self._call(f"reading {key}", answer["Body"].read)

    def exists(self, key: str) -> bool:
        """Whether the object is there; without ``s3:ListBucket`` S3 answers a missing object's
        ``HeadObject`` with 403, which counts as absent too (the caller writes it again)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound", "403"):
                return False
            return self._call(f"looking for {key}", _raise, exc)
        except Exception as exc:  # noqa: BLE001 - botocore's own errors, as every other call reports them
            return self._call(f"looking for {key}", _raise, exc)
        return True

    def names(self, folder: str, prefix: str = "") -> list[str]:
        start = self.key(f"{folder}/")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start + prefix)
        found: list[str] = []
        for page in self._call(f"listing {folder}", list, pages):
            found += [item["Key"][len(start):] for item in page.get("Contents", ())]
        return sorted(name for name in found if "/" not in name)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
            objects = [{"Key": self.key(key)} for key in keys[start:start + 1000]]
            answer = self._call("deleting", self.client.delete_objects, Bucket=self.bucket,
                                Delete={"Objects": objects, "Quiet": True})
            if answer.get("Errors"):
                raise OSError(f"deleting in {self.where}: {answer['Errors'][0].get('Code')}")

    def url(self, key: str) -> str | None:
        """``OUTPUT_PUBLIC_URL/{prefix}/{key}``, else a GET presigned for ``URL_TTL`` seconds.

        Presigning costs about half a millisecond in boto3 (docs/performance.md), and answers run on
        the event loop: a URL is reused while more than half its time is left."""
        if self.public_url:
            return f"{self.public_url}/{quote(self.key(key))}"
        now = time.monotonic()
        with self._signing:
            cached = self._signed.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(key)}, ExpiresIn=int(self.url_ttl))
        with self._signing:
            self._signed[key] = (url, now + self.url_ttl / 2)
            self._signed.move_to_end(key)
            while len(self._signed) > SIGNED_KEPT:
                self._signed.popitem(last=False)
        return url

    def file(self, key: str) -> Path | None:
        return None


def _raise(exc: BaseException) -> None:
    """Raise ``exc`` (through :meth:`S3Blobs._call`, which words it as the other calls' failures)."""
    raise exc
