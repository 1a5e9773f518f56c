import ctypes
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, tone
from malformed_corpus import flac_bytes, wav_bytes, with_streaminfo
from station.decode import open_audio
from station.errors import AudioInputError
from station.sources import DirectorySource, FileSource, walk_audio_files


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
        _, blocks = open_audio(bad_files / name, 1.0)
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


# --- malformed inputs: each is one AudioInputError of one line, never anything else ------------

def decode_all(path, block_seconds=1.0) -> tuple:
    info, blocks = open_audio(path, block_seconds)
    return info, sum(len(b) for b in blocks)


def refusal(path, block_seconds=1.0) -> str:
    with pytest.raises(AudioInputError) as error:
        decode_all(path, block_seconds)
    text = str(error.value)
    assert str(path) in text and "\n" not in text
    return text


@pytest.mark.parametrize("rate, channels, message", [
    (1, 1, "implausible sample rate 1 Hz"),
    (2, 2, "implausible sample rate 2 Hz"),
    (7999, 1, "implausible sample rate 7999 Hz"),
    (384001, 1, "implausible sample rate 384001 Hz"),
    (0, 1, "not a readable audio file"),  # libsndfile refuses it; ffprobe too
    (4_000_000_000, 1, "not a readable audio file"),
    (16000, 65, "implausible channel count 65"),
    (16000, 1000, "implausible channel count 1000"),
    (16000, 0, "not a readable audio file"),
])
def test_implausible_wav_headers_are_refused(tmp_path, rate, channels, message):
    path = tmp_path / "h.wav"
    path.write_bytes(wav_bytes(rate, channels, 16, 800))
    assert message in refusal(path)


@pytest.mark.parametrize("rate, channels", [(8000, 1), (384000, 1), (16000, 64)])
def test_the_limits_themselves_are_accepted(tmp_path, rate, channels):
    sf.write(tmp_path / "edge.wav", tone(rate, 0.5, channels=channels), rate)
    info, frames = decode_all(tmp_path / "edge.wav")
    assert (info.sample_rate, info.channels, frames) == (rate, channels, rate // 2)


def test_random_flac_bytes_never_divide_by_zero(tmp_path):
    """The attacker's case: ffprobe reads most random .flac files as 0 Hz and 0 channels."""
    rng = np.random.default_rng(7)
    for i in range(8):
        path = tmp_path / f"r{i}.flac"
        path.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
        assert "sample rate 0 Hz" in refusal(path) or "not a readable audio file" in refusal(path)


def test_a_flac_header_claiming_days_is_refused(tmp_path):
    path = tmp_path / "long.flac"
    path.write_bytes(with_streaminfo(flac_bytes(), total=16000 * 3600 * 200))
    assert "header claims 200 h of audio" in refusal(path)


def test_a_cut_wav_replays_what_is_there_then_fails_as_truncated(tmp_path, caplog):
    sf.write(tmp_path / "whole.wav", tone(16000, 3.0), 16000, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "whole.wav").read_bytes()[:44 + 2 * 20000])
    source = FileSource(tmp_path / "cut.wav", chunk_seconds=0.5)
    with caplog.at_level(logging.ERROR):
        chunks = list(source.chunks(threading.Event()))
    assert sum(len(c.samples) for c in chunks) == 20000 and chunks[-1].final
    assert (source.counters.files_ok, source.counters.files_failed) == (0, 1)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "truncated: the header states 3.00 s, the file holds 1.25 s" in line and "1.2 s were replayed" in line


def test_a_streaming_writers_placeholder_size_is_no_truncation(tmp_path):
    data = (tone(16000, 1.0) * 32767).astype("<i2").tobytes()
    (tmp_path / "stream.wav").write_bytes(wav_bytes(16000, 1, 16, 0, data=data, data_size=0xFFFFFFFF))
    source = FileSource(tmp_path / "stream.wav")
    assert len(all_audio(source)) == 16000 and source.counters.files_ok == 1


def test_nan_mid_file_ends_the_stream_after_the_audio_before_it(tmp_path):
    audio = tone(16000, 2.0)
    audio[20000] = np.inf
    sf.write(tmp_path / "inf.wav", audio, 16000, subtype="FLOAT")
    source = FileSource(tmp_path / "inf.wav", chunk_seconds=0.5)
    chunks = list(source.chunks(threading.Event()))
    assert [c.start_offset for c in chunks] == [0.0, 0.5] and chunks[-1].final
    assert source.counters.files_failed == 1


def test_what_is_not_a_regular_file_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "fifo.wav")
    os.symlink("loop.wav", tmp_path / "loop.wav")
    os.symlink("nowhere.wav", tmp_path / "dangling.wav")
    os.symlink("/dev/zero", tmp_path / "zero.wav")
    (tmp_path / "folder.wav").mkdir()
    expected = {"fifo.wav": "not a regular file (a FIFO)", "loop.wav": "symbolic link loop",
                "dangling.wav": "broken symbolic link", "zero.wav": "not a regular file (a character device)",
                "folder.wav": "a folder, not an audio file"}
    found = {}
    worker = threading.Thread(target=lambda: found.update({n: refusal(tmp_path / n) for n in expected}), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "a FIFO was opened: opening blocks until a writer comes"
    for name, message in expected.items():
        assert message in found[name], (name, found[name])


def without_permission_override() -> None:
    """In the child: drop root's power to read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone at the next exec
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_files_and_folders_are_one_line_each(tmp_path):
    sf.write(tmp_path / "good.wav", tone(16000, 0.5), 16000)
    sf.write(tmp_path / "locked.wav", tone(16000, 0.5), 16000)
    (tmp_path / "locked.wav").chmod(0o000)
    (tmp_path / "closed").mkdir()
    sf.write(tmp_path / "closed" / "inside.wav", tone(16000, 0.5), 16000)
    (tmp_path / "closed").chmod(0o000)
    code = ("import logging, sys, threading\n"
            "from station.sources import DirectorySource\n"
            "logging.basicConfig(level='INFO', format='%(levelname)s %(message)s')\n"
            "s = DirectorySource(sys.argv[1], ['.wav'])\n"
            "list(s.chunks(threading.Event()))\n"
            "print('counts', s.counters.files_ok, s.counters.files_failed)\n")
    try:
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True,
                                text=True, timeout=60, preexec_fn=without_permission_override)
    finally:
        (tmp_path / "closed").chmod(0o755)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "counts 1 1" in out, out
    assert out.count("locked.wav") == 1 and f"skipped: {tmp_path}/locked.wav: cannot open: permission denied" in out
    assert out.count("closed") == 1 and f"skipped folder: {tmp_path}/closed: permission denied" in out


def test_link_loops_in_a_folder_end_the_walk_with_one_line(tmp_path, caplog):
    sf.write(tmp_path / "good.wav", tone(16000, 0.5), 16000)
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink(str(tmp_path / "sub"), tmp_path / "a_link")  # a second way into the same folder
    sf.write(tmp_path / "sub" / "inner.wav", tone(16000, 0.5), 16000)
    source = DirectorySource(tmp_path, [".wav"])
    with caplog.at_level(logging.WARNING):
        first = source._new_files()
        second = source._new_files()  # a watched folder is walked again and again: nothing said twice
    assert first == second == [tmp_path / "good.wav", tmp_path / "sub" / "inner.wav"]
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == [f"skipped folder: {tmp_path / 'a_link'}: a link to {tmp_path / 'sub'}, walked there",
                     f"skipped folder: {tmp_path / 'sub' / 'up'}: symbolic link loop"]


def test_links_to_folders_outside_are_followed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    sf.write(tmp_path / "elsewhere" / "far.wav", tone(16000, 0.5), 16000)
    (tmp_path / "replayed").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "replayed" / "link")
    files, problems = walk_audio_files(tmp_path / "replayed", {".wav"})
    assert files == [tmp_path / "replayed" / "link" / "far.wav"] and problems == []


def test_a_decoder_bug_costs_one_file_not_the_run(tmp_path, monkeypatch, caplog):
    sf.write(tmp_path / "a.wav", tone(16000, 0.5), 16000)
    sf.write(tmp_path / "b.wav", tone(16000, 0.5), 16000)
    real_open = open_audio

    def buggy(path, block_seconds):
        if Path(path).name == "a.wav":
            return 1 % 0
        return real_open(path, block_seconds)

    monkeypatch.setattr("station.sources.open_audio", buggy)
    source = DirectorySource(tmp_path, [".wav"])
    with caplog.at_level(logging.ERROR):
        seen = {c.source for c in source.chunks(threading.Event())}
    assert seen == {str(tmp_path / "b.wav")}
    assert (source.counters.files_ok, source.counters.files_failed) == (1, 1)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line == f"skipped: {tmp_path / 'a.wav'}: ZeroDivisionError: integer modulo by zero"


@pytest.mark.parametrize("signal_like", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_while_decoding_is_not_taken_for_a_bad_file(tmp_path, monkeypatch, signal_like):
    sf.write(tmp_path / "a.wav", tone(16000, 0.5), 16000)

    def interrupted(path, block_seconds):
        raise signal_like()

    monkeypatch.setattr("station.sources.open_audio", interrupted)
    source = FileSource(tmp_path / "a.wav")
    with pytest.raises(signal_like):
        list(source.chunks(threading.Event()))
    assert source.counters.files_failed == 0


def test_errors_of_whoever_consumes_the_chunks_are_theirs(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000, 2.0), 16000)
    source = FileSource(tmp_path / "a.wav", chunk_seconds=0.5)
    chunks = source.chunks(threading.Event())
    next(chunks)
    with pytest.raises(ValueError, match="a downstream stage failed"):
        chunks.throw(ValueError("a downstream stage failed"))
    assert (source.counters.files_ok, source.counters.files_failed) == (0, 0)


def test_a_modification_time_no_calendar_holds_does_not_cost_the_file(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000, 0.5), 16000)
    os.utime(tmp_path / "a.wav", (1e12, 1e12))
    source = FileSource(tmp_path / "a.wav")
    assert len(all_audio(source)) == 8000 and source.counters.files_ok == 1
