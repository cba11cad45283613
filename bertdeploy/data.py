"""Read labelled text from CSV, TSV or JSONL; validate it; fix the label order; split it.

Every problem is a `DataError` that names the file, the line and what to do. Rows stream from
the file line by line, so a reader knows exactly where each record starts. TSV follows the
IANA convention: tabs separate fields and quotes are ordinary characters.
This module knows nothing of tokenizers or models.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bertdeploy.defaults import LABEL_COLUMN, LABEL_SEPARATOR, TEXT_COLUMN
from bertdeploy.errors import DataError
from bertdeploy.labels import MULTI_LABEL

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SHOWN_LINES = 5


@dataclass(frozen=True)
class Examples:
    """Texts (and optional second texts) with their labels, as read from `path`: a label per text, or for
    multi-label data a tuple of labels per text (sorted, possibly empty)."""

    path: Path
    texts: list[str]
    labels: list
    pairs: list[str] | None = None
    lines: list[int] | None = None  # the line each record starts on, for messages
    multi_label: bool = False

    def label_names(self) -> list[str]:
        """Every label a text carries, once per text and label."""
        return [y for labels in self.labels for y in labels] if self.multi_label else list(self.labels)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Examples:
        pick = list(indices)
        return replace(
            self,
            texts=[self.texts[i] for i in pick],
            labels=[self.labels[i] for i in pick],
            pairs=None if self.pairs is None else [self.pairs[i] for i in pick],
            lines=None if self.lines is None else [self.lines[i] for i in pick],
        )


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


def _describe_lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_SHOWN_LINES])
    more = len(numbers) - _SHOWN_LINES
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (f" and {more} more" if more > 0 else "")


def _blank(text: str | None) -> bool:
    return text is None or not text.strip()


def _as_text(path: Path, number: int, field: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{path} line {number}: '{field}' is a {type(value).__name__}, expected a string")


def _as_label(path: Path, number: int, field: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if value is not None else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{path} line {number}: '{field}' is a {type(value).__name__}, expected a string or integer")


def load_examples(
    path: str | Path,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    pair_column: str | None = None,
    drop_empty: bool = False,
    multi_label: bool = False,
    separator: str = LABEL_SEPARATOR,
    label_columns: Sequence[str] | None = None,
) -> Examples:
    """Read every labelled row of a CSV/TSV/JSONL file, refusing empty texts unless `drop_empty`.

    With `multi_label`, a label cell holds zero or more labels joined by `separator` (in JSONL also a list of
    strings); an empty cell is a text with none of the labels. `label_columns` (multi-label) reads one 0/1
    column per label instead, each named after its label.
    """
    path = Path(path)
    multi_label = multi_label or bool(label_columns)
    header, rows = iter_rows(path)
    label_fields = list(label_columns) if label_columns else [label_column]
    wanted = [c for c in (text_column, pair_column, *label_fields) if c is not None]
    if header is not None:
        check_columns(path, wanted, header)
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    empty: list[int] = []
    seen_keys: dict[str, None] = {}
    for number, row in rows:
        seen_keys.update(dict.fromkeys(row))
        text = _as_text(path, number, text_column, row.get(text_column))
        pair = _as_text(path, number, pair_column, row.get(pair_column)) if pair_column else None
        if label_columns:
            label = tuple(c for c in label_columns if _flag(path, number, c, row.get(c)))
        elif multi_label:
            label = parse_label_set(path, number, label_column, row.get(label_column), separator)
        else:
            label = _as_label(path, number, label_column, row.get(label_column))
        if _blank(text) or (pair_column and _blank(pair)) or label is None or label == "":
            empty.append(number)
            continue
        texts.append(text)
        if pair_column:
            pairs.append(pair)
        labels.append(label)
        lines.append(number)
    if header is None:
        if not seen_keys:
            raise DataError(f"{path}: no records, only blank lines")
        check_columns(path, wanted, list(seen_keys))
    if empty and not drop_empty:
        fields = " / ".join(repr(c) for c in wanted)
        raise DataError(
            f"{path}: empty or missing {fields} on {_describe_lines(empty)}; "
            "fix them or pass --drop-empty to skip them"
        )
    if not texts:
        raise DataError(f"{path}: no usable rows" + (f" ({len(empty)} empty ones skipped)" if empty else ""))
    return Examples(path, texts, labels, pairs if pair_column else None, lines, multi_label)


def parse_label_set(path: Path, number: int | None, field: str, value: object,
                    separator: str) -> tuple[str, ...] | None:
    """The labels of a multi-label cell, sorted: a string split at `separator`, or a JSON list; None if missing."""
    if value is None:
        return None
    where = f"{path} line {number}" if number is not None else str(path)
    if isinstance(value, list):
        names = [_as_label(path, number, field, v) for v in value]
        if not all(names):
            raise DataError(f"{where}: '{field}' holds an empty label name; remove it from the list")
        return tuple(sorted(set(names)))
    text = _as_label(path, number, field, value)
    if not text:
        return ()
    names = [part.strip() for part in text.split(separator)]
    if not all(names):
        raise DataError(f"{where}: '{field}' is {text!r}, which leaves an empty label name between "
                        f"the separators {separator!r}; write labels as a{separator}b, or nothing for no label")
    return tuple(sorted(set(names)))


def _flag(path: Path, number: int, field: str, value: object) -> bool:
    """A 0/1 label column's cell."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip() in ("0", "1"):
        return str(value).strip() == "1"
    raise DataError(f"{path} line {number}: the label column {field!r} holds {value!r}; label columns hold 0 or 1")


def example_columns(manifest: dict) -> dict:
    """`load_examples`' keywords for the data a model (its manifest) was trained on: columns and label format."""
    return {"text_column": manifest.get("text_column") or TEXT_COLUMN,
            "label_column": manifest.get("label_column") or LABEL_COLUMN,
            "pair_column": manifest.get("text_pair_column"),
            "multi_label": manifest.get("problem_type") == MULTI_LABEL,
            "separator": manifest.get("label_separator") or LABEL_SEPARATOR,
            "label_columns": manifest.get("label_columns")}


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
        text = _as_text(path, number, text_column, row.get(text_column))
        pair = _as_text(path, number, pair_column, row.get(pair_column)) if pair_column else None
        if _blank(text) or (pair_column and _blank(pair)):
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


def label_order(examples: Examples, explicit: Sequence[str] | None = None) -> list[str]:
    """The class names in id order: `explicit` if given, else sorted (numerically if all integers)."""
    present = sorted(set(examples.label_names()))
    if explicit:
        explicit = [str(x).strip() for x in explicit]
        if len(set(explicit)) != len(explicit) or not all(explicit):
            raise DataError(f"--labels {','.join(explicit)}: each label must be named once, none empty")
        unknown = [x for x in present if x not in explicit]
        if unknown:
            raise DataError(
                f"{examples.path}: label {', '.join(repr(x) for x in unknown)} on "
                f"{_describe_lines(_lines_with(examples, unknown))} is not in --labels ({', '.join(explicit)})"
            )
        ordered = list(explicit)
    elif all(re.fullmatch(r"[+-]?\d+", x) for x in present):
        ordered = sorted(present, key=int)
    else:
        ordered = present
    if examples.multi_label:
        check_label_counts(examples, ordered)
    elif len(present) < 2:
        raise DataError(
            f"{examples.path}: every row has the label {present[0]!r}; a classifier needs at least two classes"
        )
    return ordered


def check_label_counts(examples: Examples, labels: Sequence[str], advice: str = "") -> None:
    """Multi-label training data must show each label both on and off: a label never positive (or positive on
    every row) cannot be learned, so it is refused rather than trained into a model that never (or always)
    predicts it."""
    if not labels:
        raise DataError(f"{examples.path}: no row carries a label; a multi-label classifier needs at least one")
    counts = {label: 0 for label in labels}
    for label in examples.label_names():
        counts[label] = counts.get(label, 0) + 1
    never = [x for x in labels if counts[x] == 0]
    always = [x for x in labels if counts[x] == len(examples)]
    if never or always:
        which, how = (never, "never positive") if never else (always, "positive on every row")
        raise DataError(
            f"{examples.path}: label {', '.join(repr(x) for x in which)} is {how} in {len(examples)} training "
            f"rows, so it cannot be learned; {advice or 'add rows that show it both ways, or leave it out'}"
        )


def _lines_with(examples: Examples, names: Sequence[str]) -> list[int]:
    """The lines of the rows carrying any of `names`."""
    wanted = set(names)
    carries = (lambda y: bool(wanted & set(y))) if examples.multi_label else (lambda y: y in wanted)
    return [n for n, y in zip(examples.lines or [], examples.labels, strict=False) if carries(y)]


def check_known_labels(examples: Examples, labels: Sequence[str]) -> None:
    """Refuse labels the classifier does not know (e.g. an eval label never seen in training)."""
    known = set(labels)
    unknown = sorted({y for y in examples.label_names() if y not in known})
    if unknown:
        raise DataError(
            f"{examples.path}: label {', '.join(repr(x) for x in unknown)} on "
            f"{_describe_lines(_lines_with(examples, unknown))} is unknown to the model, which knows "
            f"{', '.join(repr(x) for x in labels)}"
        )


_RARE = "\x1e"  # the stratum of multi-label sets that occur once


def _strata(examples: Examples) -> list[str]:
    """What a split keeps in proportion: the class, or for multi-label data the whole label set (sets that occur
    once share one stratum)."""
    if not examples.multi_label:
        return list(examples.labels)
    keys = ["\x1f".join(y) for y in examples.labels]
    counts = Counter(keys)
    return [key if counts[key] > 1 else _RARE for key in keys]


def _shuffled_by_class(examples: Examples, seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, y in enumerate(_strata(examples)):
        by_class[y].append(i)
    return {y: [idx[j] for j in rng.permutation(len(idx))] for y, idx in sorted(by_class.items())}


def split_examples(examples: Examples, val_fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Stratified, seeded train/validation split: each class (or label set) keeps its share in both parts."""
    train_idx: list[int] = []
    val_idx: list[int] = []
    for idx in _shuffled_by_class(examples, seed).values():
        k = min(max(round(len(idx) * val_fraction), 1), len(idx) - 1) if len(idx) > 1 else 0
        val_idx += idx[:k]
        train_idx += idx[k:]
    if not val_idx:
        raise DataError(f"{examples.path}: too few rows for a validation split; pass --eval-file")
    return examples.subset(sorted(train_idx)), examples.subset(sorted(val_idx))


def sample_examples(examples: Examples, n: int, seed: int) -> Examples:
    """A seeded stratified sample of `n` rows (largest-remainder quotas per class)."""
    if n >= len(examples):
        return examples
    by_class = _shuffled_by_class(examples, seed)
    quotas = {y: n * len(idx) / len(examples) for y, idx in by_class.items()}
    counts = {y: math.floor(q) for y, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda y: (counts[y] - quotas[y], y))
    for y in by_remainder[: n - sum(counts.values())]:
        counts[y] += 1
    chosen = [i for y, idx in by_class.items() for i in idx[: counts[y]]]
    return examples.subset(sorted(chosen))
