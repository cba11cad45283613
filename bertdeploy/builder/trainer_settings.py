"""The Trainer's settings for a fine-tuning run: `TrainingArguments` from the options, the metrics function, the
figure the best epoch is chosen by, and the epoch table read back from the Trainer's log.

Build wing; imports torch and transformers inside `training_arguments`. It does not run the Trainer (train.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertdeploy.labels import LabelScheme

if TYPE_CHECKING:
    from bertdeploy.builder.train import FinetuneOptions, Recipe

GROUP_BY_LENGTH = "group_by_length"  # the Trainer's sampler that batches texts of like length


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


def metric_function(scheme: LabelScheme, recipe: Recipe):
    """The Trainer's `compute_metrics`: the scheme's figures, from the targets as `recipe.truth` reads them."""
    def compute(prediction) -> dict[str, float]:
        truth = recipe.truth(prediction.label_ids, scheme)
        report = scheme.report(truth, scheme.decide(scheme.activate(prediction.predictions)))
        return {k: report[k] for k in scheme.figures}

    return compute


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
