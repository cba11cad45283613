"""Classification metrics with numpy only: accuracy, macro-F1, per-class figures, confusion matrix.

Shared by training, the export accuracy guard and `predict`; it never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Score predicted class ids against true ones; `labels[i]` names class id i."""
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"{len(true)} true labels but {len(pred)} predictions")
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    return report_from_confusion(confusion, labels)


def report_from_confusion(confusion: np.ndarray, labels: Sequence[str]) -> dict:
    """The same report from a confusion matrix (rows: true class, columns: predicted), e.g. summed in a stream."""
    confusion = np.asarray(confusion, dtype=np.int64)
    n = len(labels)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    present = (support > 0) | (predicted > 0)  # the classes that occur, as scikit-learn does
    return {
        "accuracy": float(tp.sum() / max(int(confusion.sum()), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion.tolist(),
    }


def multilabel_counts(truth: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray | int]:
    """Per-label true positives, false positives and false negatives, exact matches and rows, from (n, labels)
    boolean arrays: what `multilabel_report_from_counts` needs, and what a stream can sum."""
    truth, predicted = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    if truth.shape != predicted.shape:
        raise ValueError(f"true labels of shape {truth.shape} but predictions of shape {predicted.shape}")
    return {"tp": (truth & predicted).sum(axis=0), "fp": (~truth & predicted).sum(axis=0),
            "fn": (truth & ~predicted).sum(axis=0), "exact": int((truth == predicted).all(axis=1).sum()),
            "rows": len(truth)}


def multilabel_report(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> dict:
    """Score multi-label predictions ((n, labels) booleans; column i is `labels[i]`): micro-F1 (over every
    label decision), macro-F1 (the mean of the labels' F1, over labels that occur), subset accuracy (the share
    of texts whose whole label set is right) and per-label precision, recall, F1 and support."""
    return multilabel_report_from_counts(multilabel_counts(truth, predicted), labels)


def multilabel_report_from_counts(counts: dict, labels: Sequence[str]) -> dict:
    tp, fp, fn = (np.asarray(counts[k], dtype=float) for k in ("tp", "fp", "fn"))
    precision = np.divide(tp, tp + fp, out=np.zeros(len(labels)), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(len(labels)), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(labels)), where=2 * tp + fp + fn > 0)
    present = (tp + fn + fp) > 0
    micro_denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "micro_f1": float(2 * tp.sum() / micro_denominator) if micro_denominator else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "subset_accuracy": counts["exact"] / max(counts["rows"], 1),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(tp[i] + fn[i])}
            for i, label in enumerate(labels)
        },
    }


def tune_thresholds(truth: np.ndarray, scores: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per label, the score threshold that maximizes its F1 on (truth, scores), both (n, labels): halfway between
    the lowest score kept positive and the next one below. A label with no positive row keeps `default`."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    thresholds = np.full(truth.shape[1], default)
    for j in range(truth.shape[1]):
        positives = int(truth[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        ranked, hits = scores[order, j], np.cumsum(truth[order, j])
        ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # cut after the last of each tie
        f1 = 2 * hits[ends] / (ends + 1 + positives)
        best = ends[int(np.argmax(f1))]
        below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds[j] = (ranked[best] + below) / 2
    return thresholds
