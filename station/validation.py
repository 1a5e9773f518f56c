"""Replay labelled recordings through the daemon's own stages and rank species per file.

A file's score for a species is the best score that species reaches in any of the file's
windows (BirdNET's file-level rule: one clear call is enough). Files are ranked by those
scores for top-1/top-3; the Detector also runs, at the configured thresholds, so the
report shows what the station would have logged for each file, and the station's own alert
rules (the configured `alerts`) run over those windows and events in a scratch database,
so the report's alerts are the ones the station would have raised.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import numpy as np

from .alerts import AlertEngine
from .builders import build_detector, build_windower
from .config import Settings
from .errors import StationError
from .inference import OnnxClassifier
from .metrics import Metrics, compute
from .names import LabelIndex
from .progress import terminal_bar
from .sources import FileSource
from .store import Store
from .types import Detection, Scores, Species

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clip:
    path: Path
    scientific_name: str
    common_name: str
    licence: str = ""
    notes: str = ""

    @property
    def kind(self) -> str:
        """species (one labelled species), multi, unlabelled (birds, no species) or noise."""
        if self.common_name.startswith("noise") or not (self.scientific_name or self.common_name):
            return "noise"
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

    def ranking(self, labels: Sequence[Species], k: int = 3) -> list[tuple[Species, float]]:
        if self.best is None:
            return []
        order = np.argsort(-self.best, kind="stable")[:k]
        return [(labels[i], float(self.best[i])) for i in order]

    @property
    def evaluable(self) -> bool:
        return self.error is None and self.truth is not None and self.clip.kind == "species"


def read_manifest(csv_path: Path) -> list[Clip]:
    """Clips from a manifest CSV (the shared data's columns); paths relative to the CSV."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise StationError(f"{csv_path}: cannot read manifest: {exc.strerror}") from None
    missing = {"path", "scientific_name", "common_name"} - set(rows[0] if rows else {})
    if missing:
        raise StationError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    return [Clip(csv_path.parent / r["path"], r["scientific_name"].strip(), r["common_name"].strip(),
                 r.get("license", ""), r.get("notes", "")) for r in rows]


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
               alerts: AlertPass | None = None) -> FileResult:
    windower = build_windower(settings, classifier)
    detector = build_detector(settings, classifier)
    source = FileSource(clip.path, settings.replay.chunk_seconds)
    best, windows = None, 0
    detections: dict[str, Detection] = {}

    def handle(scores: Sequence[Scores], changed: Sequence[Detection]) -> None:
        detections.update((d.id, d) for d in changed)
        if alerts is not None:
            alerts.on_batch(scores, changed)

    for chunk in source.chunks(Event()):
        scores = classifier.classify(windower.push(chunk))
        for s in scores:
            best = s.values.copy() if best is None else np.maximum(best, s.values)
        windows += len(scores)
        handle(scores, detector.push(scores))
    handle([], detector.flush())
    error = None if source.counters.files_ok else f"{clip.path}: not readable (see log)"
    if error is None and best is None:
        error = f"{clip.path}: shorter than one window"
    raised = alerts.raised_since_last(clip) if alerts is not None else ()
    return FileResult(clip, truth, best if error is None else None, windows, tuple(detections.values()), error,
                      raised)


def validate(clips: Iterable[Clip], classifier: OnnxClassifier, settings: Settings,
             progress: bool | None = None, rare_species: Sequence[str] = ()) -> list[FileResult]:
    """Score each clip; the alert rules run over the whole set in order, as over one replayed folder.

    `rare_species` adds to `alerts.rare_species` for this run."""
    clips = list(clips)
    index = LabelIndex(classifier.labels)
    results = []
    alerts = AlertPass(settings, rare_species)
    bar = terminal_bar(len(clips), "validating", progress)
    try:
        for clip in clips:
            truth = index.match(clip.scientific_name, clip.common_name) if clip.kind == "species" else None
            results.append(score_clip(clip, classifier, settings, truth, alerts))
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


