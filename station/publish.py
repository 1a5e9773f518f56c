"""Detection messages into the outbox, in the transaction of the rows they describe.

An event is published the moment it opens (a subscriber hears of a bird within one
inference of its call) and again, same id, when it closes with its final figures.
The first message of an event says `event_type: detection` (Home Assistant's event
entity fires on it); the closing one says `detection_update`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlite_utils

from .messages import Topics, detection_payload, encode
from .outbox import enqueue
from .types import Detection, Scores


class DetectionPublisher:
    """A pipeline BatchListener: queues a message when an event opens and when it closes."""

    def __init__(self, topics: Topics):
        self.topics = topics
        self._announced: set[str] = set()  # open events already published

    def on_batch(self, db: sqlite_utils.Database, scores: Sequence[Scores], detections: Sequence[Detection]) -> None:
        for det in detections:
            if det.status == "open" and det.id not in self._announced:
                self._announced.add(det.id)
                self._enqueue(db, det, first=True)
            elif det.status != "open":
                self._enqueue(db, det, first=det.id not in self._announced)
                self._announced.discard(det.id)

    def publish(self, db: sqlite_utils.Database, detections: Iterable[Detection]) -> None:
        """Events closed elsewhere (recovered after a crash): their final figures, as an update."""
        for det in detections:
            self._enqueue(db, det, first=False)

    def _enqueue(self, db: sqlite_utils.Database, det: Detection, first: bool) -> None:
        enqueue(db, self.topics.detections, encode(detection_payload(det, first)))
