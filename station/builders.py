"""Settings into stages: the classifier, windower, detector and sources, built one way everywhere.

The daemon's composition root (station.app) and the companion tools (station.validation)
build their stages here, so what a validation measures is what the station runs, and the
companion never imports the daemon's wiring (MQTT, health, signals).
"""
from __future__ import annotations

from pathlib import Path

from .capture import MicSource
from .clips import ClipBuffer, ClipWriter
from .config import Settings
from .detection import Detector, DynamicThreshold, SpeciesFilter
from .evidence import Evidence
from .inference import OnnxClassifier
from .privacy import PrivacyFilter
from .progress import ReplayProgress
from .prune import ClipPruner
from .range_filter import RangeFilter
from .sources import DirectorySource, FileSource
from .windowing import Windower


def build_classifier(settings: Settings) -> OnnxClassifier:
    m = settings.model
    return OnnxClassifier.from_path(m.path, variant=m.variant, threads=m.threads,
                                    batch_size=m.batch_size, sensitivity=m.sensitivity)


def build_windower(settings: Settings, classifier: OnnxClassifier) -> Windower:
    w = settings.windowing
    window_seconds = w.window_seconds or classifier.manifest.window_seconds
    return Windower(classifier.sample_rate, window_seconds, w.hop_seconds, w.tail_min_seconds,
                    classifier.manifest.resampler)


def build_detector(settings: Settings, classifier: OnnxClassifier) -> Detector:
    d, where = settings.detection, settings.location
    blocked = classifier.folder.non_bird_labels if d.classes == "birds" else frozenset()
    species_filter = SpeciesFilter(d.threshold, d.species_thresholds, d.include, d.exclude, blocked)
    range_filter = None
    if where.lat is not None and where.lon is not None:  # where.enabled, spelled out for the type checker
        range_filter = RangeFilter(classifier.folder, where.lat, where.lon, where.threshold, where.keep, where.week)
    dynamic = (DynamicThreshold(d.dynamic_trigger, d.dynamic_threshold, d.dynamic_hold_seconds)
               if d.dynamic_threshold is not None else None)
    return Detector(settings.station.id, classifier.model_name, species_filter, d.top_k,
                    d.merge_gap_seconds, range_filter, pair_threshold=d.pair_threshold, dynamic=dynamic,
                    out_of_range_threshold=where.out_of_range_threshold, non_birds_mask=d.non_birds_mask)


def build_replay_source(settings: Settings, path: Path, progress: bool = True):
    """A file or a folder of recordings; with `progress`, what it has read so far is shown as it goes."""
    r = settings.replay
    source: DirectorySource | FileSource
    if Path(path).is_dir():
        source = DirectorySource(path, r.extensions, r.chunk_seconds, r.realtime, r.watch, r.poll_seconds)
    else:
        source = FileSource(path, r.chunk_seconds, r.realtime)
    return ReplayProgress(source, per_file_lines=Path(path).is_dir()) if progress else source


def build_mic_source(settings: Settings) -> MicSource:
    a = settings.audio
    return MicSource(a.device, a.sample_rate, a.channels, a.block_seconds, a.queue_seconds,
                     a.reconnect_max_seconds, a.stall_seconds, a.wait_for_device)


def build_privacy(settings: Settings, classifier: OnnxClassifier) -> PrivacyFilter | None:
    """The privacy filter, for a model that has a human class (BirdNET); None when off or pointless."""
    p = settings.privacy
    filter_ = PrivacyFilter(p.human_labels, p.threshold) if p.enabled else None
    if filter_ is None or not any(filter_.is_human_label(s) for s in classifier.labels):
        return None
    return filter_


def clips_folder(settings: Settings) -> Path:
    return settings.clips.folder or Path(settings.storage.database).parent / "clips"


def build_evidence(settings: Settings, privacy: PrivacyFilter | None) -> Evidence | None:
    c = settings.clips
    if not c.enabled:
        return None
    writer = ClipWriter(clips_folder(settings), c.format, c.spectrogram, c.min_free_mb, c.subtype)
    return Evidence(ClipBuffer(c.buffer_seconds), writer, privacy, c.pre_roll_seconds, c.post_roll_seconds)


def build_pruner(settings: Settings) -> ClipPruner | None:
    c = settings.clips
    if not c.enabled or (c.max_disk_mb is None and c.max_disk_percent is None):
        return None
    return ClipPruner(settings.storage.database, clips_folder(settings), c.max_disk_mb, c.max_disk_percent,
                      c.keep_best_per_species, interval_seconds=c.prune_seconds)
