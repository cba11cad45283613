"""`bertdeploy predict`, the local engine: stream a file of texts through a `Predictor` in this process.

Rows are read, predicted and written a chunk at a time, so memory stays flat however long the
file. Every input column is kept and `label` and `score` are added (every class's score with
`all_scores`; a multi-label model's `label` is the label set joined by its separator, and every
label's score is added). An output file is written beside its destination and moved into place only when
complete. When the input also holds the label column, the predictions are scored as they go.
What the Ray engine (ray_engine.py) shares with this one lives in rows.py. Like the predictor, this
never imports torch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from bertdeploy.data import iter_rows
from bertdeploy.errors import check_options
from bertdeploy.predict.rows import (
    STDIO,
    PredictFileOptions,
    PredictFileResult,
    Tally,
    cell,
    check_files,
    choose_columns,
    open_output,
    row_writer,
)
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.timing import stopwatch

logger = logging.getLogger(__name__)


def predict_file(options: PredictFileOptions, stdin: BinaryIO | None = None,
                 stdout: TextIO | None = None) -> PredictFileResult:
    """Predict every row of `options.input` in this process and write the rows with their labels to the output.

    For `engine="ray"`, `ray_engine.predict_file_ray` takes the same options."""
    check_options([(options.engine == "local", "predict_file runs the local engine; for engine='ray' call "
                                                "bertdeploy.predict.ray_engine.predict_file_ray")])
    (count, variant, tally), seconds = stopwatch(_predict, options, stdin, stdout)
    return PredictFileResult.of_run(options, count, variant, seconds, tally)


def _predict(options: PredictFileOptions, stdin: BinaryIO | None, stdout: TextIO | None) -> tuple[int, str, Tally]:
    source, in_format, out_format = check_files(options)
    predictor = Predictor.load(options.artifact_dir, options=options.runtime)
    with contextlib.ExitStack() as stack:
        if options.input == STDIO:
            stream = stdin or sys.stdin.buffer
        else:
            stream = stack.enter_context(source.open("rb"))
        header, rows = iter_rows(source, in_format, stream)
        first = next(rows, None)
        columns = choose_columns(options, source, in_format, predictor.manifest, header, first)
        out = open_output(options, stack, stdout)
        write = row_writer(out, out_format, [*columns.input, *columns.added.values()] if header is not None else None,
                           columns.added, predictor.scheme)
        bar = stack.enter_context(_progress(options.progress, None if options.input == STDIO else source))
        tally = Tally(predictor.scheme, columns.scored, source)
        count = 0
        for chunk in _chunks(itertools.chain([first], rows), options.chunk_rows):
            texts = [cell(source, number, columns.text, row) for number, row in chunk]
            pairs = [cell(source, number, columns.pair, row) for number, row in chunk] if columns.pair else None
            probabilities = predictor.predict_proba(texts, pairs)
            decisions = predictor.scheme.decide(probabilities)
            for (number, row), scores, decided in zip(chunk, probabilities, decisions, strict=True):
                write(row, scores, decided)
                tally.add(number, row, decided)
            count += len(chunk)
            bar(count, stream)
        out.flush()
    return count, predictor.describe(), tally


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _progress(show: bool, path: Path | None):
    """A progress bar on stderr, by bytes read when the input is a file, else by texts."""
    if not show:
        yield lambda count, stream: None
        return
    from tqdm.auto import tqdm

    total = path.stat().st_size if path is not None else None
    with tqdm(total=total, unit="B" if total else " texts", unit_scale=bool(total), desc="predicting",
              file=sys.stderr, disable=None) as bar:
        def update(count: int, stream) -> None:
            if total:
                bar.update(stream.tell() - bar.n)
                bar.set_postfix_str(f"{count:,} texts", refresh=False)
            else:
                bar.update(count - bar.n)
        yield update
