"""Which variant runs which batches: latencies measured per variant and batch size (in padded tokens:
texts x padded length) become size ranges, each run by its fastest variant, and the routes to load are
checked against the manifest and the files. One short text and one long text may be best on different
runtimes. Standard library and the manifest's sections (manifest.py) only, plus the OpenVINO check of
backends.py.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from bertdeploy.errors import BertdeployError, extra_hint
from bertdeploy.manifest import TOKENS, AutoRoute, AutoSection, ExportManifest
from bertdeploy.runtime.backends import ONNXRUNTIME, OPENVINO, check_backend, import_openvino, openvino_installed

logger = logging.getLogger(__name__)

# Latencies within this share of the fastest count as equal when routing: a shared machine's noise
# is about this size, and one model fewer saves memory and load time.
ROUTE_NOISE = 0.05
# A range goes to another runtime than the range below it only if that is this much faster there too:
# calls alternating between runtimes slow each other (the other runtime's threads still spin or wake).
# Measured on the demo, a stream of single reviews alternating by length: the long ones took 6.7 ms on
# OpenVINO against 3.7 ms when OpenVINO ran them all (benchmarks/runtime_switch.py).
SWITCH_MARGIN = 0.5


def plan_routes(p50_ms: dict[str, dict], candidates: list[str], runtimes: dict[str, str] | None = None,
                noise: float = ROUTE_NOISE, switch: float = SWITCH_MARGIN) -> list[tuple[int | None, str]]:
    """(largest batch in padded tokens, variant) ranges in increasing order, the last one open (None).

    p50_ms: variant -> {padded tokens: median ms}, measured side by side. At each size measured for every
    candidate, the variants within `noise` of the fastest are equally good; among them the one good at the
    most sizes wins, so few models are loaded. With `runtimes` (variant -> runtime), a size keeps the variant
    of the size below it unless one on another runtime is more than `switch` faster. A batch between two
    measured sizes goes to the nearer one (by ratio).
    """
    tables = {name: {int(size): float(ms) for size, ms in p50_ms[name].items()} for name in candidates
              if name in p50_ms}
    if not tables:
        return []
    sizes = sorted(set.intersection(*(set(t) for t in tables.values())))
    if not sizes:
        return []
    fastest = {s: min(t[s] for t in tables.values()) for s in sizes}
    good = {s: {name for name, t in tables.items() if t[s] <= (1 + noise) * fastest[s]} for s in sizes}
    relative = {name: sum(t[s] / fastest[s] for s in sizes) for name, t in tables.items()}
    pick: dict[int, str] = {}
    left = set(sizes)
    while left:
        best = min(tables, key=lambda name: (-sum(name in good[s] for s in left), relative[name], name))
        for s in [s for s in left if best in good[s]]:
            pick[s] = best
            left.discard(s)
    for below, size in zip(sizes, sizes[1:], strict=False):
        if runtimes and runtimes[pick[size]] != runtimes[pick[below]] and \
                tables[pick[below]][size] <= (1 + switch) * fastest[size]:
            pick[size] = pick[below]
    routes: list[tuple[int | None, str]] = []
    for i, size in enumerate(sizes):
        upper = None if i == len(sizes) - 1 else math.isqrt(size * sizes[i + 1])
        if routes and routes[-1][1] == pick[size]:
            routes[-1] = (upper, pick[size])
        else:
            routes.append((upper, pick[size]))
    return routes


def auto_section(p50_ms: dict[str, dict[int, float]], eligible: list[str], backends: dict[str, str],
                 measured_by: str, inputs: str, threads: int) -> AutoSection:
    """The manifest's `auto` section: what was measured (median ms per variant and batch size in padded tokens),
    and the size ranges it gives with every runtime installed (the predictor re-plans among the runtimes it
    finds)."""
    routes = plan_routes(p50_ms, eligible, backends)
    return AutoSection(
        measured_by=measured_by, threads=threads, inputs=inputs, unit=TOKENS,
        p50_ms={name: {str(size): round(ms, 4) for size, ms in sorted(table.items())}
                for name, table in p50_ms.items()},
        eligible=eligible,
        routes=[AutoRoute(max_tokens=upper, variant=name, backend=backends[name]) for upper, name in routes])


def describe_routes(routes: list[tuple[int | None, str]]) -> str:
    """'up to 90 tokens: A; 91+ tokens: B' for (largest batch in padded tokens, what runs) pairs; one pair:
    'A, any batch size'."""
    if len(routes) == 1:
        return f"{routes[0][1]}, any batch size"
    parts, low = [], 1
    for upper, what in routes:
        parts.append(f"{low}+ tokens: {what}" if upper is None else
                     f"up to {upper} tokens: {what}" if low == 1 else f"{low}-{upper} tokens: {what}")
        low = (upper or 0) + 1
    return "; ".join(parts)


def choose_routes(directory: Path, manifest: ExportManifest, variant: str | None = None, backend: str = "auto",
                  gpu: bool = False) -> list[tuple[int | None, str]]:
    """(largest batch in padded tokens or None, variant) pairs to load, checked against the manifest and the
    files."""
    check_backend(backend)
    variants = manifest.variants
    if variant is not None:
        _check_variant(directory, manifest, variant)
        if backend != "auto" and variants[variant].backend != backend:
            raise BertdeployError(f"variant {variant!r} runs on {variants[variant].backend}, not {backend}; "
                                  f"its {backend} variants are {', '.join(manifest.on(backend)) or 'none'}")
        plan = [(None, variant)]
    elif backend == ONNXRUNTIME or (backend == "auto" and gpu):  # the measured ranges are CPU timings
        plan = [(None, manifest.default_variant)]
    else:
        if backend == OPENVINO:
            import_openvino()  # names the missing extra
        runtimes = [backend] if backend == OPENVINO else [ONNXRUNTIME] + ([OPENVINO] if openvino_installed() else [])
        auto = manifest.auto
        eligible = None if auto is None else auto.eligible  # None: all
        candidates = [n for n in manifest.on(*runtimes) if eligible is None or n in eligible]
        if backend == "auto" and OPENVINO not in runtimes and manifest.on(OPENVINO):
            logger.info("%s has OpenVINO variants but openvino is not installed: choosing among ONNX Runtime's "
                        "(%s for all)", directory, extra_hint("openvino"))
        timings = {} if auto is None else auto.timings(manifest.max_length)
        plan = plan_routes(timings, candidates, {n: variants[n].backend for n in candidates})
        if not plan and backend == OPENVINO:
            fallback = manifest.on(OPENVINO)
            if not fallback:
                raise BertdeployError(f"{directory}: no OpenVINO variants; export with --openvino or "
                                      "--quantize int8-ov")
            plan = [(None, fallback[-1])]  # no timings: the last built (INT8 comes after fp32-ov)
        plan = plan or [(None, manifest.default_variant)]
    for _, name in plan:
        _check_variant(directory, manifest, name)
        if gpu and variants[name].backend == OPENVINO:
            raise BertdeployError(f"variant {name!r} runs on OpenVINO, which bertdeploy runs on the CPU only; "
                                  "choose an ONNX Runtime variant for the GPU")
    return plan


def _check_variant(directory: Path, manifest: ExportManifest, variant: str) -> None:
    if variant not in manifest.variants:
        refused = " (it was refused at export)" if variant in manifest.rejected else ""
        raise BertdeployError(f"{directory}: no variant {variant!r}{refused}; it has {', '.join(manifest.variants)}")
    path = directory / manifest.variants[variant].file
    if not path.is_file():
        raise BertdeployError(f"{path}: missing; the manifest lists it as variant {variant!r}. "
                              "Copy the whole artifact directory")
