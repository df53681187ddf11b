"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every way a request can fail ends here: :class:`APIError` raised by the routes, pydantic's validation
errors (400, naming the field, the way vLLM and OpenAI answer rather than FastAPI's 422), malformed
JSON, unknown routes and methods, and anything unexpected (500, logged, with no internals leaked).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# OpenAI's error types, by status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A request that fails with ``status`` and an OpenAI error body. ``param`` names the request
    field at fault (dotted, e.g. ``"sra.beta_outer"``); ``headers`` go on the response (``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def field_path(loc: Sequence[str | int]) -> str:
    """``("body", "messages", 0, "content")`` -> ``"messages.0.content"`` (the request body is implied;
    pydantic's tags of union members, such as ``str`` or ``list[str]``, are left out)."""
    parts = [str(part) for part in loc if not _union_tag(part)]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts)


def _union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part)


def validation_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """One 400 from pydantic's error list: each problem as ``field: message``, ``param`` the first field."""
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = next(error for error in errors if error.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "")
        message = f"The request body is not valid JSON ({reason}).".replace(" ()", "")
        if "surrogate" in reason or "hex escape" in reason:
            message += (
                " Check the \\u escapes: an incomplete one, or a lone surrogate (\\ud800-\\udfff without its pair), "
                "is not a character."
            )
        return APIError(400, message, code="invalid_json")
    messages = []
    for error in errors:
        path = field_path(error.get("loc", ()))
        if error.get("type") == "extra_forbidden":
            messages.append(f"Unrecognized request argument supplied: {path}")
        elif error.get("type") == "missing":
            messages.append(f"{path}: a required field is missing")
        else:
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            messages.append(f"{path}: {message}" if path else message)
    first = field_path(errors[0].get("loc", ())) if errors else None
    return APIError(400, "; ".join(messages), param=first or None, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of ``app`` in OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see GET /v1/models and POST /v1/chat/completions."
        elif error.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(error.detail)
        return APIError(error.status_code, message, headers=error.headers).response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("Unexpected error while serving a request")
        return APIError(500, f"Internal server error ({type(error).__name__}); see the server log.").response()
