"""`bertdeploy predict --engine ray`: bulk inference on Ray Data, on one machine or a cluster.

Ray Data reads the input (CSV/TSV through Arrow with every column kept as text, JSONL and
plain text line by line), `map_batches` runs the torch-free predictor in actors (one model per
actor, `threads` intra-op threads each, as many actors as the cluster's CPUs allow), and the
driver writes the rows back in input order with the same columns, format and scoring as the
single-process `bertdeploy predict`, to a hidden file renamed when complete. Needs the `ray`
extra.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from bertdeploy.artifacts import atomic_file, read_manifest
from bertdeploy.backends import describe_routes
from bertdeploy.bulk import (
    STDIO,
    PredictFileOptions,
    PredictFileResult,
    _cell,
    _check_files,
    _columns,
    _Tally,
    _writer,
)
from bertdeploy.data import iter_rows
from bertdeploy.errors import BertdeployError, DataError
from bertdeploy.predictor import Predictor, choose_routes

logger = logging.getLogger(__name__)

PREDICTED, TRUTH, LINES, FAILED = "__predicted", "__truth", "__lines", "__failed"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BertdeployError("--engine ray needs Ray: pip install 'bertdeploy[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None):
    """Connect to the cluster at `address` (or $RAY_ADDRESS), else start a local one for this run only."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class _Scorer:
    """One Ray Data actor: a Predictor, and the rows it gets back as finished output lines."""

    def __init__(self, options: PredictFileOptions, in_format: str, out_format: str, text_column: str,
                 pair_column: str | None, label_column: str | None, names: dict[str, str]) -> None:
        self.options, self.in_format, self.source = options, in_format, Path(options.input)
        self.text_column, self.pair_column, self.label_column = text_column, pair_column, label_column
        self.predictor = Predictor.load(options.artifact_dir, options.variant, None, options.threads,
                                        options.long_text, options.max_batch_tokens, backend=options.backend)
        self.out_format, self.names = out_format, names

    def __call__(self, batch):
        import pandas as pd

        try:
            return self._score(batch)
        except BertdeployError as e:  # a user's mistake: the message travels as data (exceptions come back wrapped)
            return pd.DataFrame({LINES: [""], PREDICTED: [-1], TRUTH: [""], FAILED: [str(e)]})

    def _score(self, batch):
        import pandas as pd

        rows = self._rows(batch)
        texts = [_cell(self.source, None, self.text_column, row) for row in rows]
        pairs = [_cell(self.source, None, self.pair_column, row) for row in rows] if self.pair_column else None
        probabilities = self.predictor.predict_proba(texts, pairs)
        header = list(rows[0]) + list(self.names.values()) if self.in_format != "jsonl" else None
        out = io.StringIO()
        write = _writer(out, self.out_format, header, self.names, self.predictor.labels, self.options.all_scores,
                        write_header=False)
        lines = []
        for row, scores in zip(rows, probabilities, strict=True):
            write(row, scores)
            lines.append(out.getvalue())
            out.seek(0)
            out.truncate()
        truth = ["" if self.label_column is None or row.get(self.label_column) is None else str(row[self.label_column])
                 for row in rows]  # text: pandas would turn a column of numbers and None into floats
        return pd.DataFrame({LINES: lines, PREDICTED: probabilities.argmax(-1), TRUTH: truth, FAILED: ""})

    def _rows(self, batch) -> list[dict]:
        if self.in_format == "text":
            return [{"text": line.rstrip("\r")} for line in batch["text"]]
        if self.in_format == "jsonl":
            rows = []
            for line in batch["text"]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{self.source}: malformed JSON line ({e.msg} at column {e.colno}): "
                                    f"{line[:60]!r}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{self.source}: expected a JSON object per line, got {type(row).__name__}")
                rows.append(row)
            return rows
        return batch.to_dict("records")


def predict_file_ray(options: PredictFileOptions, stdout: TextIO | None = None) -> PredictFileResult:
    """`predict_file` on Ray Data: the same output, computed by `options.workers` actors."""
    started = time.perf_counter()
    if options.input == STDIO:
        raise BertdeployError("--engine ray reads files, not stdin; save the texts to a file first")
    source, in_format, out_format = _check_files(options)
    manifest = read_manifest(options.artifact_dir, "onnx")
    plan = choose_routes(options.artifact_dir, manifest, options.variant, options.backend)
    labels = list(manifest["labels"])
    with source.open("rb") as stream:  # check the columns on the first row before any cluster work
        header, rows = iter_rows(source, in_format, stream)
        first = next(rows, None)
    text_column, pair_column, scoring, columns, names = _columns(options, source, in_format, manifest, header, first)

    with ray_cluster(options.ray_address) as ray, contextlib.ExitStack() as stack:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = options.progress
        if logging.getLogger("bertdeploy").level > logging.DEBUG:
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress, logged every 10 s
        threads = options.threads or 1
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = options.workers or max(1, cpus // threads)
        dataset = _read(ray, source, in_format, header)
        scored = dataset.map_batches(
            _Scorer, batch_size=options.chunk_rows, batch_format="pandas", num_cpus=threads,
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"options": options, "in_format": in_format, "out_format": out_format,
                                   "text_column": text_column, "pair_column": pair_column,
                                   "label_column": scoring, "names": names})
        if options.output is None:
            out = stdout or sys.stdout
        else:
            temporary = stack.enter_context(atomic_file(options.output))
            out = stack.enter_context(temporary.open("w", encoding="utf-8", newline=""))
        if header is not None:
            _writer(out, out_format, [*columns, *names.values()], names, labels, options.all_scores)
        tally, count = _Tally(labels, scoring), 0
        try:
            for batch in scored.iter_batches(batch_format="pandas", batch_size=None):
                if batch[FAILED].iloc[0]:
                    raise DataError(batch[FAILED].iloc[0])
                out.write("".join(batch[LINES]))
                for predicted, truth in zip(batch[PREDICTED], batch[TRUTH], strict=True):
                    tally.add(0, {scoring: truth}, int(predicted))
                count += len(batch)
        except BertdeployError:
            raise
        except Exception as e:
            raise _read_error(e, source) from None
        out.flush()
    seconds = time.perf_counter() - started
    routes = describe_routes([(upper, f"{name} ({manifest['variants'][name].get('backend', 'onnxruntime')})")
                              for upper, name in plan])
    return PredictFileResult(
        rows=count, output=str(options.output) if options.output else "<stdout>",
        variant=f"{routes} in {workers} Ray Data workers of {threads} thread{'s' * (threads > 1)}",
        seconds=seconds, texts_per_second=count / seconds if seconds else 0.0, label_column=scoring,
        report=tally.report(), scored=tally.scored, unlabelled=tally.unlabelled, unknown_labels=dict(tally.unknown),
    )


def _read(ray, source: Path, in_format: str, header: list[str] | None):
    """The input as a Ray Dataset: delimited files with our header's names and every field as text; JSONL and
    plain text as one line per row (JSONL is parsed by the actors, keeping each row's own keys and types)."""
    # num_cpus=0: reading is cheap beside the model, and the actors keep every CPU they reserve
    if in_format in ("jsonl", "text"):
        return ray.data.read_text(str(source), drop_empty_lines=in_format == "jsonl", num_cpus=0)
    import pyarrow as pa
    from pyarrow import csv as pacsv

    tsv = in_format == "tsv"
    return ray.data.read_csv(
        str(source), num_cpus=0,
        read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ",", quote_char=False if tsv else '"',
                                         newlines_in_values=not tsv),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False))


def _read_error(error: BaseException, source: Path) -> BaseException:
    """Ray Data failing to read the file, as one line saying what to do; anything else unchanged."""
    seen, text = error, ""
    while seen is not None:
        text += f"{type(seen).__name__}: {seen}\n"
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    if "Failed to read" in text or "UnicodeDecodeError" in text or "ArrowInvalid" in text:
        return DataError(f"{source}: Ray Data cannot read it as {source.suffix.lstrip('.') or 'text'} (a row with more "
                         "or fewer fields than the header, or bytes that are not UTF-8?); `bertdeploy predict` "
                         "without --engine ray names the line")
    return error
