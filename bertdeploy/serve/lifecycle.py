"""The life of one server (the local engine) or one Ray Serve replica: warm-up, liveness, readiness, drain.

`Lifecycle` holds the state the health routes report and the routes check: warmed up (or failed to),
draining (SIGTERM came, or Serve is stopping the replica), and when the listener began to close.
`lifespan` is the app's ASGI lifespan: it starts the batcher's thread, warms the predictor up unless
that was done already, and on the way out marks the app draining and lets the batcher finish its
queue. Not here: the routes (app.py), the uvicorn process and its SIGTERM handling (local.py), Serve's
replica (ray_engine.py).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

logger = logging.getLogger(__name__)


class Lifecycle:
    """Warmed up (or failed to), draining, closing: what liveness, readiness and Triton's model state say."""

    def __init__(self, batcher, warmed: bool = False) -> None:
        self.batcher = batcher
        self.warmed, self.failed, self.draining = warmed, False, False
        # when the drain delay ended and the listener began to close: requests arriving later are refused (503)
        self.closing_since: float | None = None

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining

    @property
    def live(self) -> bool:
        return not self.failed and self.batcher.alive

    @property
    def state(self) -> str:
        """Triton's model state, for the repository index."""
        return "READY" if self.ready else "UNAVAILABLE" if self.failed or self.draining else "LOADING"

    async def warm_up(self, predictor) -> None:
        """Each model once at the longest length, so the first requests find memory allocated."""
        try:
            await asyncio.to_thread(predictor.warm_up)
        except Exception:
            logger.exception("warm-up failed; the server is neither ready nor live")
            self.failed = True
            return
        self.warmed = True
        logger.info("ready")


def lifespan(lifecycle: Lifecycle, predictor):
    """The app's lifespan: the batcher runs and the predictor warms up (in the background, so liveness answers
    meanwhile) from startup; at shutdown the app is draining and the batcher finishes its queue."""

    @asynccontextmanager
    async def run(app):
        lifecycle.batcher.start()
        warming = None if lifecycle.warmed else asyncio.create_task(lifecycle.warm_up(predictor))
        yield
        lifecycle.draining = True
        if warming is not None:
            warming.cancel()
        await asyncio.to_thread(lifecycle.batcher.stop)

    return run
