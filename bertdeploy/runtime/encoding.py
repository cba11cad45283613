"""Texts to model inputs, in batches: tokenizers and numpy.

`TextEncoder` turns texts into exactly the inputs a graph declares, padded on the right per batch;
`plan_batches` groups texts of similar length under a token budget; `run_batches` and `logits` run many
texts that way and return them in the caller's order. Sessions live in sessions.py, runtimes in backends.py.
It never imports torch, transformers or optimum: the predictor and the server stand on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.defaults import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS
from bertdeploy.errors import BertdeployError

logger = logging.getLogger(__name__)

PAD_MULTIPLE = 8
# Export's accuracy guard and bench's scoring batch as the predictor does (`batch_tokens`, MAX_BATCH_SIZE,
# MAX_PADDING), so a variant is judged on the batches it will run: dynamic INT8's scores depend on a text's
# batch-mates (benchmarks/batch_invariance.py), and OpenVINO's bf16 INT8 kernels on the padded width
# (docs/openvino.md). The token budgets themselves are in defaults.py.
MAX_BATCH_SIZE = 128
# The predictor cuts a batch where padding would add over a quarter to its texts' own padded length:
# on 2 CPU cores that took groups of 8 reviews from 149 to 211 texts/s (benchmarks/batch_efficiency.py).
MAX_PADDING = 0.25
# A text longer than max_length x this many characters is tokenized cut to that length first (a 25,000-character
# article costs milliseconds to tokenize whole, more than a static model takes to read it), and whole again only
# where the cut could have changed what the model reads: no word boundary between the last token it reads and the
# cut. English averages 4 to 5 characters a token, Chinese about one.
CUT_CHARS_PER_TOKEN = 8


@dataclass
class TextEncoder:
    """The model's fast tokenizer (`tokenizer.json`), truncating at `max_length`; padding is done per batch.

    With `stride`, a second copy splits long texts into overlapping windows instead (`windows`).
    Both tokenizers are configured once and only read afterwards, so one encoder serves many threads.
    """

    tokenizer: object
    pad_id: int
    pad_type_id: int
    max_length: int
    windowed: object | None = None

    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list:
        """The encodings of `texts` (and `pairs`), truncated at max_length; long single texts are cut first where
        that provably reads the same tokens (`CUT_CHARS_PER_TOKEN`)."""
        if pairs is not None:
            return self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
        limit = self.max_length * CUT_CHARS_PER_TOKEN
        if all(len(text) <= limit for text in texts):
            return self.tokenizer.encode_batch(list(texts))
        cut = [text[:limit] for text in texts]
        encodings = self.tokenizer.encode_batch(cut)
        whole = [i for i, text in enumerate(texts) if len(text) > limit and not reads_before_cut(encodings[i], cut[i])]
        for i, encoding in zip(whole, self.tokenizer.encode_batch([texts[i] for i in whole]), strict=True):
            encodings[i] = encoding
        return encodings

    def windows(self, texts: Sequence[str]) -> tuple[list, np.ndarray]:
        """Every window of every text, and for each window the index of its text."""
        if self.windowed is None:
            raise ValueError("this encoder was loaded without a stride for windows")
        encodings, owners = [], []
        for i, encoding in enumerate(self.windowed.encode_batch(list(texts))):
            parts = [encoding, *encoding.overflowing]
            encodings += parts
            owners += [i] * len(parts)
        return encodings, np.asarray(owners, dtype=np.int64)

    def pad(self, encodings: Sequence, input_names: Sequence[str]) -> dict:
        """int64 arrays padded on the right to the longest encoding, rounded up to a multiple of 8
        (fewer distinct shapes, better kernels); only the inputs the graph declares."""
        lengths = [len(e.ids) for e in encodings]
        width = padded_length(max(lengths, default=1))
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        types = np.full((len(encodings), width), self.pad_type_id, dtype=np.int64)
        for row, (e, n) in enumerate(zip(encodings, lengths, strict=True)):
            ids[row, :n] = e.ids
            types[row, :n] = e.type_ids
        arrays = {
            "input_ids": ids,
            "attention_mask": (np.arange(width) < np.asarray(lengths)[:, None]).astype(np.int64),
            "token_type_ids": types,
        }
        unknown = [name for name in input_names if name not in arrays]
        if unknown:
            raise BertdeployError(f"the graph wants inputs {unknown} that a text classifier does not have")
        return {name: arrays[name] for name in input_names}


def reads_before_cut(encoding, cut: str) -> bool:
    """Whether the truncated `encoding` of the `cut` text ends before a word boundary that precedes the cut: then the
    tokens it keeps are the whole text's (tokenizers split words apart before they cut them into pieces)."""
    if not encoding.overflowing:  # the cut text fits whole: the model would read past the cut
        return False
    end = max((stop for (_, stop), special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
               if not special), default=0)
    return any(character.isspace() for character in cut[end:])


def load_encoder(path: str | Path, max_length: int, stride: int | None = None) -> TextEncoder:
    """The encoder for `tokenizer.json` (as export writes it: with a padding token)."""
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise BertdeployError(f"{path}: no such file; the artifact directory needs its tokenizer.json")

    def configured(window_stride: int):
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length, stride=window_stride)
        return tokenizer

    tokenizer = configured(0)
    padding = tokenizer.padding
    if padding is None:
        raise BertdeployError(f"{path}: the tokenizer has no padding settings; re-export the model")
    tokenizer.no_padding()
    windowed = None
    if stride is not None:
        windowed = configured(stride)
        windowed.no_padding()
    return TextEncoder(tokenizer, padding["pad_id"], padding["pad_type_id"], max_length, windowed)


def encode(encoder: TextEncoder, texts: Sequence[str], pairs: Sequence[str] | None, input_names: Sequence[str]) -> dict:
    """One padded batch of `texts` (and `pairs`) as the graph's inputs."""
    return encoder.pad(encoder.tokenize(texts, pairs), input_names)


def batch_tokens(on_gpu: bool) -> int:
    """The predictor's default token budget per batch on a GPU, or on the CPU."""
    return GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS


def padded_length(n: int) -> int:
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


def plan_batches(lengths: Sequence[int], max_batch_tokens: int = CPU_BATCH_TOKENS,
                 max_batch_size: int = MAX_BATCH_SIZE, max_padding: float | None = None) -> list[np.ndarray]:
    """Indices grouped into batches: sorted by token length, each batch's padded size (count x longest,
    rounded up to a multiple of 8) within `max_batch_tokens` and at most `max_batch_size` texts; with
    `max_padding`, also at most that share above the sum of its texts' own padded lengths.
    A single text longer than the budget still gets a batch of its own."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start, own = [], 0, 0
    for end in range(1, len(order) + 1):
        width = padded_length(lengths[order[end - 1]])
        full = end - start > max_batch_size
        over = (end - start) * width > max_batch_tokens
        wasteful = max_padding is not None and (end - start) * width > (1 + max_padding) * (own + width)
        if (full or over or wasteful) and end - 1 > start:
            batches.append(order[start:end - 1])
            start, own = end - 1, 0
        own += width
    if start < len(order):
        batches.append(order[start:])
    return batches


def iter_batches(run, encoder: TextEncoder, encodings: Sequence, input_names: Sequence[str],
                 max_batch_tokens: int = CPU_BATCH_TOKENS, max_batch_size: int = MAX_BATCH_SIZE,
                 max_padding: float | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, `run(feed)`) for each length-grouped batch of `encodings`, as each is computed."""
    for index in plan_batches([len(e.ids) for e in encodings], max_batch_tokens, max_batch_size, max_padding):
        yield index, run(encoder.pad([encodings[i] for i in index], input_names))


def run_batches(run, encoder: TextEncoder, encodings: Sequence, input_names: Sequence[str], width: int,
                max_batch_tokens: int = CPU_BATCH_TOKENS, max_batch_size: int = MAX_BATCH_SIZE,
                max_padding: float | None = None) -> np.ndarray:
    """`run(feed) -> (batch, width) array` over length-grouped batches of `encodings`, in input order."""
    out = np.empty((len(encodings), width), dtype=np.float32)
    for index, rows in iter_batches(run, encoder, encodings, input_names, max_batch_tokens, max_batch_size,
                                    max_padding):
        out[index] = rows
    return out


def logits(session, encoder: TextEncoder, texts: Sequence[str], pairs: Sequence[str] | None = None,
           max_batch_tokens: int = CPU_BATCH_TOKENS) -> np.ndarray:
    """Logits for every text, computed in length-grouped batches, in input order."""
    names = [i.name for i in session.get_inputs()]
    width = session.get_outputs()[0].shape[-1]
    if not isinstance(width, int):
        raise BertdeployError("the graph's output has no fixed number of classes")
    return run_batches(lambda feed: session.run(None, feed)[0], encoder, encoder.tokenize(texts, pairs), names,
                       width, max_batch_tokens)
