"""Detection messages into the outbox, in the transaction of the rows they describe."""
from __future__ import annotations

from typing import Iterable, Sequence

import sqlite_utils

from .messages import Topics, detection_payload, encode
from .outbox import enqueue
from .types import Detection, Scores


class DetectionPublisher:
    """A pipeline BatchListener: queues each closed event's message for MQTT."""

    def __init__(self, topics: Topics):
        self.topics = topics

    def on_batch(self, db: sqlite_utils.Database, scores: Sequence[Scores], detections: Sequence[Detection]) -> None:
        self.publish(db, (d for d in detections if d.status == "closed"))

    def publish(self, db: sqlite_utils.Database, detections: Iterable[Detection]) -> None:
        for det in detections:
            enqueue(db, self.topics.detections, encode(detection_payload(det)))
