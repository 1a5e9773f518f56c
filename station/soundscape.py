"""Score detections against timed labels, segment by segment (BirdCLEF's way of scoring soundscapes).

A file is cut into a fixed grid of `segment_seconds` segments (5 s by default). A segment's
truth is every species whose labelled span overlaps it; its prediction is every bird species
with a detection event overlapping it. Both overlaps must be more than 0 s, so spans that
only touch a segment's edge do not count. Only segments that lie wholly inside the audio
(and inside what the labels cover) are scored: a label file may cover more than its audio
(SSW49's labels run to 600 s, its mp3 to 585.8 s).

Labels come from the shared `*_5s_labels.csv` files or from Raven selection tables; names are
matched to the model's labels with station.names.LabelIndex, and names that match nothing are
counted and reported, never dropped silently.

Pure: no audio, no model. `pr_curve` takes a factory for fresh detectors, so it re-runs only
the detector over cached window scores.
"""
from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .errors import StationError
from .names import LabelIndex

if TYPE_CHECKING:
    from .detection import Detector
    from .types import Detection, Scores

log = logging.getLogger(__name__)

SEGMENT_SECONDS = 5.0
EDGE_TOLERANCE_SECONDS = 0.05  # decoders disagree by a few ms on an mp3's length
NO_CALL = "nocall"
RAVEN_SPECIES_COLUMNS = ("Species", "Common Name", "Scientific Name", "Annotation", "Label", "Class")
SEGMENT_CSV_COLUMNS = {"start_s", "end_s", "scientific_name", "common_name"}
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class TimedLabel:
    start: float
    end: float
    scientific_name: str
    common_name: str
    row: int  # line in the file, for messages

    @property
    def name(self) -> str:
        return self.scientific_name or self.common_name


@dataclass(frozen=True)
class TimedLabels:
    """The calls a label file marks (no-call rows left out) and how far the file's labels reach."""

    path: Path
    calls: tuple[TimedLabel, ...]
    kind: str  # "segments" (the shared 5 s CSV) or "raven"
    covered_seconds: float | None  # end of the last row, no-call rows included; None: the whole audio

    def species_names(self) -> Counter[str]:
        return Counter(c.name for c in self.calls)


def read_timed_labels(path: Path) -> TimedLabels:
    """A `*_5s_labels.csv` (comma-separated) or a Raven selection table (tab-separated)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StationError(f"{path}: cannot read labels: {getattr(exc, 'strerror', None) or exc}") from None
    header = text.splitlines()[0] if text.strip() else ""
    if "\t" in header and "Begin Time (s)" in header:
        return _read_raven(path, text)
    if {h.strip() for h in header.split(",")} >= SEGMENT_CSV_COLUMNS:
        return _read_segment_csv(path, text)
    raise StationError(f"{path}: not a labels file (neither a CSV with columns start_s, end_s, scientific_name, "
                       "common_name nor a Raven selection table with 'Begin Time (s)' and 'End Time (s)')")


def _read_segment_csv(path: Path, text: str) -> TimedLabels:
    calls, covered = [], 0.0
    for row_number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        start, end = _span(path, row_number, row.get("start_s"), row.get("end_s"))
        covered = max(covered, end)
        scientific, common = (row.get("scientific_name") or "").strip(), (row.get("common_name") or "").strip()
        if (row.get("ebird_code") or "").strip() == NO_CALL:
            continue
        if not scientific and not common:
            raise StationError(f"{path}: row {row_number}: no species name (and ebird_code is not '{NO_CALL}')")
        calls.append(TimedLabel(start, end, scientific, common, row_number))
    return TimedLabels(path, tuple(calls), "segments", covered)


def _read_raven(path: Path, text: str) -> TimedLabels:
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    columns = set(rows[0]) if rows else set()
    named = [c for c in RAVEN_SPECIES_COLUMNS if c in columns]
    if rows and not named:
        raise StationError(f"{path}: Raven table has no species column (one of {', '.join(RAVEN_SPECIES_COLUMNS)})")
    calls = []
    for row_number, row in enumerate(rows, start=2):
        start, end = _span(path, row_number, row.get("Begin Time (s)"), row.get("End Time (s)"))
        scientific = (row.get("Scientific Name") or "").strip()
        common = next(((row.get(c) or "").strip() for c in named if c != "Scientific Name" and row.get(c)), "")
        if not scientific and not common:
            raise StationError(f"{path}: row {row_number}: empty species ({', '.join(named)})")
        calls.append(TimedLabel(start, end, scientific, common, row_number))
    return TimedLabels(path, tuple(calls), "raven", None)


def _span(path: Path, row: int, start_text: str | None, end_text: str | None) -> tuple[float, float]:
    try:
        start, end = float(start_text or ""), float(end_text or "")
    except ValueError:
        raise StationError(f"{path}: row {row}: start/end {start_text!r}/{end_text!r} are not numbers") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise StationError(f"{path}: row {row}: span {start:g}-{end:g} s is not 0 <= start < end")
    return start, end


def segment_count(duration: float, segment_seconds: float = SEGMENT_SECONDS,
                  covered_seconds: float | None = None) -> int:
    """Segments that lie wholly inside the audio (and inside what the labels cover, when that is known)."""
    if segment_seconds <= 0:
        raise ValueError("segment_seconds must be above 0")
    limit = duration if covered_seconds is None else min(duration, covered_seconds)
    return max(0, math.floor((limit + EDGE_TOLERANCE_SECONDS) / segment_seconds))


def _segments_overlapping(start: float, end: float, count: int, segment_seconds: float) -> range:
    """Indices of the grid's segments that [start, end) overlaps by more than 0 s."""
    first = max(0, math.floor(start / segment_seconds))
    last = min(count, math.ceil(end / segment_seconds))  # exclusive
    return range(first, last) if end > start else range(0)


def segment_truth(labels: TimedLabels, duration: float, label_index: LabelIndex,
                  segment_seconds: float = SEGMENT_SECONDS) -> dict[int, set[str]]:
    """Segment index -> the model labels of the species labelled there; every scored segment is a key."""
    count = segment_count(duration, segment_seconds, labels.covered_seconds)
    truth: dict[int, set[str]] = {i: set() for i in range(count)}
    unknown = unmatched_names(labels, label_index)
    if unknown:
        log.warning("%s: %d label row(s) name species the model does not know: %s", labels.path,
                    sum(unknown.values()), ", ".join(sorted(unknown)))
    for call in labels.calls:
        species = label_index.match(call.scientific_name, call.common_name)
        if species is not None:
            for i in _segments_overlapping(call.start, call.end, count, segment_seconds):
                truth[i].add(species.label)
    return truth


def unmatched_names(labels: TimedLabels, label_index: LabelIndex) -> Counter[str]:
    """Label rows whose species is none of the model's labels, by name."""
    return Counter(c.name for c in labels.calls if label_index.match(c.scientific_name, c.common_name) is None)


def segment_predictions(detections: Iterable[Detection], duration: float,
                        segment_seconds: float = SEGMENT_SECONDS,
                        non_bird_labels: Collection[str] = ()) -> dict[int, set[str]]:
    """Segment index -> the species of the bird detection events that overlap it."""
    count = segment_count(duration, segment_seconds)
    predicted: dict[int, set[str]] = {i: set() for i in range(count)}
    for d in detections:
        if d.species.label in non_bird_labels:
            continue
        for i in _segments_overlapping(d.start_offset, d.end_offset, count, segment_seconds):
            predicted[i].add(d.species.label)
    return predicted


@dataclass(frozen=True)
class SpeciesCounts:
    label: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def labelled(self) -> bool:
        return self.true_positives + self.false_negatives > 0

    @property
    def precision(self) -> float:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> float:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)


@dataclass(frozen=True)
class SegmentMetrics:
    """Micro figures count segment x species pairs; macro averages over the species labelled somewhere."""

    segments: int
    segments_with_calls: int
    true_positives: int
    false_positives: int
    false_negatives: int
    species: tuple[SpeciesCounts, ...] = field(default=())  # every species labelled or predicted, by label

    @property
    def micro(self) -> tuple[float, float, float]:
        p = _ratio(self.true_positives, self.true_positives + self.false_positives)
        r = _ratio(self.true_positives, self.true_positives + self.false_negatives)
        return p, r, _f1(p, r)

    @property
    def macro(self) -> tuple[float, float, float]:
        labelled = [s for s in self.species if s.labelled]
        if not labelled:
            return 0.0, 0.0, 0.0
        return (float(np.mean([s.precision for s in labelled])), float(np.mean([s.recall for s in labelled])),
                float(np.mean([s.f1 for s in labelled])))

    def false_positives_by_species(self) -> list[tuple[str, int, bool]]:
        """(label, false-positive segments, labelled anywhere), most first; never-labelled species too."""
        found = [(s.label, s.false_positives, s.labelled) for s in self.species if s.false_positives]
        return sorted(found, key=lambda f: (-f[1], f[0]))


def segment_metrics(truth: Mapping[Key, set[str]], predicted: Mapping[Key, set[str]]) -> SegmentMetrics:
    """Score the segments that `truth` has (predictions for other segments are ignored)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for key, true_species in truth.items():
        guessed = predicted.get(key, set())
        tp.update(true_species & guessed)
        fp.update(guessed - true_species)
        fn.update(true_species - guessed)
    species = tuple(SpeciesCounts(label, tp[label], fp[label], fn[label]) for label in sorted(tp | fp | fn))
    return SegmentMetrics(len(truth), sum(1 for s in truth.values() if s), sum(tp.values()), sum(fp.values()),
                          sum(fn.values()), species)


def keyed(per_file: Mapping[str, Mapping[int, set[str]]]) -> dict[tuple[str, int], set[str]]:
    """Several files' segments as one set, keyed (file, segment), for figures over all of them."""
    return {(name, i): species for name, segments in per_file.items() for i, species in segments.items()}


@dataclass(frozen=True)
class ScoredFile:
    """What a threshold sweep needs of one replayed file: its window scores, length and segment truth."""

    name: str
    scores: tuple[Scores, ...]
    duration: float
    truth: dict[int, set[str]]


def light_scores(scores: Iterable[Scores]) -> list[Scores]:
    """Window scores without the window's audio, so a whole soundscape's scores can be kept for a sweep."""
    empty = np.zeros(0, dtype=np.float32)
    return [replace(s, window=replace(s.window, samples=empty)) for s in scores]


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    metrics: SegmentMetrics


def detections_of(detector: Detector, scores: Sequence[Scores]) -> list[Detection]:
    """Every event a detector makes of the scores, each in its final form."""
    events = {d.id: d for d in detector.push(scores)}
    events.update((d.id, d) for d in detector.flush())
    return list(events.values())


def pr_curve(files: Sequence[ScoredFile], detector_at: Callable[[float], Detector], thresholds: Iterable[float],
             segment_seconds: float = SEGMENT_SECONDS,
             non_bird_labels: Collection[str] = ()) -> list[CurvePoint]:
    """Micro/macro figures over all `files` at each threshold, from a fresh detector per threshold."""
    truth = keyed({f.name: f.truth for f in files})
    points = []
    for threshold in thresholds:
        predicted = {}
        for f in files:
            found = detections_of(detector_at(threshold), f.scores)
            predicted[f.name] = segment_predictions(found, f.duration, segment_seconds, non_bird_labels)
        points.append(CurvePoint(float(threshold), segment_metrics(truth, keyed(predicted))))
    return points


DEFAULT_SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0
