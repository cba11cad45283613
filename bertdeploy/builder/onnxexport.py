"""A fine-tuned transformer classifier to one ONNX graph: `logits` from the inputs the model reads.

PyTorch's exporter on the model loaded with eager attention (ONNX Runtime's optimizer fuses that attention
pattern into its Attention operator; transformers' default sdpa pattern is left unfused), dynamic batch and
sequence axes, and the inputs the model reads: `input_ids`, `attention_mask`, and `token_type_ids` where the
model has more than one token type (BERT, ELECTRA, ALBERT; not RoBERTa, XLM-R, DistilBERT, ModernBERT, nor
DeBERTa-v3, whose only type is 0, as Optimum also left them out). Two exporters: the
TorchScript tracer (`torchscript`, the default) and torch.export (`dynamo`), whose graphs ONNX Runtime's
optimizer fuses less (docs/export.md says what each gives). The graph is traced with a padded row, so
masking is traced as data, never as a shortcut for unpadded input.
This module writes the graph; export.py checks it against PyTorch and builds the variants from it.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

from bertdeploy.builder.pretrained import load_classifier
from bertdeploy.defaults import DYNAMO, EXPORTER
from bertdeploy.errors import ModelError, first_line

logger = logging.getLogger(__name__)

OPSET = 18  # Optimum's default for these architectures
AXES = {0: "batch_size", 1: "sequence_length"}
TWO_GB = 2**31


def input_names(model) -> list[str]:
    """The inputs the graph takes: ids and mask always, token types where the model has more than one."""
    types = ("token_type_ids" in inspect.signature(model.forward).parameters
             and getattr(model.config, "type_vocab_size", 0) > 1)
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])


def _dummy_inputs(names: list[str], vocab_size: int) -> dict:
    """Two rows of 16 tokens, the second padded after 11: a mask with zeros in it."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(low=5, high=max(vocab_size, 6), size=(2, 16), generator=generator)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 11:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(2, 16, dtype=torch.int64)}
    return {name: feeds[name] for name in names}


def _logits_module(model):
    """The model, returning the logits tensor only; token types passed only where given."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits

    return Logits()


def export_onnx(model_dir: Path, destination: Path, exporter: str = EXPORTER, opset: int | None = None,
                device: str = "cpu", allow_pickle: bool = False) -> list[str]:
    """Write `model_dir`'s classifier as an ONNX graph to `destination`; return its input names. An architecture
    that cannot be exported is one ModelError naming it; nothing is left at `destination`."""
    import torch

    model = load_classifier(model_dir, allow_pickle, attn_implementation="eager").to(device).eval()
    architecture = type(model).__name__
    if sum(p.numel() * p.element_size() for p in model.parameters()) >= TWO_GB:
        raise ModelError(f"{model_dir}: {architecture} is over 2 GB and needs ONNX external data, which bertdeploy "
                         "does not package yet")
    names = input_names(model)
    feeds = _dummy_inputs(names, model.config.vocab_size)
    args = tuple(feeds[name].to(device) for name in names)
    logger.info("exporting %s to ONNX (%s exporter)", model_dir, exporter)
    # tracing advice meant for model authors, and the exporter's notes on operators it skips: not for users
    quiet = {logging.getLogger(name): logging.getLogger(name).level for name in ("transformers", "torch.onnx")}
    for each in quiet:
        each.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            wrapped = _logits_module(model)
            if exporter == DYNAMO:
                _dynamo(wrapped, args, names, destination, opset or OPSET)
            else:
                torch.onnx.export(wrapped, args, str(destination), input_names=names, output_names=["logits"],
                                  dynamic_axes={**{name: AXES for name in names}, "logits": {0: "batch_size"}},
                                  opset_version=opset or OPSET, do_constant_folding=True, dynamo=False)
    except Exception as e:  # noqa: BLE001  (any tracer failure is one line naming the architecture)
        destination.unlink(missing_ok=True)
        raise ModelError(f"{model_dir}: {architecture} cannot be exported to ONNX with the {exporter} exporter: "
                         f"{first_line(e)}") from None
    finally:
        for each, level in quiet.items():
            each.setLevel(level)
    return names


def _dynamo(module, args: tuple, names: list[str], destination: Path, opset: int) -> None:
    """torch.export's ONNX graph (onnxscript's optimizer and fusions applied), batch and sequence dynamic."""
    import torch

    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    program = torch.onnx.export(module, args, input_names=names, output_names=["logits"], opset_version=opset,
                                dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names), dynamo=True,
                                optimize=True, verbose=False)
    program.save(str(destination), external_data=False)
