"""The one loop: source -> windower -> classifier -> detector -> store (-> listeners).

Live capture and replay run this same loop; only the source differs. It stops when the
source is exhausted or the stop event is set, then shuts down in a fixed order: stop the
source, classify what the windower still holds, close open events, record the run.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from threading import Event

from .detection import Detector
from .errors import StorageError
from .evidence import Evidence
from .notify import Notifier
from .privacy import PrivacyFilter
from .store import Store, busy, connect
from .types import BatchListener, Classifier, Detection, Removal, Scores, Source, Window
from .windowing import Windower

log = logging.getLogger(__name__)


@dataclass
class PipelineCounters:
    windows: int = 0
    detections: int = 0  # closed events
    removed: int = 0  # windows' detections a rule (the range filter) took away, stored in removals
    audio_seconds: float = 0.0
    lag_seconds: float = 0.0  # wall clock minus the end of the last classified window (live)


class Pipeline:
    def __init__(self, source: Source, windower: Windower, classifier: Classifier,
                 detector: Detector, store: Store, run_id: int, stop: Event,
                 listeners: Sequence[BatchListener] = (), summary_seconds: float = 60.0,
                 notifier: Notifier | None = None, privacy: PrivacyFilter | None = None,
                 evidence: Evidence | None = None):
        self.source = source
        self.windower = windower
        self.classifier = classifier
        self.detector = detector
        self.store = store
        self.run_id = run_id
        self.stop = stop
        self.listeners = list(listeners)
        self.summary_seconds = summary_seconds
        self.notifier = notifier or Notifier()
        self.privacy = privacy
        self.evidence = evidence
        self.counters = PipelineCounters()
        self._unsaved: list[Detection] = []  # the batch a full disk refused
        self._unsaved_removed: list[Removal] = []

    def run(self) -> dict:
        try:
            for chunk in self.source.chunks(self.stop):
                self.counters.audio_seconds += chunk.duration
                if self.evidence is not None:
                    self.evidence.hear(chunk)
                self._process(self.windower.push(chunk))
                if chunk.final:
                    self._end_of_stream(chunk.source)
                # The summary goes with READY only: no snapshot is built for every chunk after that.
                self.notifier.progress(None if self.notifier.ready else self.summary_line())
        except StorageError:
            self._close_after_storage_failure()
            raise
        except BaseException:
            self._shutdown("failed")
            raise
        try:
            self._shutdown("stopped")
        except StorageError:
            self._close_after_storage_failure()
            raise
        return self.snapshot()

    def _process(self, windows: Sequence[Window]) -> None:
        if not windows:
            return
        scores = self.classifier.classify(windows)
        self.counters.windows += len(windows)
        self.counters.lag_seconds = (datetime.now(timezone.utc) - windows[-1].end_time).total_seconds()
        if self.privacy is not None:  # it holds each window until its neighbours are known
            scores = [released for s in scores for released in self.privacy.push(s)]
        self._detect(scores)

    def _detect(self, scores: Sequence[Scores]) -> None:
        # A window the privacy filter silenced is no evidence of anything, not even of an unknown sound.
        heard = [s for s in scores if s.values.any()]
        detections = self.detector.push(scores)
        self._save(heard, detections, self.detector.take_removed())

    def _end_of_stream(self, source: str | None) -> None:
        """Close what one stream (or, with None, every stream) still holds: privacy's last window, then events."""
        if self.privacy is not None:
            self._detect(self.privacy.flush(source))
        self._save([], self.detector.flush(source))

    def _save(self, scores: Sequence[Scores], detections: Sequence[Detection],
              removed: Sequence[Removal] = ()) -> None:
        if not scores and not detections and not removed:
            return
        if self.evidence is not None:
            detections = [self.evidence.with_clip(d) if d.status == "closed" else d for d in detections]
        try:
            with self.store.transaction():
                stored = self.store.save(detections, self.run_id)
                kept = self.store.save_removals(removed, self.run_id, self.detector.station, self.detector.model)
                for listener in self.listeners:
                    listener.on_batch(self.store.db, scores, stored)
        except StorageError:
            self._unsaved = list(detections)  # the detector has let go of these: close them after all
            self._unsaved_removed = list(removed)
            raise
        self.counters.detections += sum(d.status == "closed" for d in stored)
        self.counters.removed += kept

    def _shutdown(self, status: str) -> None:
        self.notifier.stopping()
        self.source.close()
        try:
            self._process(self.windower.flush())
        finally:
            self._end_of_stream(None)
            self.store.update_run(self.run_id, self.snapshot(), status=status)
            self._summarise()

    def _close_after_storage_failure(self) -> None:
        """The disk is full: free the store's reserve, close open events and the run, hear nothing more."""
        self.notifier.stopping()
        self.source.close()
        self.store.release_reserve()
        unsaved = [d if d.status != "open" else d.closed() for d in self._unsaved]
        try:
            self._save([], list({d.id: d for d in [*unsaved, *self.detector.flush()]}.values()),
                       self._unsaved_removed)
            self.store.update_run(self.run_id, self.snapshot(), status="failed")
        except StorageError as exc:
            log.error("could not close the run either (the next start marks it crashed): %s", exc)

    def snapshot(self) -> dict:
        values = asdict(self.counters)
        values.update(vars(self.source.counters))
        values["audio_seconds"] = round(self.counters.audio_seconds, 3)
        values["dropped_tail_seconds"] = round(self.windower.dropped_tail_seconds, 3)
        if self.evidence is not None:
            values.update(vars(self.evidence.counters))
        if self.privacy is not None:
            values["windows_masked"] = self.privacy.masked_windows
        values.pop("lag_seconds")  # a live figure for health checks, not a run total
        return values

    def health(self) -> dict:
        """Live figures for a health monitor on another thread (reads only)."""
        figures = {**self.snapshot(), "db_busy_retries": busy.retries,
                   "clips_low_space": self.evidence is not None and self.evidence.low_space}
        if self.source.live:
            figures.update(lag_seconds=round(self.counters.lag_seconds, 3), connected=self.source.connected)
        return figures

    def summary_line(self) -> str:
        s = self.snapshot()
        line = f"{s['audio_seconds']:.0f} s audio, {s['windows']} windows, {s['detections']} detections"
        if s["removed"]:
            line += f", {s['removed']} removed (station detections --removed)"
        if self.source.live:
            return line + (f", {s.get('dropped_seconds', 0.0):.1f} s audio dropped, "
                           f"{s.get('device_losses', 0)} device loss(es), lag {self.counters.lag_seconds:.1f} s")
        return line + f", {s.get('files_ok', 0)} file(s) read, {s.get('files_failed', 0)} skipped"

    def summary_loop(self, database: Path, stop: Event) -> None:
        """A summary every summary_seconds by the clock: a quiet microphone or an idle folder still reports.

        Runs on its own thread (under the supervisor) with its own connection."""
        store = Store(connect(database))
        try:
            while not stop.wait(self.summary_seconds):
                self._summarise(store)
        finally:
            store.close()

    def _summarise(self, store: Store | None = None) -> None:
        line = self.summary_line()
        log.info("summary: %s", line)
        self.notifier.status(line)
        (store or self.store).update_run(self.run_id, self.snapshot())
