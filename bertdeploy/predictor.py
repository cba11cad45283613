"""The predictor apps embed: an exported artifact directory in, labels and scores out.

Imports onnxruntime, tokenizers and numpy only (never torch, transformers, optimum or
datasets), and reads only the artifact directory: `manifest.json`, `tokenizer.json` and the
chosen variant's ONNX file. Texts are tokenized once, sorted by length, grouped under a token
budget and padded per batch, then returned in the caller's order. One `Predictor` may be
shared by many threads.

    p = Predictor.load("artifacts/")
    p.predict(["这个手机真的很好用！"])  # [Prediction(label='positive', score=0.97, scores={...})]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import read_manifest
from bertdeploy.errors import BertdeployError
from bertdeploy.runtime import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    GPU_PROVIDERS,
    MAX_BATCH_SIZE,
    MAX_PADDING,
    TextEncoder,
    create_session,
    iter_batches,
    load_encoder,
    run_batches,
)

logger = logging.getLogger(__name__)

LONG_TEXT = ("truncate", "chunk")


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]


class Predictor:
    """A loaded variant: call `predict` for labels or `predict_proba` for the score matrix."""

    def __init__(self, directory: Path, manifest: dict, variant: str, session, encoder: TextEncoder,
                 long_text: str = "truncate", max_batch_tokens: int | None = None,
                 max_batch_size: int = MAX_BATCH_SIZE) -> None:
        self.directory, self.manifest, self.variant = directory, manifest, variant
        self.session, self.encoder = session, encoder
        self.labels: list[str] = list(manifest["labels"])
        self.max_length: int = manifest["max_length"]
        self.pairs: bool = manifest.get("text_pair_column") is not None
        self.multi_label = manifest.get("problem_type") == "multi_label_classification"
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_name = session.get_outputs()[0].name
        self.providers: list[str] = session.get_providers()
        self._bind = self.providers[0] in GPU_PROVIDERS  # IO binding: inputs copied once, output on the device
        self.long_text, self.max_batch_size = long_text, max_batch_size
        self.max_batch_tokens = max_batch_tokens or (GPU_BATCH_TOKENS if self._bind else CPU_BATCH_TOKENS)
        self._device_id = int(session.get_provider_options().get(self.providers[0], {}).get("device_id", 0))

    @classmethod
    def load(cls, directory: str | Path, variant: str | None = None, providers: str | Sequence | None = None,
             threads: int | None = None, long_text: str = "truncate", max_batch_tokens: int | None = None,
             max_batch_size: int = MAX_BATCH_SIZE, allow_fallback: bool = False, spinning: bool = False) -> Predictor:
        """Load `variant` (default: the manifest's default) of the artifact directory `directory`.

        providers: 'cpu' (default), 'cuda', 'tensorrt' or ONNX Runtime names, first choice first; a
        silent fall-back to the CPU is an error unless `allow_fallback`. threads: intra-op threads
        (default: the CPUs this process may use). long_text: 'truncate' at the model's max length, or
        'chunk' into overlapping windows whose scores are averaged. max_batch_tokens: texts per batch
        x padded length (default: 1,024 on the CPU, 16,384 on a GPU).
        """
        directory = Path(directory)
        if long_text not in LONG_TEXT:
            raise ValueError(f"long_text must be one of {LONG_TEXT}, not {long_text!r}")
        if (max_batch_tokens is not None and max_batch_tokens < 1) or max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be at least 1")
        manifest = read_manifest(directory, "onnx")
        for key in ("labels", "max_length", "variants", "default_variant", "tokenizer"):
            if key not in manifest:
                raise BertdeployError(f"{directory / 'manifest.json'}: no {key!r}; re-export the model")
        variant = variant or manifest["default_variant"]
        if variant not in manifest["variants"]:
            refused = " (it was refused at export)" if variant in manifest.get("rejected", {}) else ""
            raise BertdeployError(f"{directory}: no variant {variant!r}{refused}; "
                                  f"it has {', '.join(manifest['variants'])}")
        path = directory / manifest["variants"][variant]["file"]
        if not path.is_file():
            raise BertdeployError(f"{path}: missing; the manifest lists it as variant {variant!r}. "
                                  "Copy the whole artifact directory")
        max_length = manifest["max_length"]
        stride = max(1, max_length // 4) if long_text == "chunk" else None
        encoder = load_encoder(directory / manifest["tokenizer"], max_length, stride)
        session = create_session(path, providers, threads, spinning, allow_fallback)
        logger.debug("loaded %s variant %s on %s", directory, variant, session.get_providers()[0])
        return cls(directory, manifest, variant, session, encoder, long_text, max_batch_tokens, max_batch_size)

    def predict(self, texts: Sequence[str] | str, pairs: Sequence[str] | str | None = None) -> list[Prediction]:
        """The most likely label, its score and every label's score, for each text in order."""
        probabilities = self.predict_proba(texts, pairs)
        return [
            Prediction(self.labels[best], float(row[best]), dict(zip(self.labels, row.tolist(), strict=True)))
            for row, best in zip(probabilities, probabilities.argmax(-1), strict=True)
        ]

    def predict_proba(self, texts: Sequence[str] | str, pairs: Sequence[str] | str | None = None) -> np.ndarray:
        """Scores as an (n, number of labels) float32 array: softmax, or sigmoid for multi-label models."""
        texts, pairs = self._check(texts, pairs)
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        if self.long_text == "chunk":
            encodings, owners = self.encoder.windows(texts)
            scores = self._activate(self._logits(encodings))
            summed = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
            np.add.at(summed, owners, scores)
            return (summed / np.bincount(owners, minlength=len(texts))[:, None]).astype(np.float32)
        return self._activate(self._logits(self.encoder.tokenize(texts, pairs)))

    def _check(self, texts, pairs) -> tuple[list[str], list[str] | None]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = [pairs] if isinstance(pairs, str) else None if pairs is None else list(pairs)
        for name, values in (("texts", texts), ("pairs", pairs or [])):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise TypeError(f"{name}[{i}] is {type(value).__name__}, not str")
        if self.pairs and pairs is None:
            raise ValueError(f"this model was trained on text pairs ({self.manifest['text_column']}, "
                             f"{self.manifest['text_pair_column']}); pass pairs=")
        if not self.pairs and pairs is not None:
            raise ValueError("this model was trained on single texts; do not pass pairs=")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        if pairs is not None and self.long_text == "chunk":
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
            return self._activate(self._run(feed))
        return iter_batches(run, self.encoder, encodings, self.input_names, self.max_batch_tokens,
                            self.max_batch_size, MAX_PADDING)

    def _logits(self, encodings: list) -> np.ndarray:
        return run_batches(self._run, self.encoder, encodings, self.input_names, len(self.labels),
                           self.max_batch_tokens, self.max_batch_size, MAX_PADDING)

    def _run(self, feed: dict) -> np.ndarray:
        if not self._bind:
            return self.session.run([self.output_name], feed)[0]
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", self._device_id))
        binding.bind_output(self.output_name, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float32, copy=False)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def __repr__(self) -> str:
        return f"Predictor({str(self.directory)!r}, variant={self.variant!r}, providers={self.providers[0]!r})"
