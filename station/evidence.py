"""Evidence for each detection: its audio clip, cut at the capture rate, never around a human voice.

The pipeline lets this room hear every chunk (a bounded buffer of recent audio) and hands
it each event as it closes; the event comes back with its clip, or without one when the
audio is gone, the disk is nearly full or a person was heard in the clip's span.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from .clips import ClipBuffer, ClipWriter
from .privacy import PrivacyFilter
from .taxonomy import readable_name
from .types import AudioChunk, ClipRef, Detection

log = logging.getLogger(__name__)


@dataclass
class EvidenceCounters:
    clips_written: int = 0
    clips_withheld: int = 0  # a person was heard in the clip's span
    clips_missing: int = 0  # the audio was no longer held, or the disk refused it


class Evidence:
    def __init__(self, buffer: ClipBuffer, writer: ClipWriter, privacy: PrivacyFilter | None = None,
                 pre_roll_seconds: float = 1.0, post_roll_seconds: float = 1.0):
        self.buffer = buffer
        self.writer = writer
        self.privacy = privacy
        self.pre_roll = pre_roll_seconds
        self.post_roll = post_roll_seconds
        self.counters = EvidenceCounters()

    def hear(self, chunk: AudioChunk) -> None:
        self.buffer.push(chunk)

    def with_clip(self, det: Detection) -> Detection:
        """The closed event `det` with its clip written, or as it is when none can be."""
        start, end = max(0.0, det.start_offset - self.pre_roll), det.end_offset + self.post_roll
        if self.privacy is not None:
            judged = self.privacy.judged_until(det.source)
            end = min(end, judged) if judged is not None else end
            if self.privacy.overlaps_human(det.source, start, end):
                self.counters.clips_withheld += 1
                return det
        cut = self.buffer.cut(det.source, start, end)
        if cut is None:
            self.counters.clips_missing += 1
            return det
        path = self.writer.write(det.id, readable_name(det.species), det.start_time, cut.samples, cut.sample_rate)
        if path is None:
            self.counters.clips_missing += 1
            return det
        self.counters.clips_written += 1
        return dataclasses.replace(det, clip=ClipRef(path, cut.start_offset, cut.end_offset))

    @property
    def low_space(self) -> bool:
        return self.writer.low_space
