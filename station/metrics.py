"""Classification metrics over file-level predictions, in plain numpy.

Conventions follow scikit-learn's (so they can be checked against it): classes are the
sorted union of true and top-1 predicted labels; a class never predicted has precision 0;
macro averages weigh classes equally, weighted averages by their true support.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    files: int
    top1: float
    top3: float
    labels: list[str]
    confusion: np.ndarray  # [true, predicted] counts, rows and columns in `labels` order
    per_class: list[ClassScores]
    macro: tuple[float, float, float]  # precision, recall, f1
    weighted: tuple[float, float, float]


def top_k_accuracy(truths: Sequence[str], rankings: Sequence[Sequence[str]], k: int) -> float:
    if not truths:
        return 0.0
    return float(np.mean([t in list(r)[:k] for t, r in zip(truths, rankings)]))


def confusion_matrix(truths: Sequence[str], predicted: Sequence[str], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truths, predicted):
        matrix[index[t], index[p]] += 1
    return matrix


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def compute(truths: Sequence[str], rankings: Sequence[Sequence[str]]) -> Metrics:
    """Metrics for files whose true label is `truths[i]` and whose ranked labels are `rankings[i]`."""
    predicted = [r[0] for r in rankings]
    labels = sorted(set(truths) | set(predicted))
    matrix = confusion_matrix(truths, predicted, labels)
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positive, matrix.sum(axis=0).astype(float))
    recall = _safe_divide(true_positive, support.astype(float))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    per_class = [ClassScores(label, float(p), float(r), float(f), int(s))
                 for label, p, r, f, s in zip(labels, precision, recall, f1, support)]
    weights = support / support.sum() if support.sum() else np.zeros(len(labels))
    return Metrics(
        files=len(truths), top1=top_k_accuracy(truths, rankings, 1), top3=top_k_accuracy(truths, rankings, 3),
        labels=labels, confusion=matrix, per_class=per_class,
        macro=(_mean(precision), _mean(recall), _mean(f1)),
        weighted=(float(np.sum(precision * weights)), float(np.sum(recall * weights)), float(np.sum(f1 * weights))),
    )


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0
