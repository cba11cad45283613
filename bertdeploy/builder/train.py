"""Fine-tune a BERT-family checkpoint on labelled text with the stock `transformers.Trainer`.

The recipe: [CLS] + linear head on the whole encoder (or the head alone with `freeze_encoder`),
dynamic padding (each batch padded to its longest text), evaluation every epoch (accuracy and
macro-F1; for multi-label models, trained with a sigmoid per label and binary cross-entropy:
micro-F1, macro-F1 and subset accuracy), the best epoch kept (by macro-F1; micro-F1 for multi-label),
optionally each label's threshold tuned on the eval data, optional early stopping, bf16/fp16 on CUDA. Length-grouped
batches are opt-in (`group_by_length`): faster, but where length correlates with the label
they skew each batch's labels and cost accuracy (see benchmarks/RESULTS.md). It runs unchanged under
`torchrun` / `accelerate launch`; only the main process writes.

While it runs, checkpoints live in `<output_dir>.partial/`, which `resume` continues from.
The output directory appears only when the model, tokenizer, `metrics.json` and
`manifest.json` are all written, so a directory that exists is a finished one.
This module runs the Trainer and writes the result; loading the checkpoint (`pretrained.py`), the Trainer's
settings (`trainer_settings.py`) and the work directory's resume checks (`workdir.py`) live beside it.
It does not export, quantize or serve.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import move_into_place, sha256_file
from bertdeploy.builder.examples import (
    Examples,
    check_known_labels,
    check_label_counts,
    label_order,
    load_examples,
    sample_examples,
    split_examples,
)
from bertdeploy.builder.pretrained import encode_rows, load_model
from bertdeploy.builder.trainer_settings import FinetuneOptions, best_metric, epoch_history, training_arguments
from bertdeploy.builder.vocabulary import coverage
from bertdeploy.builder.workdir import check_same_run, last_checkpoint, plan_output, run_fingerprint, start_work_dir
from bertdeploy.errors import BertdeployError, require_training
from bertdeploy.labels import LabelScheme, figure_names
from bertdeploy.manifest import DataFile, ModelManifest, TrainingData, ValSplit
from bertdeploy.metrics import tune_thresholds

logger = logging.getLogger(__name__)



@dataclass(kw_only=True)
class FinetuneResult:
    output_dir: Path
    labels: list[str]
    best_epoch: float
    # the best epoch's figures on the eval data: accuracy and macro-F1, or for multi-label models micro-F1,
    # macro-F1 and subset accuracy (the share of texts whose whole label set is right)
    accuracy: float | None
    macro_f1: float
    micro_f1: float | None
    subset_accuracy: float | None
    epochs: list[dict]  # per epoch: epoch, train_loss, eval_loss and the figures
    per_class: dict[str, dict]
    confusion_matrix: list[list[int]] | None  # single-label only
    multi_label: bool
    thresholds: dict[str, float] | None  # multi-label: the thresholds the figures use
    thresholds_tuned: bool  # they were tuned on the eval data, so its figures are optimistic
    figures_at_default: dict[str, float] | None  # with tuned thresholds: the figures at 0.5
    train_samples: int
    eval_samples: int
    truncated_train_texts: int
    vocabulary: dict  # how well the tokenizer's vocabulary covers the training texts (vocabulary.Coverage)
    train_runtime: float
    train_samples_per_second: float
    resumed_from: str | None

    @property
    def figures(self) -> dict[str, float]:
        """The headline figures by name, the best epoch's metric among them."""
        return {name: getattr(self, name) for name in figure_names(self.multi_label)}

    @property
    def best_metric(self) -> str:
        return best_metric(self.multi_label)


class Recipe:
    """What a run trains and on which targets. This one is finetune's: `options.model` with a fresh head,
    trained on the gold labels with the model's own loss. `distill.Distillation` supplies a student, the
    teacher's soft targets and a loss for them, through the same run."""

    compute_loss_func = None  # the Trainer's loss hook; None: the model's own loss

    def fingerprint(self) -> dict:
        """Settings of this recipe that an interrupted run must share with its --resume."""
        return {}

    def load(self, options: FinetuneOptions, labels: list[str], scheme: LabelScheme, rows: Examples):
        """The tokenizer and the model to train on `rows` (train_examples')."""
        return load_model(options.model, labels, options.freeze_encoder, seed=options.seed,
                          problem_type=scheme.problem_type, allow_pickle=options.allow_pickle,
                          freeze_embeddings=options.freeze_embeddings)

    def train_examples(self, train: Examples) -> Examples:
        """The rows to train on."""
        return train

    def targets(self, examples: Examples, scheme: LabelScheme, split: str) -> list:
        """Each row's `labels` for the Trainer: class ids, or for multi-label models a 0/1 float per label (what
        binary cross-entropy takes). `split` is "train" or "eval"."""
        targets = scheme.encode(examples.labels)
        return targets.astype(np.float32).tolist() if scheme.multi_label else targets.tolist()

    def truth(self, label_ids: np.ndarray, scheme: LabelScheme) -> np.ndarray:
        """The true labels, in `scheme.decide`'s form, from the targets the Trainer gathered."""
        return np.asarray(label_ids) > 0.5 if scheme.multi_label else np.asarray(label_ids)

    def finish(self, result: FinetuneResult, scores: np.ndarray, truth: np.ndarray, scheme: LabelScheme) -> dict:
        """Fields to add to the manifest, given the kept model's eval scores; raise to refuse the model."""
        return {}


def finetune(options: FinetuneOptions, recipe: Recipe | None = None) -> FinetuneResult:
    """Fine-tune `options.model` on the training file and write a finished model directory."""
    require_training("finetune", "torch", "transformers", "accelerate")
    recipe = recipe or Recipe()
    output_dir = Path(options.output_dir).absolute()
    work_dir = output_dir.with_name(output_dir.name + ".partial")
    checkpoint = plan_output(output_dir, work_dir, options.resume, options.overwrite)
    train, evaluation, labels, data = _load_data(options)
    scheme = LabelScheme(tuple(labels), options.multi_label, separator=options.label_separator)
    fingerprint = {**run_fingerprint(asdict(options), data), **recipe.fingerprint()}
    if checkpoint is not None:
        check_same_run(work_dir, fingerprint)
    rows = recipe.train_examples(train)
    tokenizer, model = recipe.load(options, labels, scheme, rows)

    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

    args = training_arguments(options, work_dir / "checkpoints")
    with args.main_process_first(local=False, desc="preparing the work directory"):
        if args.process_index == 0 and checkpoint is None:
            start_work_dir(work_dir, fingerprint)
    train_set, truncated = encode_rows(tokenizer, rows, recipe.targets(rows, scheme, "train"), options.max_length)
    eval_set, _ = encode_rows(tokenizer, evaluation, recipe.targets(evaluation, scheme, "eval"), options.max_length)
    if truncated:
        logger.info("%d of %d training texts reach max_length %d and are truncated",
                    truncated, len(rows), options.max_length)
    vocabulary = coverage(tokenizer, (row["input_ids"] for row in train_set))
    if warning := vocabulary.warning(options.model, rows.texts):
        logger.warning(warning)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        compute_metrics=metric_function(scheme, recipe),
        compute_loss_func=recipe.compute_loss_func,
        callbacks=[EarlyStoppingCallback(options.early_stopping_patience)] if options.early_stopping_patience else [],
    )
    logger.info("training on %d texts, evaluating on %d; checkpoints in %s", len(rows), len(evaluation), work_dir)
    try:
        run = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        # the Trainer also groups evaluation batches by length (a shuffled order, fine for its per-epoch figures,
        # which pair each prediction with its label id); the kept model's scores must follow the eval rows' order
        trainer.args.train_sampling_strategy = "random"
        prediction = trainer.predict(eval_set)
    except BaseException:
        if args.process_index == 0:
            if last_checkpoint(work_dir) is None:
                shutil.rmtree(work_dir, ignore_errors=True)
            else:
                logger.warning("stopped; checkpoints kept in %s: run again with --resume to continue", work_dir)
        raise

    truth, scores = scheme.encode(evaluation.labels), scheme.activate(prediction.predictions)
    at_default = scheme.report(truth, scheme.decide(scores))
    if options.tune_thresholds:
        scheme = LabelScheme(scheme.labels, True, tuple(tune_thresholds(truth, scores)), scheme.separator)
    report = scheme.report(truth, scheme.decide(scores))
    history = epoch_history(trainer.state.log_history, scheme.figures)
    best_figure = best_metric(scheme.multi_label)
    best = next((h for h in history if h.get(best_figure) == trainer.state.best_metric), history[-1])
    result = FinetuneResult(
        output_dir=output_dir,
        labels=labels,
        best_epoch=best["epoch"],
        accuracy=report.get("accuracy"),
        macro_f1=report["macro_f1"],
        micro_f1=report.get("micro_f1"),
        subset_accuracy=report.get("subset_accuracy"),
        epochs=history,
        per_class=report["per_class"],
        confusion_matrix=report.get("confusion_matrix"),
        multi_label=scheme.multi_label,
        thresholds=scheme.manifest_fields().get("thresholds"),
        thresholds_tuned=options.tune_thresholds,
        figures_at_default={k: at_default[k] for k in scheme.figures} if options.tune_thresholds else None,
        train_samples=len(train),
        eval_samples=len(evaluation),
        truncated_train_texts=truncated,
        vocabulary=vocabulary.fields(),
        train_runtime=run.metrics["train_runtime"],
        train_samples_per_second=run.metrics["train_samples_per_second"],
        resumed_from=str(checkpoint) if checkpoint else None,
    )
    try:
        extra = recipe.finish(result, scores, truth, scheme)
    except BertdeployError:
        if args.process_index == 0:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    if trainer.is_world_process_zero():
        _write_output(trainer, tokenizer, options, data, args, result, scheme, work_dir, extra)
    return result


def _load_data(options: FinetuneOptions) -> tuple[Examples, Examples, list[str], TrainingData]:
    columns = dict(text_column=options.text_column, label_column=options.label_column,
                   pair_column=options.text_pair_column, drop_empty=options.drop_empty,
                   multi_label=options.multi_label, separator=options.label_separator,
                   label_columns=options.label_columns)
    train = load_examples(options.train_file, **columns)
    labels = label_order(train, options.labels or options.label_columns)
    train_file, eval_file, val_split = _file_info(train), None, None
    if options.eval_file is not None:
        evaluation = load_examples(options.eval_file, **columns)
        check_known_labels(evaluation, labels)
        eval_file = _file_info(evaluation)
    else:
        train, evaluation = split_examples(train, options.val_split, options.seed)
        val_split = ValSplit(fraction=options.val_split, seed=options.seed)
    if options.max_train_samples:
        train = sample_examples(train, options.max_train_samples, options.seed)
    if options.multi_label:  # a label seen only in the held-out part cannot be learned either
        check_label_counts(train, labels, "give more rows that carry it, or an --eval-file")
    data = TrainingData(train_file=train_file, eval_file=eval_file, val_split=val_split, train_rows=len(train),
                        eval_rows=len(evaluation))
    return train, evaluation, labels, data


def _file_info(examples: Examples) -> DataFile:
    return DataFile(path=str(examples.path.absolute()), sha256=sha256_file(examples.path), rows=len(examples))


def metric_function(scheme: LabelScheme, recipe: Recipe):
    """The Trainer's `compute_metrics`: the scheme's figures, from the targets as `recipe.truth` reads them."""
    def compute(prediction) -> dict[str, float]:
        truth = recipe.truth(prediction.label_ids, scheme)
        report = scheme.report(truth, scheme.decide(scheme.activate(prediction.predictions)))
        return {k: report[k] for k in scheme.figures}

    return compute


def _write_output(trainer, tokenizer, options, data: TrainingData, args, result: FinetuneResult, scheme: LabelScheme,
                  work_dir: Path, extra: dict) -> None:
    final = work_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    tokenizer.model_max_length = options.max_length
    trainer.model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    best = {**result.figures, "per_class": result.per_class}
    if result.confusion_matrix is not None:
        best["confusion_matrix"] = {"labels": result.labels, "rows_true_columns_predicted": result.confusion_matrix}
    if result.multi_label:
        best["thresholds"] = result.thresholds
        best["thresholds_tuned_on_these_data"] = result.thresholds_tuned  # then these figures are optimistic
        if result.figures_at_default is not None:
            best["at_threshold_0.5"] = result.figures_at_default
    metrics = {
        "metric_for_best_model": result.best_metric,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "best": best,
        "train_samples": result.train_samples,
        "eval_samples": result.eval_samples,
        "vocabulary": result.vocabulary,
        "train_runtime_s": result.train_runtime,
        "train_samples_per_second": result.train_samples_per_second,
    }
    (final / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    ModelManifest(
        source_model=options.model,
        **scheme.manifest_fields(),
        max_length=options.max_length,
        text_column=options.text_column,
        text_pair_column=options.text_pair_column,
        label_column=options.label_column,
        label_columns=options.label_columns,
        data=data,
        vocabulary=result.vocabulary,
        training={
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "weight_decay": options.weight_decay,
            "warmup_ratio": options.warmup_ratio,
            "freeze_encoder": options.freeze_encoder,
            "freeze_embeddings": options.freeze_embeddings,
            "group_by_length": options.group_by_length,
            "early_stopping_patience": options.early_stopping_patience,
            "seed": options.seed,
            "max_train_samples": options.max_train_samples,
            "tune_thresholds": options.tune_thresholds,
            "drop_empty": options.drop_empty,
            "precision": precision,
            "world_size": args.world_size,
            "optimizer_steps": trainer.state.global_step,
            "resumed_from": result.resumed_from,
            "training_args": options.training_args,
        },
        metrics={"best_epoch": result.best_epoch, **result.figures,
                 **({"thresholds_tuned_on_these_data": True} if result.thresholds_tuned else {})},
        **extra,
    ).write(final)
    move_into_place(final, Path(options.output_dir).absolute())
    shutil.rmtree(work_dir, ignore_errors=True)
