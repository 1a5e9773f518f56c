"""Resample a stream to the model's rate and cut it into overlapping windows.

`push(chunk)` returns the windows that chunk completes and keeps only the audio a later
window still needs, so memory stays at about one window whatever the stream's length.
The same audio pushed in chunks of any size yields bit-identical windows: soxr's stream
resampler carries its filter state between calls, and so does the kaiser_fast stream
(station.kaiser) that models trained on librosa's resampling ask for in their manifest.

Tail policy: at the end of a stream (a chunk with `final`), audio not yet covered by any
window is classified in one last window, zero-padded, if it is at least
`tail_min_seconds` long; a shorter tail is dropped and counted in `dropped_tail_seconds`.
A stream that changes source, or whose next chunk does not start where the last one ended
(dropped audio, a reconnected device), is ended and a new one begins: a window never
spans a gap.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import soxr

from .kaiser import KaiserFastStream
from .types import AudioChunk, Window

GAP_TOLERANCE_SECONDS = 0.002


class Windower:
    def __init__(self, sample_rate: int, window_seconds: float, hop_seconds: float,
                 tail_min_seconds: float = 1.0, resampler: str = "soxr"):
        if hop_seconds > window_seconds:
            raise ValueError(f"hop ({hop_seconds} s) longer than the window ({window_seconds} s) "
                             "would leave audio unheard")
        self.sample_rate = sample_rate
        self.window = round(window_seconds * sample_rate)
        self.hop = round(hop_seconds * sample_rate)
        self.tail_min = round(tail_min_seconds * sample_rate)
        self.resampler = resampler
        self.dropped_tail_seconds = 0.0
        self._reset(None)

    def _reset(self, chunk: AudioChunk | None) -> None:
        self._source = chunk.source if chunk else None
        self._input_rate = chunk.sample_rate if chunk else None
        self._resampler = None
        if chunk and chunk.sample_rate != self.sample_rate:
            self._resampler = (KaiserFastStream(chunk.sample_rate, self.sample_rate) if self.resampler == "kaiser_fast"
                               else soxr.ResampleStream(chunk.sample_rate, self.sample_rate, 1,
                                                        dtype="float32", quality="HQ"))
        self._origin_offset = chunk.start_offset if chunk else 0.0
        self._origin_time = chunk.start_time if chunk else None
        self._expected_offset = self._origin_offset
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # stream sample index of _buffer[0]
        self._next_start = 0  # stream sample index of the next window
        self._covered_until = 0  # end of the last window emitted

    def push(self, chunk: AudioChunk) -> list[Window]:
        windows: list[Window] = []
        if self._source is not None and not self._continues(chunk):
            windows += self._finish()
        if self._source is None:
            self._reset(chunk)
        self._append(self._resample(np.asarray(chunk.samples, dtype=np.float32), last=chunk.final))
        self._expected_offset = chunk.end_offset
        windows += self._full_windows()
        if chunk.final:
            windows += self._finish()
        return windows

    def flush(self) -> list[Window]:
        """End the current stream (on shutdown): emit what it still holds."""
        return self._finish() if self._source is not None else []

    def _resample(self, samples: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return samples
        out = self._resampler.resample_chunk(samples, last=last)
        if last:
            self._resampler = None
        return out

    def _append(self, samples: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, samples]) if len(self._buffer) else samples

    def _continues(self, chunk: AudioChunk) -> bool:
        return (chunk.source == self._source and chunk.sample_rate == self._input_rate
                and abs(chunk.start_offset - self._expected_offset) <= GAP_TOLERANCE_SECONDS)

    def _full_windows(self) -> list[Window]:
        windows = []
        end = self._buffer_start + len(self._buffer)
        while self._next_start + self.window <= end:
            windows.append(self._cut(self._next_start, self.window))
            self._covered_until = self._next_start + self.window
            self._next_start += self.hop
        drop = self._next_start - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start = self._next_start
        return windows

    def _finish(self) -> list[Window]:
        self._append(self._resample(np.zeros(0, dtype=np.float32), last=True))
        windows = self._full_windows() + self._tail()
        self._reset(None)
        return windows

    def _tail(self) -> list[Window]:
        end = self._buffer_start + len(self._buffer)
        uncovered = end - max(self._covered_until, self._next_start)
        if uncovered <= 0:
            return []
        if uncovered < self.tail_min:
            self.dropped_tail_seconds += uncovered / self.sample_rate
            return []
        return [self._cut(self._next_start, end - self._next_start)]

    def _cut(self, start: int, length: int) -> Window:
        lo = start - self._buffer_start
        samples = self._buffer[lo:lo + length]
        if length < self.window:
            samples = np.concatenate([samples, np.zeros(self.window - length, dtype=np.float32)])
        else:
            samples = samples.copy()
        offset = start / self.sample_rate
        source, origin_time = self._source, self._origin_time
        assert source is not None and origin_time is not None  # windows are cut only inside a stream
        return Window(
            samples=samples,
            sample_rate=self.sample_rate,
            source=source,
            start_offset=self._origin_offset + offset,
            start_time=origin_time + timedelta(seconds=offset),
            valid_seconds=length / self.sample_rate,
        )
