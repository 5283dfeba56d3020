"""Signal handling shared by the daemons: first signal drains, second exits now."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio
import structlog

log = structlog.get_logger("daemon")


async def run_until_signalled(main: Callable[[anyio.Event], Awaitable[None]], *, name: str) -> None:
    """Run ``main(stopping)``; SIGTERM/SIGINT set ``stopping``, a second one cancels."""
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stopping.is_set():
                        log.warning("daemon.force_stop", daemon=name, signal=signum.name)
                        tg.cancel_scope.cancel()
                        return
                    log.info("daemon.stopping", daemon=name, signal=signum.name)
                    stopping.set()

        tg.start_soon(watch_signals)
        await main(stopping)
        tg.cancel_scope.cancel()
