"""Read rows from CSV, TSV, JSONL or plain text, line by line; name the file and line of every problem.

Both wings read files through this module: `predict` its input rows, the build wing its labelled examples
(`bertdeploy.builder.examples`). Every problem is a `DataError` that names the file, the line and what to do.
Rows stream from the file line by line, so a reader knows exactly where each record starts. TSV follows the
IANA convention: tabs separate fields and quotes are ordinary characters.
This module knows nothing of labels' meaning, tokenizers or models.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bertdeploy.defaults import TEXT_COLUMN
from bertdeploy.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SHOWN_LINES = 5


def file_format(path: Path, text: bool = False) -> str:
    """The format a file's extension names, or a DataError listing the ones we read.

    With `text`, a `.txt` file or one without an extension is plain text: one text per line.
    """
    suffix = path.suffix.lower()
    fmt = FORMATS.get(suffix) or ("text" if text and suffix in ("", ".txt") else None)
    if fmt is None:
        known = [*FORMATS, ".txt"] if text else list(FORMATS)
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(known)}")
    return fmt


def _decoded_lines(path: Path, stream: BinaryIO | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) with strict UTF-8 decoding that names the bad line."""
    with contextlib.nullcontext(stream) if stream is not None else path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} line {number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                    "of the line); save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8 in.csv > out.csv`"
                ) from None


def iter_rows(path: str | Path, fmt: str | None = None,
              stream: BinaryIO | None = None) -> tuple[list[str] | None, Iterator[tuple[int, dict]]]:
    """Open a data file: its columns (None for JSONL, whose keys vary) and (line, row) pairs.

    `fmt` overrides the extension ("text": one text per line, in a column "text"); with `stream`
    (an open binary file, e.g. stdin) rows come from it and `path` only names it in messages.
    Blank lines are skipped except in text. A CSV/TSV row with a different number of fields than
    the header is an error, since that is almost always an unquoted delimiter inside a text.
    """
    path = Path(path)
    fmt = fmt or file_format(path)
    if stream is None:
        check_file(path)
    if fmt == "jsonl":
        return None, _jsonl_rows(path, stream)
    if fmt == "text":
        return ["text"], ((n, {"text": line.rstrip("\r\n")}) for n, line in _decoded_lines(path, stream))
    return _delimited_rows(path, fmt, stream)


def check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _jsonl_rows(path: Path, stream: BinaryIO | None) -> Iterator[tuple[int, dict]]:
    for number, line in _decoded_lines(path, stream):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _delimited_rows(path: Path, fmt: str, stream: BinaryIO | None) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    lines = _decoded_lines(path, stream)
    current = [0]

    def text_lines() -> Iterator[str]:
        for number, line in lines:
            current[0] = number
            yield line

    if fmt == "tsv":
        reader = csv.reader(text_lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(text_lines())
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise DataError(f"{path} line {current[0]}: {e}") from None
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{path}: no header row; the first line must name the columns")
    header = [h.strip() for h in header]

    def rows() -> Iterator[tuple[int, dict]]:
        while True:
            start = current[0] + 1
            try:
                fields = next(reader, None)
            except csv.Error as e:
                raise DataError(f"{path} line {start}: {e}") from None
            if fields is None:
                return
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{path} line {start}: {len(fields)} fields but the header has {len(header)}; "
                    "quote texts that contain the delimiter"
                )
            yield start, dict(zip(header, fields, strict=True))

    return header, rows()


def describe_lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:SHOWN_LINES])
    more = len(numbers) - SHOWN_LINES
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (f" and {more} more" if more > 0 else "")


def blank(text: str | None) -> bool:
    return text is None or not text.strip()


def text_cell(path: Path, number: int, field: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{path} line {number}: '{field}' is a {type(value).__name__}, expected a string")


def label_cell(path: Path, number: int, field: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if value is not None else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{path} line {number}: '{field}' is a {type(value).__name__}, expected a string or integer")


def parse_label_set(path: Path, number: int | None, field: str, value: object,
                    separator: str) -> tuple[str, ...] | None:
    """The labels of a multi-label cell, sorted: a string split at `separator`, or a JSON list; None if missing."""
    if value is None:
        return None
    where = f"{path} line {number}" if number is not None else str(path)
    if isinstance(value, list):
        names = [label_cell(path, number, field, v) for v in value]
        if not all(names):
            raise DataError(f"{where}: '{field}' holds an empty label name; remove it from the list")
        return tuple(sorted(set(names)))
    text = label_cell(path, number, field, value)
    if not text:
        return ()
    names = [part.strip() for part in text.split(separator)]
    if not all(names):
        raise DataError(f"{where}: '{field}' is {text!r}, which leaves an empty label name between "
                        f"the separators {separator!r}; write labels as a{separator}b, or nothing for no label")
    return tuple(sorted(set(names)))


def load_texts(
    path: str | Path, text_column: str = TEXT_COLUMN, pair_column: str | None = None, fmt: str | None = None
) -> tuple[list[str], list[str] | None]:
    """Read the texts (and second texts) of a file whose labels are not needed; blank rows are skipped. `fmt`
    overrides the extension (e.g. "text": one text per line, in a column "text")."""
    path = Path(path)
    header, rows = iter_rows(path, fmt)
    wanted = [c for c in (text_column, pair_column) if c is not None]
    if header is not None:
        check_columns(path, wanted, header)
    texts: list[str] = []
    pairs: list[str] = []
    for number, row in rows:
        if header is None and any(c not in row for c in wanted):
            check_columns(path, wanted, list(row))
        text = text_cell(path, number, text_column, row.get(text_column))
        pair = text_cell(path, number, pair_column, row.get(pair_column)) if pair_column else None
        if blank(text) or (pair_column and blank(pair)):
            continue
        texts.append(text)
        pairs.append(pair)
    if not texts:
        raise DataError(f"{path}: no non-empty {text_column!r} texts")
    return texts, pairs if pair_column else None


def has_column(path: str | Path, column: str) -> bool:
    """Whether the file's header (or, for JSONL, its first record) has `column`."""
    header, rows = iter_rows(Path(path))
    if header is None:
        first = next(rows, None)
        return first is not None and column in first[1]
    return column in header


def check_columns(path: Path, wanted: list[str], found: list[str]) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(repr(c) for c in missing)}; the columns found are "
            f"{', '.join(repr(c) for c in found)} (choose with --text-column / --label-column)"
        )
