"""The limits checked before any route runs, as one ASGI middleware: the API key, the body's size and the
time it may take to arrive, the cap on requests answered at once.

Every route but the health checks needs the key (compared in constant time); the body is read here, at
most `max_body_bytes` of it (chunked bodies too), and handed on whole; health checks and /metrics are
not counted against `max_concurrent_requests`, so probes answer under load. Each refusal is JSON
`{"error": ...}` in httpapi's words. The request's arrival is stamped in its scope (`ARRIVED`) for its
deadline. A limit that the engine does not take (`ServeOptions.takes`: the body timeout and the
concurrency cap are the local engine's; Ray Serve has its own) is not applied. Not here: the queue's
limit and the request's deadline, which the batcher enforces (batcher.py, app.py).
"""

from __future__ import annotations

import asyncio
import json
import time

from bertdeploy.serve.httpapi import HEALTH, KEY_CHALLENGE, KEY_REFUSED, ServeOptions, body_too_large, key_matches

ARRIVED = "bertdeploy.arrived"  # the scope's key for when a request came (time.monotonic())
UNCAPPED = (*HEALTH, "/metrics")  # routes max_concurrent_requests does not count: probes answer under load


class Limits:
    """The API key, the concurrency cap, the body's size and arrival time, checked before any route runs."""

    def __init__(self, app, options: ServeOptions, api_key: str | None) -> None:
        self.app, self.options = app, options
        self.api_key = api_key.encode() if api_key else None
        self.body_timeout = options.body_timeout if options.takes("body_timeout") else None
        self.cap = options.max_concurrent_requests if options.takes("max_concurrent_requests") else None
        self.active = 0  # requests counted against the cap

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = time.monotonic()
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in HEALTH:
            if not key_matches(headers.get(b"authorization", b""), self.api_key):
                return await send_error(send, 401, KEY_REFUSED, [tuple(x.encode() for x in KEY_CHALLENGE)])
        if self.cap is None or scope["path"] in UNCAPPED:
            return await self._read(scope, receive, send, headers)
        if self.active >= self.cap:
            return await send_error(send, 503, f"over {self.cap} requests at once (--max-concurrent-requests); "
                                               "retry later", [(b"retry-after", b"1")])
        self.active += 1
        try:
            await self._read(scope, receive, send, headers)
        finally:
            self.active -= 1

    async def _read(self, scope, receive, send, headers: dict) -> None:
        limit = self.options.max_body_bytes
        too_large = body_too_large(limit)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            return await send_error(send, 413, too_large)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):  # None: no limit
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit:
                        return await send_error(send, 413, too_large)
                    if not message.get("more_body"):
                        break
        except TimeoutError:  # the connection closes after the answer: the rest of the body never comes
            return await send_error(send, 408, f"the body did not arrive within {self.body_timeout:g} s "
                                               "(--body-timeout)", [(b"connection", b"close")])
        body, delivered = b"".join(chunks), [False]

        async def replay():
            if delivered[0]:
                return await receive()  # after the body: wait for the client to go away
            delivered[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def send_error(send, status: int, message: str, headers: list | None = None) -> None:
    """A refusal as JSON `{"error": message}`, sent straight on the ASGI channel (no route has run)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
