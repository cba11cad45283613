"""The PyTorch reference every variant is judged and timed against: eager PyTorch as users run it (fp32,
bf16 autocast, fp16 on CUDA) and its logits over many texts. Needs torch and transformers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bertdeploy.errors import BertdeployError
from bertdeploy.host import cpu_flags

PYTORCH = "pytorch"
PYTORCH_BF16 = "pytorch-bf16"  # the same model under torch.autocast(bfloat16)
# CPU flags of native bf16 arithmetic: AVX512-BF16 and AMX on x86, the bf16 extension on Arm. There
# PyTorch's autocast to bf16 runs fast oneDNN kernels; elsewhere it emulates bf16 and is slower than fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def computes_bf16(device: str = "cpu", flags: set[str] | None = None) -> bool:
    """Whether `device` computes bf16 natively: a CPU flag of BF16_FLAGS, or a CUDA GPU PyTorch says supports it."""
    if device == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(set(BF16_FLAGS) & (cpu_flags() if flags is None else flags))


class TorchModel:
    """Eager PyTorch as users run it: `from_pretrained` (safetensors weights only, unless `allow_pickle`), eval
    mode, inference mode; kind `bf16` under `torch.autocast(dtype=torch.bfloat16)` (weights stay fp32, as a user
    adding one line gets); `fp16` with the weights in fp16 (CUDA)."""

    def __init__(self, path: str, kind: str = "fp32", *, device: str = "cpu", threads: int = 1,
                 allow_pickle: bool = False, ids_from: str | None = None) -> None:
        import torch

        from bertdeploy.builder.pretrained import load_classifier

        self.torch = torch
        torch.set_num_threads(threads)
        # feeds tokenized by `ids_from` (a trimmed export's tokenizer.json: some of this model's tokens, numbered
        # anew) are read through their tokens' ids here: the model then computes what the trimmed one does
        self.ids = None if ids_from is None else token_ids(ids_from, Path(path) / "tokenizer.json")
        model = load_classifier(path, allow_pickle)
        if kind == "fp16":
            model = model.half()
        self.model = model.to(device).eval()
        self.device, self.autocast = device, kind == "bf16"
        self.names = ("input_ids", "attention_mask", "token_type_ids")

    def prepare(self, feed: dict) -> dict:
        if self.ids is not None:
            feed = {**feed, "input_ids": self.ids[feed["input_ids"]]}
        return {k: self.torch.from_numpy(v).to(self.device) for k, v in feed.items() if k in self.names}

    def run_prepared(self, prepared: dict):
        with self.torch.inference_mode(), self.torch.autocast(self.device, dtype=self.torch.bfloat16,
                                                              enabled=self.autocast):
            out = self.model(**prepared).logits
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return out

    def run(self, feed: dict) -> np.ndarray:
        return self.run_prepared(self.prepare(feed)).float().cpu().numpy()


def token_ids(subset: str | Path, full: str | Path) -> np.ndarray:
    """Per id of the tokenizer `subset` (a trimmed one), the id of the same token in the tokenizer `full`."""
    from tokenizers import Tokenizer

    theirs, ours = Tokenizer.from_file(str(subset)).get_vocab(), Tokenizer.from_file(str(full)).get_vocab()
    missing = [token for token in theirs if token not in ours]
    if missing:
        raise BertdeployError(f"{subset}: {len(missing)} of its tokens ({missing[0]!r}, ...) are not in {full}; "
                              "compare the export with the model it was trimmed from (--pytorch-model)")
    table = np.zeros(max(theirs.values()) + 1, dtype=np.int64)
    for token, i in theirs.items():
        table[i] = ours[token]
    return table


def pytorch_logits(model, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, *, device: str = "cpu",
                   batch_size: int = 32, autocast: bool = False, progress: str | None = None) -> np.ndarray:
    """A loaded PyTorch classifier's logits for every text, in order: batches of texts of similar length, under
    bf16 autocast if asked, with a progress bar named `progress` (none if None)."""
    import torch
    from tqdm.auto import tqdm

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        for start in tqdm(starts, desc=progress, file=sys.stderr, disable=None if progress else True):
            index = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in index], None if pairs is None else [pairs[i] for i in index],
                              padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out[index] = model(**batch.to(device)).logits.float().cpu().numpy()
    return out
