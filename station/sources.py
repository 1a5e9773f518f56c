"""Where audio comes from: one file, a directory of files, or a live microphone.

Sources yield AudioChunks at their own rate; resampling and windowing happen downstream,
so live capture and replay share everything after this point. A bad file is reported,
counted and skipped; the run goes on.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from threading import Event
from typing import Iterator

from .decode import open_audio
from .errors import AudioInputError
from .types import AudioChunk

log = logging.getLogger(__name__)


class SourceCounters:
    def __init__(self) -> None:
        self.files_ok = 0
        self.files_failed = 0


class FileSource:
    """One recording, as fast as possible or paced like a live microphone (`realtime`)."""

    def __init__(self, path: Path, chunk_seconds: float = 10.0, realtime: bool = False,
                 counters: SourceCounters | None = None):
        self.path = Path(path)
        self.name = str(self.path)
        self.chunk_seconds = chunk_seconds
        self.realtime = realtime
        self.counters = counters or SourceCounters()

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        try:
            yield from self._chunks(stop)
        except AudioInputError as exc:
            self.counters.files_failed += 1
            log.error("skipped: %s", exc)
        else:
            if not stop.is_set():
                self.counters.files_ok += 1

    def _chunks(self, stop: Event) -> Iterator[AudioChunk]:
        info, blocks = open_audio(self.path, self.chunk_seconds)
        started_wall = time.monotonic()
        start_time = _file_start_time(self.path, info.duration)
        offset = 0.0
        pending = next(blocks, None)
        while pending is not None and not stop.is_set():
            block, pending = pending, next(blocks, None)
            yield AudioChunk(block, info.sample_rate, self.name, offset,
                             start_time + timedelta(seconds=offset), final=pending is None)
            offset += len(block) / info.sample_rate
            if self.realtime:
                stop.wait(max(0.0, offset - (time.monotonic() - started_wall)))

    def close(self) -> None:
        pass


class DirectorySource:
    """Every audio file in a folder tree, sorted by path; optionally watch for new ones."""

    def __init__(self, folder: Path, extensions: list[str], chunk_seconds: float = 10.0,
                 realtime: bool = False, watch: bool = False, poll_seconds: float = 5.0):
        self.folder = Path(folder)
        self.name = str(self.folder)
        self.extensions = {e.lower() for e in extensions}
        self.chunk_seconds = chunk_seconds
        self.realtime = realtime
        self.watch = watch
        self.poll_seconds = poll_seconds
        self.counters = SourceCounters()
        self._done: set[Path] = set()

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        while not stop.is_set():
            for path in self._new_files():
                if stop.is_set():
                    return
                self._done.add(path)
                yield from FileSource(path, self.chunk_seconds, self.realtime, self.counters).chunks(stop)
            if not self.watch:
                return
            stop.wait(self.poll_seconds)

    def _new_files(self) -> list[Path]:
        files = sorted(p for p in self.folder.rglob("*")
                       if p.suffix.lower() in self.extensions and p.is_file() and p not in self._done)
        if self.watch:
            files = [p for p in files if _settled(p, self.poll_seconds)]
        return files

    def close(self) -> None:
        pass


def _settled(path: Path, quiet_seconds: float) -> bool:
    """A file still being written (modified within `quiet_seconds`) waits for the next poll."""
    return time.time() - path.stat().st_mtime >= quiet_seconds


def _file_start_time(path: Path, duration: float | None) -> datetime:
    """When a recording started, as far as the file system knows: mtime minus its length.

    Recorders name files in many ways; without a reliable start time inside the file,
    the modification time (the end of writing) is the honest anchor. Offsets within the
    source are stored beside the wall-clock times either way.
    """
    end = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return end - timedelta(seconds=duration or 0.0)
