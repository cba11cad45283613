"""Measure an exported classifier against PyTorch: latency, throughput, load time, memory, size, accuracy.

Every engine (PyTorch and each ONNX variant) runs exactly the same inputs: fixed lengths (batch x
tokens, cut from real texts) for the classic table, and real texts at their natural lengths (the eval file's,
or `texts_file`'s), padded per batch as the predictor pads them, taking turns call by call. Other exported artifacts
(`compare`: a distilled student's teacher, say) join the same run: their variants and PyTorch models are
engines named `<label>:<variant>`, each fed the same texts through its own artifact's tokenizer and input
names, cell by cell.
This module puts a run together; each part has a module of its own: the options (options.py), which engines
(lineup.py), the inputs (cases.py), the measuring loop (measure.py, with engines.py and probe.py), the auto
ranges it records (record.py) and the report (report.py). It does not pick the default variant (export does).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from bertdeploy.artifacts import writable
from bertdeploy.benchmark import report as reporting
from bertdeploy.benchmark.cases import artifact_inputs
from bertdeploy.benchmark.lineup import compared_artifacts, pick_engines, runnable
from bertdeploy.benchmark.measure import measure
from bertdeploy.benchmark.options import BenchOptions
from bertdeploy.benchmark.record import record_auto
from bertdeploy.benchmark.report import BenchResult
from bertdeploy.builder.examples import Examples, check_known_labels, example_columns, load_examples, sample_examples
from bertdeploy.builder.source import SAMPLE_TEXTS
from bertdeploy.data import file_format, has_column, load_texts
from bertdeploy.errors import check_options, require_training
from bertdeploy.host import machine
from bertdeploy.manifest import ExportManifest

logger = logging.getLogger(__name__)

SAMPLE_SEED = 0

__all__ = ["BenchOptions", "bench", "load_eval", "load_timed"]


def bench(options: BenchOptions) -> BenchResult:
    """PyTorch against every variant of `options.artifact_dir`, and of each `options.compare` artifact, on the
    same inputs."""
    require_training("bench")
    manifest = ExportManifest.read(options.artifact_dir)
    compared = compared_artifacts(options, manifest)
    engines = pick_engines(options, manifest)
    measured = {e.name for e in engines}  # the run's own artifact's, for the auto ranges
    records = options.record and options.device == "cpu" and all(n in measured for n in runnable(manifest))
    check_options([(not records or writable(options.artifact_dir),
                    f"{options.artifact_dir}: cannot write there, and bench records the routes of --backend auto in "
                    "its manifest.json; pass --no-record, or bench a writable copy and ship that")])
    for c in compared:
        engines += [replace(e, name=f"{c.label}:{e.name}") for e in pick_engines(options, c.manifest, c.directory)]
    examples = load_eval(options, manifest)
    timed = (examples if options.texts_file is None else
             load_timed(options.texts_file, manifest, options.runs * max(options.batch_sizes)))
    max_length = min(m.max_length for m in [manifest, *(c.manifest for c in compared)])
    lengths = [n for n in options.seq_lengths if n <= max_length]
    if len(lengths) < len(options.seq_lengths):
        logger.warning("sequence lengths over the max length %d skipped", max_length)
    natural = timed is not None and options.natural_lengths
    check_options([(lengths or natural, f"no sequence length within the max length {max_length}, and no texts to "
                                        "time at their natural lengths")])
    texts = timed.texts if timed else SAMPLE_TEXTS
    same = {"texts": texts, "examples": timed if natural else None, "lengths": lengths,
            "batch_sizes": options.batch_sizes,
            "runs": options.runs}  # every artifact's cells, each through its own tokenizer
    main = artifact_inputs(options.artifact_dir, manifest, **same)
    own = {str(c.directory): artifact_inputs(c.directory, c.manifest, **same) for c in compared}

    scoring = None if examples is None else (examples, main.encoder, main.names, main.scheme)
    reports, timings = measure(engines, main.cases, options, scoring, manifest.max_accuracy_drop, own)
    auto = None
    if records:
        auto = record_auto(options, manifest, reports, timings)
    elif options.record and options.device == "cpu":
        logger.info("not recording the auto ranges: only some variants were measured")
    result = BenchResult(artifact_dir=str(options.artifact_dir), device=options.device, threads=options.threads,
                         runs=options.runs, warmup=options.warmup,
                         eval_file=None if examples is None else str(examples.path),
                         eval_texts=0 if examples is None else len(examples), machine=_machine(options.device),
                         engines=reports, timings=timings, auto=auto, multi_label=main.scheme.multi_label,
                         compared=[str(c.directory) for c in compared])
    if options.json_file is not None:
        reporting.write_json(result, options.json_file)
    if options.plot_file is not None:
        reporting.plot(result, options.plot_file)
    return result


def load_eval(options: BenchOptions, manifest: ExportManifest) -> Examples | None:
    """The eval texts (a stratified sample of `eval_samples`), with labels where the file has the label column."""
    if options.eval_file is None:
        logger.info("no eval file: fixed lengths only; pass --eval-file for accuracy and real text lengths")
        return None
    path = Path(options.eval_file)
    label = (manifest.label_columns or [manifest.label_column])[0]
    if has_column(path, label):
        examples = load_examples(path, **example_columns(manifest.columns, manifest.scheme), drop_empty=True)
        check_known_labels(examples, list(manifest.labels))
        if len(examples) > options.eval_samples:
            examples = sample_examples(examples, options.eval_samples, SAMPLE_SEED)
        return examples
    logger.info("%s has no %r column: agreement with PyTorch only, no accuracy", path, label)
    texts, pairs = load_texts(path, manifest.text_column, manifest.text_pair_column)
    n = min(len(texts), options.eval_samples)
    return Examples(path, texts[:n], [], None if pairs is None else pairs[:n])


def load_timed(path: Path, manifest, limit: int) -> Examples:
    """The first `limit` texts of `path` (a file in the manifest's columns, or a .txt of one text per line), to
    time at their natural lengths; a file of real traffic can be long."""
    path = Path(path)
    if file_format(path, text=True) == "text":
        check_options([(not manifest.pairs, f"{path}: the model reads text pairs; give a file with its columns")])
        texts, pairs = load_texts(path, "text", fmt="text")[0], None
    else:
        texts, pairs = load_texts(path, manifest.text_column, manifest.text_pair_column)
    check_options([(bool(texts), f"{path}: no texts to time")])
    return Examples(path, texts[:limit], [], None if pairs is None else pairs[:limit])


def _machine(device: str) -> dict:
    """host.machine(), with the GPU and the CUDA version PyTorch was built for, as PyTorch reports them."""
    info = machine(device)
    if device == "cuda":
        import torch

        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info
