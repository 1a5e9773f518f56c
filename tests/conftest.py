"""Shared fixtures: real recordings, a tiny exported model, a PulseAudio virtual microphone.

Tests that need the shared recordings skip with a reason when they are absent, unless
STATION_REQUIRE_TEST_DATA=1 (CI sets it), which turns those skips into failures.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 5, 1, 6, 0, tzinfo=timezone.utc)


def require_or_skip(reason: str):
    if os.environ.get("STATION_REQUIRE_TEST_DATA") == "1":
        pytest.fail(f"{reason} (STATION_REQUIRE_TEST_DATA=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = Path(os.environ.get("STATION_TEST_DATA") or REPO.parent / "shared" / "data")
    if not (folder / "manifest.csv").is_file():
        require_or_skip(f"shared recordings not found at {folder} (set STATION_TEST_DATA)")
    return folder


@pytest.fixture(scope="session")
def gwwa(shared_data) -> Path:
    """Golden-winged Warbler, 52 s, 44.1 kHz mp3 with annotated songs."""
    return shared_data / "audio" / "birds_misc" / "XC13738_GWWA.mp3"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight wav2vec2 with dima806's 50 labels, exported by the station's own exporter."""
    pytest.importorskip("torch", reason="the export extra is needed: pip install -e '.[dev]'")
    from station.export import ExportOptions, export_model
    from station.random_model import build_random_wav2vec2

    root = tmp_path_factory.mktemp("tiny-model")
    hf = build_random_wav2vec2(root / "hf", size="tiny")
    return export_model(ExportOptions(str(hf), root / "tiny", window_seconds=3.0, int8=True,
                                      name="tiny-random")).path


@pytest.fixture(scope="session")
def birdnet_folder(tmp_path_factory) -> Path:
    """BirdNET v2.4 converted once for the whole session (about 25 s), with its int8 variant."""
    pytest.importorskip("tf2onnx", reason="the convert extra is needed: pip install -e '.[dev]'")
    from station.birdnet import convert_birdnet

    return convert_birdnet(tmp_path_factory.mktemp("birdnet") / "birdnet", int8=True).path


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def station_cli(*args: str, cwd: Path, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "station.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **popen)


def tone(rate: int, seconds: float, freq: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    mono = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


class VirtualMic:
    """A PulseAudio null sink at 16 kHz float32 mono; its monitor is the microphone.

    `norewinds=1` matters: without it the sink rewinds when a stream starts and the
    monitor misses the first part of what is played.
    """

    def __init__(self, runtime: Path, rate: int = 16000):
        self.runtime = runtime
        self.rate = rate
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PULSE_RUNTIME_PATH": str(runtime / "pulse")}

    def start(self) -> None:
        subprocess.run(
            ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--disable-shm=yes",
             "--load=module-native-protocol-unix",
             f"--load=module-null-sink sink_name=vmic rate={self.rate} channels=1 format=float32le norewinds=1"],
            env=self.env, check=True, capture_output=True)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                subprocess.run(["pactl", "set-default-source", "vmic.monitor"], env=self.env, check=True)
                return
            time.sleep(0.1)
        raise RuntimeError("pulseaudio did not start")

    def stop(self) -> None:
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
                return
            time.sleep(0.1)

    def play(self, wav: Path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "--device=vmic", str(wav)], env=self.env)


@pytest.fixture
def virtual_mic(tmp_path, monkeypatch):
    if not (shutil.which("pulseaudio") and shutil.which("paplay")):
        require_or_skip("pulseaudio/paplay not installed (apt-get install pulseaudio pulseaudio-utils)")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    mic = VirtualMic(runtime)
    monkeypatch.setenv("XDG_RUNTIME_DIR", mic.env["XDG_RUNTIME_DIR"])
    monkeypatch.setenv("PULSE_RUNTIME_PATH", mic.env["PULSE_RUNTIME_PATH"])
    mic.start()
    yield mic
    mic.stop()
