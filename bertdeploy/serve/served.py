"""What the routes of both protocols share, and how they get texts scored.

`Served` holds the predictor, the options, the batcher and the lifecycle; `Served.scores` sends a request's texts
through the batcher, within the request's deadline, drops them when the client goes away, and answers the batcher's
refusals as 429, 503 or 504. The routes themselves are app.py's (`/predict`, health) and kserve.py's (v2).
"""

from __future__ import annotations

import asyncio
import time

from bertdeploy.serve.batcher import Batcher, DeadlineExceeded, Overloaded, ShuttingDown
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.lifecycle import Lifecycle
from bertdeploy.serve.limits import ARRIVED


class Served:
    """What the routes share: the predictor, the options, the batcher and the lifecycle."""

    def __init__(self, predictor, options: ServeOptions, batcher: Batcher, lifecycle: Lifecycle) -> None:
        self.predictor, self.options, self.batcher, self.lifecycle = predictor, options, batcher, lifecycle
        self.name, self.labels = options.model_name, predictor.labels
        self.inputs = ["text", "text_pair"] if predictor.pairs else ["text"]
        self.timeout = options.request_timeout if options.takes("request_timeout") else None

    async def scores(self, texts: list[str], pairs: list[str] | None, request):
        """The batcher's scores for a request's texts, within its deadline, unless its client goes away."""
        from starlette.exceptions import HTTPException

        if self.lifecycle.failed:
            raise HTTPException(503, "the model failed to warm up; see the server's log")
        if not self.lifecycle.warmed:
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
