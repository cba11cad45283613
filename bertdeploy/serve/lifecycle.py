"""The life of one server (the local engine) or one Ray Serve replica: start, liveness, readiness, drain.

`Lifecycle` holds the state the health routes report and the routes check, over the model versions served
(models.py): started (the models it starts with are loaded: at once for one model, after the repository's
first load otherwise), failed (nothing it was to serve could be loaded), draining (SIGTERM came, or Serve is
stopping the replica), and when the listener began to close. Live while nothing failed and every version's
batching thread runs; ready once started, every version is warmed up, and until draining. `lifespan` is the
app's ASGI lifespan: it runs what the models do at startup (batchers, warm-up, the repository's first load and
its polling) and, on the way out, marks the app draining and lets every batcher finish its queue. Not here:
the routes (app.py), the uvicorn process and its SIGTERM handling (local.py), Serve's replica (ray_engine.py).
"""

from __future__ import annotations

from contextlib import asynccontextmanager


class Lifecycle:
    """Started, failed, draining, closing: what liveness and readiness say, over the versions `served()` gives."""

    def __init__(self, served, started: bool = True) -> None:
        self.served = served  # () -> the Served versions of the server
        self.started, self.failed, self.draining = started, False, False
        # when the drain delay ended and the listener began to close: requests arriving later are refused (503)
        self.closing_since: float | None = None

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and all(s.ready for s in self.served())

    @property
    def live(self) -> bool:
        return not self.failed and all(not s.failed and s.batcher.alive for s in self.served())


def lifespan(lifecycle: Lifecycle, start, stop):
    """The app's lifespan: `await start()` at startup (it starts what runs in the background: batchers, warm-up,
    loads, so liveness answers meanwhile); at shutdown the app is draining, then `await stop()`."""

    @asynccontextmanager
    async def run(app):
        await start()
        yield
        lifecycle.draining = True
        await stop()

    return run
