"""The `bertdeploy` command: parse options, call one library function, render its result.

Results go to stdout (a table, or JSON with --json); logs and progress bars go to stderr.
A `BertdeployError` becomes a one-line `Error: ...` with exit code 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

from bertdeploy import __version__, cli_options, defaults, render
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


@cli.command()
@click.option("--model", required=True, help="Hugging Face id or local directory of a BERT-family checkpoint.")
@click.option("--train-file", required=True, type=click.Path(path_type=Path), help="CSV, TSV or JSONL.")
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--val-split", type=float,
              help=f"Share of the training rows held out when no --eval-file [{defaults.VAL_SPLIT}].")
@click.option("--text-column", default=defaults.TEXT_COLUMN, show_default=True)
@click.option("--label-column", default=defaults.LABEL_COLUMN, show_default=True)
@click.option("--text-pair-column", help="Second text of sentence-pair tasks.")
@click.option("--labels", help="Comma-separated label order (default: sorted).")
@click.option("--multi-label", is_flag=True,
              help="Each text carries zero or more labels: the label cell joins them with --label-separator (JSONL: "
                   "also a list); an empty cell is a text with none.")
@click.option("--label-separator", default=defaults.LABEL_SEPARATOR, show_default=True,
              help="Joins the labels of a multi-label cell.")
@click.option("--label-columns", help="Multi-label, one 0/1 column per label: the columns' names, comma-separated.")
@click.option("--tune-thresholds", is_flag=True,
              help="Multi-label: set each label's threshold to maximize its F1 on the eval data (else 0.5); the "
                   "figures reported on those data are then optimistic.")
@click.option("--max-length", default=defaults.MAX_LENGTH, show_default=True, help="Longer texts are truncated.")
@click.option("--freeze-encoder", is_flag=True, help="Train the classification head only.")
@click.option("--drop-empty", is_flag=True, help="Skip rows with an empty text or label instead of failing.")
@cli_options.training(epochs=defaults.EPOCHS, learning_rate=defaults.LEARNING_RATE)
def finetune(labels: str | None, label_columns: str | None, as_json: bool, **options: object) -> None:
    """Fine-tune a checkpoint on a labelled CSV/TSV/JSONL file."""
    from bertdeploy.builder.train import FinetuneOptions
    from bertdeploy.builder.train import finetune as run

    with user_errors():
        result = run(FinetuneOptions(labels=_names(labels), label_columns=_names(label_columns), **options))
    if _rank() == 0:
        click.echo(render.to_json(result) if as_json else render.finetune(result))


def _names(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",")] if value else None


@cli.command()
@click.argument("teacher_dir", type=click.Path(path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--layers", callback=lambda ctx, param, value: _layers(value), metavar="N|I,J,..",
              help="Keep N of the teacher's encoder layers (evenly spaced, first and last kept), or the layers "
                   "numbered I,J,.. (from 0), with their weights, the embeddings and the head.")
@click.option("--student", help="Or train this smaller checkpoint (Hugging Face id or directory) on the teacher's "
                                "targets, with its own tokenizer.")
@click.option("--static", is_flag=True,
              help="Or a student with no transformer: a vector per token from the teacher's encoder (model2vec), "
                   "their mean, a small head. Far faster, at a cost in accuracy the guard measures.")
@click.option("--static-dims", default=defaults.STATIC_DIMS, show_default=True,
              help="--static: dimensions of the token vectors (PCA of the teacher's).")
@click.option("--train-file", type=click.Path(path_type=Path), help="Labelled data (default: the teacher's).")
@click.option("--unlabeled-file", type=click.Path(path_type=Path),
              help="In-domain texts without labels (CSV/TSV/JSONL text column, or one per line), which the teacher "
                   "labels with soft targets: what usually lets a student match its teacher.")
@click.option("--temperature", default=defaults.TEMPERATURE, show_default=True,
              help="Softens both distributions in the KL term.")
@click.option("--alpha", default=defaults.ALPHA, show_default=True,
              help="Share of the KL term in the loss on labelled rows (the rest: cross-entropy on the gold label).")
@click.option("--max-accuracy-drop", default=defaults.MAX_ACCURACY_DROP, show_default=True,
              help="Points of accuracy (micro-F1 for a multi-label teacher) the student may lose against its "
                   "teacher on the eval data and still be saved.")
@cli_options.training(epochs=None, learning_rate=None, defaults_shown=(
    f"{defaults.DISTILL_EPOCHS:g}; {defaults.STATIC_EPOCHS:g} with --static",
    f"{defaults.DISTILL_LEARNING_RATE:g}; {defaults.STATIC_LEARNING_RATE:g} with --static"))
def distill(teacher_dir: Path, output_dir: Path, layers: int | list[int] | None, student: str | None, static: bool,
            static_dims: int, train_file: Path | None, unlabeled_file: Path | None, temperature: float, alpha: float,
            max_accuracy_drop: float, as_json: bool,
            **training: object) -> None:
    """Train a smaller student of a fine-tuned model on its soft targets."""
    from bertdeploy.builder.distill import DistillOptions
    from bertdeploy.builder.distill import distill as run

    with user_errors():
        result = run(DistillOptions(teacher_dir, output_dir, layers=layers, student=student, static=static,
                                    static_dims=static_dims, train_file=train_file, unlabeled_file=unlabeled_file,
                                    temperature=temperature, alpha=alpha, max_accuracy_drop=max_accuracy_drop,
                                    training={k: v for k, v in training.items() if v is not None}))
    if _rank() == 0:
        click.echo(render.to_json(result) if as_json else render.distill(result))


def _layers(value: str | None) -> int | list[int] | None:
    """--layers: a count, or a comma-separated list of layer numbers."""
    if value is None:
        return None
    try:
        return int(value) if "," not in value else [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of layers (3) or layer numbers (0,2,5)") from None


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--optimize", type=click.Choice(defaults.OPTIMIZATION_LEVELS),
              help="Add a graph-optimized variant (O4: fp16, needs --device cuda).")
@click.option("--quantize", multiple=True, type=click.Choice([*defaults.QUANTIZATIONS, defaults.NO_QUANTIZATION]),
              help="Add a quantized variant; repeat for several. int8-ov: INT8 for OpenVINO (NNCF); none: fp32 "
                   "only. Default: int8, and int8-ov where NNCF is installed (fp16 on CUDA).")
@click.option("--openvino/--no-openvino", default=None,
              help="Also ship the fp32 graph on the OpenVINO runtime (fp32-ov; bf16 compute where the CPU has it and "
                   "the guard accepts it, else f32). Default: where OpenVINO is installed, unless --quantize names "
                   "the variants.")
@click.option("--quant-preset", default=defaults.AUTO, show_default=True,
              type=click.Choice([defaults.AUTO, *defaults.QUANT_PRESETS]),
              help="The CPU the INT8 kernels target; auto reads this CPU's flags.")
@click.option("--per-channel/--per-tensor", default=defaults.PER_CHANNEL, show_default=True,
              help="INT8 MatMul weight scales (embedding tables: a scale per row).")
@click.option("--calibration-file", type=click.Path(path_type=Path),
              help="Texts for int8-static (default: the training file).")
@click.option("--calibration-samples", default=defaults.CALIBRATION_SAMPLES, show_default=True)
@click.option("--calibration-method", default=defaults.CALIBRATION_METHOD, show_default=True,
              type=click.Choice(list(defaults.CALIBRATION_METHODS)))
@click.option("--eval-file", type=click.Path(path_type=Path),
              help="Labelled data to score every variant (default: the training run's eval data).")
@click.option("--eval-samples", default=defaults.EVAL_SAMPLES, show_default=True,
              help="Score a stratified sample; 0 for all rows.")
@click.option("--max-accuracy-drop", default=defaults.MAX_ACCURACY_DROP, show_default=True,
              help="Points of accuracy a variant may lose against PyTorch and still ship.")
@click.option("--opset", type=int, help="ONNX opset (default: 18).")
@click.option("--exporter", default=defaults.EXPORTER, show_default=True, type=click.Choice(defaults.EXPORTERS),
              help="PyTorch's exporter: the TorchScript tracer, or torch.export (fuses less: docs/export.md).")
@click.option("--device", default=defaults.DEVICE, show_default=True, type=click.Choice(defaults.DEVICES))
@click.option("--trim-vocabulary", is_flag=True,
              help="Keep only the tokens of the training texts (or --trim-texts) and every single character: a "
                   "multilingual model shipped for one language loses most of its size. Judged like a variant.")
@click.option("--trim-texts", multiple=True, type=click.Path(path_type=Path),
              help="Texts whose vocabulary --trim-vocabulary keeps, instead of the training file (repeatable; "
                   "unlabelled is fine).")
@cli_options.ALLOW_PICKLE
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(quantize: tuple[str, ...], as_json: bool, **options: object) -> None:
    """Export a fine-tuned model to ONNX variants, checked against PyTorch."""
    from bertdeploy.builder.export import ExportOptions
    from bertdeploy.builder.export import export as run

    quiet = logging.getLogger("bertdeploy").level > logging.INFO
    with user_errors():
        result = run(ExportOptions(quantize=list(quantize) or None, progress=not quiet, **options))
    click.echo(render.to_json(result) if as_json else render.export(result))


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here (default: stdout).")
@cli_options.runtime
@click.option("--text-column", help="Column holding the text (default: the one the model was trained on).")
@click.option("--text-pair-column", help="Column holding the second text, for models trained on pairs.")
@click.option("--label-column", help="Score the predictions against this column (default: the training one, "
                                     "when the input has it).")
@click.option("--all-scores", is_flag=True, help="Add every class's score, not only the best one's.")
@click.option("--long-text", default=defaults.TRUNCATE, show_default=True, type=click.Choice(defaults.LONG_TEXT),
              help="Texts over the max length: cut, or split into overlapping windows and average.")
@click.option("--input-format", type=click.Choice(defaults.INPUT_FORMATS),
              help="Default: from the extension; text (one per line) for - and .txt.")
@click.option("--format", "output_format", type=click.Choice(defaults.OUTPUT_FORMATS),
              help="Output format (default: from --output's extension, else the input's).")
@click.option("--engine", default=defaults.LOCAL, show_default=True, type=click.Choice(defaults.ENGINES),
              help="ray: read and predict with Ray Data actors, on this machine or a cluster (the ray extra).")
@click.option("--workers", type=int, help="Ray Data actors, each with --threads threads [the cluster's CPUs / "
                                          "threads].")
@click.option("--ray-address", help="A running Ray cluster (default: $RAY_ADDRESS, else a local one for this run).")
def predict(artifact_dir: Path, input: str, **options: object) -> None:
    """Label every text of a CSV, TSV, JSONL or text file (INPUT, or - for stdin)."""
    from bertdeploy.predict import run
    from bertdeploy.predict.rows import PredictFileOptions
    from bertdeploy.runtime.options import RuntimeOptions

    progress = logging.getLogger("bertdeploy").level <= logging.INFO
    stdin, stdout = click.get_binary_stream("stdin"), click.get_text_stream("stdout")  # before stdout is redirected
    with user_errors():
        runtime, rest = RuntimeOptions.split(options)
        settings = PredictFileOptions(artifact_dir, input, runtime=runtime, progress=progress, **rest)
        result = run(settings, stdin, stdout)
    click.echo(render.predict(result), err=result.output == "<stdout>")


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
@click.option("--texts", "texts_file", type=click.Path(path_type=Path),
              help="Time these texts at their natural lengths instead of the eval file's (a sample of real "
                   "traffic, say; the model's text column, or one text per line in a .txt).")
@click.option("--variants", help="Comma-separated variants (default: all; on CUDA all but INT8).")
@click.option("--batch-sizes", default=",".join(map(str, defaults.BENCH_BATCH_SIZES)), show_default=True)
@click.option("--seq-lengths", default=",".join(map(str, defaults.BENCH_SEQ_LENGTHS)), show_default=True,
              help="Fixed lengths, in tokens.")
@click.option("--runs", default=defaults.BENCH_RUNS, show_default=True, help="Timed calls per engine and cell.")
@click.option("--warmup", default=defaults.BENCH_WARMUP, show_default=True, help="Untimed calls first.")
@click.option("--threads", type=int, help="Threads for every engine (default: the CPUs this process may use).")
@click.option("--device", default=defaults.DEVICE, show_default=True, type=click.Choice(defaults.DEVICES))
@click.option("--eval-samples", default=defaults.EVAL_SAMPLES, show_default=True,
              help="Score at most this many eval texts.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), help="Write every figure here as JSON.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path), help="Write charts here (PNG).")
@click.option("--record/--no-record", default=defaults.RECORD_ROUTES, show_default=True,
              help="Write the fastest variant per range of batch sizes in padded tokens (texts x padded length) "
                   "into the manifest, for --backend auto.")
@click.option("--verify/--no-verify", default=defaults.VERIFY, show_default=True,
              help="Refuse a variant or tokenizer file whose sha256 is not the one the manifest records.")
@click.option("--compare", type=click.Path(path_type=Path), multiple=True,
              help="Another exported artifact (a student's teacher, say) to time in the same table; repeatable.")
@cli_options.ALLOW_PICKLE
def bench(variants: str | None, batch_sizes: str, seq_lengths: str, **options: object) -> None:
    """Time PyTorch and every exported variant on the same inputs."""
    from bertdeploy.benchmark.run import BenchOptions
    from bertdeploy.benchmark.run import bench as run

    progress = logging.getLogger("bertdeploy").level <= logging.INFO
    with user_errors():
        result = run(BenchOptions(
            variants=variants.split(",") if variants else None, batch_sizes=_numbers(batch_sizes, "--batch-sizes"),
            seq_lengths=_numbers(seq_lengths, "--seq-lengths"), progress=progress, **options))
    click.echo(render.bench(result))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--max-accuracy-drop", default=defaults.MAX_ACCURACY_DROP, show_default=True,
              help="Points below the teacher's score (on its held-out texts) that the model kept may lose.")
@click.option("--batch-sizes", default=",".join(map(str, defaults.BENCH_BATCH_SIZES)), show_default=True,
              help="The batch sizes that matter to you: a choice per size.")
@click.option("--seq-length", default=128, show_default=True, help="Tokens per text in the timed cells.")
@click.option("--texts", type=click.Path(path_type=Path),
              help="Your real texts: time them at their natural lengths, batch by batch, in place of --seq-length.")
@click.option("--candidates", help="Comma-separated: teacher, static, layers-N (default: the teacher, a static "
                                   "student and layer-cut students at about a half and a third of its depth).")
@click.option("--time-budget", "time_budget_s", type=float, metavar="SECONDS",
              help="Start no candidate past this; the finished ones are kept and timed.")
@click.option("--train-file", type=click.Path(path_type=Path), help="Labelled data (default: the teacher's).")
@click.option("--eval-file", type=click.Path(path_type=Path),
              help="Held-out texts every candidate is scored on (default: the teacher's).")
@click.option("--runs", default=30, show_default=True, help="Timed calls per engine and cell.")
def optimize(batch_sizes: str, **options: object) -> None:
    """Find the fastest model that keeps the teacher's accuracy: students, variants, one timing run, a report."""
    from bertdeploy.optimizer.run import OptimizeOptions
    from bertdeploy.optimizer.run import optimize as run

    with user_errors():
        result = run(OptimizeOptions(batch_sizes=_numbers(batch_sizes, "--batch-sizes"), **options))
    click.echo(render.optimize(result))


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path), required=False)
@click.option("--model-repository", type=click.Path(path_type=Path), metavar="ROOT",
              help="Serve every model of ROOT/<name>/<version>/ in place of ARTIFACT_DIR, with versions, "
                   "load/unload and reloads that drop no request (local engine; docs/serve.md).")
@click.option("--version-policy", default="latest", show_default=True, metavar="latest|latest:N|all",
              help="Which complete versions of each model are served (repository).")
@click.option("--poll", type=float, metavar="SECONDS",
              help="Look at ROOT this often and load new or changed versions, unload removed models (repository).")
@click.option("--max-loaded-models", type=int, help="Refuse to hold more model versions at once (repository).")
@click.option("--host", default=defaults.HOST, show_default=True, help="0.0.0.0 to accept other machines.")
@click.option("--port", default=defaults.PORT, show_default=True,
              help="0 takes a free port, named in the log (local engine).")
@cli_options.runtime
@click.option("--max-batch-size", default=defaults.SERVE_MAX_BATCH_SIZE, show_default=True,
              help="Texts of concurrent requests batched together; 1 turns batching off.")
@click.option("--max-wait-ms", default=defaults.MAX_WAIT_MS, show_default=True,
              help="How long a batch waits for more texts.")
@click.option("--max-queue", default=defaults.MAX_QUEUE, show_default=True,
              help="Texts waiting to be batched before requests get 429 (the local engine).")
@click.option("--max-texts-per-request", default=defaults.MAX_TEXTS_PER_REQUEST, show_default=True)
@click.option("--max-body-bytes", default=defaults.MAX_BODY_BYTES, show_default=True)
@click.option("--request-timeout", default=defaults.REQUEST_TIMEOUT, show_default=True,
              help="Seconds from a request's arrival to its answer; then 504, and its texts leave the queue (local).")
@click.option("--body-timeout", default=defaults.BODY_TIMEOUT, show_default=True,
              help="Seconds for a whole request body to arrive; then 408 and the connection closes (local).")
@click.option("--max-concurrent-requests", default=defaults.MAX_CONCURRENT_REQUESTS, show_default=True,
              help="Requests answered at once, health checks and /metrics aside; more get 503 (local).")
@click.option("--drain-delay", default=defaults.DRAIN_DELAY, show_default=True,
              help="On SIGTERM: seconds not ready but still serving, before the listener closes (local).")
@click.option("--drain-timeout", default=defaults.DRAIN_TIMEOUT, show_default=True,
              help="Then the most seconds the requests in flight get to finish (local).")
@click.option("--api-key-env", metavar="NAME",
              help="Require 'Authorization: Bearer <key>', the key read from this environment variable.")
@click.option("--model-name", help="The model's name in the v2 protocol (default: the directory's name).")
@click.option("--engine", default=defaults.LOCAL, show_default=True, type=click.Choice(defaults.ENGINES),
              help="ray: a Ray Serve deployment, on this machine or a cluster (the ray extra).")
@click.option("--replicas", default=defaults.REPLICAS, show_default=True,
              help="ray: replicas, each a model with --threads threads.")
@click.option("--min-replicas", default=defaults.MIN_REPLICAS, show_default=True,
              help="ray: with --max-replicas, autoscale from here.")
@click.option("--max-replicas", type=int, help="ray: autoscale up to this many replicas on ongoing requests.")
@click.option("--target-ongoing-requests", default=defaults.TARGET_ONGOING_REQUESTS, show_default=True,
              help="ray: the ongoing requests per replica autoscaling aims at.")
@click.option("--max-ongoing-requests", default=defaults.MAX_ONGOING_REQUESTS, show_default=True,
              help="ray: requests one replica holds at once; Serve batches among them.")
@click.option("--max-queued-requests", default=defaults.MAX_QUEUED_REQUESTS, show_default=True,
              help="ray: requests waiting for a replica before Serve refuses more (-1: no limit).")
@click.option("--ray-address", help="ray: a running cluster (default: $RAY_ADDRESS, else a local one).")
def serve(**options: object) -> None:
    """Serve exported models over HTTP with dynamic batching.

    ARTIFACT_DIR, an export, or --model-repository ROOT, several. Ctrl-C or SIGTERM stops it."""
    from bertdeploy.runtime.options import RuntimeOptions
    from bertdeploy.serve import run
    from bertdeploy.serve.httpapi import ServeOptions

    with user_errors():
        runtime, rest = RuntimeOptions.split(options)
        run(ServeOptions(runtime=runtime, **rest))


def main() -> None:
    cli(prog_name="bertdeploy")
