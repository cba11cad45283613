"""The runtime settings, one object for every engine: what `Predictor.load` takes besides the directory.

`RuntimeOptions` is built once (by the CLI, or by you) and handed as it is to the predictor by the local and
Ray engines of `predict` and `serve` (it pickles, for Ray's actors and replicas). Its own values are checked
here; what depends on the directory or the machine (does the variant exist, has this ONNX Runtime the
providers) is checked when a predictor loads.
Standard library only, plus the names defaults.py, backends.py and encoding.py define.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from bertdeploy.defaults import AUTO, LONG_TEXT, PRECISIONS, PROVIDERS, SPINNING, TRUNCATE, VERIFY
from bertdeploy.errors import check_options
from bertdeploy.runtime.backends import HINTS, check_backend


@dataclass(frozen=True)
class RuntimeOptions:
    """How a predictor loads and runs an artifact directory.

    backend: 'auto' runs each batch on the variant measured fastest for its size in padded tokens, texts x
    padded length (bench records the ranges in the manifest; without them, export's default variant), among
    the runtimes installed; 'onnxruntime' the default variant; 'openvino' the fastest OpenVINO variant.
    variant: this variant only, on its own runtime. providers (ONNX Runtime): 'cpu', 'cuda', 'tensorrt' or
    ONNX Runtime names (each optionally as (name, options)), comma-separated or a list, first choice first; a
    silent fall-back to the CPU is an error unless `allow_fallback`. threads: per model (default: the CPUs
    this process may use). spinning (ONNX Runtime on the CPU): the intra-op threads spin a moment after each
    call to catch the next one, as ONNX Runtime and Optimum do by default: single texts in a stream run ~1.4x
    faster, and a process idle after a burst burns ~2% of a core (benchmarks/RESULTS.md); False never spins.
    hint (OpenVINO): 'latency' or 'throughput'. precision (OpenVINO): the inference precision of its variants,
    'bf16' or 'f32' (None: each variant's as export judged it, recorded in the manifest; a manifest without one:
    the CPU's default, bf16 where it computes bf16 natively). long_text: 'truncate' at the model's max length,
    or 'chunk' into overlapping windows whose scores are averaged. max_batch_tokens: texts per model run x padded length
    (default: 1,024 on the CPU, 16,384 on a GPU). max_batch_size: texts per model run (the server batches
    concurrent requests' texts up to it). verify: check the tokenizer and each variant loaded against the sha256
    the manifest records, refusing a file that changed since export (False: load unchecked; the paths the
    manifest names must lie inside the directory either way).
    """

    variant: str | None = None
    backend: str = AUTO
    providers: str | Sequence | None = PROVIDERS  # None: cpu
    allow_fallback: bool = False
    threads: int | None = None
    spinning: bool = SPINNING
    hint: str = "latency"
    precision: str | None = None
    long_text: str = TRUNCATE
    max_batch_tokens: int | None = None
    max_batch_size: int | None = None  # default: the engine's (the predictor's 128, serve's 64)
    verify: bool = VERIFY

    def __post_init__(self) -> None:
        check_backend(self.backend)
        check_options([
            (self.hint in HINTS, f"unknown OpenVINO hint {self.hint!r}; use {' or '.join(HINTS)}"),
            (self.precision is None or self.precision in PRECISIONS,
             f"unknown OpenVINO precision {self.precision!r}; use {' or '.join(PRECISIONS)}"),
            (self.long_text in LONG_TEXT, f"long_text must be one of {', '.join(LONG_TEXT)}"),
            (self.threads is None or self.threads >= 1, "--threads must be at least 1"),
            (self.max_batch_tokens is None or self.max_batch_tokens >= 8, "--max-batch-tokens must be at least 8"),
            (self.max_batch_size is None or self.max_batch_size >= 1, "max_batch_size must be at least 1"),
        ])

    @classmethod
    def split(cls, values: dict) -> tuple[RuntimeOptions, dict]:
        """RuntimeOptions from the entries of `values` named like its fields, and the other entries (a command's
        own options): for flat settings such as the CLI's or a Serve config's."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names}), {k: v for k, v in values.items()
                                                                        if k not in names}
