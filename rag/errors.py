"""Domain errors: what went wrong in the user's words, and what to do next.

Each error carries the HTTP status and OpenAI-style ``type``/``code`` it maps to, so the
serving layer builds every error body in one place.
"""

from __future__ import annotations

from typing import Any


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The one error shape (OpenAI's) that every route, stream and middleware answers with:
    ``{"error": {"message", "type", "param", "code"}}``. Built here and nowhere else."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


INTERNAL_ERROR = "internal error - see the server log"


def internal_error_body() -> dict[str, Any]:
    """The body of a failure nobody planned for: what it was goes to the log, not the client."""
    return error_body(INTERNAL_ERROR, "server_error", None, "internal_error")


class RagError(Exception):
    """Base of every error this service raises on purpose."""

    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The one error shape (OpenAI's) every route answers with."""
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequestError(RagError):
    """The request itself is wrong: fix it and send it again."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class CollectionNotFoundError(RagError):
    status_code = 404
    type = "invalid_request_error"
    code = "collection_not_found"

    def __init__(self, name: str, data_dir: object) -> None:
        # No server path in the message: every client sees it (the command line adds ``data_dir``).
        super().__init__(
            f"collection {name!r} not found - run `rag ingest PATH --collection {name}` on the server first",
            param="collection",
        )
        self.name = name
        self.data_dir = data_dir


class CollectionDamagedError(RagError):
    """A collection's files on disk are not what its ingest wrote (truncated, overwritten,
    missing): nothing is answered from it until it is restored or rebuilt."""

    status_code = 503
    type = "service_unavailable"
    code = "collection_damaged"

    def __init__(self, name: str, damage: str) -> None:
        super().__init__(
            f"collection {name!r} is damaged ({damage}) - put collections/{name} back from a `rag backup` copy, "
            f"or rebuild it from its documents: `rag ingest PATH... --collection {name} --rebuild`",
            param="collection",
        )
        self.name = name
        self.damage = damage


class StoreDamagedError(RagError):
    """A store's SQLite file under the data dir is damaged (not one an I/O error left locked
    or full): the service will not start on it, and says how to put it back."""

    status_code = 503
    type = "service_unavailable"
    code = "store_damaged"


class NotFoundError(RagError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class IndexMismatchError(RagError):
    """The index was built with another embedding model or dimension."""

    status_code = 409
    type = "invalid_request_error"
    code = "index_model_mismatch"


class ConflictError(RagError):
    """Someone else changed the record since it was read."""

    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class BackendUnavailableError(RagError):
    """The generator backend cannot answer now (not installed, not loaded, or down).
    ``retry_after_s`` is set where it is down for a while (unreachable, failed mid-answer,
    busy): the 503 carries it as ``Retry-After``, and a job waits it out; unset, asking
    again will not help (not installed, a request the server refuses)."""

    status_code = 503
    type = "service_unavailable"
    code = "backend_unavailable"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class BackendRefusedError(BackendUnavailableError):
    """The model server answered and refused this request (a 4xx from vLLM: a prompt over its
    context length, an option it does not take): asking again will not help. Where the
    documents hold sentences that answer, they are served, quoted, in its place."""

    code = "backend_refused"


class DatabaseUnavailableError(BackendUnavailableError):
    """The database (RAG_DATABASE_URL: keys, jobs, answers) cannot be reached now: a code of
    its own, so that an alert or a client can tell it from a model server that is down."""

    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after_s: int | None = 5) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class IngestError(RagError):
    """Ingestion could not index anything."""

    code = "ingest_failed"


class DocumentError(RagError):
    """One file could not be read; ingestion reports it and goes on."""

    code = "unreadable_document"


class AuthenticationError(RagError):
    """No API key, or one the service does not know (or has revoked)."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RagError):
    """The API key is valid but does not reach this collection or route."""

    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class RequestTooLargeError(RagError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeoutError(RagError):
    status_code = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimitError(RagError):
    """Too many requests for one API key: wait ``retry_after_s`` and send it again."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int, *, code: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        if code:
            self.code = code
