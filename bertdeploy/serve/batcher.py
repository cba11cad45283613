"""Dynamic batching: the texts of concurrent requests are run together, each request gets its own results.

Requests wait in a queue; one worker thread takes the oldest request and those behind it, up to
`max_batch_size` texts. Under concurrent load (its last batch held several requests) it waits at
most `max_wait_ms` after the oldest arrived for more to come; a lone request after a quiet spell
runs at once, so batching costs no latency at low load. It tokenizes the texts together and lets
the predictor run them in length-grouped batches under its token budget. The event loop only
appends to the queue and awaits a future, so model inference never blocks it. A full queue is
refused at once (`Overloaded`) rather than piling up latency, and so is any request once the
batcher is stopping (`ShuttingDown`).

A request may carry a deadline: past it, it gets `DeadlineExceeded` and its texts leave the queue;
a request whose caller gives up (its task is cancelled: the client went away) leaves the queue too.
Texts already taken into a batch are computed anyway. The worker skips expired and cancelled
requests when it takes a batch, so it never computes texts nobody waits for. Each model run holds one of the
server's run slots, where it has them (models.py), so that the models of one server take turns. What it measures
(time in the queue, tokenization, each model run, texts dropped and why) goes to an `Observer`.
No HTTP here: app.py puts this behind its routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DEADLINE, DISCONNECTED = "deadline", "disconnected"  # why texts were dropped unscored


class Overloaded(Exception):
    """The queue has no room for the request's texts."""


class ShuttingDown(Overloaded):
    """The batcher is stopping (or its thread has died) and takes no more requests."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before all its texts were scored."""


class Observer:
    """What the batcher measures, in seconds; these do nothing, prometheus.py's metrics record them.

    Called from the worker thread, except `dropped`, which the event loop may call too."""

    def queued(self, seconds: float) -> None:
        """One request's time from arrival to being taken into a batch."""

    def tokenized(self, texts: int, seconds: float) -> None:
        """One batch's tokenization."""

    def ran(self, variant: str, texts: int, length: int, seconds: float) -> None:
        """One model run: the variant that ran it, its texts and padded length."""

    def dropped(self, reason: str, texts: int) -> None:
        """Texts left unscored: `DEADLINE` or `DISCONNECTED`."""


@dataclass(eq=False)  # compared by identity: a request is removed from the queue by itself
class _Request:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float
    deadline: float | None  # time.monotonic()'s clock


class Batcher:
    def __init__(self, predictor, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 observer: Observer | None = None, *, slots: threading.Semaphore | None = None) -> None:
        self.predictor, self.max_batch_size, self.max_queue = predictor, max_batch_size, max_queue
        self.max_wait = max_wait_ms / 1000
        self.observer = observer or Observer()
        self.slots = slots  # held for each model run: the server's models take turns (models.py)
        self.queued = 0  # texts waiting
        self._requests: deque[_Request] = deque()
        self._lock = threading.Condition()
        self._stopping = self._died = False
        self._concurrent = False  # the last batch held several requests: more are likely on their way
        self._thread = threading.Thread(target=self._work, name="bertdeploy-batcher", daemon=True)

    def start(self) -> None:
        """Start the worker thread (once: later calls do nothing)."""
        if self._thread.ident is None:
            self._thread.start()

    def stop(self) -> None:
        """Finish every queued request, then end the worker."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread.ident is not None:  # started
            self._thread.join()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (started, not stopped, not died)."""
        return self._thread.is_alive() and not self._died

    async def predict(self, texts: list[str], pairs: list[str] | None = None,
                      deadline: float | None = None) -> np.ndarray:
        """Scores for `texts`, as `Predictor.predict_proba` gives them, computed with other requests' texts.

        `deadline` (on `time.monotonic()`'s clock): past it, `DeadlineExceeded`, and texts not yet taken into a
        batch are dropped. Cancelling the call drops them too."""
        if not texts:
            return np.empty((0, len(self.predictor.labels)), dtype=np.float32)
        loop = asyncio.get_running_loop()
        request = _Request(texts, pairs, loop.create_future(), loop, time.monotonic(), deadline)
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if not self.alive:
                raise ShuttingDown("the batching thread is not running; see the server's log")
            if self.queued + len(texts) > self.max_queue:
                raise Overloaded(f"the queue is full ({self.queued} texts waiting, at most {self.max_queue})")
            self._requests.append(request)
            self.queued += len(texts)
            self._lock.notify()
        try:
            if deadline is None:
                return await request.future
            return await asyncio.wait_for(request.future, deadline - request.arrived)
        except TimeoutError:
            self._drop(request, DEADLINE)
            raise DeadlineExceeded("the deadline passed") from None
        except asyncio.CancelledError:
            self._drop(request, DISCONNECTED)
            raise

    def _drop(self, request: _Request, reason: str) -> None:
        """Take `request` out of the queue if the worker has not taken it yet, and count its texts."""
        with self._lock:
            if request not in self._requests:
                return
            self._requests.remove(request)
            self.queued -= len(request.texts)
        self.observer.dropped(reason, len(request.texts))

    def _work(self) -> None:
        requests: list[_Request] = []
        try:
            while (requests := self._next()) is not None:
                self._run(requests)
        except BaseException:  # not an error of one batch (_run hands those over): the thread cannot go on
            logger.critical("the batching thread died; the server is no longer live", exc_info=True)
            with self._lock:
                self._died = True
                waiting, self.queued = [*(requests or []), *self._requests], 0
                self._requests.clear()
            for request in waiting:  # those already answered keep their answer
                _hand_over(request, None, ShuttingDown("the batching thread died; see the server's log"))

    def _next(self) -> list[_Request] | None:
        """The oldest requests, up to max_batch_size texts (at least one request), once the batch is full
        or the oldest has waited max_wait (no wait at all after a batch of one); None when stopping.
        Requests past their deadline or cancelled are dropped, not taken."""
        with self._lock:
            while True:
                while not self._requests:
                    if self._stopping:
                        return None
                    self._lock.wait()
                deadline = self._requests[0].arrived + (self.max_wait if self._concurrent else 0)
                while self._requests and self.queued < self.max_batch_size and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                taken, count, now = [], 0, time.monotonic()
                while self._requests and (not taken or count + len(self._requests[0].texts) <= self.max_batch_size):
                    request = self._requests.popleft()
                    self.queued -= len(request.texts)
                    if request.future.cancelled() or (request.deadline is not None and request.deadline <= now):
                        self._skip(request)
                        continue
                    taken.append(request)
                    count += len(request.texts)
                    self.observer.queued(now - request.arrived)
                if taken:
                    self._concurrent = len(taken) > 1
                    return taken

    def _skip(self, request: _Request) -> None:
        """Drop a request the worker found cancelled or expired in the queue."""
        expired = not request.future.cancelled()
        if expired:
            _hand_over(request, None, DeadlineExceeded("the deadline passed"))
        self.observer.dropped(DEADLINE if expired else DISCONNECTED, len(request.texts))

    def _run(self, requests: list[_Request]) -> None:
        """Run the requests' texts together; answer each request as soon as all its texts are scored."""
        texts = [t for r in requests for t in r.texts]
        pairs = [p for r in requests for p in r.pairs] if requests[0].pairs is not None else None
        owner = np.repeat(np.arange(len(requests)), [len(r.texts) for r in requests])
        first = np.cumsum([0] + [len(r.texts) for r in requests])
        scores = np.empty((len(texts), len(self.predictor.labels)), dtype=np.float32)
        left = [len(r.texts) for r in requests]
        run: list = []  # (texts, padded length, start) of the model run under way

        def started(count: int, length: int) -> None:  # iter_encoded calls it just before each model run
            run[:] = [count, length, time.perf_counter()]

        try:
            start = time.perf_counter()
            encodings = self.predictor.encoder.tokenize(texts, pairs)
            self.observer.tokenized(len(texts), time.perf_counter() - start)
            runs = iter(self.predictor.iter_encoded(encodings, started))
            while True:
                with self.slots or contextlib.nullcontext():
                    done = next(runs, None)  # the next model run
                if done is None:
                    break
                index, rows = done
                count, length, start = run
                self.observer.ran(self.predictor.route(count * length).variant, count, length,
                                  time.perf_counter() - start)
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
    if future.done():  # the client went away or the deadline passed, and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
