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
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import TextIO

from bertdeploy.data import iter_rows
from bertdeploy.errors import BertdeployError, DataError
from bertdeploy.manifest import ExportManifest
from bertdeploy.predict import rows
from bertdeploy.predict.rows import PredictFileOptions
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.runtime.raycluster import ray_cluster
from bertdeploy.runtime.routing import choose_routes, describe_routes
from bertdeploy.runtime.sessions import resolve_providers
from bertdeploy.timing import stopwatch

logger = logging.getLogger(__name__)

PREDICTED, TRUTH, LINES, FAILED = "__predicted", "__truth", "__lines", "__failed"
MISSING = "\x00"  # a row without a label cell (a JSONL key left out): unlabelled, not an empty label set


class _Scorer:
    """One Ray Data actor: a Predictor, and the rows it gets back as finished output lines.

    A user's mistake (a providers' fall-back refused, a bad row) travels back as data, in the FAILED column:
    exceptions raised in actors come back wrapped in Ray's."""

    def __init__(self, options: PredictFileOptions, in_format: str, out_format: str, columns: rows.Columns) -> None:
        self.options, self.in_format, self.source = options, in_format, Path(options.input)
        self.out_format, self.columns = out_format, columns
        self.predictor, self.failed = None, ""
        try:
            self.predictor = Predictor.load(options.artifact_dir, options=options.runtime)
        except BertdeployError as e:
            self.failed = str(e)

    def __call__(self, batch):
        import pandas as pd

        try:
            if self.failed:
                raise BertdeployError(self.failed)
            return self._score(batch)
        except BertdeployError as e:
            return pd.DataFrame({LINES: [""], PREDICTED: [-1], TRUTH: [""], FAILED: [str(e)]})

    def _score(self, batch):
        import pandas as pd

        records, columns = self._records(batch), self.columns
        texts = [rows.cell(self.source, None, columns.text, row) for row in records]
        pairs = [rows.cell(self.source, None, columns.pair, row) for row in records] if columns.pair else None
        probabilities = self.predictor.predict_proba(texts, pairs)
        scheme = self.predictor.scheme
        decisions = scheme.decide(probabilities)
        header = list(records[0]) + list(columns.added.values()) if self.in_format != "jsonl" else None
        out = io.StringIO()
        write = rows.row_writer(out, self.out_format, header, columns.added, scheme, write_header=False)
        lines = []
        for row, scores, decided in zip(records, probabilities, decisions, strict=True):
            write(row, scores, decided)
            lines.append(out.getvalue())
            out.seek(0)
            out.truncate()
        truth = [_truth(row.get(columns.scored) if columns.scored else None, scheme.separator) for row in records]
        return pd.DataFrame({LINES: lines, PREDICTED: list(decisions), TRUTH: truth, FAILED: ""})

    def _records(self, batch) -> list[dict]:
        if self.in_format == "text":
            return [{"text": line.rstrip("\r")} for line in batch["text"]]
        if self.in_format == "jsonl":
            records = []
            for line in batch["text"]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{self.source}: malformed JSON line ({e.msg} at column {e.colno}): "
                                    f"{line[:60]!r}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{self.source}: expected a JSON object per line, got {type(row).__name__}")
                records.append(row)
            return records
        return batch.to_dict("records")


def _truth(value: object, separator: str) -> str:
    """A label cell as text for the driver's tally (pandas would turn a column of numbers and None into floats):
    a JSON list of labels joined by the separator, a missing one as MISSING."""
    if value is None:
        return MISSING
    return separator.join(map(str, value)) if isinstance(value, list) else str(value)


def predict_file_ray(options: PredictFileOptions, stdout: TextIO | None = None) -> rows.PredictFileResult:
    """`local.predict_file` on Ray Data: the same output, computed by `options.workers` actors, each loading the
    predictor with `options.runtime` (its threads default to 1 here; a fall-back to the CPU is an error unless
    `allow_fallback`, as on the local engine)."""
    (count, variant, tally), seconds = stopwatch(_predict, options, stdout)
    return rows.PredictFileResult.of_run(options, count, variant, seconds, tally)


def _predict(options: PredictFileOptions, stdout: TextIO | None) -> tuple[int, str, rows.Tally]:
    if options.input == rows.STDIO:
        raise BertdeployError("--engine ray reads files, not stdin; save the texts to a file first")
    source, in_format, out_format = rows.check_files(options)
    runtime = options.runtime
    manifest = ExportManifest.read(options.artifact_dir)
    plan = choose_routes(options.artifact_dir, manifest, runtime.variant, runtime.backend)
    resolve_providers(runtime.providers)  # names a provider this ONNX Runtime lacks before any cluster work
    scheme = manifest.scheme
    with source.open("rb") as stream:  # check the columns on the first row before any cluster work
        header, lines = iter_rows(source, in_format, stream)
        first = next(lines, None)
    columns = rows.choose_columns(options, source, in_format, manifest, header, first)

    with ray_cluster(options.ray_address) as ray, contextlib.ExitStack() as stack:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = options.progress
        if logging.getLogger("bertdeploy").level > logging.DEBUG:
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress, logged every 10 s
        threads = runtime.threads or 1
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = options.workers or max(1, cpus // threads)
        # each actor runs the threads it reserves (left unset, a model takes every CPU of its node)
        actors = dataclasses.replace(options, runtime=dataclasses.replace(runtime, threads=threads))
        dataset = _read(ray, source, in_format, header)
        scored = dataset.map_batches(
            _Scorer, batch_size=options.chunk_rows, batch_format="pandas", num_cpus=threads,
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"options": actors, "in_format": in_format, "out_format": out_format,
                                   "columns": columns})
        out = rows.open_output(options, stack, stdout)
        if header is not None:
            rows.row_writer(out, out_format, [*columns.input, *columns.added.values()], columns.added, scheme)
        tally, count = rows.Tally(scheme, columns.scored, source), 0
        try:
            for batch in scored.iter_batches(batch_format="pandas", batch_size=None):
                if batch[FAILED].iloc[0]:
                    raise BertdeployError(batch[FAILED].iloc[0])
                out.write("".join(batch[LINES]))
                for decided, truth in zip(batch[PREDICTED], batch[TRUTH], strict=True):
                    tally.add(None, {columns.scored: None if truth == MISSING else truth}, decided)
                count += len(batch)
        except BertdeployError:
            raise
        except Exception as e:
            raise _read_error(e, source) from None
        out.flush()
    routes = describe_routes([(upper, f"{name} ({manifest.variants[name].backend})") for upper, name in plan])
    return count, f"{routes} in {workers} Ray Data workers of {threads} thread{'s' * (threads > 1)}", tally


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
