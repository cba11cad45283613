"""`bertdeploy predict`: rows (the file contract both engines share), local (this process), ray_engine (Ray
Data); `run` picks the engine. Runtime wing: never imports torch, `bertdeploy.builder` or `bertdeploy.benchmark`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, TextIO

from bertdeploy.defaults import RAY

if TYPE_CHECKING:
    from bertdeploy.predict.rows import PredictFileOptions, PredictFileResult


def run(options: PredictFileOptions, stdin: BinaryIO | None = None, stdout: TextIO | None = None
        ) -> PredictFileResult:
    """Predict every row of `options.input` on `options.engine`: this process, or Ray Data actors."""
    if options.engine == RAY:
        from bertdeploy.predict.ray_engine import predict_file_ray

        return predict_file_ray(options, stdout)
    from bertdeploy.predict.local import predict_file

    return predict_file(options, stdin, stdout)
