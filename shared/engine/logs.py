"""Per-job log streams (``{ns}:logs:<id>``): build lines and phase events.

Writers batch lines into one pipelined XADD per flush and cap what they keep: past
``max_bytes`` only a bounded tail is remembered, and an "omitted" marker records
what was dropped, so a build printing gigabytes costs bounded memory and Redis.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.redis.keys import Keys

MAX_LINE_CHARS = 4096
TAIL_LINES = 200


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stream entry: a ``line`` of output, a ``phase`` change or the ``end``."""

    id: str
    kind: str
    text: str
    status: str | None = None

    def render(self) -> str:
        """The entry as one human-readable line."""
        if self.kind == "line":
            return self.text
        return f"==> {self.status}"


class LogWriter:
    """Appends one job's output lines to its stream, capped and batched."""

    def __init__(
        self, redis: Redis, keys: Keys, job_id: str, *, max_bytes: int, max_entries: int
    ) -> None:
        self.redis = redis
        self.key = keys.logs(job_id)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.written_bytes = 0
        self.head_lines = 0
        # Room for the tail, the omitted-marker and buildq's own phase entries.
        self.head_max = max(1, max_entries - TAIL_LINES - 50)
        self.omitted_lines = 0
        self.omitted_bytes = 0
        self._pending: list[str] = []
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)

    def add(self, line: str) -> None:
        """Queue one line (trimmed to a sane width); call :meth:`flush` to send."""
        line = line.rstrip("\r\n")
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + " [line truncated]"
        size = len(line) + 1
        # The head is capped by bytes and by entries: the stream's MAXLEN must never
        # trim the start of the log (where the first error usually is).
        if self.written_bytes + size <= self.max_bytes and self.head_lines < self.head_max:
            self.written_bytes += size
            self.head_lines += 1
            self._pending.append(line)
            return
        if len(self._tail) == self._tail.maxlen:
            dropped = self._tail[0]
            self.omitted_lines += 1
            self.omitted_bytes += len(dropped) + 1
        self._tail.append(line)

    async def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        pipe = self.redis.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(
                self.key,
                {"kind": "line", "text": line},
                maxlen=self.max_entries,
                approximate=True,
            )
        await pipe.execute()

    async def close(self) -> None:
        """Flush, then write the omitted-marker and the remembered tail, if any."""
        if self._tail:
            if self.omitted_lines:
                self._pending.append(
                    f"[... {self.omitted_lines} lines ({self.omitted_bytes} bytes) omitted ...]"
                )
            self._pending.extend(self._tail)
            self._tail.clear()
        await self.flush()

    async def line(self, text: str) -> None:
        """Add and send one line at once (for buildq's own messages)."""
        self.add(text)
        await self.flush()


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (``"0"`` is the start)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def decode_entry(entry_id: Any, fields: dict[Any, Any]) -> LogEntry:
    f = {str(k): str(v) for k, v in fields.items()}
    return LogEntry(str(entry_id), f.get("kind", "line"), f.get("text", ""), f.get("status"))


async def read_log(
    redis: Redis, keys: Keys, job_id: str, *, after: str = "0", count: int = 10_000
) -> list[LogEntry]:
    """Entries after ``after`` (an entry id, or "0" for the beginning)."""
    start = "(" + after if after not in ("0", "0-0", "-") else "-"
    rows: Any = await redis.xrange(keys.logs(job_id), min=start, max="+", count=count)
    return [decode_entry(i, f) for i, f in rows]


async def follow_log(
    redis: Redis, keys: Keys, job_id: str, *, after: str = "0", block_ms: int = 5000
) -> list[LogEntry]:
    """Wait up to ``block_ms`` for entries after ``after``; use a blocking client."""
    reply: Any = await redis.xread({keys.logs(job_id): after or "0"}, count=1000, block=block_ms)
    if not reply:
        return []
    _, rows = reply[0]
    return [decode_entry(i, f) for i, f in rows]
