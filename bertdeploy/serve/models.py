"""The model versions one server serves, by name and version, and how a version comes and goes.

`Models` is the table the routes look a model up in (`using`: the newest version served unless the request names
one), with what every version shares: the server's lifecycle and metrics, and the run slots. A version is
switched in whole (`switch`) once it is loaded and warmed up, so new requests go to it at once, while the version
it replaces finishes the requests that hold it and is then stopped and freed (`retire`). One model (`single`)
or a repository's (loader.py, which loads and unloads them). Threads are a budget for the whole server: each
model run uses `--threads` threads (default: the CPUs this process may use), and runs of all models take turns
in the run slots, as many as `--threads` fits in those CPUs (one with the default), so that the models never
ask for more CPUs than the process has. Not here: the routes (app.py, kserve.py), reading ROOT (repository.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from bertdeploy.host import grown, usable_cpus
from bertdeploy.serve.batcher import Batcher
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.lifecycle import Lifecycle
from bertdeploy.serve.prometheus import MODEL, Metrics
from bertdeploy.serve.served import Served

logger = logging.getLogger(__name__)


# Every model version loads and warms up on this one thread, so that glibc keeps its memory in one allocation arena:
# loaded on one thread and warmed up on another, a model holds a second arena's worth more.
LOADING = ThreadPoolExecutor(1, thread_name_prefix="bertdeploy-load")


async def on_loading_thread(work, *args):
    """`work(*args)` on the loading thread, awaited."""
    return await asyncio.get_running_loop().run_in_executor(LOADING, functools.partial(work, *args))


class Refused(Exception):
    """A request the models cannot take: no such model or version, or a load or unload refused (loader.py);
    `status` is the HTTP answer's, the message says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def queue_texts(options: ServeOptions) -> int:
    """The texts a version's batcher holds waiting: `max_queue` on the local engine. A Ray Serve replica holds at
    most `max_ongoing_requests` requests (Serve queues the rest, up to `max_queued_requests`), so its batcher takes
    all their texts."""
    if options.takes("max_queue"):
        return options.max_queue
    return options.max_ongoing_requests * options.max_texts_per_request


def run_slots(threads: int | None) -> int:
    """Model runs at once across the server: as many runs of `threads` threads as the usable CPUs hold (at least 1)."""
    cpus = usable_cpus()
    return max(1, cpus // min(threads or cpus, cpus))


class Models:
    """The versions a server serves, `{name: {version: Served}}`, and what they share."""

    def __init__(self, options: ServeOptions, *, started: bool = True) -> None:
        self.options = options
        self.table: dict[str, dict[int, Served]] = {}
        self.metrics = Metrics()
        self.lifecycle = Lifecycle(self.all, started)
        self.slots = threading.BoundedSemaphore(run_slots(options.runtime.threads))
        self.loader = None  # a repository's loader (loader.py), which starts with the server
        self.running = False  # the app's lifespan has started: batchers of versions switched in start at once
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def single(cls, predictor, options: ServeOptions, *, warmed: bool = False,
               memory_bytes: int | None = None) -> Models:
        """One model, version 1, named `options.model_name`: `bertdeploy serve DIR` and each Ray Serve replica."""
        models = cls(options)
        models.switch(options.model_name, [models.make(options.model_name, 1, predictor, warmed=warmed,
                                                       memory_bytes=memory_bytes)])
        return models

    def make(self, name: str, version: int, predictor, *, warmed: bool, memory_bytes: int | None = None,
             fingerprint: tuple | None = None) -> Served:
        """A version ready to switch in: its batcher (not started) and its metrics' observer (its gauges show from
        the switch on)."""
        options = self.options
        batcher = Batcher(predictor, predictor.max_batch_size, options.max_wait_ms, queue_texts(options),
                          self.metrics.model(name, version, predictor), slots=self.slots)
        return Served(name, version, predictor, options, batcher, self.lifecycle, warmed=warmed,
                      memory_bytes=memory_bytes, fingerprint=fingerprint)

    def all(self) -> list[Served]:
        return [served for versions in self.table.values() for served in versions.values()]

    def describe(self) -> str:
        """The models and versions served, for messages: "'a' version 2, 'b' versions 1, 3"."""
        return "; ".join(f"{name!r} version{'s' if len(v) > 1 else ''} {', '.join(map(str, sorted(v)))}"
                         for name, v in sorted(self.table.items())) or "no model loaded"

    def find(self, name: str | None, version: int | None) -> Served:
        """The version a request asks for: the newest served unless it names one; the model may go unnamed where
        the server has one. Refused (404, or 422 for a missing name) otherwise."""
        if name is None:
            if len(self.table) != 1:
                raise Refused(422, f"this server has several models ({self.describe()}): name one with 'model'"
                                if self.table else "this server has no model loaded")
            name = next(iter(self.table))
        versions = self.table.get(name)
        if not versions:
            raise Refused(404, f"no model {name!r}; this server has {self.describe()}")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise Refused(404, f"model {name!r} has no version {version} loaded; it serves version"
                                 f"{'s' if len(versions) > 1 else ''} {', '.join(map(str, sorted(versions)))}")
        return versions[version]

    @contextlib.contextmanager
    def using(self, name: str | None, version: int | None, scope: dict):
        """The version a request asks for (`find`), held until the request is answered, and named in its scope for
        the metrics."""
        served = self.find(name, version)
        served.take()
        scope[MODEL] = (served.name, str(served.version))
        try:
            yield served
        finally:
            served.let_go()

    def switch(self, name: str, new: list[Served]) -> list[Served]:
        """Serve `new` as model `name`'s versions (none: unload it) from the next request on; the versions it had
        are returned, for `retire`."""
        for served in new:
            self.metrics.show(served)
            if self.running:
                served.batcher.start()
        old = list(self.table.pop(name, {}).values())
        if new:
            self.table[name] = {served.version: served for served in sorted(new, key=lambda s: s.version)}
        return old

    async def retire(self, old: list[Served]) -> None:
        """Let each version no longer served finish the requests that hold it, stop its batcher, and free it."""
        for served in old:
            await served.idle.wait()
            await asyncio.to_thread(served.batcher.stop)
            if served.version not in self.table.get(served.name, {}):
                self.metrics.forget(served.name, served.version)
        old = served = None  # noqa: F841 - the last references here
        await asyncio.to_thread(gc.collect)  # the sessions' memory goes as the last reference does

    def background(self, work) -> None:
        """Run the coroutine `work` until it ends or the server stops; should it fail, the server is no longer live."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("the server's background work failed; it is no longer live", exc_info=task.exception())
            self.lifecycle.failed = True

    async def start(self) -> None:
        """At startup: start the batchers, warm up what is not warmed up, and start the repository's loader."""
        self.running = True
        for served in self.all():
            served.batcher.start()
            if not served.warmed:
                self.background(self.warm_up(served))
        if self.loader is not None:
            self.background(self.loader.start())

    async def stop(self) -> None:
        """At shutdown: stop what runs in the background, then let every batcher finish its queue."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.to_thread(lambda: [served.batcher.stop() for served in self.all()])

    async def warm_up(self, served: Served) -> None:
        """Each of the version's models once at the longest length, so the first requests find memory allocated."""
        try:
            _, memory = await on_loading_thread(grown, served.predictor.warm_up, self.slots)
        except Exception:
            logger.exception("warm-up failed; the server is neither ready nor live")
            served.failed = True
            return
        if served.memory_bytes is not None and memory is not None:
            served.memory_bytes += memory
        served.warmed = True
        logger.info("ready")
