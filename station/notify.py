"""systemd's notify protocol: READY, WATCHDOG, STATUS and STOPPING as datagrams on $NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call does nothing. The watchdog is fed only from
the pipeline's own progress and from the capture's retry loop while a lost device is being
reopened, never from a timer, so a hung inference or a capture wedged inside PortAudio
stops the pings and systemd restarts the service after WatchdogSec.
Sending never raises: a notify socket that went away is logged once.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None, watchdog_usec: str | None = None,
                 watchdog_pid: str | None = None):
        self.address = address
        interval = int(watchdog_usec) / 1e6 if watchdog_usec and watchdog_usec.isdigit() else None
        if watchdog_pid and watchdog_pid.isdigit() and int(watchdog_pid) != os.getpid():
            interval = None  # the watchdog is meant for another process of the unit
        # Ping at a quarter of the interval: one late ping then still arrives in time.
        self.ping_every = interval / 4 if interval else None
        self.ready = False
        self._last_ping = float("-inf")
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID"))

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at %s: %s", self.address, exc)

    def progress(self, status: str | None = None) -> None:
        """The pipeline moved: say READY the first time, and feed the watchdog."""
        fields = []
        if not self.ready:
            self.ready = True
            fields.append("READY=1")
        now = time.monotonic()
        if self.ping_every is not None and now - self._last_ping >= self.ping_every:
            self._last_ping = now
            fields.append("WATCHDOG=1")
        if status and "READY=1" in fields:
            fields.append(f"STATUS={status}")
        if fields:
            self.send(*fields)

    def waiting(self, reason: str) -> None:
        """Up but without audio: the capture is retrying its device. READY (a station started
        before its microphone was plugged in is up, not failing to start), the watchdog, and why."""
        self.progress()
        self.status(f"waiting for the audio device: {reason}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
