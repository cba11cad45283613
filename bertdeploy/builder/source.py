"""What an export starts from: a fine-tuned classifier directory, and the texts its variants run on.

`read_model_dir` reads a directory written by `finetune` (or save_pretrained): its labels, label scheme,
max length and data columns, with one clear error per way it can fail to be a classifier. `scoring_texts`
picks the texts PyTorch and every variant run on: labelled eval data (`--eval-file`, else the training
run's eval file or validation split, as its manifest names them), else unlabelled texts for agreement;
`calibration_texts` those static quantization calibrates on; `trimming_texts` those whose vocabulary a
trimmed model keeps.
This module runs no model and builds or judges no variant; export.py does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import MANIFEST_NAME, sha256_file
from bertdeploy.builder.examples import (
    Examples,
    check_known_labels,
    example_columns,
    load_examples,
    sample_examples,
    split_examples,
)
from bertdeploy.data import load_texts
from bertdeploy.errors import DataError, ModelError
from bertdeploy.labels import MULTI_LABEL, PROBLEM_TYPES, SINGLE_LABEL, LabelScheme
from bertdeploy.manifest import Columns, ModelManifest, TrainingData

logger = logging.getLogger(__name__)

SAMPLE_SEED = 0
PARITY_TEXTS_WITHOUT_LABELS = 256
SAMPLE_TEXTS = [  # parity texts of last resort: short and long, Chinese and English
    "这个手机很好用，电池也耐用。", "质量太差了，用了两天就坏了，非常失望！", "物流很快", "一般般吧，价格还可以。",
    "The service was excellent and the staff were friendly.", "Terrible. Never again.", "ok",
    "I bought this for my daughter and she has used it every day since; the battery lasts, the screen is bright "
    "and it survived two drops, though the charger stopped working after a month.",
    "书的内容不错，但是印刷质量一般，有几页字迹模糊，希望卖家以后注意。总体来说还是值得一读的。", "不推荐",
    "Works as described.", "客服态度很差，问了三次都没人回复，退货流程也很麻烦，再也不会在这家买了。",
]


@dataclass
class ModelSource:
    """A fine-tuned classifier directory as an export reads it; `manifest` is None when `finetune` did not write it."""

    path: Path
    scheme: LabelScheme
    max_length: int
    columns: Columns
    manifest: ModelManifest | None

    @property
    def labels(self) -> list[str]:
        return list(self.scheme.labels)

    @property
    def data(self) -> TrainingData:
        """The data it was trained on, as its manifest names them (none without one)."""
        return self.manifest.data if self.manifest is not None else TrainingData()


# -- the model directory ---------------------------------------------------------------------

def read_model_dir(model_dir: str | Path) -> ModelSource:
    """Labels, max length and columns of a fine-tuned classifier directory, with a clear error if it is not one."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"{path}: no such directory")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json); give a directory written by "
                         "`bertdeploy finetune` or save_pretrained")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path}: no tokenizer.json; deployment needs the fast tokenizer saved beside the model "
                         "(tokenizer.save_pretrained(dir) with a fast tokenizer)")
    manifest = ModelManifest.read(path) if (path / MANIFEST_NAME).is_file() else None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(f"{path}: not a text classifier (architectures: {', '.join(architectures) or 'none'}), so "
                         "it has no labels; fine-tune it first with `bertdeploy finetune`")
    id2label = config.get("id2label") or {}
    labels = [id2label.get(str(i)) for i in range(len(id2label))]
    if not labels or None in labels:
        raise ModelError(f"{path / 'config.json'}: no labels (id2label is missing or incomplete)")
    if manifest is not None and list(manifest.labels) != labels:
        raise ModelError(f"{path}: the labels in manifest.json and config.json differ; re-run the fine-tuning")
    if manifest is None and all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        logger.warning("%s: the labels are generic names (%s); predictions will use them", path, ", ".join(labels))
    problem_type = config.get("problem_type") or SINGLE_LABEL
    if problem_type not in PROBLEM_TYPES:
        raise ModelError(f"{path}: problem type {problem_type!r}; bertdeploy exports classifiers "
                         f"({', '.join(PROBLEM_TYPES)})")
    # config.json decides the problem type; the manifest adds a multi-label model's thresholds and separator
    scheme = manifest.scheme if manifest is not None and manifest.problem_type == problem_type else \
        LabelScheme(tuple(labels), problem_type == MULTI_LABEL)
    return ModelSource(path, scheme, _max_length(path, config, manifest),
                       manifest.columns if manifest is not None else Columns(), manifest)


def _max_length(path: Path, config: dict, manifest: ModelManifest | None) -> int:
    positions = config.get("max_position_embeddings") or 512
    if manifest is not None:
        return min(manifest.max_length, positions)
    try:
        saved = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, json.JSONDecodeError):
        saved = None
    return min(int(saved), positions) if isinstance(saved, int | float) and saved < 1e6 else min(512, positions)


# -- texts -------------------------------------------------------------------------------------

def scoring_texts(source: ModelSource, eval_file: str | Path | None, eval_samples: int) -> tuple[Examples, str]:
    """The texts every variant runs on: labelled eval data when there is some (a stratified sample of
    `eval_samples` rows of more; 0: all), else unlabelled texts; and where they came from."""
    examples, where = _eval_examples(source, eval_file)
    if examples is not None:
        if eval_samples and len(examples) > eval_samples:
            logger.info("scoring on a stratified sample of %d of the %d eval rows (--eval-samples)",
                        eval_samples, len(examples))
            examples = sample_examples(examples, eval_samples, SAMPLE_SEED)
        return examples, where
    texts, pairs, where = _unlabelled_texts(source)
    texts, pairs = _sample_texts(texts, pairs, PARITY_TEXTS_WITHOUT_LABELS)
    return Examples(Path(where), texts, [], pairs), where


def _sample_texts(texts: list[str], pairs: list[str] | None, n: int) -> tuple[list[str], list[str] | None]:
    """A seeded sample of `n` texts (all of them if fewer), in file order."""
    if len(texts) <= n:
        return texts, pairs
    keep = sorted(np.random.default_rng(SAMPLE_SEED).choice(len(texts), n, replace=False))
    return [texts[i] for i in keep], None if pairs is None else [pairs[i] for i in keep]


def _eval_examples(source: ModelSource, eval_file: str | Path | None) -> tuple[Examples | None, str | None]:
    columns = example_columns(source.columns, source.scheme)  # load_examples' keywords
    if eval_file is not None:
        examples = load_examples(eval_file, **columns)
        check_known_labels(examples, source.labels)
        return examples, str(eval_file)
    data = source.data
    named = data.eval_source
    if named is None:
        return None, None
    path = Path(named.path)
    if not path.is_file():
        logger.warning("%s, named in the model's manifest, is gone; pass --eval-file to score the variants", path)
        return None, None
    if sha256_file(path) != named.sha256:
        logger.warning("%s changed since training; scoring on it as it is now", path)
    drop_empty = source.manifest is not None and source.manifest.drop_empty
    examples = load_examples(path, **columns, drop_empty=drop_empty)
    check_known_labels(examples, source.labels)
    if data.val_split is not None:
        _, examples = split_examples(examples, data.val_split.fraction, data.val_split.seed)
        return examples, f"{path} (the validation split held out in training)"
    return examples, f"{path} (the training run's eval file)"


def _unlabelled_texts(source: ModelSource) -> tuple[list[str], list[str] | None, str]:
    train = source.data.train_file
    if train and Path(train.path).is_file():
        texts, pairs = load_texts(train.path, source.columns.text_column, source.columns.text_pair_column)
        return texts, pairs, train.path
    pairs = list(reversed(SAMPLE_TEXTS)) if source.columns.text_pair_column else None
    return list(SAMPLE_TEXTS), pairs, "built-in sample texts"


def calibration_texts(source: ModelSource, calibration_file: str | Path | None, samples: int,
                      needed_by: list[str]) -> tuple[list[str], list[str] | None]:
    """A seeded sample of `samples` texts to calibrate on: the calibration file, else the model's training file,
    which the error names `needed_by` (the variants that calibrate) for when it is not at hand."""
    if calibration_file is not None:
        path = Path(calibration_file)
    else:
        train = source.data.train_file
        if not train or not Path(train.path).is_file():
            raise DataError(f"{' and '.join(needed_by)} needs calibration "
                            "texts and the model's training file is not at hand: pass --calibration-file with a "
                            "few hundred typical texts")
        path = Path(train.path)
    texts, pairs = load_texts(path, source.columns.text_column, source.columns.text_pair_column)
    texts, pairs = _sample_texts(texts, pairs, samples)
    logger.info("calibrating on %d texts from %s", len(texts), path)
    return texts, pairs



def trimming_texts(source: ModelSource, files: list[str | Path]) -> tuple[list[str], list[str] | None, str]:
    """The texts whose vocabulary a trimmed model keeps: every text of `files` (unlabelled, in the model's text
    column), else the model's training file; and where they came from."""
    if not files:
        train = source.data.train_file
        if not train or not Path(train.path).is_file():
            raise DataError("--trim-vocabulary keeps the vocabulary of the training texts, and the model's training "
                            "file is not at hand" + (f" ({train.path})" if train else "") +
                            ": give the texts with --trim-texts FILE")
        if sha256_file(train.path) != train.sha256:
            logger.warning("%s changed since training; trimming to its texts as they are now", train.path)
        files = [train.path]
    texts: list[str] = []
    pairs: list[str] | None = [] if source.columns.text_pair_column else None
    for path in files:
        more, more_pairs = load_texts(path, source.columns.text_column, source.columns.text_pair_column)
        texts += more
        if pairs is not None:
            pairs += more_pairs or []
    return texts, pairs, ", ".join(str(f) for f in files)
