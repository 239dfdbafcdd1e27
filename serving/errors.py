"""Every endpoint's errors as one JSON response: the body is ``rag.errors.error_body`` (the
OpenAI shape ``{"error": {"message", "type", "param", "code"}}``); this module maps
exceptions (the service's own, FastAPI's validation, Starlette's HTTP errors) onto it."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cache.stores import StoreUnavailable
from rag.errors import RagError, error_body

from .observability import ERRORS_SENT
from .schemas import ErrorResponse

log = logging.getLogger("rag.serving")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 429, 503)
}
"""The error responses every API route documents in the OpenAPI schema."""


def without_validation_422(app: FastAPI) -> None:
    """The OpenAPI schema without FastAPI's 422 ``HTTPValidationError``: a malformed request is a
    400 in the one error shape (documented with the routes' ERRORS), and a client generated
    from the schema should model that, not a response never sent."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def error_response(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    counted: bool = True,
) -> JSONResponse:
    """The one error shape; ``counted``: in rag_errors_total (not a readiness probe's)."""
    if counted:
        ERRORS_SENT.labels(str(status), code or type_).inc()
    return JSONResponse(status_code=status, content=error_body(message, type_, param, code), headers=headers)


# A union's member in an error's location ("filters.title.str"): pydantic's, not a field.
_TYPE_TAG_RE = re.compile(r"^(?:str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-\w+\[.*\])$")
_JSON_OBJECT = "send a JSON object with the header Content-Type: application/json"


def _validation_message(exc: RequestValidationError, content_type: str = "") -> tuple[str, str | None, str]:
    errors: list[dict[str, Any]] = list(exc.errors())
    first = errors[0] if errors else {}
    kind = first.get("type")
    if kind == "json_invalid":
        return f"request body is not valid JSON - {_JSON_OBJECT}", None, "invalid_json"
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if len(loc) > 1 and _TYPE_TAG_RE.match(loc[-1]):  # the union member that failed last, not a field
        loc.pop()
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if kind == "missing":
        if param is None:  # no body at all
            return f"request body is missing - {_JSON_OBJECT}", None, "missing_body"
        return f"{param} is required", param, "missing_field"
    if kind == "model_attributes_type" and param is not None:  # a list's item, not the body
        return f"{param} must be a JSON object, not {type(first.get('input')).__name__}", param, "invalid_value"
    if kind == "model_attributes_type":
        media = content_type.split(";")[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):  # JSON, maybe, sent as another type
            return (
                f"request body was sent as {media!r}, so it was not read as JSON - {_JSON_OBJECT}",
                None,
                "invalid_body",
            )
        return f"request body must be a JSON object - {_JSON_OBJECT}", None, "invalid_body"
    if kind == "invalid_text":  # serving.schemas.RequestBody names the field in its context
        return msg, (first.get("ctx") or {}).get("field"), "invalid_text"
    return f"{param}: {msg}" if param else msg, param, "invalid_value"


def rag_error_response(
    exc: RagError, param: str | None = None, counted: bool = True, message: str | None = None
) -> JSONResponse:
    """The one error shape for a service error; ``param`` (and ``message``) name the field as
    the caller's request does, where it differs (the OpenAI route's ``model``)."""
    if exc.status_code >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message)
    retry = getattr(exc, "retry_after_s", None)  # a 429's, a backend's 503: when to send it again
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return error_response(
        exc.status_code, message or exc.message, exc.type, param or exc.param, exc.code, headers, counted
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagError)
    async def _rag_error(_: Request, exc: RagError) -> JSONResponse:
        return rag_error_response(exc)

    @app.exception_handler(StoreUnavailable)
    async def _store_away(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("response cache store unavailable: %s", exc)
        message = f"the response cache's store is unreachable ({exc}) - answers still work, as misses"
        return error_response(503, message, "service_unavailable", None, "cache_store_unavailable")

    @app.exception_handler(sqlite3.OperationalError)
    async def _disk(_: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        log.error("a SQLite database under RAG_DATA_DIR cannot be used: %s", exc)
        message = (
            f"the service cannot write its records ({exc}) - free disk space under RAG_DATA_DIR; answers still work"
        )
        return error_response(503, message, "service_unavailable", None, "storage_unavailable")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc, request.headers.get("content-type", ""))
        return error_response(400, message, "invalid_request_error", param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code
        )
        detail = str(exc.detail)
        if detail == "There was an error parsing the body":  # FastAPI's, for a body json cannot read
            detail = (
                "request body could not be read as JSON: it is not UTF-8 (send text as UTF-8, whatever charset the "
                f"header names), or it is nested too deep - {_JSON_OBJECT}"
            )
        # Keep the exception's headers: a 405 must say `Allow` (RFC 9110).
        return error_response(exc.status_code, detail, type_, None, code, exc.headers)

    # Anything else (a bug) is answered by observability.RequestContextMiddleware: there the
    # 500 and its logged traceback both carry the request id.
