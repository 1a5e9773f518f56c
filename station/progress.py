"""What a replay has read so far: a status line on a terminal, a line per finished file otherwise.

The status line (files, audio seconds, speed against real time) is redrawn in place on
stderr and wiped before any log line is written, so the two never share a line. Without a
terminal (a pipe, the journal) a folder replay logs one line each time files finish; the
pipeline's own summaries report the rest.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import Event

from .types import AudioChunk

log = logging.getLogger(__name__)

REDRAW_SECONDS = 0.25
CLEAR_LINE = "\r\x1b[K"


class ReplayProgress:
    """A Source that hands on another source's chunks and tells how far the replay has got.

    Everything else (name, counters, close, ...) is the wrapped source's.
    """

    def __init__(self, source, per_file_lines: bool = True, terminal: bool | None = None,
                 stream=None, clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.per_file_lines = per_file_lines
        self._terminal = terminal
        self._stream = stream
        self._clock = clock
        self.audio_seconds = 0.0
        self._started = 0.0
        self._files_said = 0
        self._drawn_at = float("-inf")
        self._shown = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        if name == "source":  # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.source, name)

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        stream = self._stream or sys.stderr
        terminal = self._terminal if self._terminal is not None else _isatty(stream)
        self._started = self._clock()
        with self._wiped_before_log_lines(stream, terminal):
            try:
                for chunk in self.source.chunks(stop):
                    self._report(stream, terminal)  # files the source finished while reading this chunk
                    yield chunk
                    self.audio_seconds += chunk.duration
                    if terminal:
                        self._draw(stream)
                self._report(stream, terminal, final=True)
            finally:
                if terminal:
                    self._wipe(stream)

    def line(self) -> str:
        ok, failed = self._files()
        elapsed = max(self._clock() - self._started, 1e-9)
        skipped = f", {failed} skipped" if failed else ""
        return (f"{ok} file(s) replayed{skipped}; {self.audio_seconds:.1f} s of audio in {elapsed:.1f} s "
                f"({self.audio_seconds / elapsed:.1f}x real time)")

    def _files(self) -> tuple[int, int]:
        counters = getattr(self.source, "counters", None)
        return getattr(counters, "files_ok", 0), getattr(counters, "files_failed", 0)

    def _report(self, stream, terminal: bool, final: bool = False) -> None:
        if terminal:
            self._draw(stream, force=final)
            return
        ok = self._files()[0]
        if self.per_file_lines and ok > self._files_said:
            self._files_said = ok
            log.info("%s", self.line())

    def _draw(self, stream, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._drawn_at < REDRAW_SECONDS:
            return
        with self._lock:
            self._drawn_at = now
            stream.write(f"{CLEAR_LINE}replay: {self.line()}")
            stream.flush()
            self._shown = True

    def _wipe(self, stream) -> None:
        with self._lock:
            if self._shown:
                stream.write(CLEAR_LINE)
                stream.flush()
                self._shown = False

    @contextmanager
    def _wiped_before_log_lines(self, stream, terminal: bool):
        """On a terminal, each log handler wipes the status line before it writes (any thread)."""
        if not terminal:
            yield
            return
        handlers = list(logging.getLogger().handlers)

        def wipe(record: logging.LogRecord) -> bool:
            self._wipe(stream)
            return True

        for handler in handlers:
            handler.addFilter(wipe)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(wipe)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_bar(total: int, desc: str, enabled: bool | None = None):
    """A tqdm bar of `total` steps on a terminal (the companion extra), else None: pipes and logs get no bar."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or not total:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="file", desc=desc)
