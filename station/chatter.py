"""What C libraries write to stderr, turned into log lines with context.

libsndfile's bundled mpg123 writes "Illegal Audio-MPEG-Header ..." or "dequantization
failed" straight to file descriptor 2, and PortAudio/ALSA write "AlsaOpen ... failed" when
devices are probed; in the journal those are raw lines without time, level or file. While
`captured()` is active (the CLI turns it on for commands that decode audio or open devices),
fd 2 is a pipe read by a thread, and Python's own output goes to the original stderr:

- what is written while a file is read (`with about(path)`) becomes at most one line for it;
- anything else is logged at most once a minute per distinct message (numbers aside).

Which file a line belongs to is decided in the pipe itself: `about` writes a begin and an
end mark into fd 2, so the reader sees lines and marks in the order they were written. If
the reading thread fails, it logs that once and passes the raw bytes through from then on.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

REPEAT_SECONDS = 60.0
_MARK = re.compile(rb"\x00station-chatter:([be]):(\d+)\x00")
_TOKEN = re.compile(_MARK.pattern + rb"|\n")
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
_MAX_LINE = 1 << 16
_installed: StderrCapture | None = None
_ids = itertools.count(1)


class Heard:
    """What native libraries said while one file was read."""

    def __init__(self, capture: StderrCapture | None = None):
        self.lines = 0
        self.first = ""
        self.id = next(_ids)
        self.done = threading.Event()
        self.reported = False
        self._capture = capture
        if capture is None:
            self.done.set()

    def add(self, line: str) -> None:
        self.lines += 1
        if self.lines == 1:
            self.first = line[:200]

    def take(self) -> str:
        """Everything said so far, as a clause for the one line about this file; it is then reported."""
        if self._capture:
            self._capture.end(self)
        self.reported = True
        return f"native libraries said {self.lines} line(s), first: {self.first}" if self.lines else ""


@contextlib.contextmanager
def about(name: str) -> Iterator[Heard]:
    """Attribute what native libraries write meanwhile to `name`; one summary line at the end."""
    capture = _installed
    heard = Heard(capture)
    if capture:
        capture.begin(heard)
    try:
        yield heard
    finally:
        if not heard.reported and (said := heard.take()):
            log.warning("%s: %s", name, said)


@contextlib.contextmanager
def captured(enabled: bool = True) -> Iterator[None]:
    """Capture fd 2 for the duration (a no-op if disabled, already on, or impossible here)."""
    global _installed
    capture = StderrCapture() if enabled and _installed is None else None
    try:
        if capture:
            capture.start()
            _installed = capture
    except (OSError, RuntimeError) as exc:
        log.warning("native libraries' stderr is not captured: %s", exc)
        capture = None
    try:
        yield
    finally:
        if capture:
            _installed = None
            capture.stop()


class StderrCapture:
    def __init__(self, repeat_seconds: float = REPEAT_SECONDS):
        self.repeat_seconds = repeat_seconds
        self.broken = False
        self.active = False
        self._open: dict[int, Heard] = {}
        self._current: list[Heard] = []
        self._last_said: dict[str, list] = {}  # message key -> [monotonic time logged, repeats since]

    def start(self) -> None:
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # room for bursts while the reader waits for the GIL
            import fcntl

            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        self._stderr = os.fdopen(os.dup(self._saved_fd), "w", buffering=1, encoding=encoding,
                                 errors="backslashreplace")
        self._thread = threading.Thread(target=self._read, name="stderr-capture", daemon=True)
        try:
            self._thread.start()  # before the switch: a pipe nobody reads would block every writer
        except RuntimeError:
            for fd in (self._saved_fd, self._read_fd, write_fd):
                os.close(fd)
            self._stderr.close()
            raise
        self._old_stderr, sys.stderr = sys.stderr, self._stderr
        _repoint_log_handlers(self._old_stderr, self._stderr)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.active = True

    def stop(self) -> None:
        self.active = False
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self._saved_fd, 2)  # closes our end of the pipe: the reader drains it and sees EOF
        self._thread.join(timeout=2.0)
        sys.stderr = self._old_stderr
        _repoint_log_handlers(self._stderr, self._old_stderr)
        os.close(self._saved_fd)
        if not self._thread.is_alive():  # a child that inherited fd 2 may keep the pipe open
            self._stderr.close()
            os.close(self._read_fd)

    def begin(self, heard: Heard) -> None:
        self._open[heard.id] = heard
        self._mark(b"b", heard)

    def end(self, heard: Heard, timeout: float = 2.0) -> None:
        """Wait until the reader has seen everything written before now (bounded: it may have failed)."""
        if not heard.done.is_set():
            self._mark(b"e", heard)
            heard.done.wait(timeout)

    def _mark(self, kind: bytes, heard: Heard) -> None:
        if self.broken or not self.active:
            heard.done.set()
            return
        try:
            os.write(2, b"\x00station-chatter:%s:%d\x00" % (kind, heard.id))
        except OSError:
            heard.done.set()

    def _read(self) -> None:
        pending = b""
        try:
            while data := os.read(self._read_fd, 1 << 16):
                if self.broken:
                    with contextlib.suppress(OSError):
                        os.write(self._saved_fd, _MARK.sub(b"", data))
                    continue
                try:
                    pending = self._consume(pending + data)
                except Exception as exc:  # never die silently: say so once, then pass the bytes through
                    self._fail(exc, pending + data)
                    pending = b""
            if pending and not self.broken:
                self._line(pending)
        except Exception as exc:  # the pipe itself failed: hand fd 2 back so writers never block
            os.dup2(self._saved_fd, 2)
            self._fail(exc, b"")
        finally:
            for heard in list(self._open.values()):
                heard.done.set()

    def _consume(self, buffer: bytes) -> bytes:
        position = 0
        for token in _TOKEN.finditer(buffer):
            text = buffer[position:token.start()]
            if text or token.group(0) == b"\n":
                self._line(text)
            if token.group(1):
                self._marked(token.group(1), int(token.group(2)))
            position = token.end()
        rest = buffer[position:]
        if len(rest) > _MAX_LINE:
            self._line(rest)
            rest = b""
        return rest

    def _marked(self, kind: bytes, heard_id: int) -> None:
        heard = self._open.get(heard_id)
        if heard is None:
            return
        if kind == b"b":
            self._current.append(heard)
            return
        del self._open[heard_id]
        if heard in self._current:
            self._current.remove(heard)
        heard.done.set()

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        if self._current:
            self._current[-1].add(text)
        else:
            self._loose(text)

    def _loose(self, text: str) -> None:
        key = _NUMBERS.sub("#", text)[:200]
        now = time.monotonic()
        seen = self._last_said.get(key)
        if seen and now - seen[0] < self.repeat_seconds:
            seen[1] += 1
            return
        if len(self._last_said) > 1000:
            self._last_said.clear()
        self._last_said[key] = [now, 0]
        again = f" (and {seen[1]} more like it since)" if seen and seen[1] else ""
        log.warning("native library said: %s%s", text[:500], again)

    def _fail(self, exc: Exception, unread: bytes) -> None:
        self.broken = True
        log.error("stderr capture failed (%s: %s); native libraries' output passes through raw from now on",
                  type(exc).__name__, exc)
        with contextlib.suppress(OSError):
            os.write(self._saved_fd, _MARK.sub(b"", unread))
        for heard in list(self._open.values()):
            heard.done.set()


def _repoint_log_handlers(old, new) -> None:
    """Handlers made before the switch still hold the old stream; their output must not feed the pipe."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
