"""An HTTP refusal with its status, message and headers, answered in the API's error
shape (``uploader/errors.py``) by the request guard, the access dependency and routes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from uploader.errors import error_response


class Refused(Exception):
    """A request refused with ``status``; ``headers`` (Retry-After, WWW-Authenticate)
    go out with the answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def refusal_response(exc: Refused) -> JSONResponse:
    """``exc`` as the API's error answer, headers included."""
    response = error_response(exc.status, exc.message)
    response.headers.update(exc.headers)
    return response


def install_refusal_handler(app: FastAPI) -> None:
    """Answer a :class:`Refused` raised by a dependency or a route."""

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return refusal_response(exc)
