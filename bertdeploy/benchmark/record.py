"""What `bench --record` keeps: the size ranges `backend="auto"` routes by, written into the export's manifest.

Only the run's own artifact's variants count (not a compared one's), and only those within the accuracy bound
the export was held to. The measuring is measure.py's; this module writes the manifest and nothing else.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bertdeploy.benchmark.measure import within
from bertdeploy.benchmark.options import BenchOptions
from bertdeploy.benchmark.report import EngineReport, Timing
from bertdeploy.manifest import AutoSection, ExportManifest
from bertdeploy.runtime.backends import BACKENDS
from bertdeploy.runtime.routing import auto_section


def record_auto(options: BenchOptions, manifest: ExportManifest, reports: list[EngineReport],
                timings: list[Timing]) -> AutoSection:
    """Write the size ranges for `backend="auto"` into the manifest, from this run's p50 latencies per batch size
    in padded tokens (the geometric mean of the cells of one size), among the variants within the accuracy
    bound. Only the artifact's own variants count, not those of a compared one."""
    variants = [r for r in reports if r.backend in BACKENDS and r.artifact == str(options.artifact_dir)]
    timings = [t for t in timings if t.engine in {r.name for r in variants}]
    eligible = [r.name for r in variants if r.headline is None or within(r, reports[0], manifest.max_accuracy_drop)]
    p50 = size_p50([(t.engine, t.padded_tokens, t.p50_ms) for t in timings])
    inputs = ", ".join(dict.fromkeys(t.inputs for t in timings))
    auto = auto_section(p50, eligible, {r.name: r.backend for r in variants}, "bench", inputs, options.threads)
    replace(manifest, auto=auto).write(options.artifact_dir)
    return auto


def size_p50(cells: list[tuple[str, int, float]]) -> dict[str, dict[int, float]]:
    """(variant, batch size in padded tokens, p50 ms) of each cell timed -> per variant and size, the geometric mean
    of its cells of that size, sizes in order: what `auto` routes by."""
    grouped: dict[str, dict[int, list[float]]] = {}
    for name, size, ms in cells:
        grouped.setdefault(name, {}).setdefault(size, []).append(ms)
    return {name: {size: float(np.exp(np.mean(np.log(values)))) for size, values in sorted(sizes.items())}
            for name, sizes in grouped.items()}
