"""Live microphone capture that never waits on inference and survives a lost device.

The PortAudio callback only copies the block into a bounded queue; when the queue is
full the oldest audio is dropped and counted. A device that fails to open, stops
delivering (`stall_seconds` without a callback) or errors is closed and reopened with
exponential backoff, PortAudio's device list read afresh before each attempt; each loss
and recovery is logged once and counted.

While it retries, `on_waiting` hears from the retry loop every few seconds: a station
waiting for its device is working as designed, so the service manager's watchdog is fed
from there rather than left to restart a process that would only wait again (or, with the
device still gone at its next start, exit 4 until systemd gives up on the unit for good).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from threading import Event
from typing import Any

import numpy as np

from .decode import to_mono
from .errors import DeviceError
from .types import AudioChunk

log = logging.getLogger(__name__)

WAITING_SIGNAL_SECONDS = 5.0  # well inside any sensible WatchdogSec, however long the backoff


class DropOldestQueue:
    """A bounded FIFO of audio blocks: put never blocks, a full queue drops its oldest block."""

    def __init__(self, max_frames: int):
        self.max_frames = max_frames
        self._blocks: collections.deque = collections.deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.dropped_frames = 0

    def put(self, block) -> None:
        with self._cond:
            self._blocks.append(block)
            self._frames += len(block[0])
            while self._frames > self.max_frames and len(self._blocks) > 1:
                oldest = self._blocks.popleft()
                self._frames -= len(oldest[0])
                self.dropped_frames += len(oldest[0])
            self._cond.notify()

    def get_all(self, timeout: float) -> list:
        with self._cond:
            if not self._blocks:
                self._cond.wait(timeout)
            blocks = list(self._blocks)
            self._blocks.clear()
            self._frames = 0
            return blocks


@dataclass
class CaptureCounters:
    overflows: int = 0
    dropped_seconds: float = 0.0
    device_losses: int = 0
    device_recoveries: int = 0  # reopened after a loss


class NoSuchDevice(DeviceError):
    """The configured device matches none that PortAudio sees."""


class MicSource:
    live = True

    def __init__(self, device: str | int | None, sample_rate: int, channels: int,
                 block_seconds: float = 0.5, queue_seconds: float = 60.0,
                 reconnect_max_seconds: float = 30.0, stall_seconds: float = 5.0,
                 wait_for_device: bool = False):
        self.device = device
        self.wait_for_device = wait_for_device
        self.sample_rate = sample_rate
        self.channels = channels
        self.block_frames = max(1, int(block_seconds * sample_rate))
        self.queue = DropOldestQueue(int(queue_seconds * sample_rate))
        self.reconnect_max_seconds = reconnect_max_seconds
        self.stall_seconds = stall_seconds
        self.counters = CaptureCounters()
        self.name = f"mic:{device if device is not None else 'default'}"
        self.connected = False
        self._stream: Any = None  # a sounddevice.InputStream while open (sounddevice has no types)
        self._last_callback = 0.0
        self._status_overflows = 0
        self.on_waiting: Callable[[str], None] | None = None  # told why, while the device is retried

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        first_delay = min(1.0, self.reconnect_max_seconds)
        delay, attempts, lost, list_read_afresh = first_delay, 0, False, False
        while not stop.is_set():
            try:
                self._open()
            except DeviceError as exc:
                if isinstance(exc, NoSuchDevice) and not (self.wait_for_device or lost):
                    if not list_read_afresh:  # PortAudio's list may be older than the device: read it once more
                        list_read_afresh = True
                        _rescan_devices()
                        continue
                    raise DeviceError(f"{exc}; input devices seen: {input_devices()} "
                                      "(audio.wait_for_device: true waits for it)") from None
                attempts += 1
                if attempts == 1:  # once per outage, not once per attempt
                    log.warning("%s; input devices seen: %s; retrying with backoff (up to every %.0f s)",
                                exc, input_devices(), self.reconnect_max_seconds)
                else:
                    log.debug("%s; attempt %d", exc, attempts)
                self._wait_to_retry(stop, delay, str(exc))
                delay = min(delay * 2, self.reconnect_max_seconds)
                _rescan_devices()
                continue
            if lost:
                self.counters.device_recoveries += 1
                log.info("%s: audio device back after %d attempt(s)", self.name, attempts + 1)
            attempts, delay, lost = 0, first_delay, False
            yield from self._read(stop)
            self._close_stream()
            if not stop.is_set():
                lost = True
                self.counters.device_losses += 1
                log.error("%s: audio device lost; reopening", self.name)

    def _wait_to_retry(self, stop: Event, delay: float, reason: str) -> None:
        deadline = time.monotonic() + delay
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.on_waiting is not None:
                self.on_waiting(reason)
            stop.wait(min(left, WAITING_SIGNAL_SECONDS))

    def _open(self) -> None:
        sd = _sounddevice()
        try:
            self._stream = sd.InputStream(
                device=self.device, samplerate=self.sample_rate, channels=self.channels,
                dtype="float32", blocksize=self.block_frames, callback=self._callback)
            self._last_callback = time.monotonic()
            self._stream.start()
        except ValueError as exc:  # sounddevice: no device, or several, match the name
            self._close_stream()
            raise NoSuchDevice(f"{self.name}: {exc}") from None
        except sd.PortAudioError as exc:
            self._close_stream()
            if isinstance(self.device, int) and self.device >= len(sd.query_devices()):
                raise NoSuchDevice(f"{self.name}: no input device number {self.device}") from None
            raise DeviceError(f"{self.name}: cannot open input device: {exc}") from None
        self.connected = True
        log.info("%s: capturing %d Hz, %d channel(s)", self.name, self.sample_rate, self.channels)

    def _callback(self, indata, frames, time_info, status) -> None:
        self.queue.put((indata.copy(), time.time()))
        self._last_callback = time.monotonic()
        if status.input_overflow:
            self._status_overflows += 1

    def _read(self, stop: Event) -> Iterator[AudioChunk]:
        """Chunks from one opened stream; returns when it stops, stalls or `stop` is set."""
        anchor_time, position, dropped_before = None, 0, self.queue.dropped_frames
        while not stop.is_set():
            blocks = self.queue.get_all(timeout=0.5)
            self.counters.overflows = self._status_overflows
            dropped = self.queue.dropped_frames - dropped_before
            if dropped:
                dropped_before = self.queue.dropped_frames
                self.counters.dropped_seconds += dropped / self.sample_rate
                position += dropped  # a gap in the stream: the windower starts afresh after it
            if blocks:
                samples = np.concatenate([b[0] for b in blocks])
                if anchor_time is None:
                    first_frames = len(blocks[0][0])
                    anchor_time = datetime.fromtimestamp(blocks[0][1], tz=timezone.utc) \
                        - timedelta(seconds=first_frames / self.sample_rate)
                mono = to_mono(samples)
                offset = position / self.sample_rate
                yield AudioChunk(mono, self.sample_rate, self.name, offset,
                                 anchor_time + timedelta(seconds=offset))
                position += len(mono)
            elif not self._stream_alive():
                return

    def _stream_alive(self) -> bool:
        stream = self._stream
        if stream is None or not stream.active:
            return False
        return time.monotonic() - self._last_callback < self.stall_seconds

    def _close_stream(self) -> None:
        self.connected = False
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # a dead device may fail to close; it is gone either way
                log.debug("closing input stream: %s", exc)

    def close(self) -> None:
        self._close_stream()


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio library itself is missing
        raise DeviceError(f"cannot use audio input: {exc} (apt-get install libportaudio2)") from None
    return sounddevice


def _rescan_devices() -> None:
    """Start PortAudio afresh (no stream is open): it lists devices only when it starts, so a
    re-plugged USB microphone is otherwise never seen. The way sounddevice's maintainer gives
    for it (spatialaudio/python-sounddevice#125); on Linux it re-reads ALSA's devices."""
    try:
        sd = _sounddevice()
        sd._terminate()
        sd._initialize()
    except Exception as exc:  # PortAudio errors come in several types; the next open says what is wrong
        log.debug("rescanning audio devices: %s", exc)


def input_devices() -> str:
    """The input devices PortAudio sees, on one line (for messages)."""
    try:
        devices = _sounddevice().query_devices()
    except Exception as exc:  # PortAudio errors come in several types; this is only for a message
        return f"none (cannot list them: {exc})"
    found = [f"{i}: {d['name']}" for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    return ", ".join(found) or "none"
