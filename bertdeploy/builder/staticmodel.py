"""The static student's model: one vector per token, their weighted mean (weights: a per-token weight, 0 for special
and unknown tokens, times the attention mask), L2-normalized, and a small head (Linear, ReLU, Linear); no transformer.

It is a transformers model of its own type (`bertdeploy-static`), registered on import, so `load_classifier`, the
Trainer and every PyTorch reference take it as any classifier; `export_onnx` writes its graph (Gather, weighted sum,
normalization, head) with the same `input_ids` / `attention_mask` inputs as the transformer graphs, for the variants
and the torch-free runtime. static.py makes one from a teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from bertdeploy.builder.quantize import ROW_WEIGHTS
from bertdeploy.errors import BertdeployError

MODEL_TYPE = "bertdeploy-static"
HEAD_SIZE = 512  # model2vec's classifier head: one hidden layer of 512
OPSET = 17
EPSILON = 1e-12


class StaticConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 2, hidden_size: int = 256, head_size: int = HEAD_SIZE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.head_size = vocab_size, hidden_size, head_size


class StaticForSequenceClassification(PreTrainedModel):
    """Token vectors, their weighted mean (weights: `token_weights[id]` x attention mask), L2-normalized, a head."""

    config_class = StaticConfig
    base_model_prefix = "static"
    main_input_name = "input_ids"

    def __init__(self, config: StaticConfig) -> None:
        super().__init__(config)
        self.embeddings = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.register_buffer("token_weights", torch.ones(config.vocab_size))
        self.head = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, config.head_size), torch.nn.ReLU(),
                                        torch.nn.Linear(config.head_size, config.num_labels))
        self.post_init()

    def _init_weights(self, module) -> None:  # torch's own initialization; the vectors are set by `student`
        pass

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value) -> None:
        self.embeddings = value

    def keep_tokens(self, kept: list[int]) -> None:
        """Keep only the vocabulary rows `kept` (in that order), as a trimmed tokenizer numbers them."""
        index = torch.tensor(kept)
        embedding = torch.nn.Embedding(len(kept), self.config.hidden_size)
        embedding.weight.data = self.embeddings.weight.data[index].clone()
        self.embeddings = embedding
        self.token_weights = self.token_weights[index].clone()
        self.config.vocab_size = len(kept)

    def pool(self, input_ids, attention_mask=None):
        weights = self.token_weights[input_ids]
        if attention_mask is not None:
            weights = weights * attention_mask.to(weights.dtype)
        summed = (self.embeddings(input_ids) * weights.unsqueeze(-1)).sum(dim=1)
        return summed / summed.norm(dim=-1, keepdim=True).clamp_min(EPSILON)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        logits = self.head(self.pool(input_ids, attention_mask))
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, StaticConfig)
AutoModelForSequenceClassification.register(StaticConfig, StaticForSequenceClassification)


def is_static(model_dir: str | Path) -> bool:
    """Whether `model_dir` holds a static student."""
    import json

    config = Path(model_dir) / "config.json"
    return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE


def export_onnx(model_dir: Path, destination: Path) -> None:
    """The static student's ONNX graph: `logits` from `input_ids` and `attention_mask` ([batch, sequence], int64)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    config = StaticConfig.from_pretrained(model_dir)
    if config.head_size != weights["head.0.weight"].shape[0]:
        raise BertdeployError(f"{model_dir}: its head does not match its config.json")
    initializers = [
        numpy_helper.from_array(weights["embeddings.weight"].astype(np.float32), "token_vectors"),
        numpy_helper.from_array(weights["token_weights"].astype(np.float32), "token_weights"),
        numpy_helper.from_array(weights["head.0.weight"].T.astype(np.float32).copy(), "head_hidden_weight"),
        numpy_helper.from_array(weights["head.0.bias"].astype(np.float32), "head_hidden_bias"),
        numpy_helper.from_array(weights["head.2.weight"].T.astype(np.float32).copy(), "head_output_weight"),
        numpy_helper.from_array(weights["head.2.bias"].astype(np.float32), "head_output_bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "sequence_axis"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array(EPSILON, dtype=np.float32), "epsilon"),
    ]
    nodes = [
        helper.make_node("Gather", ["token_vectors", "input_ids"], ["vectors"], name="lookup"),
        helper.make_node("Gather", ["token_weights", "input_ids"], ["id_weights"], name="lookup_weights"),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["id_weights", "mask"], ["weights"]),
        helper.make_node("Unsqueeze", ["weights", "last_axis"], ["weights_3d"]),
        helper.make_node("Mul", ["vectors", "weights_3d"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "sequence_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceL2", ["summed"], ["norm"], axes=[-1], keepdims=1),
        helper.make_node("Max", ["norm", "epsilon"], ["safe_norm"]),
        helper.make_node("Div", ["summed", "safe_norm"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head_hidden_weight"], ["hidden_matmul"], name="head_hidden"),
        helper.make_node("Add", ["hidden_matmul", "head_hidden_bias"], ["hidden_linear"]),
        helper.make_node("Relu", ["hidden_linear"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "head_output_weight"], ["output_matmul"], name="head_output"),
        helper.make_node("Add", ["output_matmul", "head_output_bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bertdeploy_static",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", config.num_labels])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bertdeploy")
    # INT8 folds the table's per-row scales into the token weights (quantize.int8_tables)
    helper.set_model_props(model, {ROW_WEIGHTS: "token_vectors:token_weights"})
    onnx.checker.check_model(model)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
