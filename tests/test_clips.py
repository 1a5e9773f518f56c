"""Clips: a bounded buffer of recent audio at the capture rate, and atomic FLAC clips that read back exactly."""
import errno
import logging
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
import soundfile as sf

from conftest import T0
from station.clips import ClipBuffer, ClipWriter, quantise, species_slug
from station.decode import open_audio
from station.sources import FileSource
from station.types import AudioChunk

RATE = 22050


def chunks_of(audio: np.ndarray, sizes, rate: int = RATE, source: str = "mic", start: float = 0.0):
    """`audio` cut into chunks of the given sizes (cycled), as a source would deliver it."""
    out, i, k = [], 0, 0
    while i < len(audio):
        n = sizes[k % len(sizes)]
        out.append(AudioChunk(audio[i:i + n], rate, source, start + i / rate, T0 + timedelta(seconds=start + i / rate)))
        i, k = i + n, k + 1
    return out


def test_cuts_are_exact_whatever_the_chunking_and_after_the_ring_wraps():
    audio = np.random.default_rng(1).uniform(-1, 1, RATE * 20).astype(np.float32)
    for sizes in ([RATE // 10], [1, 997, 12345, 4410], [RATE * 7]):
        buffer = ClipBuffer(seconds=8.0)
        for chunk in chunks_of(audio, sizes):
            buffer.push(chunk)
        cut = buffer.cut("mic", 13.5, 17.0)
        assert (cut.sample_rate, cut.start_offset, cut.end_offset) == (RATE, 13.5, 17.0)
        assert np.array_equal(cut.samples, audio[round(13.5 * RATE):17 * RATE])
        assert buffer.nbytes <= 8 * RATE * 4  # bounded: one ring of 8 s


def test_a_cut_is_clipped_to_what_the_buffer_still_holds():
    audio = np.arange(RATE * 10, dtype=np.float32) / (RATE * 10)
    buffer = ClipBuffer(seconds=4.0)
    for chunk in chunks_of(audio, [RATE // 4]):
        buffer.push(chunk)
    cut = buffer.cut("mic", 2.0, 7.0)  # the buffer holds 6-10 s
    assert (cut.start_offset, cut.end_offset) == (6.0, 7.0)
    assert np.array_equal(cut.samples, audio[6 * RATE:7 * RATE])
    assert buffer.cut("mic", 1.0, 5.0) is None and buffer.cut("other", 6.0, 7.0) is None
    assert buffer.held("mic") == (6.0, 10.0) and buffer.held("other") is None
    assert buffer.cut("mic", 9.5, 12.0).end_offset == 10.0  # a post-roll not heard yet


def test_a_gap_or_a_new_source_starts_a_stream_and_the_last_streams_stay_cuttable():
    audio = np.random.default_rng(2).uniform(-1, 1, RATE * 4).astype(np.float32)
    buffer = ClipBuffer(seconds=10.0, max_streams=2)
    for chunk in chunks_of(audio[:2 * RATE], [4410]) + chunks_of(audio[2 * RATE:], [4410], start=5.0):
        buffer.push(chunk)  # 0-2 s, then a 3 s gap, then 5-7 s
    before, after = buffer.cut("mic", 0.5, 2.0), buffer.cut("mic", 5.0, 6.0)
    assert np.array_equal(before.samples, audio[RATE // 2:2 * RATE])
    assert np.array_equal(after.samples, audio[2 * RATE:3 * RATE])
    across = buffer.cut("mic", 1.5, 6.5)  # never spliced across the gap: the longer side
    assert (across.start_offset, across.end_offset) == (5.0, 6.5)
    for chunk in chunks_of(audio, [RATE], source="file-b"):
        buffer.push(chunk)
    assert buffer.cut("mic", 0.5, 2.0) is None  # the oldest stream went when a third began
    assert buffer.cut("mic", 5.0, 6.0) is not None and buffer.cut("file-b", 0, 1).sample_rate == RATE


def test_a_final_chunk_ends_the_stream():
    audio = np.ones(RATE * 2, np.float32)
    buffer = ClipBuffer(seconds=10.0)
    first = AudioChunk(audio[:RATE], RATE, "f", 0.0, T0, final=True)
    again = AudioChunk(audio[RATE:], RATE, "f", 1.0, T0, final=False)  # same offsets: a new stream all the same
    buffer.push(first)
    buffer.push(again)
    assert buffer.cut("f", 0.0, 2.0).end_offset == 1.0


def test_a_replayed_files_clip_equals_the_decoded_source_samples(shared_data, tmp_path):
    source = shared_data / "audio" / "birds_misc" / "Pica_pica_30s.wav"  # 16-bit PCM, 48 kHz
    decoded, rate = sf.read(source, dtype="float32")
    buffer = ClipBuffer(seconds=30.0)
    for chunk in FileSource(source, chunk_seconds=0.37).chunks(threading.Event()):
        buffer.push(chunk)
    cut = buffer.cut(str(source), 3.0 - 1.0, 7.5 + 1.0)  # an event at 3-7.5 s with 1 s of pre- and post-roll
    writer = ClipWriter(tmp_path / "clips", min_free_mb=0)
    relative = writer.write("0123456789abcdef", "Eurasian Magpie", T0, cut.samples, cut.sample_rate)
    assert relative == "2026-05-01/eurasian-magpie/060000_01234567.flac"
    clip, clip_rate = sf.read(tmp_path / "clips" / relative, dtype="float32")
    assert clip_rate == rate == 48000 and sf.info(tmp_path / "clips" / relative).subtype == "PCM_16"
    assert np.array_equal(clip, decoded[2 * rate:round(8.5 * rate)])  # sample for sample


def test_a_clip_of_decoded_mp3_reads_back_within_half_a_16_bit_step(gwwa, tmp_path):
    info, blocks = open_audio(gwwa, 10.0)
    decoded = np.concatenate(list(blocks))
    buffer = ClipBuffer(seconds=60.0)
    for chunk in FileSource(gwwa, chunk_seconds=1.0).chunks(threading.Event()):
        buffer.push(chunk)
    cut = buffer.cut(str(gwwa), 10.0, 14.0)
    span = decoded[10 * info.sample_rate:14 * info.sample_rate]
    assert np.array_equal(cut.samples, span)
    writer = ClipWriter(tmp_path, min_free_mb=0)
    clip, _ = sf.read(tmp_path / writer.write("ab" * 8, "Golden-winged Warbler", T0, cut.samples, info.sample_rate),
                      dtype="float32")
    assert np.array_equal(clip, quantise(span, "PCM_16") / np.float32(32768))  # what was written is what is read
    assert np.abs(clip - span).max() <= 0.5 / 32768 and np.abs(span).max() < 1.0  # MP3 is not on a 16-bit grid


@pytest.mark.parametrize("fmt, subtype, step", [("flac", "PCM_24", 2.0 ** -23), ("wav", "FLOAT", 0.0)])
def test_finer_formats_keep_more(tmp_path, fmt, subtype, step):
    samples = np.random.default_rng(3).uniform(-0.9, 0.9, RATE).astype(np.float32)
    writer = ClipWriter(tmp_path, format=fmt, subtype=subtype, min_free_mb=0)
    clip, _ = sf.read(tmp_path / writer.write("cd" * 8, "Tawny Owl", T0, samples, RATE), dtype="float32")
    assert np.abs(clip - samples).max() <= step / 2


def test_full_scale_is_clipped_not_wrapped():
    assert list(quantise(np.array([1.0, 1.5, -1.0, -2.0, 0.5], np.float32), "PCM_16")) == [32767, 32767, -32768,
                                                                                         -32768, 16384]


def test_a_clip_is_written_atomically_with_its_spectrogram(tmp_path):
    pytest.importorskip("PIL", reason="spectrograms need Pillow")
    samples = (0.3 * np.sin(2 * np.pi * 3000 * np.arange(3 * RATE) / RATE)).astype(np.float32)
    writer = ClipWriter(tmp_path, spectrogram=True, min_free_mb=0)
    relative = writer.write("ef" * 8, "Dog", T0 + timedelta(hours=13, seconds=5), samples, RATE)
    assert relative == "2026-05-01/dog/190005_efefefef.flac"
    png = (tmp_path / relative).with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["190005_efefefef.flac", "190005_efefefef.png"]
    assert writer.written == 1 and writer.refused == 0


def test_a_spectrogram_is_drawn_on_demand_for_a_clip_without_one(tmp_path):
    pytest.importorskip("PIL", reason="spectrograms need Pillow")
    from PIL import Image

    from station.spectrogram import spectrogram_of_clip

    samples = (0.3 * np.sin(2 * np.pi * 3000 * np.arange(2 * RATE) / RATE)).astype(np.float32)
    clip = tmp_path / ClipWriter(tmp_path, min_free_mb=0).write("ab" * 8, "Owl", T0, samples, RATE)
    png = spectrogram_of_clip(clip)
    assert png == clip.with_suffix(".png")
    image = Image.open(png)
    width, height = image.size
    assert width == 34 + 201 and height == 14 + 257  # 100 columns a second; 512-point FFT at 22.05 kHz
    pixels = np.array(image.convert("L"))[:257, 34:]
    loudest_row = int(np.argmax(pixels[:, 100]))
    assert abs((256 - loudest_row) * RATE / 512 - 3000) < RATE / 512  # the 3 kHz tone, where it belongs


def test_no_clip_when_the_disk_is_nearly_full_said_once_and_again_when_there_is_room(tmp_path, caplog):
    writer = ClipWriter(tmp_path, min_free_mb=10 ** 9)  # a petabyte floor: never enough room
    samples = np.zeros(RATE, np.float32)
    with caplog.at_level(logging.INFO, logger="station.clips"):
        assert writer.write("a" * 16, "Owl", T0, samples, RATE) is None
        assert writer.write("b" * 16, "Owl", T0, samples, RATE) is None
        assert writer.low_space and writer.refused == 2 and not any(tmp_path.rglob("*.flac"))
        writer.min_free_mb = 0
        assert writer.write("c" * 16, "Owl", T0, samples, RATE) is not None
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "no clips are written" in m]) == 1
    assert any("writing clips again" in m for m in said) and not writer.low_space


def test_a_write_that_fails_leaves_no_file_and_the_caller_goes_on(tmp_path, monkeypatch, caplog):
    import soundfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(soundfile, "write", full)
    writer = ClipWriter(tmp_path, min_free_mb=0)
    with caplog.at_level(logging.WARNING, logger="station.clips"):
        assert writer.write("d" * 16, "Owl", T0, np.zeros(100, np.float32), RATE) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no temporary file left behind
    assert writer.refused == 1 and "No space left" in caplog.text


def test_species_folders_have_safe_names():
    assert species_slug("Eurasian Blue Tit") == "eurasian-blue-tit"
    assert species_slug("Cope's Gray Treefrog") == "cope-s-gray-treefrog"
    assert species_slug("Mésange ../../ charbonnière") == "mesange-charbonniere"
    assert species_slug("??") == "unknown"


def test_the_virtual_microphones_clip_matches_the_played_file(virtual_mic, tmp_path):
    from station.capture import MicSource

    rate = 16000
    played = np.random.default_rng(4).uniform(-0.5, 0.5, rate * 3).astype(np.float32)
    sf.write(tmp_path / "played.wav", played, rate, subtype="FLOAT")
    mic, stop, buffer = MicSource("pulse", rate, 1, block_seconds=0.1), threading.Event(), ClipBuffer(30.0)
    heard = threading.Thread(target=lambda: [buffer.push(c) for c in mic.chunks(stop)])
    heard.start()
    try:
        deadline = time.monotonic() + 10
        while not mic.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        virtual_mic.play(tmp_path / "played.wav").wait(timeout=30)
        time.sleep(1.0)
    finally:
        stop.set()
        heard.join(10)
    start, end = buffer.held(mic.name)
    everything = buffer.cut(mic.name, start, end).samples
    lead = int(np.flatnonzero(everything)[0])  # the monitor's silence before the playback
    cut = buffer.cut(mic.name, start + (lead + rate) / rate, start + (lead + 2 * rate) / rate)  # its second second
    writer = ClipWriter(tmp_path / "clips", min_free_mb=0)
    clip, clip_rate = sf.read(tmp_path / "clips" / writer.write("e" * 16, "Owl", T0, cut.samples, cut.sample_rate),
                              dtype="float32")
    assert clip_rate == rate
    assert np.array_equal(clip, quantise(played[rate:2 * rate], "PCM_16") / np.float32(32768))
