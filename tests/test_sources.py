import logging
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from station.decode import open_audio
from station.errors import AudioInputError
from station.sources import DirectorySource, FileSource


def all_audio(source) -> np.ndarray:
    chunks = list(source.chunks(threading.Event()))
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)


@pytest.fixture
def bad_files(tmp_path, shared_data):
    mp3 = (shared_data / "audio" / "xc_puerto_rico" / "XC46677.mp3").read_bytes()
    corrupt = bytearray(mp3)
    middle = len(corrupt) // 3
    corrupt[middle:middle + 20000] = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    nan = tone(16000, 2.0)
    nan[8000] = np.nan
    files = {
        "corrupt.mp3": bytes(corrupt),
        "text.wav": b"this is a text file, not audio\n" * 40,
        "garbage.mp3": np.random.default_rng(1).integers(0, 256, 50000, dtype=np.uint8).tobytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("corrupt.mp3", "corrupt audio data"),
    ("text.wav", "not a readable audio file"),
    ("garbage.mp3", "not a readable audio file"),
    ("zero.wav", "no audio in file"),
    ("nan.wav", "invalid samples (NaN or infinite) at 0.50 s"),
])
def test_bad_files_fail_with_one_clear_line(bad_files, name, message):
    with pytest.raises(AudioInputError) as error:
        info, blocks = open_audio(bad_files / name, 1.0)
        for _ in blocks:
            pass
    text = str(error.value)
    assert message in text and name in text and "\n" not in text


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(AudioInputError, match="no such file"):
        open_audio(tmp_path / "nope.wav", 1.0)


@pytest.mark.parametrize("relative", [
    "audio/xc_puerto_rico/XC46677.mp3",           # mp3, 44.1 kHz mono
    "audio/noise/blanket_rain.ogg",               # ogg vorbis, stereo
    "audio/noise/p286_011_speech.wav",            # wav
    "audio/birds_misc/tawnyowl.wav",
])
def test_real_recordings_decode_to_mono_at_their_own_rate(shared_data, relative):
    path = shared_data / relative
    rate = sf.info(str(path)).samplerate
    audio = all_audio(FileSource(path, chunk_seconds=3.0))
    assert audio.ndim == 1 and audio.dtype == np.float32
    # mp3 headers only estimate the length; ffprobe's decoded duration is the reference
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                            str(path)], capture_output=True, text=True, check=True)
    assert len(audio) / rate == pytest.approx(float(probe.stdout), abs=0.1)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.001


def test_flac_and_ffmpeg_fallback_give_the_same_audio(tmp_path, shared_data):
    flac = tmp_path / "owl.flac"
    sf.write(flac, sf.read(str(shared_data / "audio/birds_misc/tawnyowl.wav"), dtype="float32")[0], 44100)
    from_libsndfile = all_audio(FileSource(flac))
    m4a = tmp_path / "owl.m4a"  # libsndfile cannot read MP4 containers: this goes through ffmpeg
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(flac), "-c:a", "alac", str(m4a)], check=True)
    info, _ = open_audio(m4a, 1.0)
    assert info.decoder == "ffmpeg"
    from_ffmpeg = all_audio(FileSource(m4a))
    assert len(from_ffmpeg) == len(from_libsndfile)
    assert np.abs(from_ffmpeg - from_libsndfile).max() < 1e-4


def test_stereo_is_averaged(tmp_path):
    left, right = tone(16000, 1.0, 500), tone(16000, 1.0, 700)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert np.allclose(all_audio(FileSource(tmp_path / "st.wav")), (left + right) / 2, atol=1e-6)


def test_file_chunks_carry_offsets_and_mark_the_last(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000, 2.5), 16000)
    chunks = list(FileSource(tmp_path / "a.wav", chunk_seconds=1.0).chunks(threading.Event()))
    assert [c.start_offset for c in chunks] == [0.0, 1.0, 2.0]
    assert [c.final for c in chunks] == [False, False, True]
    assert chunks[1].start_time - chunks[0].start_time == (chunks[2].start_time - chunks[1].start_time)


def test_directory_replay_skips_bad_files_and_goes_on(bad_files, caplog):
    sf.write(bad_files / "good_a.wav", tone(16000, 1.0), 16000)
    sf.write(bad_files / "good_b.wav", tone(16000, 1.0), 16000)
    source = DirectorySource(bad_files, [".wav", ".mp3"])
    with caplog.at_level(logging.ERROR):
        sources_seen = {c.source for c in source.chunks(threading.Event())}
    assert {p.rsplit("/", 1)[-1] for p in sources_seen} >= {"good_a.wav", "good_b.wav"}
    assert source.counters.files_ok == 2
    assert source.counters.files_failed == 5
    assert len([r for r in caplog.records if r.message.startswith("skipped:")]) == 5


def test_realtime_pacing_follows_the_clock(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000, 1.0), 16000)
    started = time.monotonic()
    list(FileSource(tmp_path / "a.wav", chunk_seconds=0.25, realtime=True).chunks(threading.Event()))
    assert time.monotonic() - started >= 0.9


def test_watch_mode_picks_up_new_files(tmp_path):
    stop = threading.Event()
    source = DirectorySource(tmp_path, [".wav"], watch=True, poll_seconds=0.2)
    seen = []

    def consume():
        for chunk in source.chunks(stop):
            seen.append(chunk.source)

    worker = threading.Thread(target=consume)
    worker.start()
    sf.write(tmp_path / "late.wav", tone(16000, 0.5), 16000)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    worker.join(5)
    assert seen and seen[0].endswith("late.wav")
    assert not worker.is_alive()
