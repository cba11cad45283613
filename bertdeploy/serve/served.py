"""One model version the server serves, and how a route gets texts scored by it.

`Served` holds the version's predictor, its batcher and metrics, whether it is warmed up (or failed to), and
the requests using it: a route takes it with `Models.using` and lets go when answered, so a version being
replaced or unloaded finishes what it holds before it is stopped (`idle`). `Served.scores` sends a request's
texts through the batcher, within the request's deadline, drops them when the client goes away, and answers
the batcher's refusals as 429, 503 or 504. The routes themselves are app.py's (`/predict`, health) and
kserve.py's (v2); which versions are served, models.py's.
"""

from __future__ import annotations

import asyncio
import time

from bertdeploy.serve.batcher import Batcher, DeadlineExceeded, Overloaded, ShuttingDown
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.lifecycle import Lifecycle
from bertdeploy.serve.limits import ARRIVED


class Served:
    """A model version being served: its predictor, batcher and metrics; warmed up or not; requests using it."""

    def __init__(self, name: str, version: int, predictor, options: ServeOptions, batcher: Batcher,
                 lifecycle: Lifecycle, *, warmed: bool = False, memory_bytes: int | None = None,
                 fingerprint: tuple | None = None) -> None:
        self.name, self.version, self.predictor, self.options = name, version, predictor, options
        self.batcher, self.lifecycle = batcher, lifecycle  # the server's lifecycle: draining, closing
        self.labels = predictor.labels
        self.inputs = ["text", "text_pair"] if predictor.pairs else ["text"]
        self.timeout = options.request_timeout if options.takes("request_timeout") else None
        self.warmed, self.failed, self.memory_bytes = warmed, False, memory_bytes
        self.fingerprint = fingerprint  # its folder's when a repository's version loaded (repository.py)
        self.in_use = 0
        self.idle = asyncio.Event()  # set while no request uses it
        self.idle.set()

    @property
    def ready(self) -> bool:
        return self.warmed and not self.failed and self.batcher.alive

    @property
    def state(self) -> str:
        """Triton's model state, for the repository index."""
        return "READY" if self.ready and not self.lifecycle.draining else "LOADING" if not (
            self.warmed or self.failed) else "UNAVAILABLE"

    def entry(self) -> dict:
        """Its entry in the repository index: name, version, state and, where measured, memory."""
        memory = {} if self.memory_bytes is None else {"memory_bytes": self.memory_bytes}
        return {"name": self.name, "version": str(self.version), "state": self.state, **memory}

    def take(self) -> None:
        self.in_use += 1
        self.idle.clear()

    def let_go(self) -> None:
        self.in_use -= 1
        if self.in_use == 0:
            self.idle.set()

    async def scores(self, texts: list[str], pairs: list[str] | None, request):
        """The batcher's scores for a request's texts, within its deadline, unless its client goes away."""
        from starlette.exceptions import HTTPException

        if self.failed:
            raise HTTPException(503, "the model failed to warm up; see the server's log")
        if not self.warmed:
            raise HTTPException(503, "the model is still warming up")
        arrived = request.scope.get(ARRIVED, time.monotonic())
        closing = self.lifecycle.closing_since
        if closing is not None and arrived >= closing:
            raise HTTPException(503, "the server is shutting down; retry on another instance",
                                headers={"Retry-After": "1"})
        deadline = None if self.timeout is None else arrived + self.timeout
        work = asyncio.ensure_future(self.batcher.predict(texts, pairs, deadline))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if not task.done():
                    task.cancel()  # work: the batcher drops the texts it has not taken
        if not work.done():
            raise HTTPException(499, "the client closed the connection")  # nobody reads it: for the metrics
        try:
            return work.result()
        except ShuttingDown as e:
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": "1"}) from None
        except Overloaded as e:
            raise HTTPException(429, f"{e}; retry later", headers={"Retry-After": "1"}) from None
        except DeadlineExceeded:
            raise HTTPException(504, f"no answer within {self.timeout:g} s (the request timeout); retry later "
                                     "or send fewer texts") from None


async def _disconnected(receive) -> None:
    """Returns when the client goes away (after the body was read, receive only waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass
