"""Labelled examples for training, distilling, exporting and benching: read them (`load_examples`), check the
labels (order, counts, known to the model), split and sample them.

Build wing: rows come through `bertdeploy.data`, which both wings share; this module knows nothing of
tokenizers or models.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bertdeploy.data import blank, check_columns, describe_lines, iter_rows, label_cell, parse_label_set, text_cell
from bertdeploy.defaults import LABEL_COLUMN, LABEL_SEPARATOR, TEXT_COLUMN
from bertdeploy.errors import DataError
from bertdeploy.labels import LabelScheme
from bertdeploy.manifest import Columns


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
        text = text_cell(path, number, text_column, row.get(text_column))
        pair = text_cell(path, number, pair_column, row.get(pair_column)) if pair_column else None
        if label_columns:
            label = tuple(c for c in label_columns if _flag(path, number, c, row.get(c)))
        elif multi_label:
            label = parse_label_set(path, number, label_column, row.get(label_column), separator)
        else:
            label = label_cell(path, number, label_column, row.get(label_column))
        if blank(text) or (pair_column and blank(pair)) or label is None or label == "":
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
            f"{path}: empty or missing {fields} on {describe_lines(empty)}; "
            "fix them or pass --drop-empty to skip them"
        )
    if not texts:
        raise DataError(f"{path}: no usable rows" + (f" ({len(empty)} empty ones skipped)" if empty else ""))
    return Examples(path, texts, labels, pairs if pair_column else None, lines, multi_label)


def _flag(path: Path, number: int, field: str, value: object) -> bool:
    """A 0/1 label column's cell."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip() in ("0", "1"):
        return str(value).strip() == "1"
    raise DataError(f"{path} line {number}: the label column {field!r} holds {value!r}; label columns hold 0 or 1")


def example_columns(columns: Columns, scheme: LabelScheme) -> dict:
    """`load_examples`' keywords for the data a model was trained on (its manifest's `columns` and `scheme`): columns
    and label format."""
    return {"text_column": columns.text_column, "label_column": columns.label_column,
            "pair_column": columns.text_pair_column, "multi_label": scheme.multi_label, "separator": scheme.separator,
            "label_columns": None if columns.label_columns is None else list(columns.label_columns)}


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
                f"{describe_lines(_lines_with(examples, unknown))} is not in --labels ({', '.join(explicit)})"
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
            f"{describe_lines(_lines_with(examples, unknown))} is unknown to the model, which knows "
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
