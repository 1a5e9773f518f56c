import threading

import numpy as np
import pytest
import soundfile as sf

from conftest import T0, tone
from station.sources import FileSource
from station.types import AudioChunk
from station.windowing import Windower

RATES = [8000, 22050, 44100, 48000, 96000]


def feed(samples: np.ndarray, rate: int, chunk: int, windower: Windower, source: str = "a") -> list:
    windows = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        windows += windower.push(AudioChunk(part, rate, source, start / rate, T0,
                                            final=start + chunk >= len(samples)))
    return windows


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.samples, y.samples) and x.start_offset == y.start_offset
        and x.valid_seconds == y.valid_seconds for x, y in zip(a, b))


@pytest.mark.parametrize("rate", RATES)
def test_any_chunking_gives_identical_windows(rate):
    audio = np.random.default_rng(rate).standard_normal(int(rate * 10.3)).astype(np.float32)
    whole = feed(audio, rate, len(audio), Windower(16000, 3.0, 1.5, 1.0))
    assert len(whole) == 6  # windows at 0, 1.5, 3, 4.5, 6 s, then a 2.8 s tail from 7.5 s
    for chunk in (1, 997, rate // 10, rate * 2 + 13):
        if chunk == 1 and rate > 8000:
            continue  # one-sample chunks are slow at high rates; 8 kHz covers that case
        assert same(feed(audio, rate, chunk, Windower(16000, 3.0, 1.5, 1.0)), whole), chunk


def test_random_chunk_sizes_give_identical_windows():
    rate = 44100
    audio = np.random.default_rng(1).standard_normal(rate * 8).astype(np.float32)
    whole = feed(audio, rate, len(audio), Windower(16000, 3.0, 1.0, 0.5))
    rng = np.random.default_rng(2)
    windower, windows, start = Windower(16000, 3.0, 1.0, 0.5), [], 0
    while start < len(audio):
        size = int(rng.integers(1, 20000))
        part = audio[start:start + size]
        windows += windower.push(AudioChunk(part, rate, "a", start / rate, T0, final=start + size >= len(audio)))
        start += size
    assert same(windows, whole)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_files_at_any_rate_and_channel_count_become_model_rate_windows(tmp_path, rate, channels):
    path = tmp_path / f"tone_{rate}_{channels}.wav"
    sf.write(path, tone(rate, 7.0, freq=1000.0, channels=channels), rate)
    windower, windows = Windower(16000, 3.0, 1.5, 1.0), []
    for chunk in FileSource(path, chunk_seconds=0.7).chunks(threading.Event()):
        windows += windower.push(chunk)
    assert [w.start_offset for w in windows] == [0.0, 1.5, 3.0, 4.5]
    assert all(w.sample_rate == 16000 and len(w.samples) == 48000 for w in windows)
    spectrum = np.abs(np.fft.rfft(windows[1].samples))
    assert np.argmax(spectrum) * 16000 / 48000 == pytest.approx(1000.0, abs=1.0)
    assert np.max(np.abs(windows[1].samples)) == pytest.approx(0.4, abs=0.02)  # channels averaged, not summed


def test_tail_shorter_than_minimum_is_dropped_and_counted():
    windower = Windower(16000, 3.0, 3.0, 1.0)
    windows = feed(np.ones(16000 * 3 + 8000, np.float32), 16000, 4000, windower)
    assert len(windows) == 1
    assert windower.dropped_tail_seconds == pytest.approx(0.5)


def test_tail_window_is_zero_padded_and_knows_its_length():
    windower = Windower(16000, 3.0, 3.0, 1.0)
    windows = feed(np.ones(16000 * 4 + 8000, np.float32), 16000, 4000, windower)
    assert len(windows) == 2
    tail = windows[1]
    assert tail.valid_seconds == pytest.approx(1.5) and tail.end_offset == pytest.approx(4.5)
    assert tail.samples[:24000].min() == 1.0 and tail.samples[24000:].max() == 0.0


def test_a_gap_in_the_stream_starts_a_new_one():
    windower = Windower(16000, 1.0, 1.0, 0.25)
    first = windower.push(AudioChunk(np.ones(16000 * 2, np.float32), 16000, "mic", 0.0, T0))
    after_gap = windower.push(AudioChunk(np.ones(16000 * 2, np.float32), 16000, "mic", 5.0, T0))
    assert [w.start_offset for w in first] == [0.0, 1.0]
    assert [w.start_offset for w in after_gap] == [5.0, 6.0]


def test_buffer_stays_bounded_over_a_long_stream():
    windower = Windower(16000, 3.0, 1.5, 1.0)
    block = np.zeros(48000, np.float32)
    for i in range(200):  # 30 minutes at 48 kHz
        windower.push(AudioChunk(block, 48000, "mic", i * 1.0, T0))
        assert len(windower._buffer) <= windower.window + 16000


def test_hop_longer_than_window_is_refused():
    with pytest.raises(ValueError, match="unheard"):
        Windower(16000, 3.0, 4.0)


@pytest.mark.parametrize("rate", [22050, 44100, 96000])
def test_kaiser_fast_windows_are_chunk_invariant_and_match_librosa(rate):
    librosa = pytest.importorskip("librosa")
    pytest.importorskip("resampy", reason="librosa's kaiser_fast needs resampy (in the convert extra)")
    audio = (np.random.default_rng(rate).standard_normal(int(rate * 7.3)) * 0.2).astype(np.float32)
    whole = feed(audio, rate, len(audio), Windower(48000, 3.0, 3.0, 1.0, resampler="kaiser_fast"))
    for chunk in (1000, rate // 3 + 7):
        assert same(feed(audio, rate, chunk, Windower(48000, 3.0, 3.0, 1.0, resampler="kaiser_fast")), whole)
    reference = librosa.resample(audio, orig_sr=rate, target_sr=48000, res_type="kaiser_fast")
    ours = np.concatenate([w.samples[: round(w.valid_seconds * 48000)] for w in whole])  # 3 + 3 + 1.3 s
    assert abs(len(ours) - len(reference)) <= 1  # librosa rounds the length up
    assert np.abs(ours - reference[: len(ours)]).max() < 1e-6
