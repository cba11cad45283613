"""The rows of `bertdeploy predict`, shared by its engines: the local one (local.py) and Ray Data (ray_engine.py).

Options (the predictor's settings among them as one `RuntimeOptions`) and result, checking the input
and output files and the columns, opening the output (a hidden file moved into place when complete),
writing each input row with the columns added (`label`, `score`, every class's score with `all_scores`;
for multi-label models `label` holds the label set joined by the model's separator and every label's
score is written), and tallying the predictions against a label column as rows stream past. No model
runs here.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from bertdeploy.artifacts import atomic_file
from bertdeploy.data import FORMATS, check_columns, check_file, file_format, parse_label_set
from bertdeploy.defaults import ENGINES, INPUT_FORMATS, LOCAL, OUTPUT_FORMATS
from bertdeploy.errors import BertdeployError, DataError, check_options
from bertdeploy.labels import LabelScheme
from bertdeploy.manifest import ExportManifest
from bertdeploy.metrics import multilabel_counts, multilabel_report_from_counts, report_from_confusion
from bertdeploy.runtime.options import RuntimeOptions

logger = logging.getLogger(__name__)

STDIO = "-"


@dataclass
class PredictFileOptions:
    artifact_dir: Path
    input: str  # a path, or "-" for stdin
    output: Path | None = None  # None: stdout
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # how the predictor loads and runs
    text_column: str | None = None  # default: the column the model was trained on
    text_pair_column: str | None = None
    label_column: str | None = None  # scored when present; default: the training label column
    all_scores: bool = False
    input_format: str | None = None  # default: from the extension; "text" for stdin
    output_format: str | None = None  # default: from the output's extension, else the input's
    chunk_rows: int = 2048
    progress: bool = False
    engine: str = LOCAL  # local: this process (local.py); ray: Ray Data actors (ray_engine.py)
    workers: int | None = None  # ray: actors of runtime.threads threads (default: the cluster's CPUs / threads)
    ray_address: str | None = None  # ray: a running cluster (default: $RAY_ADDRESS, else a local one)

    def __post_init__(self) -> None:
        self.artifact_dir = Path(self.artifact_dir)
        self.input = str(self.input)
        self.output = Path(self.output) if self.output is not None else None
        check_options([
            (self.input_format in (None, *INPUT_FORMATS), f"input format must be one of {', '.join(INPUT_FORMATS)}"),
            (self.output_format in (None, *OUTPUT_FORMATS),
             f"output format must be one of {', '.join(OUTPUT_FORMATS)}"),
            (self.chunk_rows >= 1, "chunk_rows must be at least 1"),
            (self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}"),
            (self.workers is None or self.workers >= 1, "--workers must be at least 1"),
        ])


@dataclass
class PredictFileResult:
    rows: int
    output: str
    variant: str
    seconds: float
    texts_per_second: float
    label_column: str | None = None
    # accuracy, macro_f1, per_class, confusion_matrix over the scored rows (multi-label: micro_f1, macro_f1,
    # subset_accuracy, per_class)
    report: dict | None = None
    scored: int = 0
    unlabelled: int = 0  # rows whose label cell is empty (multi-label: missing; an empty cell is an empty set)
    unknown_labels: dict[str, int] = field(default_factory=dict)  # labels the model does not have

    @classmethod
    def of_run(cls, options: PredictFileOptions, rows: int, variant: str, seconds: float,
               tally: Tally) -> PredictFileResult:
        return cls(rows=rows, output=str(options.output) if options.output else "<stdout>", variant=variant,
                   seconds=seconds, texts_per_second=rows / seconds if seconds else 0.0, label_column=tally.column,
                   report=tally.report(), scored=tally.scored, unlabelled=tally.unlabelled,
                   unknown_labels=dict(tally.unknown))


def open_output(options: PredictFileOptions, stack: contextlib.ExitStack, stdout: TextIO | None = None) -> TextIO:
    """Where the rows go: stdout, or a hidden file beside `options.output` moved into place when `stack` closes
    without an error."""
    if options.output is None:
        return stdout or sys.stdout
    temporary = stack.enter_context(atomic_file(options.output))
    return stack.enter_context(temporary.open("w", encoding="utf-8", newline=""))


def check_files(options: PredictFileOptions) -> tuple[Path, str, str]:
    """The input (named), its format and the output's, once both files are checked."""
    source = Path("<stdin>") if options.input == STDIO else Path(options.input)
    in_format = options.input_format or ("text" if options.input == STDIO else file_format(source, text=True))
    out_format = _output_format(options, in_format)
    if in_format == "jsonl" and out_format != "jsonl":
        raise BertdeployError(f"{source}: JSONL input is written as JSONL (its keys may differ from row to row); "
                              "choose an output ending in .jsonl")
    if options.input != STDIO:
        check_file(source)
    if options.output is not None:
        _check_output(options.output, source)
    return source, in_format, out_format


@dataclass
class Columns:
    text: str
    pair: str | None
    scored: str | None  # the label column scored, when the file has it
    input: list[str]  # the file's own columns
    added: dict[str, str]  # label, score (and score_<label>) -> their names in the output


def choose_columns(options: PredictFileOptions, source: Path, in_format: str, manifest: ExportManifest,
                   header: list[str] | None, first: tuple[int, dict] | None) -> Columns:
    """The text, pair and scored label columns, checked against the file's (its header, or the first row's keys),
    and the names of the columns added."""
    if first is None:
        raise DataError(f"{source}: no rows to predict")
    text_column = "text" if in_format == "text" else options.text_column or manifest.text_column
    pair_column = options.text_pair_column or manifest.text_pair_column
    label_column = options.label_column or manifest.label_column
    columns = header if header is not None else list(first[1])
    check_columns(source, [c for c in (text_column, pair_column) if c], columns)
    if options.label_column and options.label_column not in columns:
        check_columns(source, [options.label_column], columns)
    scoring = label_column if label_column in columns else None
    multi_label = manifest.scheme.multi_label
    return Columns(text_column, pair_column, scoring, columns,
                   _added_columns(columns, list(manifest.labels), options.all_scores or multi_label))


def _output_format(options: PredictFileOptions, in_format: str) -> str:
    if options.output_format:
        return options.output_format
    if options.output is not None and options.output.suffix.lower() in FORMATS:
        return FORMATS[options.output.suffix.lower()]
    return in_format if in_format in OUTPUT_FORMATS else "csv"


def _check_output(output: Path, source: Path) -> None:
    if output.is_dir():
        raise BertdeployError(f"{output}: is a directory; --output takes a file name")
    if not output.absolute().parent.is_dir():
        raise BertdeployError(f"{output}: the directory {output.absolute().parent} does not exist")
    if output.exists() and source.exists() and output.samefile(source):
        raise BertdeployError(f"{output}: is the input file; write the predictions to another file")


def _added_columns(columns: list[str], labels: list[str], all_scores: bool) -> dict[str, str]:
    """What `label`, `score` (and each class's score) are called in the output: with a `predicted_`
    prefix when the input already has a column of that name, e.g. the true `label`."""
    names = {"label": "label", "score": "score"}
    if all_scores:
        names.update({f"score_{label}": f"score_{label}" for label in labels})
    if any(name in columns for name in names.values()):
        names = {key: f"predicted_{name}" for key, name in names.items()}
        logger.info("the input has a column named like ours: the predictions go in %s", ", ".join(names.values()))
    return names


def row_writer(out: TextIO, fmt: str, header: list[str] | None, names: dict[str, str], scheme: LabelScheme,
               write_header: bool = True):
    """A function `write(row, scores, decided)` writing one input row with its predicted label (or label set),
    top score and, where `names` has their columns, every label's score (after the header line, when
    `write_header`)."""
    every = [(names[f"score_{label}"], i) for i, label in enumerate(scheme.labels) if f"score_{label}" in names]

    def added(scores: np.ndarray, decided) -> dict:
        values = {names["label"]: scheme.text(decided), names["score"]: round(float(scores.max()), 6)}
        values.update({name: round(float(scores[i]), 6) for name, i in every})
        return values

    if fmt == "jsonl":
        def write_json(row: dict, scores: np.ndarray, decided) -> None:
            out.write(json.dumps({**row, **added(scores, decided)}, ensure_ascii=False) + "\n")
        return write_json
    if fmt == "tsv":
        writer = csv.DictWriter(out, header, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None,
                                lineterminator="\n", extrasaction="ignore")
    else:
        writer = csv.DictWriter(out, header, lineterminator="\n", extrasaction="ignore")
    if write_header:
        writer.writeheader()

    def write_delimited(row: dict, scores: np.ndarray, decided) -> None:
        try:
            writer.writerow({**row, **added(scores, decided)})
        except csv.Error:
            raise BertdeployError("a text holds a tab or line break, which TSV cannot carry; write CSV or JSONL "
                                  "(--format csv)") from None
    return write_delimited


def cell(source: Path, number: int | None, column: str, row: dict) -> str:
    """The text in `column`; a row without it is named by its line, or (number None) by its start."""
    value = row.get(column)
    if isinstance(value, str):
        return value
    where = f"{source} line {number}" if number is not None else \
        f"{source}, the row {json.dumps(row, ensure_ascii=False)[:60]}"
    if value is None:
        raise DataError(f"{where}: no {column!r}")
    kind = {"int": "number", "float": "number", "bool": "boolean", "dict": "object", "list": "array"}
    raise DataError(f"{where}: {column!r} is a {kind.get(type(value).__name__, 'value')}, expected a string")


class Tally:
    """What scoring needs, summed as rows stream past, for rows whose labels the model knows: a confusion matrix,
    or for multi-label models each label's true and false positives and false negatives and the exact matches."""

    def __init__(self, scheme: LabelScheme, column: str | None, source: Path | None = None) -> None:
        self.scheme, self.column, self.source = scheme, column, source or Path("<input>")
        self.index = {label: i for i, label in enumerate(scheme.labels)}
        k = len(scheme.labels)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.counts = {"tp": np.zeros(k, np.int64), "fp": np.zeros(k, np.int64), "fn": np.zeros(k, np.int64),
                       "exact": 0, "rows": 0}
        self.scored = self.unlabelled = 0
        self.unknown: Counter[str] = Counter()

    def add(self, number: int | None, row: dict, decided) -> None:
        """Count row `number` (its true labels in `row`) against `decided`, a row of `scheme.decide`."""
        if self.column is None:
            return
        value = row.get(self.column)
        if self.scheme.multi_label:
            names = parse_label_set(self.source, number, self.column, value, self.scheme.separator)
        else:
            truth = "" if value is None else str(value).strip()
            names = (truth,) if truth else None
        if names is None:
            self.unlabelled += 1
            return
        unknown = [name for name in names if name not in self.index]
        if unknown:
            self.unknown.update(unknown)
            return
        self.scored += 1
        if not self.scheme.multi_label:
            self.confusion[self.index[names[0]], int(decided)] += 1
            return
        truth, predicted = self.scheme.encode([names])[0], np.asarray(decided, dtype=bool)
        for key, hits in multilabel_counts(truth[None], predicted[None]).items():
            self.counts[key] += hits

    def report(self) -> dict | None:
        if self.column is None or not self.scored:
            return None
        if self.scheme.multi_label:
            return multilabel_report_from_counts(self.counts, self.scheme.labels)
        return report_from_confusion(self.confusion, list(self.scheme.labels))
