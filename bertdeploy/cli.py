"""The `bertdeploy` command: parse options, call one library function, render its result.

Results go to stdout (a table, or JSON with --json); logs and progress bars go to stderr.
A `BertdeployError` becomes a one-line `Error: ...` with exit code 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

from bertdeploy import __version__
from bertdeploy.errors import BertdeployError


class UserError(click.ClickException):
    exit_code = 2


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into clean CLI errors; keep stdout for results only."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs to stdout
            yield
    except BertdeployError as e:
        raise UserError(str(e)) from None


def _to_json(value: object) -> str:
    return json.dumps(dataclasses.asdict(value), indent=2, ensure_ascii=False, default=str)


_RUNTIME_OPTIONS = [
    click.option("--threads", type=int, help="Intra-op threads (default: the CPUs this process may use)."),
    click.option("--providers", default="cpu", show_default=True,
                 help="cpu, cuda or tensorrt (comma-separated, first choice first)."),
    click.option("--allow-fallback", is_flag=True, help="Run on the CPU when the providers asked for cannot load."),
    click.option("--spinning/--no-spinning", default=True, show_default=True,
                 help="ONNX Runtime's threads spin a moment after each call to catch the next one (faster single "
                      "texts; a stream of sparse requests costs more CPU)."),
]


def _runtime_options(command):
    """The runtime's options, shared by predict and serve."""
    for option in reversed(_RUNTIME_OPTIONS):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bertdeploy")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Show warnings and errors only.")
def cli(verbose: bool, quiet: bool) -> None:
    """Fine-tune, export, benchmark and serve BERT-family text classifiers."""
    warnings.filterwarnings("ignore", message="mtime may not be reliable")  # harmless, from the Trainer
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("bertdeploy")
    logger.handlers[:] = [handler]
    logger.propagate = False
    quiet = quiet or _rank() > 0  # under torchrun the main process speaks for all
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _training_options(epochs: float, learning_rate: float):
    """The training run's options, shared by finetune and distill (whose defaults differ)."""
    options = [
        click.option("--eval-file", type=click.Path(path_type=Path), help="Held-out data; else a stratified split."),
        click.option("--epochs", default=epochs, show_default=True),
        click.option("--batch-size", default=16, show_default=True),
        click.option("--learning-rate", default=learning_rate, show_default=True),
        click.option("--weight-decay", default=0.01, show_default=True),
        click.option("--warmup-ratio", default=0.1, show_default=True),
        click.option("--group-by-length", is_flag=True,
                     help="Batch texts of similar length: faster, but may cost accuracy when length tracks the label."),
        click.option("--early-stopping-patience", type=int,
                     help="Stop after N epochs without a better macro-F1 (micro-F1 for multi-label)."),
        click.option("--seed", default=42, show_default=True),
        click.option("--max-train-samples", type=int, help="Train on a stratified sample of N rows."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint."),
        click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


@cli.command()
@click.option("--model", required=True, help="Hugging Face id or local directory of a BERT-family checkpoint.")
@click.option("--train-file", required=True, type=click.Path(path_type=Path), help="CSV, TSV or JSONL.")
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--val-split", type=float, help="Share of the training rows held out when no --eval-file [0.1].")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--text-pair-column", help="Second text of sentence-pair tasks.")
@click.option("--labels", help="Comma-separated label order (default: sorted).")
@click.option("--multi-label", is_flag=True,
              help="Each text carries zero or more labels: the label cell joins them with --label-separator (JSONL: "
                   "also a list); an empty cell is a text with none.")
@click.option("--label-separator", default="|", show_default=True, help="Joins the labels of a multi-label cell.")
@click.option("--label-columns", help="Multi-label, one 0/1 column per label: the columns' names, comma-separated.")
@click.option("--tune-thresholds", is_flag=True,
              help="Multi-label: set each label's threshold to maximize its F1 on the eval data (else 0.5); the "
                   "figures reported on those data are then optimistic.")
@click.option("--max-length", default=128, show_default=True, help="Longer texts are truncated.")
@click.option("--freeze-encoder", is_flag=True, help="Train the classification head only.")
@click.option("--drop-empty", is_flag=True, help="Skip rows with an empty text or label instead of failing.")
@_training_options(epochs=3.0, learning_rate=2e-5)
def finetune(labels: str | None, label_columns: str | None, as_json: bool, **options: object) -> None:
    """Fine-tune a checkpoint on a labelled CSV/TSV/JSONL file."""
    from bertdeploy.build.train import FinetuneOptions
    from bertdeploy.build.train import finetune as run

    with user_errors():
        result = run(FinetuneOptions(labels=_names(labels), label_columns=_names(label_columns), **options))
    if _rank() == 0:
        click.echo(_to_json(result) if as_json else render_finetune(result))


def _names(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",")] if value else None


def _figures(figures: dict) -> str:
    """'accuracy 0.9500, macro-F1 0.9499' (or micro-F1, macro-F1, subset accuracy)."""
    from bertdeploy.labels import METRIC_NAMES

    return ", ".join(f"{METRIC_NAMES[k]} {v:.4f}" for k, v in figures.items())


def render_finetune(result) -> str:
    from bertdeploy.labels import METRIC_NAMES

    widths = {k: max(8, len(METRIC_NAMES[k])) for k in result.figures}
    lines = [f"{'epoch':>6}  {'train loss':>10}  {'eval loss':>9}  "
             + "  ".join(f"{METRIC_NAMES[k]:>{w}}" for k, w in widths.items())]
    for row in result.epochs:
        mark = "  <- best" if row["epoch"] == result.best_epoch else ""
        train_loss = f"{row['train_loss']:.4f}" if row["train_loss"] is not None else "-"
        lines.append(f"{row['epoch']:>6g}  {train_loss:>10}  {row['eval_loss']:>9.4f}  "
                     + "  ".join(f"{row[k]:>{w}.4f}" for k, w in widths.items()) + mark)
    lines += ["", *_per_class_table(result.per_class, "label" if result.multi_label else "class")]
    lines += ["", f"{result.train_samples} training texts, {result.eval_samples} held out, "
                  f"{result.train_samples_per_second:.1f} samples/s"]
    if result.multi_label:
        thresholds = ", ".join(f"{label} {t:.3f}" for label, t in result.thresholds.items())
        if result.thresholds_tuned:
            lines.append(f"thresholds tuned on the {result.eval_samples} held-out texts: {thresholds}; the figures "
                         "on those texts are optimistic (at 0.5: " + _figures(result.figures_at_default) + ")")
        else:
            lines.append(f"thresholds: {thresholds}")
    lines.append(f"saved {result.output_dir} ({_figures(result.figures)}, epoch {result.best_epoch:g})")
    return "\n".join(lines)


def _per_class_table(per_class: dict, title: str = "class") -> list[str]:
    width = max(len(title), *(len(label) for label in per_class))
    lines = [f"{title:<{width}}  precision  recall      f1  support"]
    for label, figures in per_class.items():
        lines.append(f"{label:<{width}}  {figures['precision']:>9.4f}  {figures['recall']:>6.4f}  "
                     f"{figures['f1']:>6.4f}  {figures['support']:>7}")
    return lines


@cli.command()
@click.argument("teacher_dir", type=click.Path(path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--layers", callback=lambda ctx, param, value: _layers(value), metavar="N|I,J,..",
              help="Keep N of the teacher's encoder layers (evenly spaced, first and last kept), or the layers "
                   "numbered I,J,.. (from 0), with their weights, the embeddings and the head.")
@click.option("--student", help="Or train this smaller checkpoint (Hugging Face id or directory) on the teacher's "
                                "targets, with its own tokenizer.")
@click.option("--train-file", type=click.Path(path_type=Path), help="Labelled data (default: the teacher's).")
@click.option("--unlabeled-file", type=click.Path(path_type=Path),
              help="In-domain texts without labels (CSV/TSV/JSONL text column, or one per line), which the teacher "
                   "labels with soft targets: what usually lets a student match its teacher.")
@click.option("--temperature", default=2.0, show_default=True, help="Softens both distributions in the KL term.")
@click.option("--alpha", default=0.5, show_default=True,
              help="Share of the KL term in the loss on labelled rows (the rest: cross-entropy on the gold label).")
@click.option("--max-accuracy-drop", default=1.0, show_default=True,
              help="Points of accuracy the student may lose against its teacher on the eval data and still be saved.")
@_training_options(epochs=5.0, learning_rate=1e-4)
def distill(teacher_dir: Path, output_dir: Path, layers: int | list[int] | None, student: str | None,
            train_file: Path | None, unlabeled_file: Path | None, temperature: float, alpha: float,
            max_accuracy_drop: float, as_json: bool,
            **training: object) -> None:
    """Train a smaller student of a fine-tuned model on its soft targets."""
    from bertdeploy.build.distill import DistillOptions
    from bertdeploy.build.distill import distill as run

    with user_errors():
        result = run(DistillOptions(teacher_dir, output_dir, layers, student, train_file, unlabeled_file, temperature,
                                    alpha, max_accuracy_drop, {k: v for k, v in training.items() if v is not None}))
    if _rank() == 0:
        click.echo(_to_json(result) if as_json else render_distill(result))


def _layers(value: str | None) -> int | list[int] | None:
    """--layers: a count, or a comma-separated list of layer numbers."""
    if value is None:
        return None
    try:
        return int(value) if "," not in value else [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of layers (3) or layer numbers (0,2,5)") from None


def render_distill(result) -> str:
    """Teacher and student side by side: layers, parameters, accuracy, macro-F1, agreement, PyTorch latency."""
    lines = [f"{'model':<8} {'layers':>6} {'parameters':>11} {'accuracy':>9} {'macro-F1':>9} {'agreement':>10} "
             f"{'batch 1':>9} {'batch 8':>9}"]
    for name in ("teacher", "student"):
        figures, latency = result.figures[name], result.latency_ms[name]
        agreement = f"{figures['agreement']:>10.2%}" if "agreement" in figures else f"{'-':>10}"
        lines.append(f"{name:<8} {result.depth[name]:>6} {result.parameters[name] / 1e6:>10.1f}M "
                     f"{figures['accuracy']:>9.4f} {figures['macro_f1']:>9.4f} {agreement} "
                     f"{latency['batch_1']:>7.1f}ms {latency['batch_8']:>7.1f}ms")
    speed, student = result.speedups(), result.student
    kept = f"the teacher's layers {', '.join(map(str, result.layers))}" if result.layers else "its own layers"
    lines += ["", f"student ({kept}): {_figures(student.figures)}, "
                  f"{0.0 - result.figures['student']['accuracy_drop']:+.2f} points against the teacher (epoch "
                  f"{student.best_epoch:g})",
              f"speed-up over the teacher (PyTorch fp32, the same texts, interleaved): {speed['batch_1']:.2f}x at "
              f"batch 1, {speed['batch_8']:.2f}x at batch 8",
              f"{student.train_samples} labelled and {result.unlabeled_texts} unlabelled training texts, "
              f"{student.eval_samples} held out",
              f"saved {student.output_dir}: export it as any fine-tuned model"]
    return "\n".join(lines)


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--optimize", type=click.Choice(["O1", "O2", "O3", "O4"]),
              help="Add a graph-optimized variant (O4: fp16, needs --device cuda).")
@click.option("--quantize", multiple=True, type=click.Choice(["int8", "int8-static", "fp16", "int8-ov", "none"]),
              help="Add a quantized variant; repeat for several. int8-ov: INT8 for OpenVINO (NNCF); none: fp32 "
                   "only. Default: int8, and int8-ov where NNCF is installed (fp16 on CUDA).")
@click.option("--openvino/--no-openvino", default=None,
              help="Also ship the fp32 graph on the OpenVINO runtime (fp32-ov; bf16 compute where the CPU has it). "
                   "Default: where OpenVINO is installed, unless --quantize names the variants.")
@click.option("--quant-preset", default="auto", show_default=True,
              type=click.Choice(["auto", "avx2", "avx512", "avx512_vnni", "arm64"]),
              help="The CPU the INT8 kernels target; auto reads this CPU's flags.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="INT8 weight scales.")
@click.option("--calibration-file", type=click.Path(path_type=Path),
              help="Texts for int8-static (default: the training file).")
@click.option("--calibration-samples", default=300, show_default=True)
@click.option("--calibration-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "entropy", "percentile"]))
@click.option("--eval-file", type=click.Path(path_type=Path),
              help="Labelled data to score every variant (default: the training run's eval data).")
@click.option("--eval-samples", default=2000, show_default=True, help="Score a stratified sample; 0 for all rows.")
@click.option("--max-accuracy-drop", default=1.0, show_default=True,
              help="Points of accuracy a variant may lose against PyTorch and still ship.")
@click.option("--opset", type=int, help="ONNX opset (default: Optimum's choice).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(quantize: tuple[str, ...], as_json: bool, **options: object) -> None:
    """Export a fine-tuned model to ONNX variants, checked against PyTorch."""
    from bertdeploy.build.export import ExportOptions
    from bertdeploy.build.export import export as run

    quiet = logging.getLogger("bertdeploy").level > logging.INFO
    with user_errors():
        result = run(ExportOptions(quantize=list(quantize) or None, progress=not quiet, **options))
    click.echo(_to_json(result) if as_json else render_export(result))


def render_export(result) -> str:
    """One row per variant: size, parity with PyTorch, accuracy, speed; refused ones with the reason."""
    from bertdeploy.labels import METRIC_NAMES

    fp32_size = next(v.size_bytes for v in result.variants if v.name == "fp32")
    batches = ("batch_1", "batch_8", "batch_32")
    metric, drop = result.metric, f"{result.metric}_drop"
    difference = "max|dscore|" if result.multi_label else "max|dlogit|"
    lines = [f"{'variant':<12} {'runtime':<15} {'size':>9} {'of fp32':>7} {difference:>11} {'agree':>7} "
             f"{METRIC_NAMES[metric]:>8} {'drop':>6} {'float':>6} " + " ".join(f"{b.replace('_', ''):>8}"
                                                                            for b in batches)]
    for name, f in result.pytorch.items():
        accuracy = _accuracy_cells(f[metric], f[drop])
        mark = "" if f["kept_accuracy"] else "  lost accuracy: not a baseline"
        lines.append(f"{name:<12} {'pytorch':<15} {'':>9} {'':>7} {'':>11} {f['agreement']:>7.2%} {accuracy} {'-':>6} "
                     f"{_latency_cells(f.get('latency_ms'), batches)}{mark}")
    for v in result.variants:
        accuracy = _accuracy_cells(*(v.eval[metric], v.eval[drop]) if v.eval else (None, None))
        speed = _latency_cells(v.latency_ms, batches)
        runtime = f"openvino {v.precision}" if v.precision else v.backend
        kept = _kept_float(v.quantization)
        mark = "  <- default" if v.name == result.default_variant else "" if v.shipped else "  REFUSED"
        lines.append(f"{v.name:<12} {runtime:<15} {v.size_bytes / 1e6:>7.1f}MB {v.size_bytes / fp32_size:>7.0%} "
                     f"{_parity_cells(v)} {accuracy} {kept:>6} "
                     f"{speed}{mark}")
    lines.append("")
    for v in result.variants:
        if not v.shipped:
            lines.append(f"refused {v.name}: {v.reason}")
        elif v.quantization and v.quantization.get("float_nodes"):
            lines.append(f"{v.name}: kept the {_kept_float(v.quantization)} weight nodes most sensitive to "
                         "quantization in float to hold the bound (named in the manifest)")
    for v in result.variants:
        if v.fused and any(v.fused.values()):
            counts = ", ".join(f"{n} {kind.replace('_', '-')}" for kind, n in v.fused.items() if n)
            lines.append(f"{v.name}: fused {counts}")
    speedups = result.speedups()
    if speedups:
        cells = [f"batch {batch.split('_')[1]} {name} {ratio:.1f}x {base}"
                 for batch, (name, ratio, base) in speedups.items()]
        lines.append("fastest against the fastest PyTorch that kept accuracy: " + "; ".join(cells))
    if result.guard != "agreement":
        lines.append(f"scored on {result.texts} labelled texts from {result.eval_source}"
                     + (f"; the guard goes by {METRIC_NAMES[metric]}" if result.multi_label else ""))
    else:
        lines.append(f"no labelled eval data: judged by agreement with PyTorch on {result.texts} texts "
                     f"from {result.eval_source}")
    if result.auto:
        lines.append(f"auto: {_routes(result.auto)} (bench measures it again on the serving machine)")
    lines.append(f"saved {result.output_dir} (default variant: {result.default_variant})")
    return "\n".join(lines)


def _parity_cells(variant) -> str:
    """max|dlogit| and agreement, or dashes for a variant that could not run."""
    if not variant.ran:
        return f"{'-':>11} {'-':>7}"
    return f"{variant.parity['max_abs_diff']:>11.2g} {variant.parity['label_agreement']:>7.2%}"


def _accuracy_cells(accuracy: float | None, drop: float | None) -> str:
    return f"{accuracy:>8.4f} {drop:>+6.2f}" if accuracy is not None else f"{'-':>8} {'-':>6}"


def _latency_cells(latency_ms: dict | None, batches: tuple[str, ...]) -> str:
    return " ".join(f"{latency_ms[b]:>6.1f}ms" if latency_ms and b in latency_ms else f"{'-':>8}" for b in batches)


def _kept_float(quantization: dict | None) -> str:
    """Weight nodes a quantized variant kept in float, of those ranked: "6/36"; "-" for float variants."""
    if not quantization:
        return "-"
    kept = len(quantization.get("float_nodes", []))
    return f"{kept}/{quantization['float_candidates']}" if "float_candidates" in quantization else str(kept)


def _routes(auto: dict) -> str:
    """The manifest's auto ranges in words."""
    from bertdeploy.runtime.routing import describe_routes

    return describe_routes([(r["max_tokens"], f"{r['variant']} ({r['backend']})") for r in auto["routes"]])


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here (default: stdout).")
@click.option("--variant", help="Run this exported variant only (default: see --backend).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "onnxruntime", "openvino"]),
              help="auto: each batch on the variant measured fastest for its size (see `bench`).")
@click.option("--text-column", help="Column holding the text (default: the one the model was trained on).")
@click.option("--text-pair-column", help="Column holding the second text, for models trained on pairs.")
@click.option("--label-column", help="Score the predictions against this column (default: the training one, "
                                     "when the input has it).")
@click.option("--all-scores", is_flag=True, help="Add every class's score, not only the best one's.")
@click.option("--max-batch-tokens", type=int,
              help="Texts per batch x padded length [1024 on the CPU, 16384 on a GPU].")
@_runtime_options
@click.option("--long-text", default="truncate", show_default=True, type=click.Choice(["truncate", "chunk"]),
              help="Texts over the max length: cut, or split into overlapping windows and average.")
@click.option("--input-format", type=click.Choice(["csv", "tsv", "jsonl", "text"]),
              help="Default: from the extension; text (one per line) for - and .txt.")
@click.option("--format", "output_format", type=click.Choice(["csv", "tsv", "jsonl"]),
              help="Output format (default: from --output's extension, else the input's).")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="ray: read and predict with Ray Data actors, on this machine or a cluster (the ray extra).")
@click.option("--workers", type=int, help="Ray Data actors, each with --threads threads [the cluster's CPUs / "
                                          "threads].")
@click.option("--ray-address", help="A running Ray cluster (default: $RAY_ADDRESS, else a local one for this run).")
def predict(artifact_dir: Path, input: str, **options: object) -> None:
    """Label every text of a CSV, TSV, JSONL or text file (INPUT, or - for stdin)."""
    from bertdeploy.predict.rows import PredictFileOptions

    stdin, stdout = click.get_binary_stream("stdin"), click.get_text_stream("stdout")
    progress = logging.getLogger("bertdeploy").level <= logging.INFO
    with user_errors():
        settings = PredictFileOptions(artifact_dir, input, progress=progress, **options)
        if settings.engine == "ray":
            from bertdeploy.predict.ray_engine import predict_file_ray

            result = predict_file_ray(settings, stdout)
        else:
            from bertdeploy.predict.local import predict_file

            result = predict_file(settings, stdin, stdout)
    report = render_predict(result)
    click.echo(report, err=result.output == "<stdout>")


def render_predict(result) -> str:
    """The summary line, and the scores when the input had labels."""
    lines = []
    if result.report is not None:
        report = result.report
        from bertdeploy.labels import figure_names

        multi_label = "micro_f1" in report
        figures = figure_names(multi_label)
        lines += _per_class_table(report["per_class"], "label" if multi_label else "class")
        lines += [f"{_figures({k: report[k] for k in figures})} over {result.scored} "
                  f"rows labelled in {result.label_column!r}"]
        if result.unknown_labels:
            unknown = ", ".join(f"{label!r} x{n}" for label, n in result.unknown_labels.items())
            lines.append(f"not scored: {unknown} (labels the model does not have)")
        if result.unlabelled:
            lines.append(f"not scored: {result.unlabelled} rows with{'out a' if multi_label else ' an empty'} label")
    lines.append(f"predicted {result.rows} text{'' if result.rows == 1 else 's'} with {result.variant} "
                 f"in {result.seconds:.1f}s "
                 f"({result.texts_per_second:.0f} texts/s) -> {result.output}")
    return "\n".join(lines)


def _numbers(value: str, name: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name}: {value!r} is not a comma-separated list of whole numbers") from None


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--pytorch-model", type=click.Path(path_type=Path),
              help="The PyTorch model to compare with (default: the one the manifest names).")
@click.option("--eval-file", type=click.Path(path_type=Path),
              help="Real texts for natural-length timings, and labels for accuracy.")
@click.option("--variants", help="Comma-separated variants (default: all; on CUDA all but INT8).")
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--seq-lengths", default="32,128", show_default=True, help="Fixed lengths, in tokens.")
@click.option("--runs", default=100, show_default=True, help="Timed calls per engine and cell.")
@click.option("--warmup", default=10, show_default=True, help="Untimed calls first.")
@click.option("--threads", type=int, help="Threads for every engine (default: the CPUs this process may use).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--eval-samples", default=2000, show_default=True, help="Score at most this many eval texts.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), help="Write every figure here as JSON.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path), help="Write charts here (PNG).")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Write the fastest variant per range of batch sizes in padded tokens (texts x padded length) "
                   "into the manifest, for --backend auto.")
def bench(variants: str | None, batch_sizes: str, seq_lengths: str, json_file: Path | None, plot_file: Path | None,
          **options: object) -> None:
    """Time PyTorch and every exported variant on the same inputs."""
    from bertdeploy.bench.run import BenchOptions, report
    from bertdeploy.bench.run import bench as run

    progress = logging.getLogger("bertdeploy").level <= logging.INFO
    with user_errors():
        for path in (json_file, plot_file):
            if path is not None and not path.absolute().parent.is_dir():
                raise BertdeployError(f"{path}: its directory does not exist")
        if plot_file is not None:
            report.check_plotting()
        result = run(BenchOptions(
            variants=variants.split(",") if variants else None, batch_sizes=_numbers(batch_sizes, "--batch-sizes"),
            seq_lengths=_numbers(seq_lengths, "--seq-lengths"), progress=progress, **options))
        if json_file is not None:
            report.write_json(result, json_file)
        if plot_file is not None:
            report.plot(result, plot_file)
    click.echo(render_bench(result))


def _marked(values: list[float | None], spec: str, width: int, lower: bool) -> list[str]:
    """Each value formatted to `width`, the best one followed by '*'."""
    present = [v for v in values if v is not None]
    best = (min if lower else max)(present) if present else None
    return [f"{'-' if v is None else format(v, spec)}{'*' if v is not None and v == best else ' '}".rjust(width + 1)
            for v in values]


def _baselines(timings) -> str:
    """The speed-up baseline in words: the fastest PyTorch engine that kept accuracy, in each cell."""
    names = list(dict.fromkeys(t.baseline for t in timings))
    if len(names) == 1:
        return f"{names[0]} (the fastest PyTorch that kept accuracy)"
    return "the cell's fastest PyTorch that kept accuracy (" + ", ".join(names) + ": speed-up 1.00)"


def render_bench(result) -> str:
    """Latency and throughput per input kind and batch size; then size, load time, memory and accuracy."""
    m, engines = result.machine, result.engines
    flags = f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k in ("onnxruntime", "onnxruntime-gpu",
                                                                                "torch", "openvino"))
    width = max(len(e.name) for e in result.engines)
    columns = [(f"{stat} ms", f"{stat}_ms", ".2f", True) for stat in ("mean", "p50", "p90", "p95", "p99")]
    columns += [("seq/s", "sequences_per_s", ".1f", False), ("tok/s", "tokens_per_s", ",.0f", False),
                ("speed-up", "speedup", ".2f", False)]  # (heading, field, format, lower is better)
    lines = [f"{result.device} {m.get('gpu', m['cpu'])}{flags}, {result.threads} threads; {versions}",
             f"{result.runs} timed calls per cell after {result.warmup} warm-up, engines taking turns; "
             f"* = best in its group; speed-up = {_baselines(result.timings)}'s p50 / p50", "",
             f"{'inputs':<12} {'batch':>5}  {'engine':<{width}} " + " ".join(f"{c[0]:>10}" for c in columns)]
    groups = list(dict.fromkeys((t.inputs, t.batch_size) for t in result.timings))
    for inputs, batch in groups:
        rows = [t for t in result.timings if (t.inputs, t.batch_size) == (inputs, batch)]
        cells = [_marked([getattr(t, attr) for t in rows], spec, 9, lower) for _, attr, spec, lower in columns]
        for i, t in enumerate(rows):
            head = f"{inputs:<12} {batch:>5}" if i == 0 else " " * 18
            lines.append(f"{head}  {t.engine:<{width}} " + " ".join(c[i] for c in cells))
    metric = "micro-F1" if result.multi_label else "accuracy"
    lines += ["", f"{'engine':<{width}}  {'runtime':<11} {'kind':<11} {'size MB':>9} {'load s':>9} {'peak RSS MB':>12} "
                  f"{metric:>9} {'macro-F1':>9} {'agreement':>10}"]
    others = [None, *(e.agreement for e in engines[1:])]  # the first engine is the reference
    cells = [_marked([e.size_bytes / 1e6 for e in engines], ".1f", 8, True),
             _marked([e.load_s for e in engines], ".2f", 8, True),
             _marked([e.peak_rss_mb for e in engines], ".0f", 11, True),
             _marked([e.headline for e in engines], ".4f", 8, False),
             _marked([e.macro_f1 for e in engines], ".4f", 8, False),
             _marked(others, ".4f", 9, False)]
    for i, e in enumerate(engines):
        agreement = cells[5][i] if i else f"{'(reference)':>10}"
        lines.append(f"{e.name:<{width}}  {e.backend:<11} {e.kind:<11} " + " ".join(c[i] for c in cells[:5]) + " "
                     + agreement)
    if result.eval_file:
        lines.append(f"\n{metric} and natural lengths: {result.eval_texts} texts from {result.eval_file}; "
                     "load s and peak RSS: a fresh process per engine")
    if result.auto:
        lines.append(f"recorded for --backend auto in {Path(result.artifact_dir) / 'manifest.json'}: "
                     f"{_routes(result.auto)}")
    return "\n".join(lines)


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to accept other machines.")
@click.option("--port", default=8000, show_default=True, help="0 takes a free port, named in the log (local engine).")
@click.option("--variant", help="Run this exported variant only (default: see --backend).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "onnxruntime", "openvino"]),
              help="auto: each batch on the variant measured fastest for its size (see `bench`).")
@click.option("--max-batch-tokens", type=int,
              help="Texts per model run x padded length [1024 on the CPU, 16384 on a GPU].")
@click.option("--max-batch-size", default=64, show_default=True,
              help="Texts of concurrent requests batched together; 1 turns batching off.")
@click.option("--max-wait-ms", default=5.0, show_default=True, help="How long a batch waits for more texts.")
@click.option("--max-queue", default=1024, show_default=True,
              help="Texts waiting to be batched before requests get 429 (the local engine).")
@click.option("--max-texts-per-request", default=256, show_default=True)
@click.option("--max-body-bytes", default=1_000_000, show_default=True)
@click.option("--api-key-env", metavar="NAME",
              help="Require 'Authorization: Bearer <key>', the key read from this environment variable.")
@_runtime_options
@click.option("--model-name", help="The model's name in the v2 protocol (default: the directory's name).")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="ray: a Ray Serve deployment, on this machine or a cluster (the ray extra).")
@click.option("--replicas", default=1, show_default=True, help="ray: replicas, each a model with --threads threads.")
@click.option("--min-replicas", default=1, show_default=True, help="ray: with --max-replicas, autoscale from here.")
@click.option("--max-replicas", type=int, help="ray: autoscale up to this many replicas on ongoing requests.")
@click.option("--target-ongoing-requests", default=2.0, show_default=True,
              help="ray: the ongoing requests per replica autoscaling aims at.")
@click.option("--max-ongoing-requests", default=32, show_default=True,
              help="ray: requests one replica holds at once; Serve batches among them.")
@click.option("--max-queued-requests", default=1024, show_default=True,
              help="ray: requests waiting for a replica before Serve refuses more (-1: no limit).")
@click.option("--ray-address", help="ray: a running cluster (default: $RAY_ADDRESS, else a local one).")
def serve(**options: object) -> None:
    """Serve an exported model over HTTP with dynamic batching (Ctrl-C or SIGTERM to stop)."""
    from bertdeploy.serve.httpapi import ServeOptions

    with user_errors():
        settings = ServeOptions(**options)
        if settings.engine == "ray":
            from bertdeploy.runtime.raycluster import import_ray

            import_ray()  # names the extra when Ray is missing
            from bertdeploy.serve.ray_engine import serve_ray as run
        else:
            from bertdeploy.serve.local import serve as run
        run(settings)


def main() -> None:
    cli(prog_name="bertdeploy")
