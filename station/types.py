"""The seams of the station: the data that flows between stages and the stage interfaces.

Data flows one way: Source -> Windower -> Classifier -> Detector -> Store.
Every record carries its sample rate, source and timing, so a stage never has to ask
another stage what it meant.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from threading import Event
from typing import Literal, Protocol

import numpy as np
import sqlite_utils


@dataclass(frozen=True)
class AudioChunk:
    """Mono float32 audio as a source delivered it, at the source's own rate."""

    samples: np.ndarray
    sample_rate: int
    source: str
    start_offset: float  # seconds since the start of this source's stream
    start_time: datetime  # UTC wall clock of the first sample
    final: bool = False  # last chunk of this stream (end of file, device closed)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end_offset(self) -> float:
        return self.start_offset + self.duration


@dataclass(frozen=True)
class Window:
    """One model input: `samples` at the model's rate, exactly one window long."""

    samples: np.ndarray
    sample_rate: int
    source: str
    start_offset: float
    start_time: datetime
    valid_seconds: float  # audio in the window; less than its length only for a padded tail

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end_offset(self) -> float:
        """Where the audio in the window ends (before any tail padding)."""
        return self.start_offset + self.valid_seconds

    @property
    def end_time(self) -> datetime:
        return self.start_time + timedelta(seconds=self.valid_seconds)


@dataclass(frozen=True)
class Species:
    label: str  # the model's own label, exactly as its labels file has it
    scientific_name: str | None
    common_name: str

    @property
    def name(self) -> str:
        return self.common_name or self.scientific_name or self.label


@dataclass(frozen=True)
class Scores:
    """The model's per-label scores (after activation) for one window."""

    window: Window
    values: np.ndarray  # float32 [num_labels]
    labels: Sequence[Species]

    def top(self, k: int) -> list[tuple[Species, float]]:
        k = min(k, len(self.values))
        best = np.argpartition(-self.values, k - 1)[:k]
        best = best[np.argsort(-self.values[best], kind="stable")]
        return [(self.labels[i], float(self.values[i])) for i in best]


DetectionStatus = Literal["open", "closed", "recovered"]


@dataclass(frozen=True)
class ClipRef:
    """An event's audio clip: its path under the clips folder and the span of the source it holds."""

    path: str
    start_offset: float
    end_offset: float


@dataclass(frozen=True)
class Detection:
    """One event: a species heard over one or more consecutive windows of one source.

    `status` is "open" while later windows may still extend it and "closed" once final.
    The id is stable for the event's whole life, so the store upserts by it.
    """

    id: str
    station: str
    source: str
    model: str
    species: Species
    confidence: float  # the best window's score
    mean_confidence: float
    window_count: int
    start_time: datetime
    end_time: datetime
    start_offset: float
    end_offset: float
    alternatives: tuple[tuple[str, float], ...] = field(default=())  # best window's top-k
    status: DetectionStatus = "open"
    clip: ClipRef | None = None

    def closed(self) -> Detection:
        return dataclasses.replace(self, status="closed")


@dataclass(frozen=True)
class Removal:
    """A window's detection that a rule took away (today: the range filter), kept so a user can see it."""

    source: str
    species: Species
    score: float
    start_time: datetime
    start_offset: float
    end_offset: float
    reason: str  # "range": BirdNET's range model gives the species no chance here this week


class Source(Protocol):
    """Delivers audio until exhausted or until `stop` is set.

    `counters` holds the source's own run totals as numeric attributes (files read and
    skipped, audio dropped, device losses ...), read with vars() for the run row and the
    health message. `live` sources are microphones: their health is a device and a lag;
    `connected` is False while a live device is lost (files are always connected).
    """

    name: str
    live: bool
    connected: bool
    counters: object

    def chunks(self, stop: Event) -> Iterator[AudioChunk]: ...

    def close(self) -> None: ...


class BatchListener(Protocol):
    """Sees each batch of window scores and stored events inside the store's transaction for it."""

    def on_batch(self, db: sqlite_utils.Database, scores: Sequence[Scores],
                 detections: Sequence[Detection]) -> None: ...


class Classifier(Protocol):
    sample_rate: int
    window_samples: int
    model_name: str

    def classify(self, windows: Sequence[Window]) -> list[Scores]: ...
