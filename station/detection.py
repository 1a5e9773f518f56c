"""Window scores -> detection events.

A species is detected in a window when it is among the window's top-k and its score
reaches its threshold (per-species, else global) and it passes the include/exclude lists.
Detections of one species from one source merge into one event while each new window
starts no later than `merge_gap_seconds` after the event's last window ended. With the
default 3 s windows and 1.5 s hop, a single missed window therefore does not split an
event (the next detected window starts exactly where the last one ended).

`push` returns every event it opened, extended or closed, each with a stable id, so the
store can keep open events durable and mark them closed once final.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from .names import name_key
from .types import Detection, Removal, Scores, Species

if TYPE_CHECKING:  # the range filter loads onnxruntime; the detector only calls it
    from .range_filter import RangeFilter

# Event ids are derived from what the event is, so the same audio replayed again (after a
# crash, or by mistake) gives the same ids: the store upserts instead of duplicating.
EVENT_NAMESPACE = uuid.UUID("5b0c1d52-7f0e-4a43-9b8e-0f1a6c2d9e11")


def event_id(station: str, model: str, source: str, label: str, start_time: datetime) -> str:
    return uuid.uuid5(EVENT_NAMESPACE, "|".join([station, model, source, label, start_time.isoformat()])).hex


@dataclass
class _Event:
    detection: Detection
    score_sum: float
    source: str


class SpeciesFilter:
    """Include/exclude lists and per-species thresholds, matched on any of a species' names."""

    def __init__(self, threshold: float, species_thresholds: dict[str, float],
                 include: Iterable[str], exclude: Iterable[str], blocked_labels: Iterable[str] = ()):
        self.threshold = threshold
        self.blocked_labels = frozenset(blocked_labels)  # never detected: a model's non-bird classes, by label
        self.species_thresholds = {name_key(k): v for k, v in species_thresholds.items()}
        self.include = {name_key(n) for n in include}
        self.exclude = {name_key(n) for n in exclude}

    @staticmethod
    def names(species: Species) -> set[str]:
        return {name_key(n) for n in (species.label, species.scientific_name, species.common_name) if n}

    def allows(self, species: Species) -> bool:
        if species.label in self.blocked_labels:
            return False
        names = self.names(species)
        if self.include and not names & self.include:
            return False
        return not names & self.exclude

    def threshold_for(self, species: Species) -> float:
        for name in self.names(species):
            if name in self.species_thresholds:
                return self.species_thresholds[name]
        return self.threshold


class Detector:
    def __init__(self, station: str, model: str, species_filter: SpeciesFilter, top_k: int = 3,
                 merge_gap_seconds: float = 0.0, range_filter: RangeFilter | None = None):
        self.station = station
        self.model = model
        self.filter = species_filter
        self.range_filter = range_filter
        self.top_k = top_k
        self.merge_gap_seconds = merge_gap_seconds
        self._open: dict[tuple[str, str], _Event] = {}
        self._removed: list[Removal] = []

    def take_removed(self) -> list[Removal]:
        """What the rules took away since the last call (the store keeps it for `detections --removed`)."""
        removed, self._removed = self._removed, []
        return removed

    def push(self, scores: Sequence[Scores]) -> list[Detection]:
        changed: dict[str, Detection] = {}
        for window_scores in scores:
            for det in self._close_stale(window_scores):
                changed[det.id] = det
            for det in self._detect(window_scores):
                changed[det.id] = det
        return list(changed.values())

    def flush(self, source: str | None = None) -> list[Detection]:
        """Close open events (of one source, or all): end of stream or shutdown."""
        keys = [k for k in self._open if source is None or k[0] == source]
        return [self._open.pop(k).detection.closed() for k in keys]

    def _close_stale(self, scores: Scores) -> list[Detection]:
        w = scores.window
        stale = [k for k, e in self._open.items()
                 if e.source != w.source or w.start_offset > e.detection.end_offset + self.merge_gap_seconds]
        return [self._open.pop(k).detection.closed() for k in stale]

    def _detect(self, scores: Scores) -> list[Detection]:
        top = scores.top(self.top_k)
        hits = [(sp, s) for sp, s in top if self.filter.allows(sp) and s >= self.filter.threshold_for(sp)]
        if self.range_filter is not None:
            hits = [(sp, s) for sp, s in hits if self._in_range(scores, sp, s)]
        alternatives = tuple((sp.label, s) for sp, s in top)
        return [self._extend_or_open(scores, sp, s, alternatives) for sp, s in hits]

    def _in_range(self, scores: Scores, species: Species, score: float) -> bool:
        assert self.range_filter is not None
        w = scores.window
        if self.range_filter.allows(species, w.start_time, score):
            return True
        self._removed.append(Removal(w.source, species, score, w.start_time, w.start_offset, w.end_offset, "range"))
        return False

    def _extend_or_open(self, scores: Scores, species: Species, score: float,
                        alternatives: tuple[tuple[str, float], ...]) -> Detection:
        w = scores.window
        key = (w.source, species.label)
        event = self._open.get(key)
        if event is None:
            det = Detection(
                id=event_id(self.station, self.model, w.source, species.label, w.start_time),
                station=self.station, source=w.source, model=self.model,
                species=species, confidence=score, mean_confidence=score, window_count=1,
                start_time=w.start_time, end_time=w.end_time, start_offset=w.start_offset,
                end_offset=w.end_offset, alternatives=alternatives)
            self._open[key] = _Event(det, score, w.source)
            return det
        old = event.detection
        count = old.window_count + 1
        event.score_sum += score
        better = score > old.confidence
        event.detection = replace(
            old, confidence=max(score, old.confidence), mean_confidence=event.score_sum / count,
            window_count=count, end_time=max(old.end_time, w.end_time),
            end_offset=max(old.end_offset, w.end_offset),
            alternatives=alternatives if better else old.alternatives)
        return event.detection
