"""Live capture through a real PulseAudio virtual microphone, and the capture queue."""
import itertools
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import write_config
from helpers import wait_for
from station import capture
from station.capture import DropOldestQueue, MicSource
from station.detection import Detector, SpeciesFilter
from station.errors import DeviceError
from station.inference import OnnxClassifier
from station.pipeline import Pipeline
from station.sources import FileSource
from station.store import Store
from station.windowing import Windower

RATE = 16000


class RecordingClassifier:
    """The real classifier, keeping every window it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.sample_rate, self.window_samples = inner.sample_rate, inner.window_samples
        self.model_name = inner.model_name
        self.windows, self.scores = [], []

    def classify(self, windows):
        scores = self.inner.classify(windows)
        self.windows += windows
        self.scores += scores
        return scores


def recording_at_16k(path, seconds: float, out) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = soxr.resample(audio.mean(axis=1)[: int(rate * seconds)], rate, RATE).astype(np.float32)
    sf.write(out, audio, RATE, subtype="FLOAT")
    return audio


def test_live_capture_yields_the_same_windows_as_replaying_the_file(virtual_mic, tiny_model, gwwa, tmp_path):
    played = recording_at_16k(gwwa, 10.0, tmp_path / "played.wav")
    mic = MicSource("pulse", RATE, 1, block_seconds=0.1)
    classifier = RecordingClassifier(OnnxClassifier.from_path(tiny_model))
    store = Store.open(tmp_path / "live.db")
    stop = threading.Event()
    detector = Detector("st", classifier.model_name, SpeciesFilter(0.3, {}, [], []), 3)
    pipeline = Pipeline(mic, Windower(RATE, 3.0, 1.5, 1.0), classifier, detector, store,
                        store.start_run("st", "run", "m"), stop)
    worker = threading.Thread(target=pipeline.run)
    worker.start()
    assert wait_for(lambda: mic.connected, 10, 0.05), "the microphone to open"
    time.sleep(0.3)
    virtual_mic.play(tmp_path / "played.wav").wait(timeout=60)
    assert wait_for(lambda: pipeline.counters.audio_seconds > 0 and classifier.windows
                    and classifier.windows[-1].end_offset > pipeline.counters.audio_seconds - 4
                    and pipeline.counters.audio_seconds * RATE > lead_in(classifier) + len(played) + 3 * RATE,
                    30, 0.05), "the played audio to be classified"
    stop.set()
    worker.join(30)
    assert not worker.is_alive()

    lead = lead_in(classifier) - int(np.flatnonzero(played)[0])
    assert lead >= 0
    replay_wav = tmp_path / "replay.wav"
    sf.write(replay_wav, np.concatenate([np.zeros(lead, np.float32), played]), RATE, subtype="FLOAT")
    replay = RecordingClassifier(OnnxClassifier.from_path(tiny_model))
    replay_windows = Windower(RATE, 3.0, 1.5, 1.0)
    for chunk in FileSource(replay_wav).chunks(threading.Event()):
        replay.classify(replay_windows.push(chunk))

    full = [w for w in replay.windows if w.valid_seconds == 3.0]
    assert len(full) >= 5
    for live_w, live_s, replay_w, replay_s in zip(classifier.windows, classifier.scores, full, replay.scores):
        assert live_w.start_offset == replay_w.start_offset
        assert np.array_equal(live_w.samples, replay_w.samples)
        assert np.allclose(live_s.values, replay_s.values, atol=1e-5)
    assert mic.counters.dropped_seconds == 0 and mic.counters.device_losses == 0
    assert all(w.source == "mic:pulse" for w in classifier.windows)


def lead_in(classifier) -> int:
    """Samples of digital silence the monitor delivered before the playback began."""
    for w in classifier.windows:
        nonzero = np.flatnonzero(w.samples)
        if len(nonzero):
            return round(w.start_offset * RATE) + int(nonzero[0])
    return 10**9


def test_a_lost_device_is_reopened_and_capture_goes_on(virtual_mic, caplog):
    mic = MicSource("pulse", RATE, 1, block_seconds=0.1, reconnect_max_seconds=0.5, stall_seconds=1.0)
    stop = threading.Event()
    chunks = []

    def consume():
        for chunk in mic.chunks(stop):
            chunks.append((time.monotonic(), chunk))

    worker = threading.Thread(target=consume)
    with caplog.at_level(logging.INFO, logger="station.capture"):
        worker.start()
        assert wait_for(lambda: len(chunks) > 3, 10, 0.05), "audio from the microphone"
        virtual_mic.stop()
        assert wait_for(lambda: mic.counters.device_losses >= 1, 20, 0.05), "the loss to be noticed"
        lost_at = time.monotonic()
        virtual_mic.start()
        assert wait_for(lambda: chunks and chunks[-1][0] > lost_at + 0.5, 30, 0.05), "audio after the device came back"
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert any("audio device lost; reopening" in m for m in messages)
    assert sum("capturing 16000 Hz" in m for m in messages) >= 2


def test_a_device_that_matches_nothing_at_start_is_an_error_with_the_device_list():
    mic = MicSource("no-such-device-anywhere", RATE, 1)
    with pytest.raises(DeviceError, match=r"no-such-device-anywhere.*input devices seen: .*wait_for_device") as error:
        next(mic.chunks(threading.Event()))
    assert error.value.exit_code == 4 and "\n" not in str(error.value)


def test_a_missing_device_is_waited_for_with_backoff_when_the_config_says_so(caplog):
    mic = MicSource("no-such-device-anywhere", RATE, 1, reconnect_max_seconds=0.4, wait_for_device=True)
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    with caplog.at_level(logging.DEBUG, logger="station.capture"):
        assert list(mic.chunks(stop)) == []
    attempts = [r for r in caplog.records if r.getMessage().startswith("mic:no-such-device-anywhere: ")]
    warnings = [r.getMessage() for r in attempts if r.levelno >= logging.WARNING]
    assert len(attempts) >= 3, "it kept trying"
    assert len(warnings) == 1, "one line per outage, not one per attempt"
    assert "input devices seen: " in warnings[0] and "retrying with backoff" in warnings[0]


def test_a_full_queue_drops_the_oldest_audio_and_counts_it():
    queue = DropOldestQueue(max_frames=1000)
    for i in range(5):
        queue.put((np.full((400, 1), i, np.float32), float(i)))
    kept = queue.get_all(timeout=0)
    assert [int(b[0][0, 0]) for b in kept] == [3, 4]
    assert queue.dropped_frames == 1200
    assert queue.get_all(timeout=0.01) == []


def test_station_run_captures_from_the_virtual_microphone(virtual_mic, tiny_model, gwwa, tmp_path):
    recording_at_16k(gwwa, 6.0, tmp_path / "played.wav")
    config = write_config(tmp_path / "c.yaml", "audio:\n  device: pulse\n  sample_rate: 16000\n"
                                              "  block_seconds: 0.1\ndetection:\n  threshold: 0.3\n")
    db = tmp_path / "st.db"
    proc = subprocess.Popen([sys.executable, "-m", "station.cli", "run", "--config", str(config),
                             "--model", str(tiny_model), "--db", str(db)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=virtual_mic.env)
    time.sleep(3)
    virtual_mic.play(tmp_path / "played.wav").wait(timeout=30)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    conn = sqlite3.connect(db)
    status, audio, windows = conn.execute("SELECT status, audio_seconds, windows FROM runs").fetchone()
    open_events = conn.execute("SELECT count(*) FROM detections WHERE status = 'open'").fetchone()[0]
    assert status == "stopped" and audio >= 8 and windows >= 4 and open_events == 0
    assert "capturing 16000 Hz" in err


def test_the_retry_loop_signals_it_is_waiting_however_long_the_backoff(monkeypatch):
    monkeypatch.setattr(capture, "WAITING_SIGNAL_SECONDS", 0.1)
    mic = MicSource("no-such-device-anywhere", RATE, 1, reconnect_max_seconds=3600, wait_for_device=True)
    heard: list[tuple[float, str]] = []
    mic.on_waiting = lambda reason: heard.append((time.monotonic(), reason))
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    assert list(mic.chunks(stop)) == []
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(heard)]
    assert len(heard) >= 8 and max(gaps) < 0.5, "signalled every slice, not once per (growing) backoff"
    assert all("no-such-device-anywhere" in reason for _, reason in heard)


def test_a_device_plugged_in_while_waiting_is_found_by_reading_the_device_list_afresh(monkeypatch):
    """PortAudio lists devices when it starts; the retry loop restarts it, as a re-plugged USB mic needs."""

    class Stream:
        def __init__(self, **kwargs):
            if not fake.plugged_in:
                raise ValueError("No input device matching 'usb-mic'")

        def start(self):
            stop.set()  # opened: that is all this test needs to see

        def abort(self):
            pass

        def close(self):
            pass

    fake = SimpleNamespace(InputStream=Stream, plugged_in=False, restarts=0, PortAudioError=RuntimeError,
                           query_devices=lambda: [])

    def restart():  # the device list as PortAudio reads it at start: the mic is there from the 2nd restart
        fake.restarts += 1
        fake.plugged_in = fake.restarts >= 2

    fake._terminate, fake._initialize = (lambda: None), restart
    monkeypatch.setattr(capture, "_sounddevice", lambda: fake)
    mic = MicSource("usb-mic", RATE, 1, reconnect_max_seconds=0.05, wait_for_device=True)
    stop = threading.Event()
    threading.Timer(10, stop.set).start()
    list(mic.chunks(stop))
    assert fake.plugged_in and fake.restarts == 2, "the device list was read afresh until the mic showed up"
