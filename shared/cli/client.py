"""A small client of the uploader API, for the CLI and the demo."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, connect_sse

from shared.core.errors import PermanentError

FOLLOW_RETRIES = 20
FOLLOW_BACKOFF_S = 0.1  # doubled per reconnect, up to the cap
FOLLOW_BACKOFF_CAP_S = 2.0
ENDED = frozenset({"live", "failed", "cancelled", "superseded"})


class ApiError(PermanentError):
    """The API refused a request or could not be reached."""


class Client:
    """Calls the uploader's HTTP API at ``base_url``."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30) -> None:
        # The CLI's token comes from BUILDQ_API_TOKEN (one of the server's API tokens).
        token = token if token is not None else os.environ.get("BUILDQ_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if method not in ("GET", "HEAD") and kwargs.get("json") is None and "content" not in kwargs:
            kwargs["json"] = {}  # the API takes state changes as JSON only (no CSRF)
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise ApiError(f"{response.status_code}: {message}")
        return response.json()

    def submit(self, repo_url: str, **fields: Any) -> dict[str, Any]:
        body = {"repo_url": repo_url, **{k: v for k, v in fields.items() if v is not None}}
        result: dict[str, Any] = self._call("POST", "/deployments", json=body)
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/deployments/{job_id}")
        return result

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/deployments", params={"limit": limit})
        return result

    def queue(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/queue")
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/deployments/{job_id}/cancel")
        return result

    def retry(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/deployments/{job_id}/retry")
        return result

    def fleet(self, **changes: Any) -> dict[str, Any]:
        """The fleet switches; with ``changes``, PUT them first."""
        method = "PUT" if changes else "GET"
        result: dict[str, Any] = self._call(method, "/fleet", json=changes or None)
        return result

    def follow(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Log entries as the job runs (server-sent events), until it ends.

        A stream that drops (network, or the server shedding a slow follower) is
        resumed from the last event id, with backoff; a stream that ends without the
        ``end`` event ends the follow only once the job itself has ended.
        """
        last_id: str | None = None
        for attempt in range(FOLLOW_RETRIES):
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                with connect_sse(
                    self.http, "GET", f"/deployments/{job_id}/logs", headers=headers, timeout=None
                ) as source:
                    if source.response.status_code >= 400:
                        raise ApiError(f"{source.response.status_code}: cannot follow logs")
                    for event in source.iter_sse():
                        if not event.data:
                            continue
                        last_id = event.id or last_id
                        entry: dict[str, Any] = json.loads(event.data)
                        yield entry
                        if entry.get("kind") == "end":
                            return
                if self.job(job_id).get("status") in ENDED:
                    return
            except (httpx.HTTPError, SSEError):
                pass
            time.sleep(min(FOLLOW_BACKOFF_CAP_S, FOLLOW_BACKOFF_S * 2**attempt))
        raise ApiError("lost the log stream too many times")

    # -- locks and staging claims (uploader/team_api.py) ------------------------------

    def locks(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/locks")
        return result

    # The owner of a lock or claim is the caller's identity (its token, or the local
    # user): ``owner`` is only sent when given, and the API refuses someone else's name.

    def lock(
        self, service: str, *, owner: str | None = None, ttl_s: int | None = None, reason: str = ""
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if owner is not None:
            body["owner"] = owner
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        result: dict[str, Any] = self._call("PUT", f"/locks/{quote(service, safe='')}", json=body)
        return result

    def unlock(
        self, service: str, *, owner: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        params = _release_params(owner, force)
        path = f"/locks/{quote(service, safe='')}"
        result: dict[str, Any] = self._call("DELETE", path, params=params)
        return result

    def claims(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/staging")
        return result

    def claim(
        self,
        env: str,
        *,
        owner: str | None = None,
        branch: str | None = None,
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        body = {k: v for k, v in {"owner": owner, "branch": branch, "ttl_s": ttl_s}.items() if v}
        result: dict[str, Any] = self._call("PUT", f"/staging/{quote(env, safe='')}", json=body)
        return result

    def release_claim(
        self, env: str, *, owner: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        params = _release_params(owner, force)
        path = f"/staging/{quote(env, safe='')}"
        result: dict[str, Any] = self._call("DELETE", path, params=params)
        return result


def _release_params(owner: str | None, force: bool) -> dict[str, str]:
    params = {"force": "true" if force else "false"}
    if owner is not None:
        params["owner"] = owner
    return params
