"""The one timing harness: export's pick of the default variant, `bench` and every script in
`benchmarks/` measure with it.

`interleave` times several calls side by side: every round each call runs once, in an order
shuffled every round, so a slow moment of a shared machine hits them all alike and no call
always runs right after the same other one (caches and woken threads favour the second).
Warm-up rounds run but are not kept. `distinct_shapes` picks the feeds for an untimed first call per
input shape (OpenVINO compiles kernels for each new shape, a cost a warm service has paid). `stopwatch`
times one whole operation. `interleaved_latency` is `interleave` for models: median ms per
call of each run on each group of feeds. numpy only; it knows nothing of models.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

Key = TypeVar("Key", bound=Hashable)
T = TypeVar("T")


def interleave(calls: Mapping[Key, Callable[[int], object]], rounds: int, warmup: int = 0, seed: int = 0,
               tick: Callable[[], object] | None = None) -> dict[Key, list[float]]:
    """Milliseconds of each `calls[key](step)` per kept round: `warmup + rounds` rounds, each call once per
    round in a freshly shuffled order; `step` counts every round from 0, warm-up included. `tick` is called
    after every call (a progress bar)."""
    keys = list(calls)
    samples: dict[Key, list[float]] = {key: [] for key in keys}
    rng = np.random.default_rng(seed)
    for step in range(warmup + rounds):
        for i in rng.permutation(len(keys)):
            started = time.perf_counter()
            calls[keys[i]](step)
            elapsed = (time.perf_counter() - started) * 1000
            if step >= warmup:
                samples[keys[i]].append(elapsed)
            if tick is not None:
                tick()
    return samples


def median_tokens(feeds: Sequence[dict]) -> int:
    """Texts x padded length of the median feed: the size `backend="auto"` routes a batch by."""
    return int(np.median([feed["input_ids"].size for feed in feeds]))


def distinct_shapes(feeds: Sequence[dict]) -> list[int]:
    """The index of one feed per distinct `input_ids` shape: what to run once, untimed, before timing."""
    return list({tuple(f["input_ids"].shape): i for i, f in enumerate(feeds)}.values())


def stopwatch(function: Callable[..., T], *args, **kwargs) -> tuple[T, float]:
    """`function(*args, **kwargs)` and the seconds it took."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def interleaved_latency(runs: dict[str, Callable[[dict], object]], feeds: dict[str, list[dict]], rounds: int,
                        own_feeds: dict[str, dict[str, list[dict]]] | None = None) -> dict[str, dict[str, float]]:
    """Median ms per call of each `run(feed)` on each group of feeds, every call taking its turn each round
    (timing.interleave), after one untimed call per input shape and model. `own_feeds`: runs named there take
    these groups instead (the same texts through another tokenizer)."""
    feeds_of = {name: (own_feeds or {}).get(name, feeds) for name in runs}
    for name, run in runs.items():
        every = [feed for batch in feeds_of[name].values() for feed in batch]
        for i in distinct_shapes(every):
            run(every[i])
    calls = {(name, group, i): functools.partial(_call, run, feed) for name, run in runs.items()
             for group, batch in feeds_of[name].items() for i, feed in enumerate(batch)}
    times: dict[str, dict[str, list[float]]] = {name: {group: [] for group in feeds_of[name]} for name in runs}
    for (name, group, _), ms in interleave(calls, rounds).items():
        times[name][group] += ms
    return {name: {group: float(np.median(ms)) for group, ms in groups.items()} for name, groups in times.items()}


def _call(run: Callable[[dict], object], feed: dict, step: int) -> object:
    return run(feed)
