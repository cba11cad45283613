"""What `bertdeploy optimize` makes every candidate from and scores it on, checked before anything is trained.

The training file: `--train-file`, or the teacher's recorded one (needed only when a student is made). The texts
every variant of every candidate is scored on: `--eval-file`, the teacher's recorded eval file, or the rows
`finetune` held out of the teacher's training file (the same fraction and seed, written out as a file for bench;
the students hold the same rows out themselves). Every mistake here is one line before any training: a file gone,
an eval file without the label column, `--texts` too few for the largest batch or without the text column, a
`--seq-length` over the teacher's max length.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from bertdeploy.artifacts import atomic_file, sha256_file
from bertdeploy.benchmark.run import load_timed
from bertdeploy.builder.examples import example_columns, load_examples, split_examples
from bertdeploy.data import has_column
from bertdeploy.errors import BertdeployError
from bertdeploy.manifest import ModelManifest

logger = logging.getLogger(__name__)

HELD_OUT = "held_out.csv"  # in OUT/work: the teacher's split, written out


@dataclass(frozen=True)
class Inputs:
    train_file: Path | None  # None: the teacher's recorded one (distill reads it)
    eval_file: Path | None  # the students' eval data; None: the teacher's split, which distill keeps
    scored_on: Path  # the texts every variant of every candidate is scored on
    split: bool  # scored_on is the teacher's split, to be written (write_held_out)

    def recipe(self, manifest: ModelManifest) -> dict:
        """What the candidates are made from and scored on (paths and sha256), for telling whether a finished one
        can be reused."""
        recorded = manifest.data.train_file
        train = (_file(self.train_file) if self.train_file is not None else
                 None if recorded is None else {"path": recorded.path, "sha256": recorded.sha256})
        scored = ({"split of": recorded.path, "sha256": recorded.sha256, "split": manifest.data.val_split.to_dict()}
                  if self.split else _file(self.scored_on))
        return {"train_file": train, "scored_on": scored}


def resolve(manifest: ModelManifest, model_dir: Path, work: Path, *, train_file: Path | None,
            eval_file: Path | None, students: bool) -> Inputs:
    """The files, or a BertdeployError saying which to pass."""
    data = manifest.data
    if train_file is None and students and (data.train_file is None or not Path(data.train_file.path).is_file()):
        raise BertdeployError(f"{model_dir}: no training data recorded (or it is gone); pass --train-file and "
                              "--eval-file")
    if eval_file is None and data.eval_file is not None and Path(data.eval_file.path).is_file():
        eval_file = Path(data.eval_file.path)
    if eval_file is not None:
        label = (manifest.label_columns or [manifest.label_column])[0]
        if not has_column(eval_file, label):
            raise BertdeployError(f"{eval_file}: no {label!r} column; every candidate is scored against the labels "
                                  "of the eval file")
        return Inputs(train_file, eval_file, eval_file, split=False)
    if data.val_split is None or data.train_file is None or not Path(data.train_file.path).is_file():
        raise BertdeployError(f"{model_dir}: its held-out data is gone; pass --eval-file, the texts every candidate "
                              "is scored on")
    if train_file is not None:
        raise BertdeployError(f"{model_dir} was scored on a split of its own training file: with --train-file, "
                              "pass --eval-file too (the texts every candidate is scored on)")
    return Inputs(None, None, work / HELD_OUT, split=True)


def check_cells(manifest: ModelManifest, texts: Path | None, seq_length: int, batch_sizes: list[int],
                runs: int) -> None:
    """The timed cells can be made: `--seq-length` within the max length, or enough `--texts` in its columns."""
    if texts is None:
        if seq_length > manifest.max_length:
            raise BertdeployError(f"--seq-length {seq_length} is over the teacher's max length {manifest.max_length}")
        return
    timed = load_timed(texts, manifest, runs * max(batch_sizes))
    if len(timed) < max(batch_sizes):
        raise BertdeployError(f"--texts {texts}: {len(timed)} texts, fewer than the largest batch size "
                              f"{max(batch_sizes)}")


def write_held_out(manifest: ModelManifest, path: Path) -> Path:
    """The rows `finetune` held out of the teacher's training file (the same split: fraction and seed), written to
    `path` in the teacher's columns, for bench to score every candidate on."""
    data, columns, scheme = manifest.data, manifest.columns, manifest.scheme
    rows = load_examples(data.train_file.path, **example_columns(columns, scheme), drop_empty=manifest.drop_empty)
    _, held = split_examples(rows, data.val_split.fraction, data.val_split.seed)
    names = [c for c in (columns.text_column, columns.text_pair_column) if c]
    labels = list(columns.label_columns) if columns.label_columns else [columns.label_column]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary, temporary.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow([*names, *labels])
        for i, text in enumerate(held.texts):
            label = held.labels[i]
            if columns.label_columns:  # one 0/1 column per label
                cells = [int(name in label) for name in labels]
            else:
                cells = [scheme.separator.join(label) if scheme.multi_label else label]
            out.writerow([text, *([held.pairs[i]] if held.pairs is not None else []), *cells])
    logger.info("scoring every candidate on the %d rows held out of %s (%s)", len(held), data.train_file.path, path)
    return path


def _file(path: Path) -> dict:
    return {"path": str(path.absolute()), "sha256": sha256_file(path)}
