"""station.kaiser: librosa's kaiser_fast as a polyphase stream, whatever the chunking."""
import numpy as np
import pytest

from station import kaiser
from station.kaiser import KaiserFastStream

# 44117 Hz has 48,000 phases at 48 kHz: too many to tabulate, so its weights are computed as needed
RATES = [8000, 11025, 16000, 22050, 32000, 44100, 44117, 88200, 96000]


def full_scale(rate: int, seconds: float) -> np.ndarray:
    """White noise at full scale: the loudest input, where float32 rounding differs most."""
    return np.random.default_rng(rate).uniform(-1, 1, int(rate * seconds)).astype(np.float32)


def resample(audio: np.ndarray, rate: int, sizes, out_rate: int = 48000) -> np.ndarray:
    """Feed `audio` in chunks of the given sizes (cycled), the last one marked."""
    stream, out, start, i = KaiserFastStream(rate, out_rate), [], 0, 0
    while start < len(audio):
        size = sizes[i % len(sizes)]
        out.append(stream.resample_chunk(audio[start:start + size], last=start + size >= len(audio)))
        start, i = start + size, i + 1
    return np.concatenate(out)


@pytest.fixture(params=["tabulated", "computed"])
def weights(request, monkeypatch):
    """Both ways to get the phases' weights: a polyphase filter for upfirdn, or per block of outputs."""
    if request.param == "computed":
        monkeypatch.setattr(kaiser, "MAX_TABLE", 0)
    return request.param


@pytest.mark.parametrize("rate", RATES)
def test_matches_librosa_within_1e6_at_full_scale(rate, weights):
    librosa = pytest.importorskip("librosa")
    pytest.importorskip("resampy", reason="librosa's kaiser_fast needs resampy (in the convert extra)")
    audio = full_scale(rate, 2.3)
    ours = resample(audio, rate, [len(audio)])
    theirs = librosa.resample(audio, orig_sr=rate, target_sr=48000, res_type="kaiser_fast")
    assert len(ours) == len(theirs)
    assert np.abs(ours - theirs).max() < 1e-6


@pytest.mark.parametrize("rate", [22050, 44100, 44117, 96000])
def test_any_chunking_gives_bit_identical_output(rate, weights):
    audio = full_scale(rate, 3.1)
    whole = resample(audio, rate, [len(audio)])
    sizes = [int(s) for s in np.random.default_rng(rate).integers(1, 9000, 40)]
    for chunking in ([1000], [rate // 3 + 7], [1, 2, 3, 147, 160], sizes):
        assert np.array_equal(resample(audio, rate, chunking), whole), chunking[:5]


def test_the_two_ways_to_weigh_agree(monkeypatch):
    audio = full_scale(22050, 2.0)
    tabulated = resample(audio, 22050, [5000])
    monkeypatch.setattr(kaiser, "MAX_TABLE", 0)
    computed = resample(audio, 22050, [5000])
    assert np.abs(tabulated - computed).max() < 1e-6


@pytest.mark.parametrize("length", [1, 2, 5, 23, 24, 25, 48, 49, 147, 1000])
def test_short_inputs_have_librosas_length_and_values(length):
    librosa = pytest.importorskip("librosa")
    pytest.importorskip("resampy", reason="librosa's kaiser_fast needs resampy (in the convert extra)")
    audio = full_scale(22050 + length, 1.0)[:length]
    ours = resample(audio, 22050, [7])
    theirs = librosa.resample(audio, orig_sr=22050, target_sr=48000, res_type="kaiser_fast")
    assert len(ours) == len(theirs)
    assert np.abs(ours - theirs).max() < 1e-6


def test_a_last_empty_chunk_ends_the_stream_like_a_last_full_one():
    audio = full_scale(44100, 1.5)
    stream = KaiserFastStream(44100, 48000)
    split = np.concatenate([stream.resample_chunk(audio), stream.resample_chunk(audio[:0], last=True)])
    assert np.array_equal(split, resample(audio, 44100, [len(audio)]))


def test_the_same_rate_passes_through_untouched():
    audio = full_scale(48000, 0.5)
    assert np.array_equal(KaiserFastStream(48000, 48000).resample_chunk(audio, last=True), audio)


def test_memory_stays_bounded_over_a_long_stream():
    stream, block = KaiserFastStream(22050, 48000), full_scale(22050, 1.0)
    produced = 0
    for _ in range(600):  # 10 minutes
        produced += len(stream.resample_chunk(block))
        assert len(stream._buffer) <= len(block) + 2 * stream.wing + stream.down
    assert produced == pytest.approx(600 * 48000, abs=100)
