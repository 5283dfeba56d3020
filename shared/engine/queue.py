"""Taking jobs off a stage's queue into a worker's active list, and what the queues
hold right now.

Ids are pushed (LPUSH) onto a stage's queue by ``submit.lua`` and the transition that
hands a job on; a worker takes the oldest (the right end). Every take is one round
trip that also starts the job (``take.lua``, on the slot's own connection):

- a slot with nothing in hand sends BLMOVE with ``take.lua`` right behind it in one
  write: BLMOVE moves the oldest id into the active list (at once if the queue has
  work, else the moment one is pushed) and Redis runs ``take.lua``, which starts it,
  before anything else of that connection; the handler needs no second round trip;
- a slot ending a job ends it and takes the next in one ``take.lua`` call, which comes
  back empty-handed when the queue is empty (the slot then blocks as above). Given a
  :class:`~shared.engine.batching.Batcher`, that call shares a write with the calls
  of the worker's other slots that end a job at the same time.

A taken id is never only in a client's memory: it is in the active list from the
moment it leaves the queue, and leaves that list only when the job's final transition
acks it (LREM in the same Lua call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from shared.engine.batching import Batcher
from shared.engine.jobs import JobStore, Move, decode_transition
from shared.engine.replies import TAKE, Claimed, Transition
from shared.engine.stages import Stage
from shared.redis.client import send_together
from shared.redis.keys import Keys


@dataclass(frozen=True, slots=True)
class Taken:
    """What one take did."""

    ended: Transition | None
    """The reply of the transition that ended the slot's last job, if it asked."""
    claimed: Claimed | None
    """The job taken and started (or found ended: ``started.changed`` is False)."""
    dropped: tuple[tuple[str, str], ...] = ()
    """Ended or vanished jobs (id, status or '') removed from the active list."""


class Queue:
    """One stage's queue as one slot of a worker takes from it."""

    def __init__(
        self,
        store: JobStore,
        stage: Stage,
        active: str,
        *,
        fields: Mapping[str, str] | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        """``store`` is on the slot's own connection; ``fields`` are set on each start;
        ``batcher`` (shared by the worker's slots) carries :meth:`take`'s calls."""
        self.store = store
        self.stage = stage
        self.key = stage.queue(store.keys)
        self.active = active
        self.fields = dict(fields or {})
        self.batcher = batcher

    def _call(self, mode: str, end: Move | None) -> tuple[list[str], list[str | int]]:
        call = self.store.take_call(
            self.key,
            self.active,
            self.stage.started_status,
            mode=mode,
            waiting=self.stage.resume_status,
            end=end,
            incr={self.stage.attempts_field: 1},
            fields=self.fields,
        )
        return call.keys, call.args

    async def take(self, end: Move | None = None) -> Taken:
        """End a job first (``end``, acked from the active list) if given, then take the
        oldest id and start it if the queue has one: one call, never blocking."""
        keys, args = self._call("q", end)
        script = self.store.scripts.take
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if self.batcher is not None:
            reply = await self.batcher.call(*command)
        else:
            (reply,) = await send_together(self.store.redis, command)
        if isinstance(reply, NoScriptError):  # the server lost its scripts: load it
            reply = await script(keys=keys, args=args)
        elif isinstance(reply, ResponseError):
            raise reply
        return _decode(reply)

    async def wait(self, timeout_s: float) -> Taken:
        """Block up to ``timeout_s`` for the oldest id; it is started before the reply."""
        keys, args = self._call("a", None)
        script = self.store.scripts.take
        moved, started = await send_together(
            self.store.redis,
            ("BLMOVE", self.key, self.active, "RIGHT", "LEFT", timeout_s),
            ("EVALSHA", script.sha, len(keys), *keys, *args),
        )
        if isinstance(moved, ResponseError):
            raise moved
        if isinstance(started, NoScriptError):
            # The server lost its scripts (a restart): the id BLMOVE moved waits in the
            # active list, and this call (which loads the script) starts it.
            started = await script(keys=keys, args=args)
        elif isinstance(started, ResponseError):
            raise started
        return _decode(started)


def _decode(reply: Any) -> Taken:
    ended, job_id, started, dropped = reply
    flat = [str(x) for x in dropped]
    return Taken(
        ended=decode_transition(ended, TAKE) if ended else None,
        claimed=Claimed(str(job_id), decode_transition(started, TAKE)) if job_id else None,
        dropped=tuple(zip(flat[::2], flat[1::2], strict=True)),
    )


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many jobs wait where, and whether the fleet is paused: one read."""

    build: int
    ingest: int
    delayed: int
    dead: int
    paused: bool


async def read_counts(redis: Redis, keys: Keys) -> QueueCounts:
    """Every queue's length in one round trip (the API, /metrics and chat show it)."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.queue)
    pipe.llen(keys.ingest)
    pipe.zcard(keys.delayed)
    pipe.llen(keys.dead)
    pipe.hget(keys.fleet, "paused")
    build, ingest, delayed, dead, paused = await pipe.execute()
    return QueueCounts(int(build), int(ingest), int(delayed), int(dead), paused == "1")


async def pending(redis: Redis, key: str, limit: int = 100) -> list[str]:
    """Up to ``limit`` waiting ids of queue ``key``, the next to be taken first."""
    ids: Any = await redis.lrange(key, -limit, -1)
    return [str(i) for i in reversed(ids)]
