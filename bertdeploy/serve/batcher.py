"""Dynamic batching: the texts of concurrent requests are run together, each request gets its own results.

Requests wait in a queue; one worker thread takes the oldest request and those behind it, up to
`max_batch_size` texts. Under concurrent load (its last batch held several requests) it waits at
most `max_wait_ms` after the oldest arrived for more to come; a lone request after a quiet spell
runs at once, so batching costs no latency at low load. It tokenizes the texts together and lets
the predictor run them in length-grouped batches under its token budget. The event loop only
appends to the queue and awaits a future, so model inference never blocks it. A full queue is
refused at once (`Overloaded`) rather than piling up latency.
No HTTP here: local.py puts this behind its routes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue has no room for the request's texts, or the batcher is shutting down."""


@dataclass
class _Request:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float


class Batcher:
    def __init__(self, predictor, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.predictor, self.max_batch_size, self.max_queue = predictor, max_batch_size, max_queue
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch  # (texts, padded length) of every model run, for metrics
        self.queued = 0  # texts waiting
        self._requests: deque[_Request] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._concurrent = False  # the last batch held several requests: more are likely on their way
        self._thread = threading.Thread(target=self._work, name="bertdeploy-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued request, then end the worker."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join()

    async def predict(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Scores for `texts`, as `Predictor.predict_proba` gives them, computed with other requests' texts."""
        if not texts:
            return np.empty((0, len(self.predictor.labels)), dtype=np.float32)
        loop = asyncio.get_running_loop()
        request = _Request(texts, pairs, loop.create_future(), loop, time.monotonic())
        with self._lock:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if self.queued + len(texts) > self.max_queue:
                raise Overloaded(f"the queue is full ({self.queued} texts waiting, at most {self.max_queue})")
            self._requests.append(request)
            self.queued += len(texts)
            self._lock.notify()
        return await request.future

    def _work(self) -> None:
        while (requests := self._next()) is not None:
            self._run(requests)

    def _next(self) -> list[_Request] | None:
        """The oldest requests, up to max_batch_size texts (at least one request), once the batch is full
        or the oldest has waited max_wait (no wait at all after a batch of one); None when stopping."""
        with self._lock:
            while not self._requests:
                if self._stopping:
                    return None
                self._lock.wait()
            deadline = self._requests[0].arrived + (self.max_wait if self._concurrent else 0)
            while self.queued < self.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            taken, count = [], 0
            while self._requests and (not taken or count + len(self._requests[0].texts) <= self.max_batch_size):
                taken.append(self._requests.popleft())
                count += len(taken[-1].texts)
            self.queued -= count
            self._concurrent = len(taken) > 1
            return taken

    def _run(self, requests: list[_Request]) -> None:
        """Run the requests' texts together; answer each request as soon as all its texts are scored."""
        texts = [t for r in requests for t in r.texts]
        pairs = [p for r in requests for p in r.pairs] if requests[0].pairs is not None else None
        owner = np.repeat(np.arange(len(requests)), [len(r.texts) for r in requests])
        first = np.cumsum([0] + [len(r.texts) for r in requests])
        scores = np.empty((len(texts), len(self.predictor.labels)), dtype=np.float32)
        left = [len(r.texts) for r in requests]
        try:
            encodings = self.predictor.encoder.tokenize(texts, pairs)
            for index, rows in self.predictor.iter_encoded(encodings, self.on_batch):
                scores[index] = rows
                for r in owner[index]:
                    left[r] -= 1
                    if left[r] == 0:
                        _hand_over(requests[r], scores[first[r]:first[r + 1]], None)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request, which reports it
            logger.exception("a batch of %d texts failed", len(texts))
            for r, request in enumerate(requests):
                if left[r]:
                    _hand_over(request, None, e)


def _hand_over(request: _Request, result: np.ndarray | None, error: Exception | None) -> None:
    try:
        request.loop.call_soon_threadsafe(_settle, request.future, result, error)
    except RuntimeError:  # its event loop has closed: nobody is waiting any more
        pass


def _settle(future: asyncio.Future, result: np.ndarray | None, error: Exception | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
