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
