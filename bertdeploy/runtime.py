"""ONNX Runtime sessions and tokenization for exported classifiers: onnxruntime, tokenizers, numpy.

`create_session` puts a graph on the device asked for and fails instead of silently falling
back to the CPU; `encode` turns texts into exactly the inputs a graph declares, right-padded;
`logits` runs many texts in length-sorted batches and returns them in the caller's order.
It never imports torch, transformers or optimum: the predictor and the server stand on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bertdeploy.errors import BertdeployError

DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_device(device: str) -> None:
    """Fail early, with what is installed, when ONNX Runtime cannot run on `device`."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise BertdeployError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if DEVICES[device] not in available:
        raise BertdeployError(
            f"device {device}: this ONNX Runtime has no {DEVICES[device]} (it has {', '.join(available)}); "
            "install the GPU build with `pip uninstall -y onnxruntime && pip install 'bertdeploy[gpu]'`"
        )


def create_session(path: str | Path, device: str = "cpu", threads: int | None = None, spinning: bool = False):
    """An InferenceSession on `device` only, `threads` intra-op threads (default: the usable CPUs).

    Idle spinning is off by default: it burns CPU between requests for a small latency gain.
    """
    import onnxruntime as ort

    check_device(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = [DEVICES[device]] + (["CPUExecutionProvider"] if device != "cpu" else [])
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BertdeployError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
    if session.get_providers()[0] != DEVICES[device]:
        raise BertdeployError(f"{path}: ONNX Runtime fell back to {session.get_providers()[0]} instead of {device}")
    return session


def load_tokenizer(path: str | Path, max_length: int):
    """The fast tokenizer saved as `tokenizer.json`, truncating at `max_length` and padding right."""
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise BertdeployError(f"{path}: no such file; the artifact directory needs its tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    if tokenizer.padding is None:
        raise BertdeployError(f"{path}: the tokenizer has no padding settings; re-export the model")
    return tokenizer


def encode(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, input_names: Sequence[str]) -> dict:
    """Token ids, attention mask and token types as int64 arrays: only the inputs the graph declares."""
    batch = tokenizer.encode_batch(list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts))
    arrays = {
        "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64),
    }
    unknown = [name for name in input_names if name not in arrays]
    if unknown:
        raise BertdeployError(f"the graph wants inputs {unknown} that a text classifier does not have")
    return {name: arrays[name] for name in input_names}


def logits(session, tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None,
           batch_size: int = 32) -> np.ndarray:
    """Logits for every text, computed in batches of similar length (less padding), in input order."""
    names = [i.name for i in session.get_inputs()]
    order = np.argsort([len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)],
                       kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(texts), batch_size):
        index = order[start:start + batch_size]
        feed = encode(tokenizer, [texts[i] for i in index], None if pairs is None else [pairs[i] for i in index],
                      names)
        result = session.run(None, feed)[0]
        if out is None:
            out = np.empty((len(texts), result.shape[1]), dtype=np.float32)
        out[index] = result
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
