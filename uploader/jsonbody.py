"""JSON request bodies, parsed once and strictly.

The request guard (``uploader/guard.py``) parses every JSON body with
:func:`parse_json_body` before routing: UTF-8 only, no NaN/Infinity, no duplicate
keys, no lone surrogates, bounded nesting, a top-level object. It keeps the document
in the ASGI scope, and routes of a :class:`ParsedJSONRoute` router hand FastAPI that
document instead of the bytes, so FastAPI validates its models without a second parse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Scope

from uploader.refused import Refused

DOCUMENT_KEY = "buildq.json"
MAX_DEPTH = 32


def _reject_constant(name: str) -> Any:
    raise Refused(400, f"invalid JSON: {name} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Refused(400, f"invalid JSON: duplicate key {key[:60]!r}")
        result[key] = value
    return result


def _check_values(document: Any) -> None:
    """Walk ``document`` without recursion: depth, surrogates, finite numbers."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(400, f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(400, "invalid JSON: string with a lone surrogate") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise Refused(400, "invalid JSON: number out of range")
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Refused (400 malformed, 422 not an object)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "request body must be UTF-8 encoded JSON") from None
    try:
        document = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates
        )
    except RecursionError:
        raise Refused(400, "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise Refused(400, f"invalid JSON: {str(exc)[:200]}") from None
    _check_values(document)
    if not isinstance(document, dict):
        raise Refused(422, "request body must be a JSON object")
    return document


def is_json(content_type: str) -> bool:
    """Whether a body of ``content_type`` is read as JSON (no type counts as JSON)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


def keep_document(scope: Scope, document: dict[str, Any]) -> None:
    """Hand the parsed body on to the route (see :class:`ParsedJSONRequest`)."""
    scope[DOCUMENT_KEY] = document


class ParsedJSONRequest(Request):
    """A request whose JSON body the guard has already parsed."""

    async def json(self) -> Any:
        if DOCUMENT_KEY in self.scope:
            return self.scope[DOCUMENT_KEY]
        return await super().json()  # no guard in front (or not JSON to the guard)


class ParsedJSONRoute(APIRoute):
    """A route that validates its body model against the guard's parsed document."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def parsed(request: Request) -> Response:
            return await handle(ParsedJSONRequest(request.scope, request.receive))

        return parsed
