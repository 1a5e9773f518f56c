"""systemd's notify protocol, checked on a real datagram socket the test listens on."""
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import T0, tone, write_config
from station.notify import Notifier


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message sent to it."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    def fields(self) -> list[str]:
        return [f for m in list(self.messages) for f in m]

    def wait_for(self, field_prefix: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(f.startswith(field_prefix) for f in self.fields()):
            assert time.monotonic() < deadline, f"no {field_prefix} in {self.fields()}"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_ready_once_then_watchdog_pings_at_a_quarter_of_the_interval_and_stopping(notify_socket):
    notifier = Notifier(notify_socket.path, watchdog_usec="400000")
    notifier.progress("1 s audio")
    notifier.progress("2 s audio")  # too soon for another ping: nothing sent
    time.sleep(0.12)
    notifier.progress("3 s audio")
    notifier.stopping()
    time.sleep(0.3)
    assert notify_socket.messages == [["READY=1", "WATCHDOG=1", "STATUS=1 s audio"], ["WATCHDOG=1"],
                                      ["STOPPING=1", "STATUS=stopping"]]


def test_an_abstract_socket_address_and_no_watchdog_meant_for_another_process(tmp_path):
    listener = NotifySocket(f"@field-station-test-{os.getpid()}")
    try:
        notifier = Notifier(listener.path, watchdog_usec="1000000", watchdog_pid=str(os.getpid() + 1))
        notifier.progress()
        notifier.status("listening")
        listener.wait_for("STATUS=listening", timeout=5)
        assert listener.fields() == ["READY=1", "STATUS=listening"]
    finally:
        listener.close()


def test_outside_systemd_nothing_is_sent_and_a_vanished_socket_is_logged_once(tmp_path, caplog):
    Notifier(None).progress()  # no NOTIFY_SOCKET: a no-op
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    gone.progress()
    gone.stopping()
    assert sum("cannot notify" in r.getMessage() for r in caplog.records) == 1


def test_a_hung_inference_stops_the_watchdog_pings(notify_socket, tmp_path):
    from station.detection import Detector, SpeciesFilter
    from station.pipeline import Pipeline
    from station.store import Store
    from station.types import AudioChunk, Scores, Species
    from station.windowing import Windower

    hang = threading.Event()
    release = threading.Event()

    class Source:
        name, live, connected, counters = "fake", False, True, SimpleNamespace()

        def chunks(self, stop):
            for i in range(10_000):
                if stop.is_set():
                    return
                yield AudioChunk(np.zeros(16000, np.float32), 16000, "fake", float(i), T0 + timedelta(seconds=i))
                time.sleep(0.01)

        def close(self):
            pass

    class Classifier:
        sample_rate, window_samples, model_name = 16000, 16000, "fake"
        calls = 0

        def classify(self, windows):
            self.calls += 1
            if self.calls == 20:
                hang.set()
                release.wait(30)  # a hung inference
            return [Scores(w, np.array([0.1], np.float32), [Species("x", None, "x")]) for w in windows]

    stop = threading.Event()
    store = Store.open(tmp_path / "st.db")
    pipeline = Pipeline(Source(), Windower(16000, 1.0, 1.0), Classifier(),
                        Detector("st", "fake", SpeciesFilter(0.5, {}, [], [])), store,
                        store.start_run("st", "replay", "fake"), stop,
                        notifier=Notifier(notify_socket.path, watchdog_usec="80000"))
    worker = threading.Thread(target=pipeline.run)
    worker.start()
    assert hang.wait(30)
    time.sleep(0.1)
    pings_at_hang = notify_socket.fields().count("WATCHDOG=1")
    time.sleep(1.0)  # fifty ping intervals of a hung pipeline
    assert notify_socket.fields().count("WATCHDOG=1") == pings_at_hang
    assert pings_at_hang >= 3, "the pipeline pinged while it made progress"
    stop.set()
    release.set()
    worker.join(30)
    store.close()


def test_a_replay_under_systemd_says_ready_pings_reports_status_and_says_stopping(notify_socket, tiny_model,
                                                                                  tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000, 20.0), 16000)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"}
    result = subprocess.run([sys.executable, "-m", "station.cli", "replay", str(tmp_path / "a.wav"),
                             "--model", str(tiny_model), "--db", str(tmp_path / "st.db")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    notify_socket.wait_for("STOPPING=1", timeout=10)
    fields = notify_socket.fields()
    assert fields[0] == "READY=1" and fields.count("READY=1") == 1
    assert "WATCHDOG=1" in fields
    assert any(f.startswith("STATUS=") and "windows" in f for f in fields)
    assert fields.index("STOPPING=1") > fields.index("READY=1")


def test_a_station_waiting_for_its_microphone_is_ready_and_keeps_the_watchdog_fed(notify_socket, tiny_model,
                                                                                   tmp_path):
    """A lost or not yet plugged-in device is retried in-process; a watchdog restart would not bring it back."""
    config = write_config(tmp_path / "c.yaml", "audio:\n  device: no-such-device-anywhere\n"
                                               "  wait_for_device: true\n  reconnect_max_seconds: 3600\n")
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "8000000"}  # a ping every 2 s
    station = subprocess.Popen([sys.executable, "-m", "station.cli", "run", "--config", str(config),
                                "--model", str(tiny_model), "--db", str(tmp_path / "st.db")],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify_socket.wait_for("READY=1", timeout=60)
        ready_at = time.monotonic()
        while notify_socket.fields().count("WATCHDOG=1") < 3 and time.monotonic() - ready_at < 30:
            time.sleep(0.2)
    finally:
        station.terminate()
        _out, err = station.communicate(timeout=30)
    fields = notify_socket.fields()
    assert fields.count("WATCHDOG=1") >= 3, "the retry loop fed the watchdog though no audio came"
    assert any(f.startswith("STATUS=waiting for the audio device: ") and "no-such-device-anywhere" in f
               for f in fields)
    assert station.returncode == 0, err
