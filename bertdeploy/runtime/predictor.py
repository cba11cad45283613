"""The predictor apps embed: an exported artifact directory in, labels and scores out.

Imports onnxruntime, tokenizers and numpy only, plus openvino for its variants (never torch,
transformers, optimum or datasets), and reads only the artifact directory: `manifest.json`,
`tokenizer.json` and the chosen variants' ONNX files, each checked against the sha256 the manifest
records unless `verify=False`. Texts are tokenized once, sorted by
length, grouped under a token budget and padded per batch, then returned in the caller's order.
With `backend="auto"` each batch runs on the variant (and runtime) measured fastest for its
size in padded tokens (texts x padded length), so one short text and a batch of long ones may run
on different runtimes. One `Predictor` may be shared by many threads.

    p = Predictor.load("artifacts/")
    p.predict(["这个手机真的很好用！"])  # [Prediction(label='positive', score=0.97, scores={...}, labels=['positive'])]
    Predictor.load("artifacts/", variant="int8", threads=2)  # or options=RuntimeOptions(variant="int8", threads=2)

The settings are one `RuntimeOptions` (options.py), the object every engine passes.

A multi-label model (sigmoid per label) predicts each text's label set: every label whose score reaches
its threshold (from the manifest), possibly none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import verify_files
from bertdeploy.defaults import CHUNK, LONG_TEXT
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.backends import OPENVINO, open_model
from bertdeploy.runtime.encoding import (
    MAX_BATCH_SIZE,
    MAX_PADDING,
    PAD_MULTIPLE,
    TextEncoder,
    batch_tokens,
    iter_batches,
    load_encoder,
    padded_length,
    run_batches,
)
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.routing import choose_routes, describe_routes
from bertdeploy.runtime.sessions import GPU_PROVIDERS, provider_name, resolve_providers

logger = logging.getLogger(__name__)

# LONG_TEXT (defaults.py) and RuntimeOptions (options.py) stay importable from here
__all__ = ["LONG_TEXT", "Prediction", "Predictor", "RuntimeOptions"]


@dataclass(frozen=True)
class Prediction:
    """label: the predicted label (multi-label: the best-scoring label that passes its threshold, None if none
    does); score: the top score; scores: every label's; labels: the predicted set (single-label: [label]), in
    label order."""

    label: str | None
    score: float
    scores: dict[str, float]
    labels: list[str]


@dataclass(frozen=True)
class Route:
    """Batches of up to `max_tokens` padded tokens, texts x padded length (None: any larger), run on `variant`."""

    max_tokens: int | None
    variant: str
    model: object  # backends.OrtModel or backends.OpenVinoModel


class Predictor:
    """A loaded model: call `predict` for labels or `predict_proba` for the score matrix."""

    def __init__(self, directory: Path, manifest: ExportManifest, routes: list[Route], encoder: TextEncoder,
                 options: RuntimeOptions) -> None:
        self.directory, self.manifest, self.routes, self.encoder = directory, manifest, routes, encoder
        self.options = options
        self.scheme = manifest.scheme
        self.labels: list[str] = list(self.scheme.labels)
        self.max_length: int = manifest.max_length
        self.pairs: bool = manifest.pairs
        self.multi_label = self.scheme.multi_label
        first = routes[0].model
        self.input_names: list[str] = first.input_names
        self.providers: list[str] = first.providers
        single = len(routes) == 1
        self.variant = routes[0].variant if single else "auto"
        self.backend = first.backend if single else "auto"
        self.long_text, self.max_batch_size = options.long_text, options.max_batch_size or MAX_BATCH_SIZE
        self.max_batch_tokens = options.max_batch_tokens or batch_tokens(first.on_gpu)

    @classmethod
    def load(cls, directory: str | Path, *, options: RuntimeOptions | None = None, **settings) -> Predictor:
        """Load the artifact directory `directory` with `options` (default: `RuntimeOptions()`), any of its
        fields given by name taking their place: `Predictor.load(dir, variant="int8", threads=2)`.

        The settings (backend, variant, providers, allow_fallback, threads, spinning, hint, precision, long_text,
        max_batch_tokens, max_batch_size, verify) are RuntimeOptions' fields; its docstring says what each does.
        An OpenVINO variant runs at the inference precision export judged it at (the manifest's), unless
        `precision` says otherwise. Every file the manifest names must lie inside `directory`, and (unless
        `verify=False`) the tokenizer and the variants loaded must have the sha256 it records.
        """
        directory = Path(directory)
        options = dataclasses.replace(options or RuntimeOptions(), **settings)
        manifest = ExportManifest.read(directory)
        tokenizer, files = manifest.files(directory)
        gpu = any(provider_name(p) in GPU_PROVIDERS for p in resolve_providers(options.providers))
        plan = choose_routes(directory, manifest, options.variant, options.backend, gpu)
        if options.verify:
            verify_files([tokenizer, *(files[name] for _, name in plan)])
        max_length = manifest.max_length
        stride = max(1, max_length // 4) if options.long_text == CHUNK else None
        encoder = load_encoder(tokenizer.path, max_length, stride)
        routes = []
        for upper, name in plan:  # serially: creating sessions concurrently is not safe
            entry = manifest.variants[name]
            model = open_model(files[name].path, entry.backend, options.providers, threads=options.threads,
                               spinning=options.spinning, allow_fallback=options.allow_fallback, hint=options.hint,
                               precision=options.precision or entry.precision)
            logger.debug("loaded %s variant %s on %s", directory, name, model.providers[0])
            routes.append(Route(upper, name, model))
        return cls(directory, manifest, routes, encoder, options)

    def describe(self) -> str:
        """Which variant runs which batches, on what: for logs and summaries."""
        routes = [(r.max_tokens, f"{r.variant} on {r.model.providers[0]}") for r in self.routes]
        return describe_routes(routes) if len(routes) > 1 else routes[0][1]

    def warm_up(self, slot: contextlib.AbstractContextManager | None = None) -> None:
        """Run each model once on the largest batch it may get, so first requests find memory allocated;
        OpenVINO models also once per padded length at the smallest batch routed to them, since OpenVINO
        compiles kernels for each new input shape (a few ms, once). Each run holds `slot` where given (a server's
        run slot, so that warming one model up takes turns with the others' runs)."""
        longest = padded_length(self.max_length)
        low = 0  # the route's batches are larger than this many tokens
        for route in self.routes:
            high = self.max_batch_tokens if route.max_tokens is None else min(route.max_tokens, self.max_batch_tokens)
            length = min(longest, max(PAD_MULTIPLE, high // PAD_MULTIPLE * PAD_MULTIPLE))
            if route.max_tokens is None:
                length = longest  # a text of the max length runs alone even over the token budget
            shapes = [(max(1, min(self.max_batch_size, high // length)), length)]
            if route.model.backend == OPENVINO:
                lengths = range(PAD_MULTIPLE, longest + 1, PAD_MULTIPLE)
                shapes += [(low // n + 1, n) for n in lengths if low // n + 1 <= self.max_batch_size]
            for rows, length in shapes:
                ids = np.full((rows, length), self.encoder.pad_id, dtype=np.int64)
                feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                with slot or contextlib.nullcontext():
                    route.model.run({name: feed[name] for name in self.input_names})
            low = route.max_tokens or low

    def predict(self, texts: Sequence[str] | str, pairs: Sequence[str] | str | None = None) -> list[Prediction]:
        """The predicted label (or label set), the top score and every label's score, for each text in order."""
        probabilities = self.predict_proba(texts, pairs)
        return [self.prediction(row, decided) for row, decided in zip(probabilities, self.scheme.decide(probabilities),
                                                                      strict=True)]

    def prediction(self, scores: np.ndarray, decided) -> Prediction:
        """One text's `Prediction` from its scores and decision (a row of `scheme.decide`)."""
        return Prediction(self.scheme.best(scores, decided), float(scores.max()),
                          dict(zip(self.labels, scores.tolist(), strict=True)), self.scheme.names(decided))

    def predict_proba(self, texts: Sequence[str] | str, pairs: Sequence[str] | str | None = None) -> np.ndarray:
        """Scores as an (n, number of labels) float32 array: softmax, or sigmoid for multi-label models."""
        texts, pairs = self._check(texts, pairs)
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        if self.long_text == CHUNK:
            encodings, owners = self.encoder.windows(texts)
            scores = self.scheme.activate(self._logits(encodings))
            summed = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
            np.add.at(summed, owners, scores)
            return (summed / np.bincount(owners, minlength=len(texts))[:, None]).astype(np.float32)
        return self.scheme.activate(self._logits(self.encoder.tokenize(texts, pairs)))

    def _check(self, texts, pairs) -> tuple[list[str], list[str] | None]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = [pairs] if isinstance(pairs, str) else None if pairs is None else list(pairs)
        for name, values in (("texts", texts), ("pairs", pairs or [])):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise TypeError(f"{name}[{i}] is {type(value).__name__}, not str")
        if self.pairs and pairs is None:
            raise ValueError(f"this model was trained on text pairs ({self.manifest.text_column}, "
                             f"{self.manifest.text_pair_column}); pass pairs=")
        if not self.pairs and pairs is not None:
            raise ValueError("this model was trained on single texts; do not pass pairs=")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        if pairs is not None and self.long_text == CHUNK:
            raise ValueError("long_text='chunk' splits single texts; pairs are truncated, use long_text='truncate'")
        return texts, pairs

    def iter_encoded(self, encodings: list, on_batch: Callable[[int, int], None] | None = None,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, scores) of each model run over texts already tokenized with `self.encoder.tokenize`, as
        soon as the run is done (the server answers each request once all its texts are); `on_batch(texts,
        padded_length)` is called for each run."""
        def run(feed: dict) -> np.ndarray:
            if on_batch is not None:
                on_batch(*feed["input_ids"].shape)
            return self.scheme.activate(self.run_batch(feed))
        return iter_batches(run, self.encoder, encodings, self.input_names, self.max_batch_tokens,
                            self.max_batch_size, MAX_PADDING)

    def _logits(self, encodings: list) -> np.ndarray:
        return run_batches(self.run_batch, self.encoder, encodings, self.input_names, len(self.labels),
                           self.max_batch_tokens, self.max_batch_size, MAX_PADDING)

    def route(self, tokens: int) -> Route:
        """The route a batch of `tokens` padded tokens (texts x padded length) runs on."""
        return next(r for r in self.routes if r.max_tokens is None or tokens <= r.max_tokens)

    def run_batch(self, feed: dict) -> np.ndarray:
        """Logits of one padded batch (the graph's inputs), on the variant routed for its size in tokens."""
        return self.route(feed["input_ids"].size).model.run(feed)

    def __repr__(self) -> str:
        return f"Predictor({str(self.directory)!r}, {self.describe()})"
