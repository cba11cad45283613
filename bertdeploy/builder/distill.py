"""Distil a fine-tuned classifier into a smaller student that keeps its accuracy: the next speed-up after INT8.

The student is the teacher with fewer encoder layers (`layers`: the kept layers' weights, the
embeddings and the head copied, so training starts close to the teacher), or any smaller checkpoint
(`student`, with its own tokenizer: the teacher's targets are per text, not per token). The teacher
labels every training text once, batched, with soft targets; unlabelled in-domain texts
(`unlabeled_file`) add more. The student trains with `finetune`'s run (the stock Trainer, its data
checks, evaluation every epoch, best epoch, seed, resume and atomic output) through the Trainer's
documented loss hook: KL divergence to the teacher's temperature-softened distribution (x T^2),
mixed with cross-entropy on the gold label where a row has one (multi-label teachers: per label, the KL
between the teacher's and the student's sigmoid at T, and binary cross-entropy on the gold label set). A
student more than `max_accuracy_drop` points below its teacher on the eval data (by accuracy; micro-F1 for
multi-label models: labels.judge_drop, the export guard's rule) is refused and nothing is written.
The result is an ordinary fine-tuned model directory that export, bench, predict and serve take.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertdeploy.artifacts import MANIFEST_NAME, sha256_file
from bertdeploy.builder.examples import Examples
from bertdeploy.builder.pretrained import freeze, load_classifier, load_model
from bertdeploy.builder.reference import TorchModel, pytorch_logits
from bertdeploy.builder.staticmodel import is_static
from bertdeploy.builder.train import FinetuneOptions, FinetuneResult, Recipe, finetune
from bertdeploy.data import file_format, load_texts
from bertdeploy.defaults import (
    ALPHA,
    DISTILL_EPOCHS,
    DISTILL_LEARNING_RATE,
    MAX_ACCURACY_DROP,
    STATIC_DIMS,
    STATIC_EPOCHS,
    STATIC_LEARNING_RATE,
    TEMPERATURE,
)
from bertdeploy.errors import BertdeployError, ModelError, check_options, require_training
from bertdeploy.host import usable_cpus
from bertdeploy.labels import LabelScheme
from bertdeploy.manifest import ModelManifest
from bertdeploy.timing import interleaved_latency

logger = logging.getLogger(__name__)

TEACHER_BATCH = 32
SPEED_ROUNDS = 5


@dataclass
class DistillOptions:
    """A student of `teacher_dir` (a `finetune` output) in `output_dir`; `training` passes finetune's settings
    (epochs, learning_rate, batch_size, eval_file, seed, resume, overwrite, ...) on to `FinetuneOptions`."""

    teacher_dir: str | Path
    output_dir: str | Path
    _: KW_ONLY
    layers: int | list[int] | None = None  # keep this many of the teacher's encoder layers, or these (0-based)...
    student: str | None = None  # ...or train this checkpoint (Hub id or path)...
    static: bool = False  # ...or a static student: token vectors from the teacher's encoder (static.py), a head
    static_dims: int = STATIC_DIMS
    train_file: str | Path | None = None  # default: the teacher's training file
    unlabeled_file: str | Path | None = None  # texts the teacher labels with soft targets
    temperature: float = TEMPERATURE
    alpha: float = ALPHA  # the soft targets' share of the loss on labelled rows (unlabelled rows: all of it)
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # points of accuracy (micro-F1, multi-label) lost to the teacher
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layers is not None and not isinstance(self.layers, int):
            self.layers = [int(i) for i in self.layers]
        check_options([
            ((self.layers is not None) + (self.student is not None) + self.static == 1,
             "give --layers N, --student MODEL or --static (one of them)"),
            (self.static_dims >= 2, "--static-dims must be at least 2"),
            (self.layers is None or (self.layers >= 1 if isinstance(self.layers, int) else
                                     len(self.layers) >= 1 and min(self.layers) >= 0),
             "--layers must be at least 1, or a list of layer numbers from 0"),
            (self.temperature > 0, "--temperature must be above 0"),
            (0 <= self.alpha <= 1, "--alpha must be between 0 and 1"),
            (0 <= self.max_accuracy_drop <= 100, "max_accuracy_drop is in points, between 0 and 100"),
        ])
        defaults = ({"epochs": STATIC_EPOCHS, "learning_rate": STATIC_LEARNING_RATE} if self.static else
                    {"epochs": DISTILL_EPOCHS, "learning_rate": DISTILL_LEARNING_RATE})
        self.training = {**defaults, **self.training}


@dataclass(kw_only=True)
class DistillResult:
    student: FinetuneResult
    teacher_dir: Path
    layers: list[int] | None  # the teacher's layers kept, or None for a --student checkpoint
    depth: dict[str, int]  # teacher, student: encoder layers
    parameters: dict[str, int]  # teacher, student
    # teacher, student: the scheme's figures (accuracy, macro_f1; multi-label: micro_f1, macro_f1, subset_accuracy);
    # the student also agreement with the teacher and the points lost (accuracy_drop; micro_f1_drop)
    figures: dict[str, dict]
    latency_ms: dict[str, dict[str, float]]  # teacher, student: PyTorch fp32 p50 at batch_1 and batch_8
    unlabeled_texts: int
    metric: str = "accuracy"  # the figure the student is judged by: accuracy, or micro_f1 for multi-label models
    static: dict | None = None  # a static student: where its token vectors came from (static.token_vectors)

    @property
    def drop_key(self) -> str:
        """Where `figures['student']` holds the points lost: accuracy_drop, or micro_f1_drop."""
        return f"{self.metric}_drop"

    def speedups(self) -> dict[str, float]:
        return {batch: self.latency_ms["teacher"][batch] / ms for batch, ms in self.latency_ms["student"].items()}


def distill(options: DistillOptions) -> DistillResult:
    """Train the student and write it as a finished model directory, or refuse it."""
    require_training("distill", "torch", "transformers", "accelerate")
    teacher_dir = Path(options.teacher_dir).absolute()
    manifest = _teacher_manifest(teacher_dir)
    if is_static(teacher_dir):
        origin = manifest.teacher_dir
        raise ModelError(f"{teacher_dir}: a static student cannot teach: no encoder for model2vec to read, no layers "
                         f"to keep, and less to learn from than its own teacher; distill its teacher"
                         f"{f' ({origin})' if origin else ''} instead")
    depth = model_depth(teacher_dir)
    _check_layers(options.layers, depth)
    finetune_options = _finetune_options(options, manifest, teacher_dir)
    unlabeled = _unlabeled(options, manifest)
    recipe = Distillation(options, teacher_dir, manifest, unlabeled)
    student = finetune(finetune_options, recipe)
    output = Path(finetune_options.output_dir)
    timings = _latency(teacher_dir, output, recipe.eval_texts, finetune_options.allow_pickle)
    return DistillResult(student=student, teacher_dir=teacher_dir, layers=recipe.kept,
                         depth={"teacher": depth, "student": model_depth(output)}, parameters=recipe.parameters,
                         figures=recipe.figures, latency_ms=timings, unlabeled_texts=len(unlabeled),
                         metric=recipe.scheme.metric, static=recipe.vectors)


def _check_layers(layers: int | list[int] | None, depth: int) -> None:
    if isinstance(layers, int) and layers >= depth:
        raise BertdeployError(f"--layers {layers}: the teacher has {depth} layers; keep fewer")
    if isinstance(layers, list):
        named = ",".join(map(str, layers))
        if max(layers) >= depth:
            raise BertdeployError(f"--layers {named}: the teacher's layers are 0 to {depth - 1}")
        if len(set(layers)) >= depth:
            raise BertdeployError(f"--layers {named}: that is every layer of the teacher; keep fewer")


def _teacher_manifest(teacher_dir: Path) -> ModelManifest:
    if not (teacher_dir / MANIFEST_NAME).is_file() or not (teacher_dir / "config.json").is_file():
        raise ModelError(f"{teacher_dir}: not a `bertdeploy finetune` output (no manifest.json and config.json); "
                         "distill a model fine-tuned with bertdeploy")
    return ModelManifest.read(teacher_dir)


def model_depth(model_dir: Path) -> int:
    """The encoder layers of the model in `model_dir` (its config.json; 0 where it names none)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return int(config.get("num_hidden_layers") or config.get("n_layers") or 0)


def _finetune_options(options: DistillOptions, manifest: ModelManifest, teacher_dir: Path) -> FinetuneOptions:
    """finetune's options for the student: the teacher's columns, labels and max length, its data by default
    (its eval file, or the same held-out split, so the student is scored on texts the teacher never saw)."""
    data = manifest.data
    train_file = options.train_file or (data.train_file.path if data.train_file else None)
    if train_file is None or not Path(train_file).is_file():
        raise BertdeployError(f"{teacher_dir}: its training file {train_file} is gone; pass --train-file")
    held_out: dict[str, Any] = {}
    if "eval_file" not in options.training:
        if data.eval_file is not None and Path(data.eval_file.path).is_file():
            held_out["eval_file"] = data.eval_file.path
        elif data.val_split is not None:
            held_out = {"val_split": data.val_split.fraction, "seed": data.val_split.seed}
    scheme = manifest.scheme
    labels: dict[str, Any] = ({"label_columns": list(manifest.label_columns)} if manifest.label_columns
                              else {"labels": list(manifest.labels)})
    if scheme.multi_label:  # the teacher's label sets, and its thresholds tuned the same way
        labels.update(multi_label=True, label_separator=scheme.separator, tune_thresholds=manifest.tune_thresholds)
    training = {"text_column": manifest.text_column, "label_column": manifest.label_column,
                "text_pair_column": manifest.text_pair_column, **labels, "max_length": manifest.max_length,
                "drop_empty": manifest.drop_empty, **options.training, **held_out}  # the teacher's split keeps its seed
    model = options.student if options.student is not None else str(teacher_dir)
    return FinetuneOptions(model=model, train_file=train_file, output_dir=options.output_dir, **training)


def _unlabeled(options: DistillOptions, manifest: ModelManifest) -> list[str]:
    """The unlabelled texts: a CSV/TSV/JSONL file's text column, or a plain text file's lines."""
    if options.unlabeled_file is None:
        return []
    if manifest.pairs:
        raise BertdeployError("--unlabeled-file: the teacher reads text pairs; give labelled pairs in --train-file")
    path = Path(options.unlabeled_file)
    fmt = file_format(path, text=True)
    texts, _ = load_texts(path, "text" if fmt == "text" else manifest.text_column, fmt=fmt)
    logger.info("%d unlabelled texts from %s", len(texts), path)
    return texts


class Distillation(Recipe):
    """finetune's run with a student and the teacher's soft targets."""

    def __init__(self, options: DistillOptions, teacher_dir: Path, manifest: ModelManifest,
                 unlabeled: list[str]) -> None:
        self.options, self.teacher_dir, self.manifest, self.unlabeled = options, teacher_dir, manifest, unlabeled
        self.scheme = manifest.scheme  # the teacher's, with its thresholds
        self.kept: list[int] | None = None
        self.vectors: dict | None = None  # a static student's: where its token vectors came from
        self.parameters: dict[str, int] = {}
        self.figures: dict[str, dict] = {}
        self.teacher_eval: np.ndarray | None = None
        self.eval_texts: list[str] = []

    def fingerprint(self) -> dict:
        o = self.options
        return {"teacher": str(self.teacher_dir), "layers": o.layers, "student": o.student,
                "static": o.static_dims if o.static else None,
                "temperature": o.temperature, "alpha": o.alpha,
                "unlabeled_sha256": sha256_file(o.unlabeled_file) if o.unlabeled_file else None}

    def load(self, options: FinetuneOptions, labels: list[str], scheme: LabelScheme, rows: Examples):
        from transformers import AutoTokenizer, set_seed

        teacher = load_classifier(self.teacher_dir, options.allow_pickle)
        self.parameters["teacher"] = teacher.num_parameters()
        self.teacher, self.teacher_tokenizer = teacher.eval(), AutoTokenizer.from_pretrained(self.teacher_dir)
        if self.options.student is not None:  # a classifier already gets a fresh head for the teacher's labels
            tokenizer, student = load_model(self.options.student, labels, seed=options.seed,
                                            problem_type=scheme.problem_type, allow_pickle=options.allow_pickle)
        elif self.options.static:
            from bertdeploy.builder import static

            set_seed(options.seed)
            student, tokenizer, self.vectors = static.student(
                self.teacher_dir, teacher, self.teacher_tokenizer, self.options.static_dims, rows,
                {key: getattr(teacher.config, key) for key in ("id2label", "label2id", "problem_type")},
                options.allow_pickle)
        else:
            set_seed(options.seed)
            student = load_classifier(self.teacher_dir, options.allow_pickle)
            self.kept = keep_layers(student, self.options.layers)
            tokenizer = self.teacher_tokenizer
        freeze(student, embeddings=options.freeze_embeddings)
        self.parameters["student"] = student.num_parameters()
        return tokenizer, student

    def train_examples(self, train: Examples) -> Examples:
        """The training rows, then the unlabelled texts (label None: soft targets only)."""
        if not self.unlabeled:
            return train
        return Examples(train.path, train.texts + self.unlabeled, train.labels + [None] * len(self.unlabeled),
                        None if train.pairs is None else train.pairs + [""] * len(self.unlabeled))

    def targets(self, examples: Examples, scheme: LabelScheme, split: str) -> list:
        """Per row: the gold label's id (-1 for none), or for multi-label models a 0/1 per label (-1s for none),
        then the teacher's logits."""
        logits = self._teacher_logits(examples, split)
        if split == "eval":
            self.teacher_eval, self.eval_texts = logits, examples.texts
        labelled = [i for i, y in enumerate(examples.labels) if y is not None]
        gold = np.full((len(examples), len(scheme.labels) if scheme.multi_label else 1), -1, dtype=np.float32)
        gold[labelled] = scheme.encode([examples.labels[i] for i in labelled]).reshape(len(labelled), gold.shape[1])
        return np.concatenate([gold, logits], axis=1).tolist()

    def truth(self, label_ids: np.ndarray, scheme: LabelScheme) -> np.ndarray:
        if scheme.multi_label:
            return np.asarray(label_ids)[:, :len(scheme.labels)] > 0.5
        return np.asarray(label_ids)[:, 0].astype(np.int64)

    @property
    def compute_loss_func(self):
        return functools.partial(distillation_loss, temperature=self.options.temperature, alpha=self.options.alpha,
                                 multi_label=self.scheme.multi_label)

    def finish(self, result: FinetuneResult, scores: np.ndarray, truth: np.ndarray, scheme: LabelScheme) -> dict:
        """The teacher (at its own thresholds) against the student on the eval data, by the guard's rule
        (labels.judge_drop: accuracy, or micro-F1 for multi-label models); refuse a student that lost too much."""
        teacher_decided = self.scheme.decide(self.scheme.activate(self.teacher_eval))
        report = self.scheme.report(truth, teacher_decided)
        teacher = {k: report[k] for k in self.scheme.figures}
        agreement = scheme.agreement(scheme.decide(scores), teacher_decided)
        drop = self.scheme.drop(teacher, result.figures, self.options.max_accuracy_drop)
        self.figures = {"teacher": teacher,
                        "student": {**result.figures, "agreement": agreement, self.scheme.drop_key: drop.lost}}
        o = self.options
        if not drop.within:
            raise BertdeployError(
                f"{drop.reason('its teacher', len(truth), subject='the student')}; nothing was written. "
                + ("A static student averages token vectors and reads no word order (negation, contrast): keep a "
                   "transformer for this task (--layers), or allow the loss with --max-accuracy-drop" if o.static else
                   "Keep more layers, train longer (--epochs), or add unlabelled texts (--unlabeled-file)"))
        return {"distillation": {
            "teacher_dir": str(self.teacher_dir), "teacher_checkpoint": self.manifest.source_model,
            "layers_kept": self.kept, "student_checkpoint": o.student, "static": self.vectors,
            "temperature": o.temperature,
            "alpha": o.alpha, "parameters": self.parameters,
            "unlabeled_file": None if o.unlabeled_file is None else {
                "path": str(Path(o.unlabeled_file).absolute()), "sha256": sha256_file(o.unlabeled_file),
                "rows": len(self.unlabeled)},
            "eval": self.figures,  # teacher and student on the eval data
        }}

    def _teacher_logits(self, examples: Examples, split: str) -> np.ndarray:
        """The teacher's logits for every text, once, batched by length, with a progress bar."""
        logger.info("the teacher labels %d %s texts", len(examples), split)
        return pytorch_logits(self.teacher, self.teacher_tokenizer, examples.texts, examples.pairs,
                              self.manifest.max_length, batch_size=TEACHER_BATCH, progress=f"teacher ({split})")


def keep_layers(model, layers: int | list[int]) -> list[int]:
    """Keep `layers` of the model's encoder layers in place (a count: evenly spaced from the first to the last; or
    their 0-based numbers); return their indices in the teacher."""
    import torch

    for path in ("encoder.layer", "transformer.layer", "layers"):
        owner, name = model.base_model, path
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        modules = getattr(owner, name, None) if owner is not None else None
        if isinstance(modules, torch.nn.ModuleList):
            break
    else:
        raise ModelError(f"{type(model).__name__}: its encoder layers are not a list bertdeploy can cut "
                         "(ALBERT shares one layer); use --student with a smaller checkpoint")
    if isinstance(layers, int):
        kept = sorted({int(round(i)) for i in np.linspace(0, len(modules) - 1, layers)})
    else:
        kept = sorted(set(layers))
    setattr(owner, name, torch.nn.ModuleList(modules[i] for i in kept))
    key = "n_layers" if hasattr(model.config, "n_layers") else "num_hidden_layers"
    setattr(model.config, key, len(kept))
    return kept


def distillation_loss(outputs, labels, num_items_in_batch=None, temperature: float = TEMPERATURE, alpha: float = ALPHA,
                      multi_label: bool = False):
    """The Trainer's loss hook: per row, KL(teacher || student) at `temperature` (x T^2) and, where the row has a
    gold label (column 0 >= 0), cross-entropy on it, mixed `alpha` : 1 - alpha; rows without one: the KL only.
    Multi-label (`labels`: a 0/1 per label, then the teacher's logits): per label, the KL between the teacher's and
    the student's sigmoid at `temperature` (x T^2) and binary cross-entropy on the gold label, averaged over the
    labels, then mixed the same way."""
    import torch.nn.functional as F

    logits = outputs["logits"].float()
    if multi_label:
        return _multilabel_loss(logits, labels.float(), temperature, alpha)
    gold, soft = labels[:, 0].long(), labels[:, 1:].float()
    log_student = F.log_softmax(logits / temperature, dim=-1)
    log_teacher = F.log_softmax(soft / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1) * temperature ** 2
    labelled = gold >= 0
    ce = F.cross_entropy(logits, gold.clamp(min=0), reduction="none")
    return (kl * alpha + ce * (1 - alpha)).where(labelled, kl).mean()


def _multilabel_loss(logits, labels, temperature: float, alpha: float):
    """`distillation_loss` for sigmoid outputs: each label a two-way distribution (score, 1 - score)."""
    import torch.nn.functional as F

    width = logits.shape[-1]
    gold, soft = labels[:, :width], labels[:, width:]
    student_on, student_off = F.logsigmoid(logits / temperature), F.logsigmoid(-logits / temperature)
    teacher_on, teacher_off = F.logsigmoid(soft / temperature), F.logsigmoid(-soft / temperature)
    kl = (teacher_on.exp() * (teacher_on - student_on) + teacher_off.exp() * (teacher_off - student_off))
    kl = kl.mean(dim=-1) * temperature ** 2
    labelled = gold[:, 0] >= 0
    bce = F.binary_cross_entropy_with_logits(logits, gold.clamp(min=0), reduction="none").mean(dim=-1)
    return (kl * alpha + bce * (1 - alpha)).where(labelled, kl).mean()


def _latency(teacher_dir: Path, student_dir: Path, texts: list[str], allow_pickle: bool = False,
             ) -> dict[str, dict[str, float]]:
    """PyTorch fp32 p50 ms of teacher and student on the same real texts (each through its own tokenizer) at
    batch 1 and 8, calls interleaved (timing.interleaved_latency): a few seconds."""
    from transformers import AutoTokenizer

    picks = [texts[i] for i in np.linspace(0, len(texts) - 1, num=min(8, len(texts))).astype(int)]
    runs, feeds = {}, {}
    for name, directory in (("teacher", teacher_dir), ("student", student_dir)):
        runs[name] = TorchModel(str(directory), threads=usable_cpus(), allow_pickle=allow_pickle).run
        tokenizer = AutoTokenizer.from_pretrained(directory)
        feeds[name] = {"batch_1": [dict(tokenizer(picks[:1], truncation=True, return_tensors="np"))],
                       "batch_8": [dict(tokenizer(picks, padding=True, truncation=True, return_tensors="np"))]}
    return interleaved_latency(runs, feeds["teacher"], SPEED_ROUNDS, own_feeds={"student": feeds["student"]})
