"""The inputs `bench` times: fixed batch x length cells cut from real tokens, and real texts at natural lengths.

Every engine runs exactly the same feeds. Fixed lengths put a different stretch of the texts'
tokens in each row, between the special tokens; natural lengths take consecutive eval texts and
pad them per batch as the predictor pads them. Each artifact of a run makes its cells of the same texts
through its own tokenizer and input names (`artifact_inputs`), aligned by index with every other's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.builder.examples import Examples
from bertdeploy.labels import LabelScheme
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.encoding import TextEncoder, load_encoder
from bertdeploy.timing import median_tokens

logger = logging.getLogger(__name__)

NATURAL = "natural"


@dataclass
class Case:
    """One cell of the table: `feeds` are the batches timed in turn, `tokens` the real tokens in each."""

    inputs: str  # "128 tokens" or "natural"
    batch_size: int
    feeds: list[dict]
    tokens: list[int]

    @property
    def padded_tokens(self) -> int:
        """Texts x padded length of a call, the median over the feeds (what the predictor routes by)."""
        return median_tokens(self.feeds)


def fixed_length_cases(encoder, texts: list[str], batch_sizes: list[int], seq_lengths: list[int],
                       names: list[str]) -> list[Case]:
    """batch x length inputs of real tokens: each row a different stretch of the texts, between [CLS] and [SEP]."""
    bare = encoder.tokenizer.encode_batch(list(texts), add_special_tokens=False)
    pool = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in bare])
    ends = encoder.tokenizer.encode("").ids  # [CLS], [SEP] for BERT
    cases = []
    for length in seq_lengths:
        for batch in batch_sizes:
            body = length - len(ends)
            starts = (np.arange(batch) * 7919) % max(1, len(pool) - body)
            rows = [np.resize(np.roll(pool, -s), body) for s in starts]
            ids = np.stack([np.concatenate([[ends[0]], row, ends[1:]]) for row in rows]).astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            cases.append(Case(f"{length} tokens", batch, [{k: v for k, v in feed.items() if k in names}],
                              [ids.size]))
    return cases


def natural_cases(encoder, examples: Examples, batch_sizes: list[int], runs: int, names: list[str]) -> list[Case]:
    """Consecutive eval texts, `batch` at a time in file order, padded as the predictor pads them."""
    encodings = encoder.tokenize(examples.texts, examples.pairs)
    cases = []
    for batch in batch_sizes:
        count = min(runs, len(encodings) // batch)
        if count == 0:
            logger.warning("natural lengths at batch %d skipped: the eval file has only %d texts", batch,
                           len(encodings))
            continue
        groups = [encodings[i * batch:(i + 1) * batch] for i in range(count)]
        cases.append(Case(NATURAL, batch, [encoder.pad(g, names) for g in groups],
                          [sum(len(e.ids) for e in g) for g in groups]))
    return cases


@dataclass(eq=False)  # one per artifact, told apart by identity
class Inputs:
    """The run's texts through one artifact's tokenizer: its cases (aligned by index with every other artifact's)
    and, for scoring, its encoder, input names and label scheme."""

    cases: list[Case]
    encoder: TextEncoder | None = None
    names: list[str] | None = None
    scheme: LabelScheme | None = None


def artifact_inputs(directory: Path, manifest: ExportManifest, texts: list[str], examples: Examples | None,
                    lengths: list[int], batch_sizes: list[int], runs: int) -> Inputs:
    """The run's texts through `directory`'s own tokenizer and input names: fixed lengths, then natural ones."""
    encoder = load_encoder(manifest.files(directory)[0].path, manifest.max_length)
    names = list(manifest.inputs)
    cases = fixed_length_cases(encoder, texts, batch_sizes, lengths, names)
    if examples is not None:
        cases += natural_cases(encoder, examples, batch_sizes, runs, names)
    return Inputs(cases, encoder, names, manifest.scheme)
