"""`bertdeploy serve`, the local engine: one process serving an exported classifier, or a model repository's
(loader.py), with uvicorn.

`serve` loads the predictor (or opens the repository, whose models load in the background), builds the app
(app.py: routes, dynamic batching, KServe v2, metrics, limits) and runs it on a socket it listens on itself,
so a port in use is a one-line error and port 0 takes a free port, named in the log. `draining_server` is
uvicorn's server stopping as a load balancer expects: on SIGTERM readiness fails at once, requests are still
served for `drain_delay` seconds, then uvicorn stops accepting and gives the requests in flight up to
`drain_timeout` seconds, then the batchers drain their queues (the app's lifespan, lifecycle.py). Not here:
the routes and the limits (app.py, kserve.py, limits.py), Ray Serve (ray_engine.py), which mounts the same app.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import time

from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.host import grown
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve.app import create_app
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.loader import open_repository
from bertdeploy.serve.models import LOADING, Models

logger = logging.getLogger(__name__)


def serve(options: ServeOptions) -> None:
    """Load the model, then serve until SIGTERM or Ctrl-C. Port 0 takes a free port, named in the log."""
    check_options([(options.engine == "local", "serve.local.serve runs the local engine; for engine='ray' call "
                                               "bertdeploy.serve.ray_engine.serve_ray")])
    key = options.api_key()
    if options.model_repository is not None:
        models = open_repository(options)
        what = f"the model repository {options.model_repository} ({models.loader.plan})"
    else:
        load = functools.partial(Predictor.load, options.artifact_dir, options=options.runtime)
        predictor, memory = LOADING.submit(grown, load).result()  # on the thread that warms it up
        models = Models.single(predictor, options, memory_bytes=memory)
        what = f"{options.artifact_dir} ({predictor.describe()}) as model {options.model_name!r}"
    app = create_app(models, key)
    listening = _listen(options.host, options.port)
    host, port = listening.getsockname()[:2]
    logger.info("serving %s on http://%s:%d", what, f"[{host}]" if ":" in host else host, port)
    server = draining_server(app, options)
    with listening:
        server.run(sockets=[listening])
    if not server.started:
        raise BertdeployError("the server did not start; see the messages above")


def draining_server(app, options: ServeOptions):
    """uvicorn's Server for an app of `create_app`, which stops as a load balancer expects.

    On SIGTERM readiness fails at once while requests are still served; `options.drain_delay` seconds later
    (at once on SIGINT, or on a second SIGTERM) uvicorn closes the listener and idle connections and waits
    up to `options.drain_timeout` seconds for the requests in flight, then the app's batcher drains; a
    request that arrives on an open connection from then on gets 503."""
    import uvicorn

    lifecycle, delay = app.state.models.lifecycle, options.drain_delay

    class Draining(uvicorn.Server):
        closing_at: float | None = None  # time.monotonic() when the delay after SIGTERM ends
        pending: int | None = None  # that SIGTERM, handed to uvicorn then

        def handle_exit(self, sig, frame) -> None:
            lifecycle.draining = True
            if sig == signal.SIGTERM and self.closing_at is None and delay > 0 and not self.should_exit:
                logger.info("SIGTERM: not ready; serving %g s more, then waiting up to %g s for the requests in "
                            "flight", delay, options.drain_timeout)
                self.closing_at, self.pending = time.monotonic() + delay, sig
                return
            lifecycle.closing_since = lifecycle.closing_since or time.monotonic()
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.closing_at is not None and time.monotonic() >= self.closing_at and not self.should_exit:
                lifecycle.closing_since = time.monotonic()
                super().handle_exit(self.pending, None)  # as if the signal came now: uvicorn re-raises it on exit
            return await super().on_tick(counter)

    return Draining(uvicorn.Config(app, log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=options.drain_timeout))


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (IPv6 when the host has a colon), for uvicorn to serve on."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
        listening.listen(2048)  # connections queue from here on, before uvicorn's loop accepts them
    except OSError as e:
        listening.close()
        raise BertdeployError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or "
                              "--host") from None
    return listening
