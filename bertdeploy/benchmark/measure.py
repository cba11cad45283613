"""The measuring loop of `bench`: each engine probed in a fresh process, loaded, scored and timed, call by call.

Engines take turns call by call, in an order shuffled every round (timing.py, the project's one harness);
warm-up calls are not timed; every engine gets the same thread count. Load time and peak RSS come from a fresh
process per engine (probe.py), so one engine's memory never counts against another's. On CUDA, inputs are
placed on the device before the clock starts and every call is synchronised. Which engines run, on which inputs,
is decided before (lineup.py, cases.py); this module reads no manifest.
"""

from __future__ import annotations

import functools
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from bertdeploy.benchmark.cases import Case, Inputs
from bertdeploy.benchmark.engines import Engine
from bertdeploy.benchmark.options import BenchOptions
from bertdeploy.benchmark.probe import probe
from bertdeploy.benchmark.report import EngineReport, Timing
from bertdeploy.builder.examples import Examples
from bertdeploy.builder.reference import PYTORCH
from bertdeploy.defaults import MAX_ACCURACY_DROP
from bertdeploy.labels import LabelScheme, judge_drop
from bertdeploy.runtime.encoding import MAX_PADDING, TextEncoder, batch_tokens, run_batches
from bertdeploy.timing import distinct_shapes, interleave

logger = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)


def measure(engines: list[Engine], cases: list[Case], options: BenchOptions,
            scoring: tuple[Examples, TextEncoder, list[str], LabelScheme] | None = None,
            max_accuracy_drop: float = MAX_ACCURACY_DROP, own: dict[str, Inputs] | None = None,
            ) -> tuple[list[EngineReport], list[Timing]]:
    """Probe each engine in its own process, load them all, score them on `scoring` (examples, encoder,
    input names, label scheme), then time them on `cases`. `own`: the engines of the artifacts named there
    (`Engine.artifact`) take these inputs instead, cases aligned by index with `cases` (the same texts through
    another tokenizer). The first engine is the reference for agreement and accuracy.

    Each cell's speed-ups are against its fastest PyTorch engine among those within `max_accuracy_drop` points
    of the first (by accuracy or micro-F1, else by agreement; unscored ones count), whichever artifact it comes
    from: a compared artifact's PyTorch is a model a user could run instead, so a student's speed-ups are against
    its teacher's PyTorch where that is the fastest that kept accuracy, and a teacher's against a student's
    PyTorch that kept it. No speed-up is quoted against a PyTorch slower than one the table shows keeping
    accuracy; without eval texts nothing is judged, and every PyTorch counts, a compared student's too."""
    main = Inputs(cases, *(scoring[1:] if scoring else ()))
    inputs = {e.name: (own or {}).get(e.artifact, main) for e in engines}
    cells = [(c.inputs, c.batch_size) for c in cases]
    if any([(c.inputs, c.batch_size) for c in group.cases] != cells for group in inputs.values()):
        raise ValueError("every artifact's cases must be the same cells, in the same order")
    with tempfile.TemporaryDirectory(prefix="bertdeploy-bench-") as work:
        feeds = {}  # each artifact's written once, read by each of its engines' probes
        for i, group in enumerate(dict.fromkeys(inputs.values())):
            feeds[group] = Path(work) / f"feeds-{i}.npz"
            np.savez(feeds[group], **{f"{c}/{k}": v for c, case in enumerate(group.cases)
                                      for k, v in case.feeds[0].items()})
        reports = [probe(engine, feeds[inputs[engine.name]]) for engine in engines]
    runners = {}
    for engine in engines:  # serially: creating sessions concurrently is not safe
        logger.info("loading %s", engine.name)
        runners[engine.name] = engine.load()
    if scoring is not None:
        _score(runners, reports, scoring[0], inputs, options.device)
    samples = _time(runners, inputs, len(cases), options)
    timings = [_timing(name, inputs[name].cases[i], samples[name][i], options.warmup) for i in range(len(cases))
               for name in runners]
    baselines = [r.name for r in reports if r.backend == PYTORCH and
                 (r is reports[0] or within(r, reports[0], max_accuracy_drop, warn=True))]
    for t in timings:
        cell = [r for r in timings if (r.inputs, r.batch_size) == (t.inputs, t.batch_size) and r.engine in baselines]
        base = min(cell, key=lambda r: r.p50_ms)
        t.speedup, t.baseline = base.p50_ms / t.p50_ms, base.engine
    return reports, timings


def within(r: EngineReport, reference: EngineReport, max_drop: float, warn: bool = False) -> bool:
    """Whether `r` is within `max_drop` points of the reference by the one rule (labels.judge_drop): by accuracy
    (micro-F1 for multi-label models) with labels, else by agreement; an engine not scored counts as within."""
    drop = judge_drop(reference.headline, r.headline, max_drop, r.agreement)
    if not drop.within and warn:
        logger.warning("%s lost %.2f points against %s (allowed: %g): not a speed-up baseline", r.name, drop.lost,
                       reference.name, max_drop)
    return drop.within


def _score(runners: dict, reports: list[EngineReport], examples: Examples, inputs: dict[str, Inputs],
           device: str) -> None:
    """Accuracy (micro-F1 for multi-label models), macro-F1 and agreement with PyTorch on the eval texts, batched
    as the predictor batches; each engine's texts through its own artifact's tokenizer (`inputs`)."""
    encodings = {group: group.encoder.tokenize(examples.texts, examples.pairs)
                 for group in dict.fromkeys(inputs.values())}
    budget = batch_tokens(device == "cuda")
    predicted = {}
    for report in reports:
        logger.info("scoring %s on %d eval texts", report.name, len(examples))
        own = inputs[report.name]
        scheme = own.scheme
        scores = run_batches(runners[report.name].run, own.encoder, encodings[own], own.names, len(scheme.labels),
                             budget, max_padding=MAX_PADDING)
        predicted[report.name] = scheme.decide(scheme.activate(scores))
        if examples.labels:
            scored = scheme.report(scheme.encode(examples.labels), predicted[report.name])
            report.accuracy, report.micro_f1 = scored.get("accuracy"), scored.get("micro_f1")
            report.macro_f1 = scored["macro_f1"]
    reference = predicted[reports[0].name]
    for report in reports:
        report.agreement = inputs[report.name].scheme.agreement(predicted[report.name], reference)


def _time(runners: dict, inputs: dict[str, Inputs], count: int, options: BenchOptions) -> dict[str, list[list[float]]]:
    """ms per call, per engine and case (the first `count` of each engine's `inputs`), every engine taking its turn
    each round (timing.interleave), after one untimed call per input shape."""
    from tqdm.auto import tqdm

    samples: dict[str, list[list[float]]] = {name: [] for name in runners}
    total = count * (options.warmup + options.runs) * len(runners)
    with tqdm(total=total, desc="timing", unit=" calls", file=sys.stderr,
              disable=None if options.progress else True) as bar:  # None: only on a terminal
        for c in range(count):
            case = {name: inputs[name].cases[c] for name in runners}  # one cell, through each engine's tokenizer
            first = next(iter(case.values()))
            logger.info("timing %s x %d (%d of %d)", first.inputs, first.batch_size, c + 1, count)
            prepared = {name: [runner.prepare(f) for f in case[name].feeds] for name, runner in runners.items()}
            for name, runner in runners.items():
                for i in distinct_shapes(case[name].feeds):
                    runner.run_prepared(prepared[name][i])
            calls = {name: functools.partial(_turn, runner.run_prepared, prepared[name]) for name, runner in
                     runners.items()}
            for name, values in interleave(calls, options.runs, options.warmup, seed=c, tick=bar.update).items():
                samples[name].append(values)
            del prepared
    return samples


def _turn(run, prepared: list, step: int) -> object:
    """The call of round `step`: the feeds of a case in turn."""
    return run(prepared[step % len(prepared)])


def _timing(name: str, case: Case, samples: list[float], warmup: int) -> Timing:
    ms = np.asarray(samples)
    mean = float(ms.mean())
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
    tokens = sum(case.tokens[(warmup + i) % len(case.tokens)] for i in range(len(ms)))  # the feeds timed
    return Timing(engine=name, inputs=case.inputs, batch_size=case.batch_size, padded_tokens=case.padded_tokens,
                  mean_ms=mean, p50_ms=p50, p90_ms=p90, p95_ms=p95, p99_ms=p99,
                  sequences_per_s=case.batch_size / mean * 1000, tokens_per_s=tokens / ms.sum() * 1000, speedup=None,
                  samples_ms=[round(v, 4) for v in samples])
