"""Window scores -> detection events.

A species is detected in a window when it is among the window's top-k, passes the
include/exclude lists, and the evidence is enough:
- one window at or above its threshold (per-species, else global), or
- two neighbouring windows (the hop's overlap: the same call is heard in both) at or above
  the lower `pair_threshold`: an isolated low score is noise, a repeated one is a bird.
  Such an event opens when its second window arrives, one hop late, starting at the first;
- a species with a recent confident window (`DynamicThreshold`) needs less for a while;
- with `non_birds_mask`, a bird scoring below one of the window's blocked (non-bird)
  classes gets no evidence from that window: the model heard the dog, not a raven;
- with a range filter, a species not expected at the place and week needs one window at or
  above `out_of_range_threshold` (None: it is never detected), unless `location.keep` has it.
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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .names import name_key
from .types import Detection, Removal, Scores, Species, Window

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


class DynamicThreshold:
    """A species' confident window lowers its threshold for a while (BirdNET-Go's dynamic threshold).

    A window at or above `trigger` that is detected lowers that species' threshold to
    `lowered` for `hold_seconds` of audio time: a bird that just sang clearly is likely to
    sing again, softer or farther. A low score with no confident window before it gains nothing.
    """

    def __init__(self, trigger: float, lowered: float, hold_seconds: float):
        self.trigger, self.lowered, self.hold = trigger, lowered, timedelta(seconds=hold_seconds)
        self._until: dict[str, datetime] = {}

    def threshold(self, label: str, moment: datetime, base: float) -> float:
        until = self._until.get(label)
        return min(base, self.lowered) if until is not None and moment < until else base

    def saw(self, label: str, moment: datetime, score: float) -> None:
        if score >= self.trigger:
            self._until[label] = moment + self.hold


@dataclass
class _Previous:
    """A source's last window: its scores and which species reached the pair threshold or were detected."""

    scores: Scores
    alternatives: tuple[tuple[str, float], ...]
    candidates: dict[str, float]
    detected: set[str]


class Detector:
    def __init__(self, station: str, model: str, species_filter: SpeciesFilter, top_k: int = 3,
                 merge_gap_seconds: float = 0.0, range_filter: RangeFilter | None = None, *,
                 pair_threshold: float | None = None, dynamic: DynamicThreshold | None = None,
                 out_of_range_threshold: float | None = None, non_birds_mask: bool = False):
        self.station = station
        self.model = model
        self.filter = species_filter
        self.range_filter = range_filter
        self.top_k = top_k
        self.merge_gap_seconds = merge_gap_seconds
        self.pair_threshold = pair_threshold
        self.dynamic = dynamic
        self.out_of_range_threshold = out_of_range_threshold
        self.non_birds_mask = non_birds_mask
        self._open: dict[tuple[str, str], _Event] = {}
        self._previous: dict[str, _Previous] = {}
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
        for name in [s for s in self._previous if source is None or s == source]:
            del self._previous[name]
        return [self._open.pop(k).detection.closed() for k in keys]

    def _close_stale(self, scores: Scores) -> list[Detection]:
        w = scores.window
        stale = [k for k, e in self._open.items()
                 if e.source != w.source or w.start_offset > e.detection.end_offset + self.merge_gap_seconds]
        return [self._open.pop(k).detection.closed() for k in stale]

    def _detect(self, scores: Scores) -> list[Detection]:
        w = scores.window
        top = scores.top(self.top_k)
        alternatives = tuple((sp.label, s) for sp, s in top)
        previous = self._neighbour(w)
        now = _Previous(scores, alternatives, {}, set())
        found: list[Detection] = []
        masking = self._masking_score(top)
        for species, score in top:
            if not self.filter.allows(species) or score < masking:
                continue
            single, pair = self._thresholds(species, w.start_time)
            if pair is not None and score >= pair:
                now.candidates[species.label] = score
            paired = pair is not None and score >= pair and previous is not None \
                and species.label in previous.candidates
            if not (score >= single or paired) or not self._in_range(scores, species, score):
                continue
            if paired and previous is not None and species.label not in previous.detected:
                found.append(self._accept(previous, species, previous.candidates[species.label]))
            found.append(self._accept(now, species, score))
        self._previous[w.source] = now
        return found

    def _masking_score(self, top: list[tuple[Species, float]]) -> float:
        """With `non_birds_mask`, the best blocked class's score: a bird below it is not evidence in this window.

        When the model hears a dog (or a person, an engine) more surely than a bird, the bird's
        score is most likely the dog's sound leaking into a similar bird class.
        """
        if not self.non_birds_mask:
            return 0.0
        return max((s for sp, s in top if sp.label in self.filter.blocked_labels), default=0.0)

    def _neighbour(self, w: Window) -> _Previous | None:
        """The source's last window if it touches or overlaps this one (no audio between them)."""
        previous = self._previous.get(w.source)
        if previous is None:
            return None
        p = previous.scores.window
        return previous if p.start_offset < w.start_offset <= p.end_offset + 1e-6 else None

    def _thresholds(self, species: Species, moment: datetime) -> tuple[float, float | None]:
        """(one window's threshold, two neighbouring windows' threshold or None) for this species now."""
        single = own = self.filter.threshold_for(species)
        if self.dynamic is not None:
            single = self.dynamic.threshold(species.label, moment, own)
        if self.pair_threshold is None or self.filter.threshold <= 0:
            return single, None
        # A species' own threshold scales its pair threshold alike: calibrated hard species stay hard.
        return single, min(single, self.pair_threshold * own / self.filter.threshold)

    def _accept(self, window: _Previous, species: Species, score: float) -> Detection:
        window.detected.add(species.label)
        if self.dynamic is not None:
            self.dynamic.saw(species.label, window.scores.window.start_time, score)
        return self._extend_or_open(window.scores, species, score, window.alternatives)

    def _in_range(self, scores: Scores, species: Species, score: float) -> bool:
        if self.range_filter is None:
            return True
        if self.out_of_range_threshold is not None and score >= self.out_of_range_threshold:
            return True  # strong evidence outweighs the range model, which misses real vagrants and endemics
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
