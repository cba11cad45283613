"""What a classifier's outputs mean: one label per text (softmax) or a set of labels (sigmoid and thresholds).

`LabelScheme` is the one place that knows the difference: it turns logits into scores, scores into
decisions (a class id per text, or a row of booleans per text), decisions into label names and
text, true labels into the same form, and scores decisions with the right metrics. The training,
export, bench, predictor, `predict` and `serve` all go through it. `judge_drop` is the one rule of how many
points a candidate (a variant, an engine, a student) lost against its reference and whether that is allowed;
the export guard, bench and distill all use it. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertdeploy.defaults import LABEL_SEPARATOR
from bertdeploy.metrics import classification_report, multilabel_report

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL)
DEFAULT_THRESHOLD = 0.5
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1",
                "subset_accuracy": "subset accuracy"}


def figure_names(multi_label: bool) -> tuple[str, ...]:
    """The headline figures of a classifier's report, the guard's metric first: accuracy and macro-F1, or micro-F1,
    macro-F1 and subset accuracy (the share of texts whose whole label set is right)."""
    return ("micro_f1", "macro_f1", "subset_accuracy") if multi_label else ("accuracy", "macro_f1")


@dataclass(frozen=True)
class Drop:
    """How many points a candidate lost against its reference, and whether that is within the bound
    (`max_accuracy_drop`). Judged by the headline figure when both have one (`metric`: accuracy, or micro-F1 for
    multi-label models), else by the share of texts whose decision differs from the reference's."""

    lost: float  # points: (reference - candidate) x 100, or (1 - agreement) x 100; positive means worse
    allowed: float
    metric: str | None = None  # the figure's name (for messages); None when judged by agreement
    reference: float | None = None
    candidate: float | None = None

    @property
    def within(self) -> bool:
        return self.lost <= self.allowed

    @property
    def by_agreement(self) -> bool:
        return self.reference is None or self.candidate is None

    def reason(self, reference: str, texts: int = 0, subject: str = "") -> str:
        """Why a candidate that is not `within` is refused, against `reference` (who: "PyTorch", "its teacher");
        `subject` names the candidate ("the student"), `texts` counts the scoring texts (for agreement)."""
        if self.by_agreement:
            who = f"{subject} " if subject else ""
            return (f"{who}disagrees with {reference} on {self.lost:.2f}% of {texts} texts, so it may lose that "
                    f"much accuracy (allowed: {self.allowed:g} points)")
        whose = f"{subject}'s " if subject else ""
        return (f"{whose}{METRIC_NAMES[self.metric or 'accuracy']} {self.candidate:.4f} is {self.lost:.2f} points "
                f"below {reference}'s {self.reference:.4f} (allowed: {self.allowed:g})")


def judge_drop(reference: float | None, candidate: float | None, allowed: float, agreement: float | None = None,
               metric: str | None = None) -> Drop:
    """The one rule for points lost: with both figures (fractions of the headline metric, `metric`), the
    candidate's shortfall x 100; without, the share of texts whose decision differs from the reference's
    ((1 - agreement) x 100); with neither, nothing lost. Within the bound when lost <= `allowed`."""
    if reference is not None and candidate is not None:
        return Drop((reference - candidate) * 100, allowed, metric, reference, candidate)
    return Drop(0.0 if agreement is None else (1 - agreement) * 100, allowed)


@dataclass(frozen=True)
class LabelScheme:
    """The labels in id order; for multi-label models, each label's threshold and the separator that joins a
    set of labels in files."""

    labels: tuple[str, ...]
    multi_label: bool = False
    thresholds: tuple[float, ...] | None = None  # multi-label: a label is predicted when its score >= its threshold
    separator: str = LABEL_SEPARATOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.multi_label and self.thresholds is None:
            object.__setattr__(self, "thresholds", (DEFAULT_THRESHOLD,) * len(self.labels))
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
            if not self.multi_label or len(self.thresholds) != len(self.labels):
                raise ValueError("thresholds are for multi-label models, one per label")

    def manifest_fields(self) -> dict:
        """The manifest's record of this scheme, which the manifest's `scheme` reads back."""
        fields: dict = {"problem_type": self.problem_type, "labels": list(self.labels)}
        if self.multi_label:
            fields.update(thresholds=dict(zip(self.labels, self.thresholds, strict=True)),
                          label_separator=self.separator)
        return fields

    @property
    def problem_type(self) -> str:
        return MULTI_LABEL if self.multi_label else SINGLE_LABEL

    @property
    def metric(self) -> str:
        """The figure the guard and the best epoch go by: micro-F1 for multi-label models, else accuracy."""
        return "micro_f1" if self.multi_label else "accuracy"

    @property
    def figures(self) -> tuple[str, ...]:
        """The headline figures of `report`, the guard's metric first."""
        return figure_names(self.multi_label)

    @property
    def drop_key(self) -> str:
        """The name of the points lost by `metric`: accuracy_drop, or micro_f1_drop for multi-label models."""
        return f"{self.metric}_drop"

    def drop(self, reference: dict | None, candidate: dict | None, allowed: float,
             agreement: float | None = None) -> Drop:
        """`judge_drop` by this scheme's metric, from two sets of figures (`report`'s, say); without both (no
        labels), by `agreement`."""
        if reference is None or candidate is None:
            return judge_drop(None, None, allowed, agreement)
        return judge_drop(reference[self.metric], candidate[self.metric], allowed, agreement, self.metric)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Scores from logits: sigmoid per label for multi-label models, else softmax over the labels."""
        logits = np.asarray(logits, dtype=np.float32)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """The predictions: a class id per text, or (multi-label) an (n, labels) boolean array."""
        if self.multi_label:
            return np.asarray(scores) >= np.asarray(self.thresholds, dtype=np.float32)
        return np.asarray(scores).argmax(axis=-1)

    def encode(self, labels: Sequence) -> np.ndarray:
        """True labels (names, or tuples of names for multi-label models) in the form `decide` returns."""
        index = {label: i for i, label in enumerate(self.labels)}
        if not self.multi_label:
            return np.array([index[y] for y in labels], dtype=np.int64)
        truth = np.zeros((len(labels), len(self.labels)), dtype=bool)
        for row, names in enumerate(labels):
            truth[row, [index[y] for y in names]] = True
        return truth

    def names(self, decided) -> list[str]:
        """The labels of one decision (a row of `decide`), in label order."""
        if self.multi_label:
            return [label for label, on in zip(self.labels, decided, strict=True) if on]
        return [self.labels[int(decided)]]

    def best(self, scores: np.ndarray, decided) -> str | None:
        """One text's best label: the top-scoring one, or for multi-label models the top-scoring label that
        passes its threshold (None when none does)."""
        names = self.names(decided)
        return max(names, key=lambda name: scores[self.labels.index(name)]) if names else None

    def text(self, decided) -> str:
        """One decision as a file cell: the label, or the labels joined by the separator ('' for none)."""
        return self.separator.join(self.names(decided))

    def report(self, truth: np.ndarray, decided: np.ndarray) -> dict:
        """Metrics of decisions against truth (both in `decide`'s form); `self.metric` is among them."""
        if self.multi_label:
            return multilabel_report(truth, decided, self.labels)
        return classification_report(truth, decided, self.labels)

    def agreement(self, a: np.ndarray, b: np.ndarray) -> float:
        """The share of texts whose decision (the label, or the whole label set) is the same in `a` and `b`."""
        same = (np.asarray(a) == np.asarray(b))
        return float((same.all(axis=1) if self.multi_label else same).mean()) if len(same) else 1.0
