"""Measure an exported classifier against PyTorch: latency, throughput, load time, memory, size, accuracy.

Every engine (PyTorch and each ONNX variant) runs exactly the same inputs: fixed lengths (batch x
tokens, cut from real texts) for the classic table, and real eval texts at their natural lengths,
padded per batch as the predictor pads them. Engines take turns call by call, in an order shuffled
every round, so a slow moment of a shared machine hits them all alike and no engine always runs
right after the same other one (caches and woken threads favour the second); warm-up calls are not timed;
every engine gets the same thread count. Load time and peak RSS come from a fresh process per
engine, so one engine's memory never counts against another's. On CUDA, inputs are placed on the
device before the clock starts (IO binding for ONNX Runtime) and every call is synchronised.
This module measures and reports; it does not pick the default variant (export does).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import MANIFEST_NAME, atomic_file, read_manifest
from bertdeploy.backends import (
    BACKENDS,
    OPENVINO,
    OpenVinoModel,
    auto_section,
    backend_of,
    import_openvino,
    openvino_installed,
)
from bertdeploy.data import Examples, check_known_labels, has_column, load_examples, load_texts, sample_examples
from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.metrics import classification_report
from bertdeploy.runtime import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    MAX_PADDING,
    PROVIDERS,
    TextEncoder,
    create_session,
    load_encoder,
    resolve_providers,
    run_batches,
    usable_cpus,
)

logger = logging.getLogger(__name__)

PYTORCH = "pytorch"
AUTO = "auto"
NATURAL = "natural"
SAMPLE_SEED = 0
PERCENTILES = (50, 90, 95, 99)
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")
VERSIONS = ("bertdeploy", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "optimum", "optimum-onnx", "onnx",
            "tokenizers", "numpy", "openvino", "nncf")


@dataclass
class BenchOptions:
    artifact_dir: Path
    pytorch_model: Path | None = None  # default: the model directory the manifest names
    eval_file: Path | None = None  # real texts (and labels, for accuracy); the manifest's columns
    variants: list[str] | None = None  # default: every shipped variant (on CUDA, all but INT8)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    seq_lengths: list[int] = field(default_factory=lambda: [32, 128])
    runs: int = 100
    warmup: int = 10
    threads: int | None = None  # default: the CPUs this process may use
    device: str = "cpu"
    eval_samples: int = 2000  # accuracy on at most this many eval texts (a stratified sample)
    progress: bool = False
    record: bool = True  # write the batch-size ranges for backend="auto" into the manifest (CPU only)

    def __post_init__(self) -> None:
        self.artifact_dir = Path(self.artifact_dir)
        check_options([
            (bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch sizes must be at least 1"),
            (bool(self.seq_lengths) and min(self.seq_lengths) >= 2, "sequence lengths must be at least 2"),
            (self.runs >= 1, "runs must be at least 1"),
            (self.warmup >= 0, "warmup must be 0 or more"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.device in ("cpu", "cuda"), f"unknown device {self.device!r}; use cpu or cuda"),
            (self.eval_samples >= 1, "eval_samples must be at least 1"),
        ])
        self.batch_sizes, self.seq_lengths = sorted(set(self.batch_sizes)), sorted(set(self.seq_lengths))
        self.threads = self.threads or usable_cpus()


# -- engines: what runs, rebuilt the same way in the main process and in each memory probe ----------

@dataclass(frozen=True)
class Engine:
    name: str
    backend: str  # pytorch, onnxruntime, openvino, auto (the predictor's routing)
    path: str  # model directory (pytorch), .onnx file, or artifact directory (auto)
    kind: str = "fp32"  # fp32, optimized, int8, int8-static, fp16, int8-ov, auto
    device: str = "cpu"
    threads: int = 1

    def load(self):
        runners = {"pytorch": _Torch, "onnxruntime": _OnnxRuntime, "openvino": _OpenVino, "auto": _Auto}
        return runners[self.backend](self)

    def size_bytes(self) -> int:
        path = Path(self.path)
        if self.backend == "auto":
            from bertdeploy.predictor import choose_routes

            manifest = read_manifest(path, "onnx")
            files = {manifest["variants"][name]["file"] for _, name in choose_routes(path, manifest)}
            return sum((path / f).stat().st_size for f in files)
        if path.is_file():
            return path.stat().st_size
        weights = [*path.glob("model*.safetensors"), *path.glob("pytorch_model*.bin")]  # not training_args.bin
        return sum(p.stat().st_size for p in weights)


class _OnnxRuntime:
    """`prepare` puts a feed where the session reads it (on CUDA: device copies, bound once); `run` is timed."""

    def __init__(self, engine: Engine) -> None:
        self.session = create_session(engine.path, engine.device, engine.threads)
        self.names = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name
        self.gpu = engine.device == "cuda"

    def prepare(self, feed: dict):
        feed = {name: feed[name] for name in self.names}
        if not self.gpu:
            return feed
        import onnxruntime as ort

        values = {name: ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0) for name, array in feed.items()}
        binding = self.session.io_binding()
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output, "cuda", 0)
        return binding, values  # the device copies live as long as the binding

    def run(self, prepared) -> None:
        if self.gpu:
            self.session.run_with_iobinding(prepared[0])
            prepared[0].synchronize_outputs()
        else:
            self.session.run([self.output], prepared)

    def logits(self, feed: dict) -> np.ndarray:
        prepared = self.prepare(feed)
        if not self.gpu:
            return self.session.run([self.output], prepared)[0]
        self.run(prepared)
        return prepared[0].copy_outputs_to_cpu()[0]


class _Torch:
    """Eager PyTorch as users run it: `from_pretrained`, eval mode, inference mode; fp16 as `<name>-fp16` on CUDA."""

    def __init__(self, engine: Engine) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        torch.set_num_threads(engine.threads)
        model = AutoModelForSequenceClassification.from_pretrained(engine.path)
        if engine.kind == "fp16":
            model = model.half()
        self.model = model.to(engine.device).eval()
        self.device = engine.device
        self.names = ("input_ids", "attention_mask", "token_type_ids")

    def prepare(self, feed: dict) -> dict:
        return {k: self.torch.from_numpy(v).to(self.device) for k, v in feed.items() if k in self.names}

    def run(self, prepared: dict):
        with self.torch.inference_mode():
            out = self.model(**prepared).logits
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return out

    def logits(self, feed: dict) -> np.ndarray:
        return self.run(self.prepare(feed)).float().cpu().numpy()


class _OpenVino:
    """The OpenVINO runtime on an ONNX file, compiled exactly as the predictor compiles it."""

    def __init__(self, engine: Engine) -> None:
        self.model = OpenVinoModel(engine.path, engine.threads)

    def prepare(self, feed: dict) -> dict:
        return {name: feed[name] for name in self.model.input_names}

    def run(self, prepared: dict) -> np.ndarray:
        return self.model.run(prepared)

    logits = run


class _Auto:
    """The predictor's `backend="auto"`: each batch on the variant the manifest's ranges give for its size."""

    def __init__(self, engine: Engine) -> None:
        from bertdeploy.predictor import Predictor

        self.predictor = Predictor.load(engine.path, threads=engine.threads)
        logger.info("auto: %s", self.predictor.describe())

    def prepare(self, feed: dict) -> dict:
        return {name: feed[name] for name in self.predictor.input_names}

    def run(self, prepared: dict) -> np.ndarray:
        return self.predictor.run_batch(prepared)

    logits = run


# -- inputs ----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One cell of the table: `feeds` are the batches timed in turn, `tokens` the real tokens in each."""

    inputs: str  # "128 tokens" or "natural"
    batch_size: int
    feeds: list[dict]
    tokens: list[int]


def fixed_length_cases(encoder, texts: list[str], batch_sizes: list[int], seq_lengths: list[int],
                       names: list[str]) -> list[Case]:
    """batch x length inputs of real tokens: each row a different stretch of the texts, between [CLS] and [SEP]."""
    bare = encoder.tokenizer.encode_batch(list(texts), add_special_tokens=False)
    pool = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in bare])
    ends = encoder.tokenizer.encode("").ids  # [CLS], [SEP] for BERT
    cases = []
    for length in seq_lengths:
        for batch in batch_sizes:
            body = length - len(ends)
            starts = (np.arange(batch) * 7919) % max(1, len(pool) - body)
            rows = [np.resize(np.roll(pool, -s), body) for s in starts]
            ids = np.stack([np.concatenate([[ends[0]], row, ends[1:]]) for row in rows]).astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            cases.append(Case(f"{length} tokens", batch, [{k: v for k, v in feed.items() if k in names}],
                              [ids.size]))
    return cases


def natural_cases(encoder, examples: Examples, batch_sizes: list[int], runs: int, names: list[str]) -> list[Case]:
    """Consecutive eval texts, `batch` at a time in file order, padded as the predictor pads them."""
    encodings = encoder.tokenize(examples.texts, examples.pairs)
    cases = []
    for batch in batch_sizes:
        count = min(runs, len(encodings) // batch)
        if count == 0:
            logger.warning("natural lengths at batch %d skipped: the eval file has only %d texts", batch,
                           len(encodings))
            continue
        groups = [encodings[i * batch:(i + 1) * batch] for i in range(count)]
        cases.append(Case(NATURAL, batch, [encoder.pad(g, names) for g in groups],
                          [sum(len(e.ids) for e in g) for g in groups]))
    return cases


# -- results ---------------------------------------------------------------------------------------

@dataclass
class Timing:
    engine: str
    inputs: str
    batch_size: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    sequences_per_s: float
    tokens_per_s: float
    speedup: float | None  # PyTorch's p50 / this p50, same inputs
    samples_ms: list[float]


@dataclass
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
    agreement: float | None = None  # share of eval texts given PyTorch's label


@dataclass
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
    auto: dict | None = None  # the ranges recorded in the manifest for backend="auto"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


# -- the run ---------------------------------------------------------------------------------------

def bench(options: BenchOptions) -> BenchResult:
    manifest = read_manifest(options.artifact_dir, "onnx")
    engines = pick_engines(options, manifest)
    encoder = load_encoder(options.artifact_dir / manifest["tokenizer"], manifest["max_length"])
    examples = load_eval(options, manifest)
    names = list(manifest["inputs"])
    lengths = [n for n in options.seq_lengths if n <= manifest["max_length"]]
    if len(lengths) < len(options.seq_lengths):
        logger.warning("sequence lengths over the model's max length %d skipped", manifest["max_length"])
    check_options([(lengths or examples is not None,
                    f"every sequence length is over the model's max length {manifest['max_length']}")])
    cases = fixed_length_cases(encoder, examples.texts if examples else _sample_texts(), options.batch_sizes,
                               lengths, names)
    if examples is not None:
        cases += natural_cases(encoder, examples, options.batch_sizes, options.runs, names)

    scoring = None if examples is None else (examples, encoder, names, manifest["labels"])
    reports, timings = measure(engines, cases, options, scoring)
    measured = {e.name for e in engines}
    auto = None
    if options.record and options.device == "cpu" and all(n in measured for n in _runnable(manifest)):
        auto = record_auto(options, manifest, reports, timings)
    elif options.record and options.device == "cpu":
        logger.info("not recording the auto ranges: only some variants were measured")
    return BenchResult(str(options.artifact_dir), options.device, options.threads, options.runs, options.warmup,
                       None if examples is None else str(examples.path), 0 if examples is None else len(examples),
                       machine(options.device), reports, timings, auto)


def _runnable(manifest: dict) -> list[str]:
    """The variants this machine can run: all but OpenVINO's when openvino is not installed."""
    return [n for n, v in manifest["variants"].items() if backend_of(v) != OPENVINO or openvino_installed()]


def measure(engines: list[Engine], cases: list[Case], options: BenchOptions,
            scoring: tuple[Examples, TextEncoder, list[str], list[str]] | None = None,
            ) -> tuple[list[EngineReport], list[Timing]]:
    """Probe each engine in its own process, load them all, score them on `scoring` (examples, encoder,
    input names, labels), then time them on `cases`. The first engine is the reference for speed-up
    and agreement."""
    with tempfile.TemporaryDirectory(prefix="bertdeploy-bench-") as work:
        feeds = Path(work) / "feeds.npz"  # written once, read by every engine's probe
        np.savez(feeds, **{f"{i}/{k}": v for i, case in enumerate(cases) for k, v in case.feeds[0].items()})
        reports = [_probe(engine, feeds) for engine in engines]
    runners = {}
    for engine in engines:  # serially: creating sessions concurrently is not safe
        logger.info("loading %s", engine.name)
        runners[engine.name] = engine.load()
    if scoring is not None:
        _score(runners, reports, *scoring, options.device)
    samples = _time(runners, cases, options)
    timings = [_timing(name, case, samples[name][i], options.warmup) for i, case in enumerate(cases)
               for name in runners]
    for t in timings:
        ref = next(r for r in timings if r.engine == engines[0].name and
                   (r.inputs, r.batch_size) == (t.inputs, t.batch_size))
        t.speedup = ref.p50_ms / t.p50_ms
    return reports, timings


def pick_engines(options: BenchOptions, manifest: dict) -> list[Engine]:
    directory, device, threads = options.artifact_dir, options.device, options.threads
    if device == "cuda":
        _check_cuda()
    model = Path(options.pytorch_model or manifest.get("source_model") or "")
    if not (model / "config.json").is_file():
        where = "given with --pytorch-model" if options.pytorch_model else "named in the manifest"
        raise BertdeployError(f"no PyTorch model to compare with: {model} ({where}) has no config.json; "
                              "pass --pytorch-model with the fine-tuned model directory")
    shipped = manifest["variants"]
    wanted = options.variants
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
    engines = [Engine(PYTORCH, "pytorch", str(model), "fp32", device, threads)]
    if device == "cuda":
        engines.append(Engine(f"{PYTORCH}-fp16", "pytorch", str(model), "fp16", device, threads))
    for name in wanted:
        if name == AUTO:
            engines.append(Engine(AUTO, "auto", str(directory), "auto", device, threads))
            continue
        path = directory / shipped[name]["file"]
        if not path.is_file():
            raise BertdeployError(f"{path}: missing; the manifest lists it as variant {name!r}")
        engines.append(Engine(name, backend_of(shipped[name]), str(path), shipped[name]["kind"], device, threads))
    return engines


def record_auto(options: BenchOptions, manifest: dict, reports: list[EngineReport], timings: list[Timing]) -> dict:
    """Write the batch-size ranges for `backend="auto"` into the manifest, from this run's p50 latencies (the
    geometric mean over the kinds of input at each batch size), among the variants within the accuracy bound."""
    variants = [r for r in reports if r.backend in BACKENDS]
    reference = reports[0].accuracy
    bound = manifest.get("evaluation", {}).get("max_accuracy_drop", 1.0)
    eligible = [r.name for r in variants
                if r.accuracy is None or reference is None or (reference - r.accuracy) * 100 <= bound]
    p50: dict[str, dict[int, float]] = {}
    for r in variants:
        for size in options.batch_sizes:
            cells = [t.p50_ms for t in timings if t.engine == r.name and t.batch_size == size]
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


def _sample_texts() -> list[str]:
    from bertdeploy.export import SAMPLE_TEXTS

    return SAMPLE_TEXTS


def load_eval(options: BenchOptions, manifest: dict) -> Examples | None:
    if options.eval_file is None:
        logger.info("no eval file: fixed lengths only; pass --eval-file for accuracy and real text lengths")
        return None
    path = Path(options.eval_file)
    text, label, pair = manifest.get("text_column", "text"), manifest.get("label_column"), \
        manifest.get("text_pair_column")
    if label and has_column(path, label):
        examples = load_examples(path, text, label, pair, drop_empty=True)
        check_known_labels(examples, manifest["labels"])
        if len(examples) > options.eval_samples:
            examples = sample_examples(examples, options.eval_samples, SAMPLE_SEED)
        return examples
    logger.info("%s has no %r column: agreement with PyTorch only, no accuracy", path, label)
    texts, pairs = load_texts(path, text, pair)
    n = min(len(texts), options.eval_samples)
    return Examples(path, texts[:n], [], None if pairs is None else pairs[:n])


def _probe(engine: Engine, feeds: Path) -> EngineReport:
    """Load time and peak RSS of `engine` alone, in a fresh Python process that loads it and runs each case's
    first batch (saved in `feeds`) once."""
    logger.info("measuring load time and memory of %s in a separate process", engine.name)
    done = subprocess.run([sys.executable, "-m", "bertdeploy.bench", json.dumps(asdict(engine)), str(feeds)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BertdeployError(f"{engine.name}: the memory probe failed:\n{tail}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return EngineReport(engine.name, engine.backend, engine.kind, engine.device, engine.path, engine.size_bytes(),
                        figures["load_s"], figures["peak_rss_mb"])


def _probe_main(engine_json: str, feeds_path: str) -> None:
    started = time.perf_counter()
    runner = Engine(**json.loads(engine_json)).load()
    load_s = time.perf_counter() - started
    arrays = np.load(feeds_path)
    feeds: dict[str, dict] = {}
    for key in arrays.files:
        case, name = key.split("/")
        feeds.setdefault(case, {})[name] = arrays[key]
    for feed in feeds.values():
        runner.run(runner.prepare(feed))
    print(json.dumps({"load_s": load_s, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's own high-water mark (ru_maxrss of a child would carry its parent's RSS from the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _score(runners: dict, reports: list[EngineReport], examples: Examples, encoder, names: list[str],
           labels: list[str], device: str) -> None:
    """Accuracy, macro-F1 and agreement with PyTorch on the eval texts, batched as the predictor batches."""
    encodings = encoder.tokenize(examples.texts, examples.pairs)
    budget = GPU_BATCH_TOKENS if device == "cuda" else CPU_BATCH_TOKENS
    truth = [labels.index(y) for y in examples.labels]
    predicted = {}
    for report in reports:
        logger.info("scoring %s on %d eval texts", report.name, len(examples))
        scores = run_batches(runners[report.name].logits, encoder, encodings, names, len(labels), budget,
                             max_padding=MAX_PADDING)
        predicted[report.name] = scores.argmax(-1)
        if truth:
            scored = classification_report(truth, predicted[report.name], labels)
            report.accuracy, report.macro_f1 = scored["accuracy"], scored["macro_f1"]
    for report in reports:
        report.agreement = float(np.mean(predicted[report.name] == predicted[reports[0].name]))


def _time(runners: dict, cases: list[Case], options: BenchOptions) -> dict[str, list[list[float]]]:
    """ms per call, per engine and case: every round each engine makes one call, in a shuffled order."""
    from tqdm.auto import tqdm

    names = list(runners)
    samples = {name: [[] for _ in cases] for name in names}
    rng = np.random.default_rng(0)
    total = len(cases) * (options.warmup + options.runs) * len(names)
    with tqdm(total=total, desc="timing", unit=" calls", file=sys.stderr,
              disable=None if options.progress else True) as bar:  # None: only on a terminal
        for c, case in enumerate(cases):
            logger.info("timing %s x %d (%d of %d)", case.inputs, case.batch_size, c + 1, len(cases))
            prepared = {name: [runners[name].prepare(f) for f in case.feeds] for name in names}
            # one untimed call per input shape first: OpenVINO compiles kernels for each new shape (about 3 ms
            # once), a cost a warm service has paid; the timed rounds then see steady state on every engine
            shapes = {tuple(f["input_ids"].shape): i for i, f in enumerate(case.feeds)}
            for name in names:
                for i in shapes.values():
                    runners[name].run(prepared[name][i])
            for step in range(options.warmup + options.runs):
                feed = step % len(case.feeds)
                for name in [names[i] for i in rng.permutation(len(names))]:
                    started = time.perf_counter()
                    runners[name].run(prepared[name][feed])
                    elapsed = (time.perf_counter() - started) * 1000
                    if step >= options.warmup:
                        samples[name][c].append(elapsed)
                    bar.update(1)
            del prepared
    return samples


def _timing(name: str, case: Case, samples: list[float], warmup: int) -> Timing:
    ms = np.asarray(samples)
    mean = float(ms.mean())
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
    tokens = sum(case.tokens[(warmup + i) % len(case.tokens)] for i in range(len(ms)))  # the feeds timed
    return Timing(name, case.inputs, case.batch_size, mean, p50, p90, p95, p99, case.batch_size / mean * 1000,
                  tokens / ms.sum() * 1000, None, [round(v, 4) for v in samples])


# -- the machine -----------------------------------------------------------------------------------

def machine(device: str = "cpu") -> dict:
    """What the figures were measured on: CPU model and flags, cores, memory, GPU, library versions."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_flags": [], "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(), "memory_gb": None, "os": platform.platform(),
            "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                      if line.startswith("model name")), None)
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith(("flags", "Features"))), [])
        info["cpu"] = model or info["cpu"]
        info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
        total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
        info["memory_gb"] = round(total_kb / 1024 ** 2, 1)
    except (OSError, StopIteration):
        pass
    info["versions"] = {}
    for package in VERSIONS:
        try:
            info["versions"][package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


# -- files -----------------------------------------------------------------------------------------

def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BertdeployError("--plot needs matplotlib: pip install 'bertdeploy[plot]'") from None


def plot(result: BenchResult, path: str | Path) -> None:
    """PNG: p50 latency against batch size, one panel per kind of input, and accuracy against latency."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    settings = list(dict.fromkeys(t.inputs for t in result.timings))
    scored = [e for e in result.engines if e.accuracy is not None]
    panels = len(settings) + bool(scored)
    figure, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.4), squeeze=False)
    colours = {e.name: ("black" if e.backend == "pytorch" and e.kind == "fp32" else f"C{i}")
               for i, e in enumerate(result.engines)}
    for ax, setting in zip(axes[0], settings, strict=False):
        for engine in result.engines:
            rows = [t for t in result.timings if t.engine == engine.name and t.inputs == setting]
            sizes = [t.batch_size for t in rows]
            ax.plot(sizes, [t.p50_ms for t in rows], marker="o", color=colours[engine.name], label=engine.name)
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
                                (t.inputs, t.batch_size) == (setting, batch)), e.accuracy * 100, e.name)
                         for e in scored)
        for x, y, name in points:
            ax.scatter(x, y, color=colours[name], s=50)
        reference = next((e.accuracy * 100 for e in scored if e.name == PYTORCH), None)
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        low, high = min(p[1] for p in points), max(p[1] for p in points)
        middle, half = (low + high) / 2, max(1.0, (high - low) / 2 + 0.3)  # at least 2 points tall: no false drama
        ax.set_ylim(middle - half, middle + half)
        _label_points(ax, points)
        ax.set_title(f"accuracy vs latency ({'natural lengths' if setting == NATURAL else setting}, batch {batch})")
        ax.set_xlabel("p50 latency, ms (left is faster)")
        ax.set_ylabel(f"accuracy on {result.eval_texts} eval texts, %")
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


if __name__ == "__main__":  # the memory probe: python -m bertdeploy.bench ENGINE_JSON FEEDS_NPZ
    _probe_main(sys.argv[1], sys.argv[2])
