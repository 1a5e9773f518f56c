"""The composition root: the one place where settings become a running pipeline."""
from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path
from threading import Event
from typing import Iterator

from .capture import MicSource
from .config import Settings
from .detection import Detector, SpeciesFilter
from .inference import OnnxClassifier
from .pipeline import Pipeline
from .sources import DirectorySource, FileSource
from .store import Store
from .windowing import Windower

log = logging.getLogger(__name__)


def build_classifier(settings: Settings) -> OnnxClassifier:
    m = settings.model
    return OnnxClassifier.from_path(m.path, variant=m.variant, threads=m.threads,
                                    batch_size=m.batch_size, sensitivity=m.sensitivity)


def build_windower(settings: Settings, classifier: OnnxClassifier) -> Windower:
    w = settings.windowing
    window_seconds = w.window_seconds or classifier.manifest.window_seconds
    return Windower(classifier.sample_rate, window_seconds, w.hop_seconds, w.tail_min_seconds)


def build_detector(settings: Settings, classifier: OnnxClassifier) -> Detector:
    d = settings.detection
    species_filter = SpeciesFilter(d.threshold, d.species_thresholds, d.include, d.exclude)
    return Detector(settings.station.id, classifier.model_name, species_filter, d.top_k,
                    d.merge_gap_seconds)


def build_replay_source(settings: Settings, path: Path):
    r = settings.replay
    if Path(path).is_dir():
        return DirectorySource(path, r.extensions, r.chunk_seconds, r.realtime, r.watch, r.poll_seconds)
    return FileSource(path, r.chunk_seconds, r.realtime)


def build_mic_source(settings: Settings) -> MicSource:
    a = settings.audio
    return MicSource(a.device, a.sample_rate, a.channels, a.block_seconds, a.queue_seconds,
                     a.reconnect_max_seconds, a.stall_seconds)


@contextmanager
def stop_on_signals() -> Iterator[Event]:
    """SIGTERM/SIGINT set the stop event once; a second signal interrupts at once."""
    stop = Event()
    previous = {}

    def handle(signum, frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_pipeline(settings: Settings, source, command: str, stop: Event) -> dict:
    """Build the stages, run the source to its end or to `stop`, and return the run's counters."""
    classifier = build_classifier(settings)
    store = Store.open(settings.storage.database)
    try:
        store.recover()
        run_id = store.start_run(settings.station.id, command, classifier.model_name)
        log.info("%s: %s -> %s (model %s, run %d)", command, source.name,
                 settings.storage.database, classifier.model_name, run_id)
        pipeline = Pipeline(
            source, build_windower(settings, classifier), classifier,
            build_detector(settings, classifier), store, run_id, stop,
            summary_seconds=settings.logging.summary_seconds)
        return pipeline.run()
    finally:
        store.close()
