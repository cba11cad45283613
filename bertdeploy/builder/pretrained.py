"""Load a pretrained checkpoint for training, and tokenize labelled rows for the Trainer.

`load_model` gives a fast tokenizer and a sequence classifier with a fresh head for the given labels
(a Hugging Face id, or a directory written by save_pretrained), with one clear error per way the
source can be wrong. `load_classifier` is the one place a checkpoint's weights are read: safetensors
only, unless the caller allows pickled weights (`pytorch_model.bin`, which can run code as it loads);
`check_safetensors` refuses such a directory before anything else reads it.
`encode_rows` tokenizes without padding, each row with its target.
This module does not read data files, train or save; finetune and distill do.
"""

from __future__ import annotations

from pathlib import Path

from bertdeploy.builder.examples import Examples
from bertdeploy.errors import ModelError, first_line

SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")  # one file, or the index of a sharded checkpoint


def _pickle_only(source: str | Path) -> ModelError:
    return ModelError(f"{source}: its weights are pickled only (pytorch_model.bin), which can run code as they load; "
                      "save it with safetensors (save_pretrained(dir) does), or pass --allow-pickle "
                      "(allow_pickle=True) if you trust it")


def check_safetensors(source: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a local checkpoint directory without safetensors weights unless `allow_pickle` (Hub ids are
    checked as they load: `load_classifier`)."""
    path = Path(source).expanduser()
    if allow_pickle or not path.is_dir() or any(next(path.glob(p), None) for p in SAFETENSORS):
        return
    if next(path.glob("pytorch_model*.bin"), None) is not None:
        raise _pickle_only(source)


def load_classifier(source: str | Path, allow_pickle: bool = False, **kwargs):
    """`AutoModelForSequenceClassification.from_pretrained(source, **kwargs)` from safetensors weights only,
    unless `allow_pickle` (then safetensors where there are some, else the pickled weights)."""
    check_safetensors(source, allow_pickle)
    from transformers import AutoModelForSequenceClassification

    import bertdeploy.builder.staticmodel  # noqa: F401  (registers the static student's model type)

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, use_safetensors=None if allow_pickle else True, **kwargs)
    except OSError as e:
        if not allow_pickle and "cannot be loaded with `safetensors`" in str(e):  # a Hub id without them
            raise _pickle_only(source) from None
        raise


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).is_absolute() or source.count("/") > 1


def check_model_source(source: str) -> None:
    """Fail fast on a local path that cannot be a model; Hub ids are checked when loaded."""
    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"{source}: not a model directory (no config.json); give a Hugging Face id or a "
                         "directory written by save_pretrained")
    if not path.exists() and _looks_like_path(source):
        raise ModelError(f"{source}: no such directory")


def load_model(source: str, labels: list[str], freeze_encoder: bool = False, seed: int | None = None,
               problem_type: str = "single_label_classification", allow_pickle: bool = False,
               freeze_embeddings: bool = False):
    """Tokenizer and sequence-classification model with a fresh head for `labels`.

    `freeze_encoder` trains the head alone; `freeze_embeddings` keeps the word-embedding table as pretrained (most of
    a multilingual model's weights: the optimizer then updates a fraction of them, and the rows of tokens the
    training texts never hold stay in step with those they do).

    `seed` makes the new head's initial weights reproducible; the Trainer seeds only later. The weights are
    read from safetensors only, unless `allow_pickle`.
    """
    check_model_source(source)
    from transformers import AutoConfig, AutoTokenizer, set_seed

    try:
        config = AutoConfig.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type=problem_type,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{source}: cannot load a model config: {first_line(e)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{source}: cannot load its tokenizer: {first_line(e)}") from None
    if not tokenizer.is_fast:
        raise ModelError(f"{source}: has no fast (Rust) tokenizer, which deployment needs as tokenizer.json")
    if seed is not None:
        set_seed(seed)
    try:
        model = load_classifier(source, allow_pickle, config=config, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"{source}: cannot load it as a sequence classifier: {first_line(e)}") from None
    freeze(model, encoder=freeze_encoder, embeddings=freeze_embeddings)
    return tokenizer, model


def freeze(model, encoder: bool = False, embeddings: bool = False) -> None:
    """Keep the whole encoder (the head alone trains), or its word-embedding table, as loaded."""
    if encoder:
        for parameter in model.base_model.parameters():
            parameter.requires_grad = False
    if embeddings:
        model.get_input_embeddings().weight.requires_grad = False


def encode_rows(tokenizer, examples: Examples, targets: list, max_length: int) -> tuple[list[dict], int]:
    """Tokenize without padding (the collator pads each batch), each row with its target; count texts cut at
    max_length."""
    encoded = tokenizer(examples.texts, examples.pairs, truncation=True, max_length=max_length)
    rows = [
        {**{key: encoded[key][i] for key in encoded.keys()}, "labels": target}
        for i, target in enumerate(targets)
    ]
    truncated = sum(len(ids) >= max_length for ids in encoded["input_ids"])
    return rows, truncated
