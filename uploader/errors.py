"""Every error leaves the API as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from shared.core.errors import StorageError, TransientError, ValidationError

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(status: int, message: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"code": code or CODES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status)


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def refused(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        return error_response(503, f"redis unavailable: {exc}")

    @app.exception_handler(StorageError)
    async def storage_down(_: Request, exc: StorageError) -> JSONResponse:
        return error_response(503, f"storage unavailable: {exc}")

    @app.exception_handler(TransientError)
    async def try_later(_: Request, exc: TransientError) -> JSONResponse:
        return error_response(503, f"{exc}; try again later")
