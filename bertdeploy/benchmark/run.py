"""Measure an exported classifier against PyTorch: latency, throughput, load time, memory, size, accuracy.

Every engine (PyTorch and each ONNX variant) runs exactly the same inputs: fixed lengths (batch x
tokens, cut from real texts) for the classic table, and real eval texts at their natural lengths,
padded per batch as the predictor pads them (cases.py). Engines take turns call by call, in
an order shuffled every round (timing.py, the project's one harness); warm-up calls are not timed;
every engine gets the same thread count. Load time and peak RSS come from a fresh process per
engine, so one engine's memory never counts against another's. On CUDA, inputs are placed on the
device before the clock starts (IO binding for ONNX Runtime) and every call is synchronised.
Other exported artifacts (`compare`: a distilled student's teacher, say) join the same run: their variants and
PyTorch models are engines named `<label>:<variant>`, each fed the same texts through its own artifact's
tokenizer and input names, cell by cell.
This module runs the measurement; the engines, inputs, memory probe and report have modules of their
own (engines.py, cases.py, probe.py, report.py). It does not pick the default variant (export does).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bertdeploy.artifacts import MANIFEST_NAME, atomic_file, exported_files, read_manifest, verify_files
from bertdeploy.benchmark import report as reporting
from bertdeploy.benchmark.cases import Case, fixed_length_cases, natural_cases
from bertdeploy.benchmark.engines import AUTO, Engine
from bertdeploy.benchmark.probe import probe
from bertdeploy.benchmark.report import BenchResult, EngineReport, Timing
from bertdeploy.builder.reference import PYTORCH, PYTORCH_BF16, computes_bf16
from bertdeploy.builder.source import SAMPLE_TEXTS
from bertdeploy.data import (
    Examples,
    check_known_labels,
    example_columns,
    has_column,
    load_examples,
    load_texts,
    sample_examples,
)
from bertdeploy.defaults import (
    BENCH_BATCH_SIZES,
    BENCH_RUNS,
    BENCH_SEQ_LENGTHS,
    BENCH_WARMUP,
    DEVICE,
    DEVICES,
    EVAL_SAMPLES,
    MAX_ACCURACY_DROP,
    RECORD_ROUTES,
    VERIFY,
)
from bertdeploy.errors import BertdeployError, check_options, require_training
from bertdeploy.host import machine, usable_cpus
from bertdeploy.labels import LabelScheme, judge_drop
from bertdeploy.runtime.backends import (
    BACKENDS,
    OPENVINO,
    backend_of,
    import_openvino,
    openvino_installed,
    precision_of,
)
from bertdeploy.runtime.encoding import (
    MAX_PADDING,
    TextEncoder,
    batch_tokens,
    load_encoder,
    run_batches,
)
from bertdeploy.runtime.routing import auto_section
from bertdeploy.runtime.sessions import PROVIDERS, resolve_providers
from bertdeploy.timing import distinct_shapes, interleave

logger = logging.getLogger(__name__)

SAMPLE_SEED = 0
PERCENTILES = (50, 90, 95, 99)


@dataclass
class BenchOptions:
    artifact_dir: Path
    pytorch_model: Path | None = None  # default: the model directory the manifest names
    eval_file: Path | None = None  # real texts (and labels, for accuracy); the manifest's columns
    variants: list[str] | None = None  # default: every shipped variant (on CUDA, all but INT8)
    batch_sizes: list[int] = field(default_factory=lambda: list(BENCH_BATCH_SIZES))
    seq_lengths: list[int] = field(default_factory=lambda: list(BENCH_SEQ_LENGTHS))
    runs: int = BENCH_RUNS
    warmup: int = BENCH_WARMUP
    threads: int | None = None  # default: the CPUs this process may use
    device: str = DEVICE
    eval_samples: int = EVAL_SAMPLES  # accuracy on at most this many eval texts (a stratified sample)
    progress: bool = False
    record: bool = RECORD_ROUTES  # write the size ranges for backend="auto" into the manifest (CPU only)
    verify: bool = VERIFY  # refuse a variant or tokenizer file whose sha256 is not the manifest's
    allow_pickle: bool = False  # compare with a PyTorch model whose weights are pickled only (pytorch_model.bin)
    json_file: Path | None = None  # write every figure here as JSON
    plot_file: Path | None = None  # write charts here (PNG; the plot extra)
    compare: list[Path] = field(default_factory=list)  # other exported artifacts to time beside it, same texts

    def __post_init__(self) -> None:
        self.artifact_dir = Path(self.artifact_dir)
        check_options([
            (bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch sizes must be at least 1"),
            (bool(self.seq_lengths) and min(self.seq_lengths) >= 2, "sequence lengths must be at least 2"),
            (self.runs >= 1, "runs must be at least 1"),
            (self.warmup >= 0, "warmup must be 0 or more"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.device in DEVICES, f"unknown device {self.device!r}; use {' or '.join(DEVICES)}"),
            (self.eval_samples >= 1, "eval_samples must be at least 1"),
        ])
        self.batch_sizes, self.seq_lengths = sorted(set(self.batch_sizes)), sorted(set(self.seq_lengths))
        self.threads = self.threads or usable_cpus()
        for path in (self.json_file, self.plot_file):
            if path is not None and not Path(path).absolute().parent.is_dir():
                raise BertdeployError(f"{path}: its directory does not exist")
        if self.plot_file is not None:
            reporting.check_plotting()
        self.compare = [Path(p) for p in self.compare]
        seen = [self.artifact_dir.resolve()]
        for other in self.compare:
            check_options([(other.resolve() != seen[0], f"--compare {other}: that is the artifact being measured"),
                           (other.resolve() not in seen, f"--compare {other}: given twice")])
            seen.append(other.resolve())


class Compared(NamedTuple):
    """Another exported artifact in the run: its engines are named `label:variant`."""

    directory: Path
    label: str  # the directory's name, made unique
    manifest: dict


@dataclass(eq=False)  # one per artifact, told apart by identity
class Inputs:
    """The run's texts through one artifact's tokenizer: its cases (aligned by index with every other artifact's)
    and, for scoring, its encoder, input names and label scheme."""

    cases: list[Case]
    encoder: TextEncoder | None = None
    names: list[str] | None = None
    scheme: LabelScheme | None = None


# -- the run ---------------------------------------------------------------------------------------

def bench(options: BenchOptions) -> BenchResult:
    """PyTorch against every variant of `options.artifact_dir`, and of each `options.compare` artifact, on the
    same inputs."""
    require_training("bench")
    manifest = read_manifest(options.artifact_dir, "onnx")
    compared = compared_artifacts(options, manifest)
    engines = pick_engines(options, manifest)
    measured = {e.name for e in engines}  # the run's own artifact's, for the auto ranges
    for c in compared:
        engines += [replace(e, name=f"{c.label}:{e.name}") for e in pick_engines(options, c.manifest, c.directory)]
    examples = load_eval(options, manifest)
    max_length = min(m["max_length"] for m in [manifest, *(c.manifest for c in compared)])
    lengths = [n for n in options.seq_lengths if n <= max_length]
    if len(lengths) < len(options.seq_lengths):
        logger.warning("sequence lengths over the max length %d skipped", max_length)
    check_options([(lengths or examples is not None, f"every sequence length is over the max length {max_length}")])
    texts = examples.texts if examples else SAMPLE_TEXTS
    main = _inputs(options.artifact_dir, manifest, texts, examples, lengths, options)
    own = {str(c.directory): _inputs(c.directory, c.manifest, texts, examples, lengths, options) for c in compared}

    scoring = None if examples is None else (examples, main.encoder, main.names, main.scheme)
    bound = manifest.get("evaluation", {}).get("max_accuracy_drop", MAX_ACCURACY_DROP)
    reports, timings = measure(engines, main.cases, options, scoring, bound, own)
    auto = None
    if options.record and options.device == "cpu" and all(n in measured for n in _runnable(manifest)):
        auto = record_auto(options, manifest, reports, timings)
    elif options.record and options.device == "cpu":
        logger.info("not recording the auto ranges: only some variants were measured")
    result = BenchResult(str(options.artifact_dir), options.device, options.threads, options.runs, options.warmup,
                         None if examples is None else str(examples.path), 0 if examples is None else len(examples),
                         _machine(options.device), reports, timings, auto, main.scheme.multi_label,
                         [str(c.directory) for c in compared])
    if options.json_file is not None:
        reporting.write_json(result, options.json_file)
    if options.plot_file is not None:
        reporting.plot(result, options.plot_file)
    return result


def compared_artifacts(options: BenchOptions, manifest: dict) -> list[Compared]:
    """Each `options.compare` directory, its label (the directory's name, made unique) and its manifest; refused
    unless it is an exported artifact with the same labels, in the same order, and the same problem type."""
    scheme, compared, labels = LabelScheme.from_manifest(manifest), [], set()
    for directory in options.compare:
        try:
            other = read_manifest(directory, "onnx")
        except BertdeployError as e:
            raise BertdeployError(f"{e} (--compare takes a directory that bertdeploy export wrote)") from None
        theirs = LabelScheme.from_manifest(other)
        if bool(other.get("text_pair_column")) != bool(manifest.get("text_pair_column")):
            raise BertdeployError(f"--compare {directory}: one of it and {options.artifact_dir} classifies text pairs "
                                  "and the other single texts; compare models of the same task")
        if (theirs.labels, theirs.multi_label) != (scheme.labels, scheme.multi_label):
            raise BertdeployError(
                f"--compare {directory}: its labels ({', '.join(theirs.labels)}; {theirs.problem_type}) are not "
                f"those of {options.artifact_dir} ({', '.join(scheme.labels)}; {scheme.problem_type})")
        name, n = directory.resolve().name, 1
        label = name
        while label in labels:
            n += 1
            label = f"{name}-{n}"
        labels.add(label)
        compared.append(Compared(directory, label, other))
    return compared


def _inputs(directory: Path, manifest: dict, texts: list[str], examples: Examples | None, lengths: list[int],
            options: BenchOptions) -> Inputs:
    """The run's texts through `directory`'s own tokenizer and input names: fixed lengths, then natural ones."""
    encoder = load_encoder(exported_files(directory, manifest)[0].path, manifest["max_length"])
    names = list(manifest["inputs"])
    cases = fixed_length_cases(encoder, texts, options.batch_sizes, lengths, names)
    if examples is not None:
        cases += natural_cases(encoder, examples, options.batch_sizes, options.runs, names)
    return Inputs(cases, encoder, names, LabelScheme.from_manifest(manifest))


def _machine(device: str) -> dict:
    """host.machine(), with the GPU and the CUDA version PyTorch was built for, as PyTorch reports them."""
    info = machine(device)
    if device == "cuda":
        import torch

        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def _runnable(manifest: dict) -> list[str]:
    """The variants this machine can run: all but OpenVINO's when openvino is not installed."""
    return [n for n, v in manifest["variants"].items() if backend_of(v) != OPENVINO or openvino_installed()]


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
                 (r is reports[0] or _within(r, reports[0], max_accuracy_drop, warn=True))]
    for t in timings:
        cell = [r for r in timings if (r.inputs, r.batch_size) == (t.inputs, t.batch_size) and r.engine in baselines]
        base = min(cell, key=lambda r: r.p50_ms)
        t.speedup, t.baseline = base.p50_ms / t.p50_ms, base.engine
    return reports, timings


def _within(r: EngineReport, reference: EngineReport, max_drop: float, warn: bool = False) -> bool:
    """Whether `r` is within `max_drop` points of the reference by the one rule (labels.judge_drop): by accuracy
    (micro-F1 for multi-label models) with labels, else by agreement; an engine not scored counts as within."""
    drop = judge_drop(reference.headline, r.headline, max_drop, r.agreement)
    if not drop.within and warn:
        logger.warning("%s lost %.2f points against %s (allowed: %g): not a speed-up baseline", r.name, drop.lost,
                       reference.name, max_drop)
    return drop.within


def pick_engines(options: BenchOptions, manifest: dict, compared: Path | None = None) -> list[Engine]:
    """PyTorch and the variants of `options.artifact_dir`, or of the `compared` artifact (`manifest` is its): all
    it ships (`options.variants` and `pytorch_model` are the run's own artifact's), and its manifest's model."""
    directory, device, threads = compared or options.artifact_dir, options.device, options.threads
    if device == "cuda":
        _check_cuda()
    given = None if compared else options.pytorch_model
    model = Path(given or manifest.get("source_model") or "")
    if not (model / "config.json").is_file():
        where = "given with --pytorch-model" if given else f"named in {directory / MANIFEST_NAME}"
        hint = "" if compared else "; pass --pytorch-model with the fine-tuned model directory"
        raise BertdeployError(f"no PyTorch model to compare with: {model} ({where}) has no config.json{hint}")
    shipped = manifest["variants"]
    tokenizer, files = exported_files(directory, manifest)
    wanted = None if compared else options.variants
    for name in wanted or []:
        if name not in shipped and not (name == AUTO and "auto" in manifest):
            refused = " (it was refused at export)" if name in manifest.get("rejected", {}) else ""
            raise BertdeployError(f"{directory}: no variant {name!r}{refused}; it has {', '.join(shipped)}")
        if name in shipped and backend_of(shipped[name]) == OPENVINO:
            import_openvino()  # names the missing extra
    if wanted is None:  # ONNX Runtime's CUDA provider has no fast integer kernels; OpenVINO runs on the CPU
        wanted = [n for n, v in shipped.items() if device == "cpu" or not v["kind"].startswith("int8")]
        wanted = [n for n in wanted if device == "cpu" or backend_of(shipped[n]) != OPENVINO]
        skipped = [n for n in wanted if backend_of(shipped[n]) == OPENVINO and not openvino_installed()]
        if skipped:
            logger.warning("skipping %s: openvino is not installed (pip install 'bertdeploy[openvino]')",
                           ", ".join(skipped))
        wanted = [n for n in wanted if n not in skipped]
        if device == "cpu" and "auto" in manifest:
            wanted.append(AUTO)
    # PyTorch reads the feeds of a trimmed export's tokenizer through their tokens (reference.TorchModel)
    pytorch = {"allow_pickle": options.allow_pickle,
               "ids_from": str(tokenizer.path) if manifest.get("vocabulary", {}).get("trimmed") else None}
    engines = [Engine(PYTORCH, "pytorch", str(model), "fp32", device, threads, **pytorch)]
    if computes_bf16(device):  # one line of autocast: the fastest PyTorch a user gets on such hardware
        engines.append(Engine(PYTORCH_BF16, "pytorch", str(model), "bf16", device, threads, **pytorch))
    if device == "cuda":
        engines.append(Engine(f"{PYTORCH}-fp16", "pytorch", str(model), "fp16", device, threads, **pytorch))
    for name in wanted:
        if name == AUTO:
            engines.append(Engine(AUTO, "auto", str(directory), "auto", device, threads, verify=options.verify))
            continue
        path = files[name].path
        if not path.is_file():
            raise BertdeployError(f"{path}: missing; the manifest lists it as variant {name!r}")
        engines.append(Engine(name, backend_of(shipped[name]), str(path), shipped[name]["kind"], device, threads,
                              precision_of(shipped[name])))
    if options.verify:  # the variants timed directly; the auto engine's predictor checks its own
        verify_files([tokenizer, *(files[name] for name in wanted if name != AUTO)])
    return [replace(e, artifact=str(directory)) for e in engines]


def record_auto(options: BenchOptions, manifest: dict, reports: list[EngineReport], timings: list[Timing]) -> dict:
    """Write the size ranges for `backend="auto"` into the manifest, from this run's p50 latencies per batch size
    in padded tokens (the geometric mean of the cells of one size), among the variants within the accuracy
    bound. Only the artifact's own variants count, not those of a compared one."""
    variants = [r for r in reports if r.backend in BACKENDS and r.artifact == str(options.artifact_dir)]
    timings = [t for t in timings if t.engine in {r.name for r in variants}]
    bound = manifest.get("evaluation", {}).get("max_accuracy_drop", MAX_ACCURACY_DROP)
    eligible = [r.name for r in variants if r.headline is None or _within(r, reports[0], bound)]
    p50: dict[str, dict[int, float]] = {}
    for r in variants:
        for size in sorted({t.padded_tokens for t in timings}):
            cells = [t.p50_ms for t in timings if t.engine == r.name and t.padded_tokens == size]
            if cells:
                p50.setdefault(r.name, {})[size] = float(np.exp(np.mean(np.log(cells))))
    inputs = ", ".join(dict.fromkeys(t.inputs for t in timings))
    auto = auto_section(p50, eligible, {r.name: r.backend for r in variants}, "bench", inputs, options.threads)
    path = options.artifact_dir / MANIFEST_NAME
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps({**manifest, "auto": auto}, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    return auto


def _check_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise BertdeployError("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    resolve_providers([PROVIDERS["cuda"]])  # names the missing onnxruntime-gpu


def load_eval(options: BenchOptions, manifest: dict) -> Examples | None:
    if options.eval_file is None:
        logger.info("no eval file: fixed lengths only; pass --eval-file for accuracy and real text lengths")
        return None
    path = Path(options.eval_file)
    columns = example_columns(manifest)
    label = (columns["label_columns"] or [columns["label_column"]])[0]
    if has_column(path, label):
        examples = load_examples(path, **columns, drop_empty=True)
        check_known_labels(examples, manifest["labels"])
        if len(examples) > options.eval_samples:
            examples = sample_examples(examples, options.eval_samples, SAMPLE_SEED)
        return examples
    logger.info("%s has no %r column: agreement with PyTorch only, no accuracy", path, label)
    texts, pairs = load_texts(path, columns["text_column"], columns["pair_column"])
    n = min(len(texts), options.eval_samples)
    return Examples(path, texts[:n], [], None if pairs is None else pairs[:n])


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
    return Timing(name, case.inputs, case.batch_size, case.padded_tokens, mean, p50, p90, p95, p99,
                  case.batch_size / mean * 1000,
                  tokens / ms.sum() * 1000, None, [round(v, 4) for v in samples])


