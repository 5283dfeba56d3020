"""One connection that carries the non-blocking takes of a consumer's slots, several
per write.

A slot ending a job while the queue has work sends one ``take.lua`` call (end this
job, take and start the next). Sent on each slot's own connection, every job costs
one write and one wake-up per slot; here, the calls of every slot that ends a job
while another batch is on the wire go out together in the next write, and their
replies are read in one pass. Nothing waits to fill a batch: a lone call goes out at
once, and a batch is simply whatever queued up during the previous round trip.

Each call is still its own ``take.lua`` run, atomic on its own, in the order the
slots asked: FIFO and the active list's guarantees are the script's and do not
change. A reply lost with the connection is the caller's to handle exactly as on its
own connection (``end_run`` retries the end alone; a job taken by a lost call waits
in the active list for the orphan check).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.redis.client import send_together


class _Call:
    """One command waiting for its batch, then for its reply."""

    __slots__ = ("command", "done", "error", "reply")

    def __init__(self, command: Sequence[Any]) -> None:
        self.command = command
        self.done = anyio.Event()
        self.reply: Any = None
        self.error: BaseException | None = None


class Batcher:
    """Sends the commands handed to :meth:`call` on ``redis``, batched per round trip.

    ``redis`` is this batcher's alone (a single-connection client); :meth:`run` must
    be running, in the task group of the calls' owner, for a call to be sent.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queued: list[_Call] = []
        self._wake = anyio.Event()
        self._stopped = False

    async def call(self, *command: Any) -> Any:
        """Send ``command`` in the next batch; its reply, or its error reply as an
        exception in its place (as :func:`shared.redis.client.send_together`).
        A lost connection raises its ``RedisError``."""
        if self._stopped:
            raise RedisConnectionError("the batcher has stopped")
        pending = _Call(command)
        self._queued.append(pending)
        self._wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.reply

    async def run(self) -> None:
        """Send whatever is queued, one batch per round trip, until cancelled; then
        fail every call still waiting and close the connection."""
        batch: list[_Call] = []
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch, self._queued = self._queued, []
                try:
                    replies = await send_together(self.redis, *(c.command for c in batch))
                except Exception as exc:  # the connection failed: every caller sees it
                    for pending in batch:
                        pending.error = exc
                        pending.done.set()
                else:
                    for pending, reply in zip(batch, replies, strict=True):
                        pending.reply = reply
                        pending.done.set()
                batch = []
        finally:
            self._stopped = True
            for pending in (*batch, *self._queued):
                pending.error = RedisConnectionError("the batcher stopped before the reply")
                pending.done.set()
            self._queued = []
            with anyio.CancelScope(shield=True):
                await self.redis.aclose()
