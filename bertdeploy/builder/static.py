"""A static student of a fine-tuned teacher: no transformer at run time.

One vector per token of the teacher's vocabulary, distilled from the teacher's own encoder by model2vec (each token
alone through the encoder, the final hidden states mean-pooled, PCA to `dims`, Zipf/SIF weights folded in), in the
model of staticmodel.py, whose head distill then trains on the teacher's soft targets. Special and unknown tokens
weigh 0, so the student reads the teacher's own `input_ids` / `attention_mask` and the teacher's tokenizer ships
unchanged (for a multilingual vocabulary: cut to the tokens of the training texts and every single character).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from bertdeploy.builder.examples import Examples
from bertdeploy.builder.pretrained import load_classifier
from bertdeploy.builder.staticmodel import StaticConfig, StaticForSequenceClassification
from bertdeploy.builder.vocabulary import trim
from bertdeploy.errors import BertdeployError, import_extra

logger = logging.getLogger(__name__)

# Above this many tokens (a multilingual vocabulary: XLM-R and e5 have 250,000) the student keeps only those of its
# training texts and every single character; a BERT's 30,000 are kept whole
MAX_VOCABULARY = 60_000


def student(teacher_dir: Path, teacher, tokenizer, dims: int, rows: Examples, config_fields: dict,
            allow_pickle: bool = False) -> tuple[StaticForSequenceClassification, object, dict]:
    """A static student of `teacher` (the classifier loaded from `teacher_dir`), its vectors from model2vec, its head
    fresh; its tokenizer; and what the manifest says of its vectors. Over `tokenizer`'s vocabulary, or for one of
    over MAX_VOCABULARY tokens (a multilingual model's: most never read) over the tokens of the training `rows`, the
    special tokens and every single character (vocabulary.trim), which keeps the table, its training and its
    model2vec pass small."""
    trimmed = None
    with tempfile.TemporaryDirectory(prefix="bertdeploy-static-") as work:
        if len(tokenizer) > MAX_VOCABULARY:
            from transformers import AutoTokenizer

            trimmed = trim(Path(teacher_dir), rows.texts, rows.pairs, Path(work), allow_pickle)
            logger.info("the static student reads %d of the teacher's %d tokens: those of the %d training texts, the "
                        "special tokens and every single character", trimmed.kept, trimmed.original, trimmed.texts)
            teacher, tokenizer = load_classifier(work), AutoTokenizer.from_pretrained(work)
        vectors, weights, origin = token_vectors(teacher, tokenizer, dims)
    config = StaticConfig(vocab_size=len(vectors), hidden_size=dims, pad_token_id=tokenizer.pad_token_id,
                          **config_fields)
    model = StaticForSequenceClassification(config)
    model.embeddings.weight.data = torch.from_numpy(vectors)
    model.token_weights = torch.from_numpy(weights)
    return model, tokenizer, {**origin, "trimmed": None if trimmed is None else trimmed.fields()}


def token_vectors(teacher, tokenizer, dims: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per id of `tokenizer`: model2vec's vector of the token from the teacher's encoder (zeros where model2vec drops
    the token), and its weight (0 for special tokens and the tokens model2vec drops, else 1)."""
    model2vec = import_extra("model2vec", "static", "distill --static")
    distill_from_model = import_extra("model2vec.distill.distillation", "static", "distill --static",
                                      "model2vec[distill]").distill_from_model

    width = teacher.config.hidden_size
    if dims > width:
        raise BertdeployError(f"--static-dims {dims}: the teacher's vectors have {width} dimensions; ask for at most "
                              f"{width}")
    vocab = tokenizer.get_vocab()
    if dims >= len(vocab):
        raise BertdeployError(f"--static-dims {dims}: the teacher's vocabulary has {len(vocab)} tokens; ask for fewer "
                              "dimensions than that")
    logger.info("model2vec %s: a vector for each of the teacher's %d tokens, from its encoder", model2vec.__version__,
                len(vocab))
    try:
        distilled = distill_from_model(teacher.base_model, tokenizer, pca_dims=dims, quantize_to="float32",
                                       device="cpu")
    except (ValueError, KeyError, TypeError, NotImplementedError) as e:
        raise BertdeployError(f"model2vec cannot read the teacher's tokenizer or encoder ({type(e).__name__}: {e}); "
                              "use --layers for a smaller transformer instead") from None
    rows = np.asarray(distilled.embedding, dtype=np.float32)
    vectors = np.zeros((max(vocab.values()) + 1, rows.shape[1]), dtype=np.float32)
    weights = np.zeros(len(vectors), dtype=np.float32)
    for token, row in distilled.tokenizer.get_vocab().items():
        if token in vocab:
            vectors[vocab[token]], weights[vocab[token]] = rows[row], 1.0
    weights[list(tokenizer.all_special_ids)] = 0.0
    kept = int(weights.sum())
    if kept == 0:
        raise BertdeployError("model2vec kept none of the teacher's tokens; use --layers for a smaller transformer")
    return vectors, weights, {"tool": f"model2vec {model2vec.__version__}", "dims": int(rows.shape[1]),
                              "tokens": kept, "vocabulary": len(vocab), "pooling": "mean of the final layer",
                              "pca_dims": dims, "sif_coefficient": 1e-4}
