"""`bertdeploy serve`: httpapi (the HTTP contract both engines share: options, request and answer), app (the
ASGI app both engines serve: routes, with kserve's v2 routes, prometheus' metrics and limits' checks, over the
batcher and the lifecycle), local (this process, uvicorn), ray_engine (Ray Serve, mounting the same app);
`run` picks the engine. Runtime wing: never imports torch, `bertdeploy.builder` or `bertdeploy.benchmark`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bertdeploy.defaults import RAY

if TYPE_CHECKING:
    from bertdeploy.serve.httpapi import ServeOptions


def run(options: ServeOptions) -> None:
    """Serve `options.artifact_dir` on `options.engine` until SIGTERM or Ctrl-C: uvicorn here, or Ray Serve."""
    if options.engine == RAY:
        from bertdeploy.runtime.raycluster import import_ray

        import_ray()  # names the extra when Ray is missing
        from bertdeploy.serve.ray_engine import serve_ray

        return serve_ray(options)
    from bertdeploy.serve.local import serve

    return serve(options)
