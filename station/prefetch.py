"""A source read ahead on its own thread, so decoding overlaps classification.

`Prefetch(source)` is a Source: it runs the wrapped source's `chunks()` on a background
thread that stays at most `depth` chunks ahead (a bounded queue), and hands the chunks on
in order. An optional `prepare(chunk) -> chunk` runs on that thread too, so work such as
resampling can leave the classifying thread. numpy, libsndfile, soxr and onnxruntime
release the GIL for their heavy parts, so two cores both work.

Stopping: once `stop` is set no further chunk is handed on, as with any source. The
wrapped source is given its own stop event, set when `stop` is seen, when the consumer
stops iterating (the pipeline failed) or on `close()`, so its waits (realtime pacing, a
watched folder's polling) end too. An exception in the wrapped source, or in `prepare`,
is raised to the consumer where the chunk would have been, after the chunks before it.

Counters are the wrapped source's, so they run up to `depth` chunks ahead of what the
consumer has processed (a file counts as read once it is decoded).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from threading import Event

from .types import AudioChunk, Source

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a blocked side looks at the stop events
JOIN_SECONDS = 5.0  # how long close() waits for the reading thread

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetch:
    def __init__(self, source: Source, depth: int = 2,
                 prepare: Callable[[AudioChunk], AudioChunk] | None = None):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, not {depth}")
        self.source = source
        self.depth = depth
        self.prepare = prepare
        self._halt = Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def live(self) -> bool:
        return self.source.live

    @property
    def connected(self) -> bool:
        return self.source.connected

    @property
    def counters(self) -> object:
        return self.source.counters

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        self._halt = Event()
        ahead: queue.Queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._read, args=(ahead, self._halt), daemon=True,
                                        name=f"prefetch {self.source.name}")
        self._thread.start()
        try:
            while True:
                item = self._next(ahead, stop)
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self._halt.set()

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("the reading thread of %s did not stop within %.0f s", self.source.name, JOIN_SECONDS)
        self.source.close()

    def _next(self, ahead: queue.Queue, stop: Event):
        while True:
            if stop.is_set():
                return _END  # the caller's `finally` tells the wrapped source
            try:
                return ahead.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue

    def _read(self, ahead: queue.Queue, halt: Event) -> None:
        """The reading thread: the wrapped source's chunks into `ahead`, then an end or a failure."""
        chunks = self.source.chunks(halt)
        try:
            for chunk in chunks:
                if not self._put(ahead, self.prepare(chunk) if self.prepare else chunk, halt):
                    return
            self._put(ahead, _END, halt)
        except BaseException as exc:  # handed to the consumer, who decides
            self._put(ahead, _Failure(exc), halt)
        finally:
            getattr(chunks, "close", lambda: None)()  # a generator's cleanup runs here, on its own thread

    @staticmethod
    def _put(ahead: queue.Queue, item, halt: Event) -> bool:
        while not halt.is_set():
            try:
                ahead.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
