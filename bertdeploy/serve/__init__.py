"""`bertdeploy serve`: httpapi (the HTTP contract both engines share), local (uvicorn, with batcher and
kserve), ray_engine (Ray Serve); `run` picks the engine. Runtime wing: never imports torch, `bertdeploy.builder`
or `bertdeploy.benchmark`.
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
