"""The settings of a fine-tuning run: `FinetuneOptions` (what the user asks, checked), the `TrainingArguments` made
of them, the figure the best epoch is chosen by, and the epoch table read back from the Trainer's log.

Build wing; imports torch and transformers inside `training_arguments`. It does not run the Trainer (train.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertdeploy.defaults import (
    BATCH_SIZE,
    EPOCHS,
    LABEL_COLUMN,
    LABEL_SEPARATOR,
    LEARNING_RATE,
    MAX_LENGTH,
    SEED,
    TEXT_COLUMN,
    VAL_SPLIT,
    WARMUP_RATIO,
    WEIGHT_DECAY,
)
from bertdeploy.errors import BertdeployError, check_options

GROUP_BY_LENGTH = "group_by_length"  # the Trainer's sampler that batches texts of like length


@dataclass
class FinetuneOptions:
    """Everything `finetune` needs; `training_args` passes extra settings to TrainingArguments."""

    model: str
    train_file: str | Path
    output_dir: str | Path
    eval_file: str | Path | None = None
    val_split: float | None = None  # VAL_SPLIT when there is no eval file
    text_column: str = TEXT_COLUMN
    label_column: str = LABEL_COLUMN
    text_pair_column: str | None = None
    labels: list[str] | None = None
    multi_label: bool = False  # a label cell holds zero or more labels joined by label_separator
    label_separator: str = LABEL_SEPARATOR
    label_columns: list[str] | None = None  # multi-label: one 0/1 column per label, named after it
    tune_thresholds: bool = False  # multi-label: each label's threshold maximizes its F1 on the eval data
    epochs: float = EPOCHS
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    weight_decay: float = WEIGHT_DECAY
    max_length: int = MAX_LENGTH
    warmup_ratio: float = WARMUP_RATIO
    freeze_encoder: bool = False
    freeze_embeddings: bool = False  # keep the word-embedding table as pretrained
    group_by_length: bool = False
    early_stopping_patience: int | None = None
    seed: int = SEED
    max_train_samples: int | None = None
    drop_empty: bool = False
    allow_pickle: bool = False  # load a checkpoint whose weights are pickled only (pytorch_model.bin)
    resume: bool = False
    overwrite: bool = False
    training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.eval_file is not None and self.val_split is not None:
            raise BertdeployError("give either an eval file or a validation split, not both")
        if self.eval_file is None and self.val_split is None:
            self.val_split = VAL_SPLIT
        self.multi_label = self.multi_label or bool(self.label_columns)
        check_options([
            (not (self.labels and self.label_columns), "the label columns name the labels: leave out --labels"),
            (self.multi_label or not self.tune_thresholds, "thresholds are tuned for multi-label models only"),
            (bool(self.label_separator.strip()), "the label separator must not be empty or blank"),
            (self.val_split is None or 0 < self.val_split < 1, "val_split must be between 0 and 1"),
            (self.epochs > 0, "epochs must be positive"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.weight_decay >= 0, "weight_decay must not be negative"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (8 <= self.max_length <= 8192, "max_length must be between 8 and 8192"),
            (self.early_stopping_patience is None or self.early_stopping_patience > 0,
             "early_stopping_patience must be positive"),
            (self.max_train_samples is None or self.max_train_samples > 1, "max_train_samples must be at least 2"),
            (not (self.resume and self.overwrite), "resume and overwrite exclude each other"),
        ])



def best_metric(multi_label: bool) -> str:
    """The figure the best epoch is chosen by: micro-F1 for multi-label models, else macro-F1."""
    return "micro_f1" if multi_label else "macro_f1"


def training_arguments(options: FinetuneOptions, checkpoints: Path):
    """The TrainingArguments of a run: the recipe's settings, then `options.training_args` over them."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    cpu_processes = not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun on CPUs: DDP over gloo
    settings: dict[str, Any] = dict(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size * 2,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        warmup_steps=float(options.warmup_ratio),  # a float below 1: a share of the steps
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=best_metric(options.multi_label),
        greater_is_better=True,
        save_total_limit=1,  # with load_best_model_at_end: the best and the latest are kept
        train_sampling_strategy=GROUP_BY_LENGTH if options.group_by_length else "random",
        seed=options.seed,
        data_seed=options.seed,
        bf16=bf16,
        fp16=cuda and not bf16,
        report_to="none",
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,  # every trained weight is used; True costs a graph walk per step
    )
    if cpu_processes:
        settings.update(use_cpu=True, ddp_backend="gloo")
    settings.update(options.training_args)
    args = TrainingArguments(**settings)
    _ = args.device  # joins the process group under torchrun before any rank writes
    return args


def epoch_history(log_history: list[dict], figures: tuple[str, ...]) -> list[dict]:
    """One row per evaluated epoch: train loss, eval loss and the figures (accuracy, macro-F1, ...)."""
    train_loss = {round(e["epoch"], 2): e["loss"] for e in log_history if "loss" in e}
    rows = []
    for entry in log_history:
        if f"eval_{figures[0]}" in entry:
            epoch = round(entry["epoch"], 2)
            rows.append({"epoch": epoch, "train_loss": train_loss.get(epoch), "eval_loss": entry.get("eval_loss"),
                         **{k: entry[f"eval_{k}"] for k in figures}})
    return rows
