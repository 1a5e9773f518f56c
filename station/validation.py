"""Replay labelled recordings through the daemon's own stages and rank species per file.

A file's score for a species is the best score it holds in two overlapping windows (the
lower of the two): the same call heard in both, the evidence the detector's pair rule takes.
A file with no overlapping windows (one window, or a hop as long as the window) falls back to
its best single window, BirdNET's file-level rule. Against the best single window this
ranks 41 instead of 37 of the 54 shared clips first (birdnetlib's 3 s chunks: 39), since a
stray peak in one window no longer outranks a call heard twice. Files are ranked by those
scores for top-1/top-3 (the best single window's scores go to calibration, as the
detector's thresholds apply to single windows); the Detector also runs, at the configured thresholds, so the
report shows what the station would have logged for each file, and the station's own alert
rules (the configured `alerts`) run over those windows and events in a scratch database,
so the report's alerts are the ones the station would have raised.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import numpy as np

from . import soundscape
from .alerts import AlertEngine
from .builders import build_detector, build_windower
from .config import Settings
from .errors import StationError
from .inference import OnnxClassifier
from .metrics import Metrics, compute
from .names import LabelIndex
from .progress import terminal_bar
from .recorded import date_in_notes
from .soundscape import SegmentMetrics, TimedLabels
from .sources import FileSource
from .store import Store
from .types import Detection, Removal, Scores, Species

log = logging.getLogger(__name__)

GROUP_NOTE = re.compile(r"\bgroup=([^;\s]+)")
LABEL_SUFFIXES = ("_5s_labels.csv", ".Table.1.selections.txt")  # beside X.mp3: X_5s_labels.csv, X.Table.1...


@dataclass(frozen=True)
class Clip:
    path: Path
    scientific_name: str
    common_name: str
    licence: str = ""
    notes: str = ""
    labels: Path | None = None  # timed labels (a 5 s CSV or a Raven table) for a soundscape

    @property
    def group(self) -> str:
        """The manifest's `group=...` note (birds, frogs, soundscape/none ...); noise for noise clips."""
        found = GROUP_NOTE.search(self.notes)
        if found:
            return found.group(1)
        return "noise" if self.common_name.startswith("noise") else ""

    @property
    def kind(self) -> str:
        """species, soundscape (timed labels), multi (several species, no times), unlabelled (birds, no
        species), non-bird (a manifest's NON-BIRD or non-bird group: frogs, a soundscape with no bird) or noise."""
        if self.common_name.startswith("noise") or not (self.scientific_name or self.common_name):
            return "noise"
        if self.notes.startswith("NON-BIRD") or self.group not in ("", "birds"):
            return "non-bird"
        if self.labels is not None:
            return "soundscape"
        if self.scientific_name.startswith("MULTI"):
            return "multi"
        if self.scientific_name.startswith("Aves"):
            return "unlabelled"
        return "species"


@dataclass(frozen=True)
class FileResult:
    clip: Clip
    truth: Species | None  # the model's label for the clip's species, when the model knows it
    best: np.ndarray | None  # per label: best window score; None when the file failed
    windows: int
    detections: tuple[Detection, ...]
    error: str | None = None
    alerts: tuple[dict, ...] = ()  # what the station's alert rules raised while this file was replayed
    removals: tuple[Removal, ...] = ()  # detections the range filter took away
    duration: float = 0.0  # seconds of audio replayed
    segments: SegmentResult | None = None  # a soundscape's per-segment scoring
    held: np.ndarray | None = None  # per label: best score held by two overlapping windows; None if none overlap

    def ranking(self, labels: Sequence[Species], k: int = 3) -> list[tuple[Species, float]]:
        if self.best is None:
            return []
        scores = self.held if self.held is not None else self.best
        order = np.argsort(-scores, kind="stable")[:k]
        return [(labels[i], float(scores[i])) for i in order]

    @property
    def evaluable(self) -> bool:
        return self.error is None and self.truth is not None and self.clip.kind == "species"


@dataclass(frozen=True)
class SegmentResult:
    """A soundscape scored per segment at the configured threshold; its window scores kept for a sweep."""

    labels: TimedLabels
    truth: dict[int, set[str]]
    predicted: dict[int, set[str]]
    metrics: SegmentMetrics
    unmatched: dict[str, int]  # label rows naming species the model does not know, by name
    scores: tuple[Scores, ...]

    @property
    def labelled_segments(self) -> int:
        """Segments the labels cover (no-call rows too), scored or not."""
        covered = self.labels.covered_seconds
        return len(self.truth) if covered is None else round(covered / soundscape.SEGMENT_SECONDS)


def read_clips(path: Path, extensions: Sequence[str], labels: Path | None = None) -> list[Clip]:
    """A manifest CSV, a folder with manifest.csv, a folder of recordings and label files, or one recording."""
    path = Path(path)
    if path.is_dir():
        return read_manifest(path / "manifest.csv") if (path / "manifest.csv").is_file() else read_folder(path,
                                                                                                        extensions)
    if not path.exists():
        raise StationError(f"{path}: no such file or folder")
    if path.suffix.lower() in extensions:
        found = labels or labels_beside(path)
        if found is None:
            raise StationError(f"{path}: no labels beside it ({' or '.join(path.stem + s for s in LABEL_SUFFIXES)}); "
                               "give them with --labels")
        return [Clip(path, "", path.name, labels=found)]
    if labels is not None:
        raise StationError("--labels goes with one recording, not a manifest")
    return read_manifest(path)


def labels_beside(audio: Path) -> Path | None:
    return next((p for p in (audio.with_name(audio.stem + s) for s in LABEL_SUFFIXES) if p.is_file()), None)


def read_folder(folder: Path, extensions: Sequence[str]) -> list[Clip]:
    """Every recording in the folder (not below it); those with labels beside them are soundscapes."""
    audio = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    paired = [Clip(p, "", p.name, labels=labels_beside(p)) for p in audio]
    clips = [c for c in paired if c.labels is not None]
    if not clips:
        raise StationError(f"{folder}: no manifest.csv and no recording with labels beside it "
                           f"(X.mp3 with {' or '.join('X' + s for s in LABEL_SUFFIXES)})")
    if len(clips) < len(paired):
        log.warning("%s: %d recording(s) without labels beside them left out", folder, len(paired) - len(clips))
    return clips


def read_manifest(csv_path: Path) -> list[Clip]:
    """Clips from a manifest CSV (the shared data's columns); paths relative to the CSV.

    A MULTI row is a soundscape when its labels are beside the audio (`<stem>_5s_labels.csv`, a Raven
    table) or named in an optional `labels` column."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise StationError(f"{csv_path}: cannot read manifest: {exc.strerror}") from None
    missing = {"path", "scientific_name", "common_name"} - set(rows[0] if rows else {})
    if missing:
        raise StationError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    clips = []
    for r in rows:
        audio = csv_path.parent / r["path"]
        labels = csv_path.parent / r["labels"] if (r.get("labels") or "").strip() else None
        if labels is None and r["scientific_name"].startswith("MULTI"):
            labels = labels_beside(audio)
        clips.append(Clip(audio, r["scientific_name"].strip(), r["common_name"].strip(), r.get("license", ""),
                          r.get("notes", ""), labels))
    return clips


class AlertPass:
    """The station's alert rules (station.alerts.AlertEngine) over a validation run.

    Events and alerts go to a scratch in-memory database, never the station's: the rules
    read their state (earlier detections, cooldowns) from it, as they do live.
    """

    def __init__(self, settings: Settings, rare_species: Sequence[str] = ()):
        alerts = settings.alerts
        if rare_species:
            alerts = alerts.model_copy(update={"rare_species": [*alerts.rare_species, *rare_species]})
        self.store = Store.open(":memory:")
        self.engine = AlertEngine(alerts, settings.station.id, topics=None)
        self._last_row = 0

    def on_batch(self, scores: Sequence[Scores], detections: Sequence[Detection]) -> None:
        """What the pipeline does with a batch: store the events, then let the rules see it."""
        if not scores and not detections:
            return
        with self.store.transaction():
            stored = self.store.save(detections, None)
            self.engine.on_batch(self.store.db, scores, stored)

    def raised_since_last(self, clip: Clip) -> tuple[dict, ...]:
        rows = self.store.db.execute("SELECT rowid, payload FROM alerts WHERE rowid > ? ORDER BY rowid",
                                     [self._last_row]).fetchall()
        if rows:
            self._last_row = rows[-1][0]
        return tuple({"file": str(clip.path), **json.loads(payload)} for _, payload in rows)

    def close(self) -> None:
        self.store.close()


def score_clip(clip: Clip, classifier: OnnxClassifier, settings: Settings, truth: Species | None,
               alerts: AlertPass | None = None, labels: TimedLabels | None = None) -> FileResult:
    windower = build_windower(settings, classifier)
    detector = build_detector(settings, classifier)
    # A manifest's date (Xeno-Canto's) is the caller's knowledge: the file's own metadata or name still win.
    source = FileSource(clip.path, settings.replay.chunk_seconds, recorded=date_in_notes(clip.notes))
    best, windows, duration = None, 0, 0.0
    detections: dict[str, Detection] = {}
    removals: list[Removal] = []
    kept: list[Scores] = []

    def handle(scores: Sequence[Scores], changed: Sequence[Detection]) -> None:
        detections.update((d.id, d) for d in changed)
        removals.extend(detector.take_removed())
        if alerts is not None:
            alerts.on_batch(scores, changed)

    held: np.ndarray | None = None
    previous: Scores | None = None
    for chunk in source.chunks(Event()):
        scores = classifier.classify(windower.push(chunk))
        for s in scores:
            best = s.values.copy() if best is None else np.maximum(best, s.values)
            if previous is not None and s.window.start_offset < previous.window.end_offset:
                both = np.minimum(previous.values, s.values)
                held = both if held is None else np.maximum(held, both)
            previous = s
        windows += len(scores)
        duration = max(duration, chunk.end_offset)
        if labels is not None:
            kept.extend(soundscape.light_scores(scores))
        handle(scores, detector.push(scores))
    handle([], detector.flush())
    error = None if source.counters.files_ok else f"{clip.path}: not readable (see log)"
    if error is None and best is None:
        error = f"{clip.path}: shorter than one window"
    raised = alerts.raised_since_last(clip) if alerts is not None else ()
    found = tuple(detections.values())
    segments = None
    if labels is not None and error is None:
        segments = score_segments(labels, found, duration, classifier, tuple(kept))
    return FileResult(clip, truth, best if error is None else None, windows, found, error, raised,
                      tuple(removals), duration, segments, held if error is None else None)


def score_segments(labels: TimedLabels, detections: Sequence[Detection], duration: float,
                   classifier: OnnxClassifier, scores: tuple[Scores, ...]) -> SegmentResult:
    index = LabelIndex(classifier.labels)
    truth = soundscape.segment_truth(labels, duration, index)
    predicted = soundscape.segment_predictions(detections, duration,
                                               non_bird_labels=classifier.folder.non_bird_labels)
    return SegmentResult(labels, truth, predicted, soundscape.segment_metrics(truth, predicted),
                         dict(soundscape.unmatched_names(labels, index)), scores)


def validate(clips: Iterable[Clip], classifier: OnnxClassifier, settings: Settings,
             progress: bool | None = None, rare_species: Sequence[str] = ()) -> list[FileResult]:
    """Score each clip; the alert rules run over the whole set in order, as over one replayed folder.

    `rare_species` adds to `alerts.rare_species` for this run."""
    clips = list(clips)
    index = LabelIndex(classifier.labels)
    results = []
    alerts = AlertPass(settings, rare_species)
    bar = terminal_bar(len(clips), "validating", progress)
    labels = {c.path: soundscape.read_timed_labels(c.labels) for c in clips if c.kind == "soundscape" and c.labels}
    try:
        for clip in clips:
            truth = index.match(clip.scientific_name, clip.common_name) if clip.kind == "species" else None
            results.append(score_clip(clip, classifier, settings, truth, alerts, labels.get(clip.path)))
            if bar is not None:
                bar.update(1)
    finally:
        alerts.close()
        if bar is not None:
            bar.close()
    unmatched = sorted({f"{r.clip.scientific_name} ({r.clip.common_name})" for r in results
                        if r.clip.kind == "species" and r.truth is None})
    if unmatched:
        log.warning("%d species in the manifest are not among the model's labels: %s",
                    len(unmatched), "; ".join(unmatched))
    return results


def metrics_of(results: Sequence[FileResult], labels: Sequence[Species]) -> Metrics:
    evaluable = [r for r in results if r.evaluable]
    return compute([r.truth.label for r in evaluable if r.truth is not None],  # every evaluable one has a truth
                   [[s.label for s, _ in r.ranking(labels, 3)] for r in evaluable])


@dataclass(frozen=True)
class SoundscapeSummary:
    """All soundscapes' segments together: figures at the configured threshold and over a sweep."""

    files: tuple[FileResult, ...]
    threshold: float
    metrics: SegmentMetrics
    curve: tuple[soundscape.CurvePoint, ...]


def summarise_soundscapes(results: Sequence[FileResult], classifier: OnnxClassifier, settings: Settings,
                          thresholds: Iterable[float] = soundscape.DEFAULT_SWEEP) -> SoundscapeSummary | None:
    """Segment figures over every scored soundscape; the sweep re-runs only the detector on kept scores."""
    scored = tuple(r for r in results if r.segments is not None)
    if not scored:
        return None
    truth = soundscape.keyed({str(r.clip.path): r.segments.truth for r in scored if r.segments})
    predicted = soundscape.keyed({str(r.clip.path): r.segments.predicted for r in scored if r.segments})
    files = [soundscape.ScoredFile(str(r.clip.path), r.segments.scores, r.duration, r.segments.truth)
             for r in scored if r.segments]
    curve = soundscape.pr_curve(files, detector_factory(settings, classifier), thresholds,
                                non_bird_labels=classifier.folder.non_bird_labels)
    return SoundscapeSummary(scored, settings.detection.threshold, soundscape.segment_metrics(truth, predicted),
                             tuple(curve))


def detector_factory(settings: Settings, classifier: OnnxClassifier):
    """A fresh detector at any global threshold, otherwise as configured (per-species thresholds still win)."""
    def detector_at(threshold: float):
        detection = settings.detection.model_copy(update={"threshold": threshold})
        return build_detector(settings.model_copy(update={"detection": detection}), classifier)
    return detector_at
