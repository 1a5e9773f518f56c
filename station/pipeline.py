"""The one loop: source -> windower -> classifier -> detector -> store (-> listeners).

Live capture and replay run this same loop; only the source differs. It stops when the
source is exhausted or the stop event is set, then shuts down in a fixed order: stop the
source, classify what the windower still holds, close open events, record the run.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from dataclasses import asdict, dataclass
from threading import Event
from typing import Protocol, Sequence

import sqlite_utils

from .detection import Detector
from .store import Store
from .types import Classifier, Detection, Scores, Source, Window
from .windowing import Windower

log = logging.getLogger(__name__)


class BatchListener(Protocol):
    """Sees each batch inside the store's transaction for it (alerts, outbox)."""

    def on_batch(self, db: sqlite_utils.Database, scores: Sequence[Scores],
                 detections: Sequence[Detection]) -> None: ...


@dataclass
class PipelineCounters:
    windows: int = 0
    detections: int = 0  # closed events
    audio_seconds: float = 0.0
    lag_seconds: float = 0.0  # wall clock minus the end of the last classified window (live)


class Pipeline:
    def __init__(self, source: Source, windower: Windower, classifier: Classifier,
                 detector: Detector, store: Store, run_id: int, stop: Event,
                 listeners: Sequence[BatchListener] = (), summary_seconds: float = 60.0):
        self.source = source
        self.windower = windower
        self.classifier = classifier
        self.detector = detector
        self.store = store
        self.run_id = run_id
        self.stop = stop
        self.listeners = list(listeners)
        self.summary_seconds = summary_seconds
        self.counters = PipelineCounters()

    def run(self) -> dict:
        status = "stopped"
        next_summary = time.monotonic() + self.summary_seconds
        try:
            for chunk in self.source.chunks(self.stop):
                self.counters.audio_seconds += chunk.duration
                self._process(self.windower.push(chunk))
                if chunk.final:
                    self._save([], self.detector.flush(chunk.source))
                if time.monotonic() >= next_summary:
                    next_summary += self.summary_seconds
                    self._summarise()
        except BaseException:
            status = "failed"
            raise
        finally:
            self._shutdown(status)
        return self.snapshot()

    def _process(self, windows: Sequence[Window]) -> None:
        if not windows:
            return
        scores = self.classifier.classify(windows)
        self.counters.windows += len(windows)
        self.counters.lag_seconds = (datetime.now(timezone.utc) - windows[-1].end_time).total_seconds()
        self._save(scores, self.detector.push(scores))

    def _save(self, scores: Sequence[Scores], detections: Sequence[Detection]) -> None:
        if not scores and not detections:
            return
        self.counters.detections += sum(d.status == "closed" for d in detections)
        with self.store.transaction():
            self.store.save(detections, self.run_id)
            for listener in self.listeners:
                listener.on_batch(self.store.db, scores, detections)

    def _shutdown(self, status: str) -> None:
        self.source.close()
        try:
            self._process(self.windower.flush())
        finally:
            self._save([], self.detector.flush())
            self.store.update_run(self.run_id, self.snapshot(), status=status)
            self._summarise()

    def snapshot(self) -> dict:
        values = asdict(self.counters)
        values.update(vars(getattr(self.source, "counters", None) or {}))
        values["audio_seconds"] = round(self.counters.audio_seconds, 3)
        values.pop("lag_seconds")  # a live figure for health checks, not a run total
        return values

    def health(self) -> dict:
        """Live figures for a health monitor on another thread (reads only)."""
        return {**self.snapshot(), "lag_seconds": round(self.counters.lag_seconds, 3),
                "connected": getattr(self.source, "connected", True)}

    def _summarise(self) -> None:
        s = self.snapshot()
        log.info("summary: %.0f s audio, %d windows, %d detections, %.1f s audio dropped, "
                 "%d file(s) failed", s["audio_seconds"], s["windows"], s["detections"],
                 s.get("dropped_seconds", 0.0), s.get("files_failed", 0))
        self.store.update_run(self.run_id, s)
