"""The errors a client can see: one stable shape, ``{"error": code, "message": ..., "fields": ...}``.

Raised anywhere (handlers, the queue, the engine); :mod:`sdxl_server.api.middleware` is the one place
that turns them into responses. Nothing here imports aiohttp or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a human message."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    closes_connection: ClassVar[bool] = False  # the request's body was not read: the answer ends the connection

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return body

    def to_record(self) -> dict[str, Any]:
        """As the job store keeps it: the body, and the status to answer with."""
        return {**self.to_dict(), "status": self.status}

    def renamed(self, names: Mapping[str, str] | None) -> ApiError:
        """This error naming the fields as a client's API calls them (``names``: ours -> theirs;
        a field inside one, ``controlnet[0].model``, keeps its path under the client's name)."""
        if names and self.fields:
            self.fields = {_renamed(name, names): problems for name, problems in self.fields.items()}
            head = self.message.split(":", 1)[0]
            if head and " " not in head:
                self.message = _renamed(head, names) + self.message[len(head):]
        return self


def _renamed(name: str, names: Mapping[str, str]) -> str:
    """``name`` under the client's name: its own entry, else that of the longest field holding it."""
    if name in names:
        return names[name]
    holders = [ours for ours in names if name.startswith((f"{ours}[", f"{ours}."))]
    ours = max(holders, key=len, default=None)
    return name if ours is None else names[ours] + name[len(ours):]


class InvalidBody(ApiError):
    status, code = 400, "invalid_body"


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"


class Unusable(ValidationFailed):
    """A request names something this server cannot use (a model, a LoRA, the refiner). Raised
    below the API in the request's own terms: ``fields`` is keyed by the parameter
    (``model``, ``loras``, ``prompt``, ``refiner``); each API renames them to its client's field
    (:meth:`ApiError.renamed`)."""


class BodyTooSlow(ApiError):
    """A request body that stopped arriving (or came slower than ``BODY_MIN_RATE``)."""

    status, code = 408, "request_timeout"
    closes_connection = True


class TooManyUploads(ApiError):
    """More requests sending their bodies at once than ``MAX_RECEIVING_BODIES``."""

    status, code = 503, "too_many_uploads"
    closes_connection = True


class ImageTooLarge(ApiError):
    """An input image with more pixels than the server decodes (refused before decoding it)."""

    status, code = 413, "image_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class QueueFull(ApiError):
    status, code = 429, "queue_full"


class OverLimit(ApiError):
    """A key went over one of its limits (``limit``: the name of the limit in the keys file);
    ``resets_at`` (ISO 8601, UTC) is when it allows the request again, as ``Retry-After`` says."""

    status, code = 429, "over_limit"

    def __init__(self, message: str, *, limit: str, resets_at: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})
        self.limit, self.resets_at = limit, resets_at

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "limit": self.limit, "resets_at": self.resets_at}


class NotAllowed(ApiError):
    """A key asked for a model or a LoRA its limits do not allow (``fields`` names which)."""

    status, code = 403, "not_allowed"

    def __init__(self, message: str, *, limit: str, fields: dict[str, Any]) -> None:
        super().__init__(message, fields=fields)
        self.limit = limit

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "limit": self.limit}


class ModelUnavailable(ApiError):
    """The model failed to load; the message says why and how to fix it."""

    status, code = 503, "model_unavailable"


class OutOfMemory(ApiError):
    """The device ran out of memory for this request; smaller sizes or fewer images may fit."""

    status, code = 503, "out_of_memory"


class GenerationFailed(ApiError):
    status, code = 500, "generation_failed"


class StorageFailed(ApiError):
    status, code = 500, "storage_failed"


class JobStoreUnavailable(ApiError):
    status, code = 503, "job_store_unavailable"


class WorkerStopped(ApiError):
    status, code = 503, "worker_stopped"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class ForbiddenOrigin(ApiError):
    status, code = 403, "forbidden_origin"


class IdempotencyConflict(ApiError):
    status, code = 422, "idempotency_conflict"


class Interrupted(ApiError):
    """The server stopped (a crash) while the job ran."""

    status, code = 500, "interrupted"


class InputMissing(ApiError):
    """A queued job's input image is no longer in OUTPUT_DIR/inputs."""

    status, code = 500, "input_missing"


class OutputMissing(ApiError):
    status, code = 500, "output_missing"


class StoredError(ApiError):
    """An error read back from the job store, with the code and status it was stored with."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""), fields=body.get("fields"))
        self.code = body.get("error", "internal_error")  # type: ignore[misc]
        self.status = body.get("status", 500)  # type: ignore[misc]


class JobCancelled(ApiError):
    """Raised inside the pipeline's step callback to stop a job; a blocking request sees 409."""

    status, code = 409, "cancelled"


class ShuttingDown(ApiError):
    status, code = 503, "shutting_down"


class NotAvailable(ApiError):
    """A route a compatible API has that this server does not provide (A1111's interrogate)."""

    status, code = 501, "not_available"


def short_message(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one line of at most ``limit`` characters, for logs and client-facing errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
