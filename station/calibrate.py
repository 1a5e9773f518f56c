"""Per-species thresholds that reach a target precision on validation scores.

For each species, every score it reached in a file is a candidate threshold; the chosen
one is the lowest whose precision (files of that species among files scoring at least
that much) reaches the target, which keeps the most recall. Species with too few
labelled files keep the global threshold: a threshold fitted to one file is noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class Threshold:
    label: str
    threshold: float
    precision: float
    recall: float
    positives: int


def calibrate(scores: np.ndarray, truth: np.ndarray, labels: list[str], target_precision: float,
              min_positives: int = 2) -> list[Threshold]:
    """scores [files, labels]; truth: label index per file (-1 = none of the labels)."""
    found = []
    for j, label in enumerate(labels):
        positive = truth == j
        if positive.sum() < min_positives:
            continue
        best = _lowest_threshold(scores[:, j], positive, target_precision)
        if best is not None:
            found.append(Threshold(label, *best, int(positive.sum())))
    return found


def _lowest_threshold(column: np.ndarray, positive: np.ndarray, target: float) -> tuple[float, float, float] | None:
    """(threshold, precision, recall) at the lowest score that still reaches `target` precision; None if none does."""
    order = np.argsort(-column, kind="stable")
    hits = np.cumsum(positive[order])
    precision = hits / np.arange(1, len(order) + 1)
    # Only cut between distinct scores: files with equal scores fall on the same side.
    distinct = np.append(column[order][1:] != column[order][:-1], True)
    ok = np.flatnonzero(distinct & (precision >= target) & (hits > 0))
    if not len(ok):
        return None
    k = ok[-1]
    return float(column[order][k]), float(precision[k]), float(hits[k] / positive.sum())


def snippet(thresholds: list[Threshold], target_precision: float, source: str) -> str:
    """A YAML file for `detection.thresholds_file`: {label: threshold}, with its provenance."""
    header = [f"# Per-species thresholds for precision >= {target_precision:.2f}, from {source}.",
              "# label: threshold   (precision, recall, labelled files on the validation set)"]
    body = {t.label: floor_threshold(t.threshold) for t in thresholds}
    notes = [f"#   {t.label}: precision {t.precision:.2f}, recall {t.recall:.2f}, {t.positives} files"
             for t in thresholds]
    thresholds_yaml = yaml.safe_dump(body, sort_keys=True, allow_unicode=True) if body else "{}\n"
    return "\n".join(header + notes) + "\n" + thresholds_yaml


def floor_threshold(threshold: float, decimals: int = 4) -> float:
    """Shortened for the file, but never above the computed threshold: rounding up would drop the
    lowest true score the threshold was chosen to keep."""
    scale = 10 ** decimals
    shortened = math.floor(threshold * scale) / scale
    return shortened if shortened <= threshold else (math.floor(threshold * scale) - 1) / scale


def load_scores(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = np.load(path)
    return data["scores"], data["truth"], [str(x) for x in data["labels"]]
