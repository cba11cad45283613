"""What `bench` reports, and where: the result records, the machine they were measured on, JSON and charts.

`machine()` is also what every script in `benchmarks/` writes beside its figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertdeploy.artifacts import atomic_file
from bertdeploy.benchmark.cases import NATURAL
from bertdeploy.builder.reference import PYTORCH
from bertdeploy.errors import import_extra
from bertdeploy.manifest import AutoSection


@dataclass(kw_only=True)
class Timing:
    engine: str
    inputs: str
    batch_size: int
    padded_tokens: int  # texts x padded length per call (the median over the cell's feeds)
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    sequences_per_s: float
    tokens_per_s: float
    speedup: float | None  # the baseline's p50 / this p50, same inputs
    samples_ms: list[float]
    baseline: str | None = None  # the fastest PyTorch engine in this cell among those that kept accuracy


@dataclass(kw_only=True)
class EngineReport:
    name: str
    backend: str
    kind: str
    device: str
    path: str
    size_bytes: int
    load_s: float  # a fresh process: imports + loading, until ready to run
    peak_rss_mb: float  # that process's peak resident memory after running every case once
    accuracy: float | None = None
    macro_f1: float | None = None
    agreement: float | None = None  # share of eval texts given PyTorch's label (multi-label: its whole label set)
    micro_f1: float | None = None  # multi-label models, instead of accuracy
    artifact: str | None = None  # the exported artifact directory it belongs to (the run's, or a compared one)

    @property
    def headline(self) -> float | None:
        """The figure accuracy bounds go by: micro-F1 for multi-label models, else accuracy."""
        return self.micro_f1 if self.micro_f1 is not None else self.accuracy


@dataclass(kw_only=True)
class BenchResult:
    artifact_dir: str
    device: str
    threads: int
    runs: int
    warmup: int
    eval_file: str | None
    eval_texts: int
    machine: dict
    engines: list[EngineReport]
    timings: list[Timing]
    auto: AutoSection | None = None  # the ranges recorded in the manifest for backend="auto"
    multi_label: bool = False  # engines are scored by micro-F1 instead of accuracy
    compared: list[str] = field(default_factory=list)  # other artifact directories timed beside it (--compare)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def check_plotting() -> None:
    import_extra("matplotlib", "plot", "--plot")


def plot(result: BenchResult, path: str | Path) -> None:
    """PNG: p50 latency against batch size, one panel per kind of input (compared artifacts' engines dashed), and
    accuracy against latency."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    settings = list(dict.fromkeys(t.inputs for t in result.timings))
    scored = [e for e in result.engines if e.headline is not None]
    metric = "micro-F1" if result.multi_label else "accuracy"
    panels = len(settings) + bool(scored)
    figure, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.4), squeeze=False)
    colours = {e.name: ("black" if e.backend == "pytorch" and e.kind == "fp32" else f"C{i}")
               for i, e in enumerate(result.engines)}
    for ax, setting in zip(axes[0], settings, strict=False):
        for engine in result.engines:
            rows = [t for t in result.timings if t.engine == engine.name and t.inputs == setting]
            sizes = [t.batch_size for t in rows]
            ax.plot(sizes, [t.p50_ms for t in rows], marker="o", color=colours[engine.name], label=engine.name,
                    linestyle="--" if engine.artifact in result.compared else "-")  # a compared artifact's: dashed
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        sizes = sorted({t.batch_size for t in result.timings if t.inputs == setting})
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_title(f"{'real texts, natural lengths' if setting == NATURAL else setting}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency per batch, ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if scored:
        ax = axes[0][-1]
        setting = NATURAL if NATURAL in settings else settings[-1]
        batch = min(t.batch_size for t in result.timings if t.inputs == setting)
        points = sorted((next(t.p50_ms for t in result.timings if t.engine == e.name and
                                (t.inputs, t.batch_size) == (setting, batch)), e.headline * 100, e.name)
                         for e in scored)
        for x, y, name in points:
            ax.scatter(x, y, color=colours[name], s=50)
        reference = next((e.headline * 100 for e in scored if e.name == PYTORCH), None)
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        low, high = min(p[1] for p in points), max(p[1] for p in points)
        middle, half = (low + high) / 2, max(1.0, (high - low) / 2 + 0.3)  # at least 2 points tall: no false drama
        ax.set_ylim(middle - half, middle + half)
        _label_points(ax, points)
        ax.set_title(f"{metric} vs latency ({'natural lengths' if setting == NATURAL else setting}, batch {batch})")
        ax.set_xlabel("p50 latency, ms (left is faster)")
        ax.set_ylabel(f"{metric} on {result.eval_texts} eval texts, %")
        ax.grid(True, alpha=0.3)
    m = result.machine
    figure.suptitle(f"{result.artifact_dir}: {m.get('gpu', m['cpu'])}, {result.threads} threads; "
                    f"{result.runs} runs per point", fontsize=10)
    figure.tight_layout()
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Name each point, beside it where the name overlaps no other name or point (points often share a y)."""
    ax.autoscale_view()
    to_axes = (ax.transData + ax.transAxes.inverted()).transform
    size = ax.get_window_extent().width, ax.get_window_extent().height  # in points at 72 dpi
    dots = [to_axes((x, y)) for x, y, _ in points]
    placed: list[tuple[float, float, float, float]] = []

    def free(box) -> bool:
        clear_of_labels = all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed)
        return clear_of_labels and not any(box[0] < d[0] < box[2] and box[1] < d[1] < box[3] for d in dots)

    for (x, y, name), (u, v) in zip(points, dots, strict=True):
        width, height = len(name) * 5.6 / size[0], 11 / size[1]
        for dx, dy in ((5, 4), (5, -14), (-5, 4), (-5, -14), (5, 15), (5, -25), (-5, 15), (-5, -25)):
            left = u + dx / size[0] - (width if dx < 0 else 0)
            box = (left, v + dy / size[1], left + width, v + dy / size[1] + height)
            if free(box):
                break
        placed.append(box)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=9,
                    ha="left" if dx > 0 else "right")


def write_json(result: BenchResult, path: str | Path) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(result.to_json() + "\n", encoding="utf-8")
