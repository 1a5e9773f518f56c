"""Background threads that cannot die silently.

Each loop runs in its own thread under a supervisor. A loop that raises (or returns
while it should still run) is logged once with its traceback, then restarted with
exponential backoff; repeats are counted, not logged again. A loop that fails
`max_failures` times within `window_seconds` cannot be kept alive: the supervisor
records why and sets the process's stop event, so the station shuts down in order and
exits non-zero for systemd to restart it, instead of running half-dead.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Loop = Callable[[threading.Event], None]  # runs until the event is set


class Supervisor:
    def __init__(self, stop_process: threading.Event, max_failures: int = 5, window_seconds: float = 300.0,
                 first_backoff: float = 1.0, max_backoff: float = 60.0):
        self.stop_process = stop_process
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.gave_up: str | None = None  # why the process must stop, once a loop could not be kept alive
        self.restarts: dict[str, int] = {}
        self._loops: list[Supervised] = []

    def start(self, name: str, loop: Loop) -> Supervised:
        supervised = Supervised(name, threading.Event())
        supervised.thread = threading.Thread(target=self._keep_alive, args=(supervised, loop), name=name, daemon=True)
        self._loops.append(supervised)
        self.restarts[name] = 0
        supervised.thread.start()
        return supervised

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every loop to end and wait for them (bounded)."""
        for supervised in self._loops:
            supervised.stop_event.set()
        deadline = time.monotonic() + timeout
        for supervised in self._loops:
            supervised.stop(max(0.0, deadline - time.monotonic()))

    def _keep_alive(self, supervised: Supervised, loop: Loop) -> None:
        name, stop = supervised.name, supervised.stop_event
        failures: deque[float] = deque()
        backoff = self.first_backoff
        while not stop.is_set():
            started = time.monotonic()
            try:
                loop(stop)
                if stop.is_set():
                    return
                raise RuntimeError("the loop returned while the station was still running")
            except Exception as exc:
                now = time.monotonic()
                failures.append(now)
                while failures and now - failures[0] > self.window_seconds:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    self._give_up(name, exc, len(failures))
                    return
                if now - started > self.window_seconds:
                    backoff = self.first_backoff  # it ran well for a while: start the backoff afresh
                self._report(name, exc, backoff)
            self.restarts[name] += 1
            stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _report(self, name: str, exc: Exception, backoff: float) -> None:
        if self.restarts[name] == 0:
            log.error("%s thread failed; restarting it in %.0f s", name, backoff, exc_info=exc)
        else:
            log.error("%s thread failed again (%s: %s); restart %d in %.0f s", name, type(exc).__name__, exc,
                      self.restarts[name] + 1, backoff)

    def _give_up(self, name: str, exc: Exception, count: int) -> None:
        self.gave_up = (f"the {name} thread failed {count} times in {self.window_seconds:.0f} s "
                        f"(last: {type(exc).__name__}: {exc}); "
                        "stopping so that the service manager restarts the station")
        log.critical("%s", self.gave_up)
        self.stop_process.set()


@dataclass
class Supervised:
    """One supervised loop: its name, its own stop event and its thread."""

    name: str
    stop_event: threading.Event
    thread: threading.Thread | None = None

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
