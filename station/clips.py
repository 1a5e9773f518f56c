"""The audio of each detection: a bounded buffer of recent audio, and a clip writer.

`ClipBuffer` keeps the last `seconds` of each stream at the rate it was captured (a file's
own rate, the microphone's), not the model's: a clip of a 22.05 kHz recording is that
recording, not BirdNET's 48 kHz upsampling of it. One ring per stream, grown by doubling
up to its capacity and then overwritten in place, so a push costs the chunk's copy and
nothing more. Streams start and end as in station.windowing: a new source, or a chunk that
does not continue where the last one ended, starts a new stream; the last few streams stay
cuttable, so an event that closes as the next file starts still gets its clip.

`ClipWriter` writes a clip atomically (a temporary file in the same folder, fsync, rename)
under `<date>/<species>/<HHMMSS>_<id8>.<ext>`. FLAC holds integers only (libsndfile writes
up to 24 bits), never float32, so the samples are quantised here, the same way for every
format: round to the nearest step, clip at full scale. With PCM_16 (the default, as every
FLAC player expects) a clip of 16-bit audio reads back equal, sample for sample; audio
decoded from MP3/Ogg or captured as float reads back within half a step (2**-16), a
full-scale sample within one step. PCM_24 makes the step 256 times finer (2**-23): free for
16-bit audio (FLAC drops unused low bits), about twice the bytes for audio decoded from MP3
or captured as float. Only WAV's FLOAT keeps float32 exactly.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .types import AudioChunk
from .windowing import GAP_TOLERANCE_SECONDS

log = logging.getLogger(__name__)

SAMPLE_EPSILON = 1e-6  # of a sample: offsets are sums of floats
FORMATS = {"flac": ("FLAC", ("PCM_16", "PCM_24")), "wav": ("WAV", ("PCM_16", "PCM_24", "FLOAT"))}
FULL_SCALE = {"PCM_16": 1 << 15, "PCM_24": 1 << 23}
MB = 1 << 20


class Cut(NamedTuple):
    samples: np.ndarray  # float32, a copy
    sample_rate: int
    start_offset: float  # of the first sample returned, in the source
    end_offset: float  # just after the last one


class _Ring:
    """One stream's most recent `capacity` samples."""

    def __init__(self, chunk: AudioChunk, capacity: int):
        self.source, self.rate, self.origin = chunk.source, chunk.sample_rate, chunk.start_offset
        self.capacity = capacity
        self.data = np.zeros(min(capacity, max(len(chunk.samples), 1024)), dtype=np.float32)
        self.written = 0  # samples ever pushed: stream index of the next one
        self.expected_offset = chunk.start_offset
        self.ended = False

    def continues(self, chunk: AudioChunk) -> bool:
        return (not self.ended and chunk.source == self.source and chunk.sample_rate == self.rate
                and abs(chunk.start_offset - self.expected_offset) <= GAP_TOLERANCE_SECONDS)

    def append(self, samples: np.ndarray) -> None:
        self._grow(self.written + len(samples))
        skipped = max(0, len(samples) - self.capacity)  # a chunk longer than the ring: only its end stays
        self.written += skipped
        samples = samples[skipped:]
        pos = self.written % self.capacity
        first = min(len(samples), self.capacity - pos)
        self.data[pos:pos + first] = samples[:first]
        self.data[:len(samples) - first] = samples[first:]
        self.written += len(samples)

    def _grow(self, needed: int) -> None:
        size = len(self.data)
        if needed <= size or size == self.capacity:
            return
        grown = np.zeros(min(self.capacity, max(2 * size, needed)), dtype=np.float32)
        grown[:self.written] = self.data[:self.written]  # still linear: nothing has wrapped yet
        self.data = grown

    def held(self) -> tuple[int, int]:
        return max(0, self.written - self.capacity), self.written

    def index(self, offset: float) -> int:
        return math.ceil((offset - self.origin) * self.rate - SAMPLE_EPSILON)

    def take(self, lo: int, hi: int) -> np.ndarray:
        pos = lo % self.capacity
        if pos + (hi - lo) <= self.capacity:
            return self.data[pos:pos + hi - lo].copy()
        return np.concatenate([self.data[pos:self.capacity], self.data[:hi - lo - (self.capacity - pos)]])


class ClipBuffer:
    """The last `seconds` of audio of the latest `max_streams` streams, for cutting clips."""

    def __init__(self, seconds: float, max_streams: int = 3):
        if seconds <= 0:
            raise ValueError("a clip buffer needs a positive length")
        self.seconds = seconds
        self._streams: deque[_Ring] = deque(maxlen=max_streams)

    def push(self, chunk: AudioChunk) -> None:
        current = self._streams[-1] if self._streams else None
        if current is None or not current.continues(chunk):
            if current is not None:
                current.ended = True
            current = _Ring(chunk, max(1, round(self.seconds * chunk.sample_rate)))
            self._streams.append(current)
        current.append(np.asarray(chunk.samples, dtype=np.float32))
        current.expected_offset = chunk.end_offset
        current.ended = chunk.final

    def cut(self, source: str, start_offset: float, end_offset: float) -> Cut | None:
        """The samples of [start_offset, end_offset) of `source` still held, or None if none are."""
        best: tuple[int, _Ring, int, int] | None = None
        for ring in self._streams:
            if ring.source != source:
                continue
            first, last = ring.held()
            lo, hi = max(first, ring.index(start_offset)), min(last, ring.index(end_offset))
            if hi > lo and (best is None or hi - lo > best[0]):
                best = (hi - lo, ring, lo, hi)
        if best is None:
            return None
        _, ring, lo, hi = best
        return Cut(ring.take(lo, hi), ring.rate, ring.origin + lo / ring.rate, ring.origin + hi / ring.rate)

    def held(self, source: str) -> tuple[float, float] | None:
        """The offsets of the audio held for `source`'s latest stream (to wait for a post-roll)."""
        for ring in reversed(self._streams):
            if ring.source == source:
                first, last = ring.held()
                return ring.origin + first / ring.rate, ring.origin + last / ring.rate
        return None

    @property
    def nbytes(self) -> int:
        return sum(ring.data.nbytes for ring in self._streams)


def species_slug(name: str) -> str:
    """'Eurasian Blue Tit' -> 'eurasian-blue-tit': a folder name on any filesystem."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:80] or "unknown"


def quantise(samples: np.ndarray, subtype: str) -> np.ndarray:
    """float32 -> what the file holds: nearest integer step, clipped at full scale (FLOAT: as is)."""
    samples = np.asarray(samples, dtype=np.float32)
    if subtype == "FLOAT":
        return samples
    scale = FULL_SCALE[subtype]
    steps = np.clip(np.round(samples.astype(np.float64) * scale), -scale, scale - 1)
    if subtype == "PCM_16":
        return steps.astype(np.int16)
    return steps.astype(np.int32) << 8  # libsndfile writes an int32's top 24 bits


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write through a temporary file in the same folder, fsync it, rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ClipWriter:
    """Writes clips (and their spectrograms) under `folder`; refuses when the disk is nearly full."""

    def __init__(self, folder: Path | str, format: str = "flac", spectrogram: bool = False,
                 min_free_mb: float = 200.0, subtype: str = "PCM_16"):
        if format not in FORMATS or subtype not in FORMATS[format][1]:
            raise ValueError(f"clip format {format}/{subtype}: use flac (PCM_16, PCM_24) "
                             "or wav (PCM_16, PCM_24, FLOAT)")
        self.folder = Path(folder)
        self.format, self.subtype = format, subtype
        self.spectrogram = spectrogram
        self.min_free_mb = min_free_mb
        self.written = 0
        self.refused = 0  # clips not written: disk nearly full, or a write that failed
        self.low_space = False  # True while clips are refused for want of space (for DISK_LOW)
        self._said: set[str] = set()

    def relative_path(self, det_id: str, species_name: str, when: datetime) -> Path:
        moment = when.astimezone(timezone.utc)
        name = f"{moment:%H%M%S}_{det_id[:8]}.{self.format}"
        return Path(f"{moment:%Y-%m-%d}") / species_slug(species_name) / name

    def write(self, det_id: str, species_name: str, when: datetime, samples: np.ndarray, rate: int) -> str | None:
        """Write one clip; its path relative to the folder, or None (said once) if it was not written."""
        if not self._room_for(len(samples) * 4):
            return None
        relative = self.relative_path(det_id, species_name, when)
        path = self.folder / relative
        try:
            atomic_write(path, lambda f: self._encode(f, samples, rate))
        except (OSError, RuntimeError, ValueError) as exc:  # soundfile's errors are RuntimeErrors
            self.refused += 1
            self._say_once("write", "clips: a clip could not be written (%s); detections go on", exc)
            return None
        self.written += 1
        if self.spectrogram:
            self._spectrogram(samples, rate, path.with_suffix(".png"))
        return relative.as_posix()

    def _encode(self, f, samples: np.ndarray, rate: int) -> None:
        import soundfile as sf

        sf.write(f, quantise(samples, self.subtype), rate, format=FORMATS[self.format][0], subtype=self.subtype)

    def _spectrogram(self, samples: np.ndarray, rate: int, png: Path) -> None:
        from .spectrogram import spectrogram_png

        try:
            spectrogram_png(samples, rate, png)
        except Exception as exc:  # a picture is not worth a detection: the clip is written, go on
            self._say_once("png", "clips: spectrograms cannot be drawn (%s); clips are still written", exc)

    def _room_for(self, nbytes: int) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if free - nbytes >= self.min_free_mb * MB:
            if self.low_space:
                log.info("clips: %.0f MB free on %s again: writing clips again", free / MB, self.folder)
                self._said.discard("space")
            self.low_space = False
            return True
        self.low_space = True
        self.refused += 1
        self._say_once("space", "clips: only %.0f MB free on %s (clips.min_free_mb %.0f): no clips are written "
                       "until there is room; detections go on", free / MB, self.folder, self.min_free_mb)
        return False

    def _say_once(self, key: str, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)
