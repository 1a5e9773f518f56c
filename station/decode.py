"""Decode an audio file to mono float32 blocks at its own rate, streaming.

libsndfile (via soundfile) reads wav/flac/ogg/mp3; anything else it refuses (m4a, aac,
opus in some builds) goes through ffmpeg. Channels are averaged to mono here, the same
way for both decoders. Every problem with a file is an AudioInputError of one line:

- what is not a regular, readable file (folders, FIFOs, devices, symbolic link loops) is
  refused before anything opens it (opening a FIFO would block);
- headers outside plausible limits (below) are refused before decoding;
- NaN or infinite samples end the file, since no model score over them would mean anything;
- audio that ends before the length its header states ends the file as truncated, after
  the audio that is there (MP3 excepted: its header length is only an estimate);
- a decoder error mid-file ends the file as corrupt, also after the audio before it.

Blocks are cut from one continuous decode, so any block size gives the same samples as a
whole-file read (see _SequentialFile).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from .errors import AudioInputError

# Below 8 kHz a recording keeps nothing above 4 kHz, where most bird song is; no recorder or
# codec in use goes lower, and headers that claim 1 or 2 Hz are corrupt (their bytes would be
# "replayed" as hours of audio). The top is the highest rate audio.sample_rate accepts.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 384_000
# Microphone arrays reach 32 or 64 channels; a header claiming more is corrupt.
MAX_CHANNELS = 64
# A FAT32 card's largest file (4 GiB) holds 74 h of 8 kHz 16-bit mono; longer claims are corrupt.
MAX_HOURS = 100
PROBE_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    decoder: str
    duration: float | None  # seconds, when the container says


def to_mono(frames: np.ndarray) -> np.ndarray:
    """[frames, channels] -> float32 [frames]: channels averaged, the same way for every source."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    return frames.mean(axis=1, dtype=np.float32)


def open_audio(path: Path, block_seconds: float) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """The file's format and an iterator of mono float32 blocks; raises AudioInputError."""
    path = Path(path)
    _check_regular_readable(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        return _open_with_ffmpeg(path, block_seconds, reason=_libsndfile_reason(exc))
    if info.frames == 0:  # no length in the header: ffmpeg may still find audio (or say there is none)
        return _open_with_ffmpeg(path, block_seconds, reason="no audio frames")
    _check_format(path, info.samplerate, info.channels, info.frames / max(info.samplerate, 1))
    audio = AudioInfo(info.samplerate, info.channels, "libsndfile", info.frames / info.samplerate)
    return audio, _checked(path, audio, _soundfile_blocks(path, info, block_seconds), _stated_frames(path, info))


def describe_os_error(exc: OSError, path: Path) -> str:
    """An OSError about `path` in a few words a user can act on."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        return "broken symbolic link" if path.is_symlink() else "no such file or folder"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


def _check_regular_readable(path: Path) -> None:
    try:
        status = path.stat()
    except OSError as exc:
        raise AudioInputError(f"{path}: {describe_os_error(exc, path)}") from None
    mode = status.st_mode
    if stat.S_ISDIR(mode):
        raise AudioInputError(f"{path}: a folder, not an audio file")
    if not stat.S_ISREG(mode):
        raise AudioInputError(f"{path}: not a regular file ({_kind(mode)}); not opened")
    if status.st_size == 0:
        raise AudioInputError(f"{path}: empty file")
    try:  # the decoders would report a permission problem as an unreadable format
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        raise AudioInputError(f"{path}: cannot open: {describe_os_error(exc, path)}") from None


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "not a file")


def _check_format(path: Path, rate: int, channels: int, seconds: float | None) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioInputError(f"{path}: implausible sample rate {rate} Hz in the header "
                              f"(accepted: {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioInputError(f"{path}: implausible channel count {channels} in the header "
                              f"(accepted: 1 to {MAX_CHANNELS})")
    if seconds is not None and seconds > MAX_HOURS * 3600:
        raise AudioInputError(f"{path}: header claims {seconds / 3600:.0f} h of audio "
                              f"(more than {MAX_HOURS} h: corrupt)")


class _SequentialFile(sf.SoundFile):
    """A SoundFile that reads straight on.

    soundfile asks for the position before every read of a seekable file and seeks to it
    after; for MP3 each of those seeks makes mpg123 decode again from a few frames back,
    which changes the samples after the block boundary (by up to 1.1 on a shared
    recording). Declared unseekable, it never seeks: every block size gives the samples a
    whole-file read gives, for every format."""

    def seekable(self) -> bool:
        return False


def _soundfile_blocks(path: Path, info, block_seconds: float) -> Iterator[np.ndarray]:
    block, position = max(1, int(block_seconds * info.samplerate)), 0
    try:
        with _SequentialFile(str(path)) as f:
            while True:
                # soundfile allocates what is asked for: no more than the header's length (an estimate
                # for MP3, so never less than a second), not a whole block for a short file's end
                data = f.read(min(block, max(info.frames - position, info.samplerate)), dtype="float32",
                              always_2d=True)
                if not len(data):
                    return
                position += len(data)
                yield to_mono(data)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioInputError(f"{path}: corrupt audio data: {_libsndfile_reason(exc)}") from None


def _stated_frames(path: Path, info) -> int | None:
    """The length the header states, to tell a cut file from a short one; None where it is no promise."""
    if info.format == "MP3":  # estimated from the bit rate
        return None
    if info.format in ("WAV", "WAVEX"):  # libsndfile quietly reads a cut WAV as a shorter one
        uncompressed = info.subtype.startswith("PCM_") or info.subtype in ("FLOAT", "DOUBLE", "ULAW", "ALAW")
        return _wav_data_frames(path) if uncompressed else None  # else the data size counts codec blocks
    return info.frames


def _wav_data_frames(path: Path) -> int | None:
    """Frames the RIFF data chunk's size states; None for the placeholders streaming writers leave."""
    block_align = 0
    with open(path, "rb") as f:
        for chunk_id, size in wav_chunks(f):
            if chunk_id == b"data":
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            body = f.read(min(size, 16)) if chunk_id == b"fmt " else b""
            block_align = int.from_bytes(body[12:14], "little") if len(body) == 16 else block_align
    return None


def wav_chunks(f: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """A WAVE file's chunks as (id, stated size), `f` at the chunk's body each time; none for other files.

    The caller may read from the body: the walk goes on from where the chunk ends (chunks are
    padded to an even size), so a data chunk is skipped unread, and one that states more bytes
    than the file holds ends the walk.
    """
    if f.read(12)[8:] != b"WAVE":
        return
    while len(header := f.read(8)) == 8:
        body, size = f.tell(), int.from_bytes(header[4:], "little")
        yield header[:4], size
        f.seek(body + size + size % 2)


def decode_at(path: Path, rate: int) -> np.ndarray:
    """A whole recording, mono, at `rate` (soxr HQ where it was recorded at another rate)."""
    import soxr

    info, blocks = open_audio(path, block_seconds=60.0)
    audio = np.concatenate(list(blocks))
    return audio if info.sample_rate == rate else soxr.resample(audio, info.sample_rate, rate, "HQ")


def _libsndfile_reason(exc: Exception) -> str:
    """soundfile's message without its "Error opening 'path': " prefix, which names the file again."""
    text = _last_line(str(exc))
    text = text.split("': ", 1)[1] if text.startswith("Error opening '") and "': " in text else text
    if text.startswith("File does not exist or is not a regular file"):  # what its MP3 reader says of garbage
        return "no audio found"
    return text.rstrip(".")


def _open_with_ffmpeg(path: Path, block_seconds: float, reason: str):
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise AudioInputError(f"{path}: not readable by libsndfile ({reason}) and ffmpeg is not installed")
    rate, channels = _probe(path, reason)
    _check_format(path, rate, channels, None)
    audio = AudioInfo(rate, channels, "ffmpeg", None)
    return audio, _checked(path, audio, _ffmpeg_blocks(path, audio, block_seconds), None)


def _probe(path: Path, reason: str) -> tuple[int, int]:
    """The first audio stream's sample rate and channel count, as ffprobe reads them."""
    try:
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
             "stream=sample_rate,channels", "-of", "json", str(path)],
            capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise AudioInputError(f"{path}: ffprobe gave no answer within {PROBE_TIMEOUT_SECONDS} s") from None
    try:
        stream = (json.loads(probe.stdout or "{}").get("streams") or [None])[0] if probe.returncode == 0 else None
        if stream:
            return int(stream["sample_rate"]), int(stream["channels"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    said = _last_line(probe.stderr).removeprefix(f"{path}: ") if probe.stderr.strip() else "no audio stream"
    raise AudioInputError(f"{path}: not a readable audio file (libsndfile: {reason}; ffprobe: {said})")


def _ffmpeg_blocks(path: Path, audio: AudioInfo, block_seconds: float) -> Iterator[np.ndarray]:
    frame_bytes = 4 * audio.channels
    block_bytes = max(1, int(block_seconds * audio.sample_rate)) * frame_bytes
    # -ac/-ar hold the output to the probed layout even if the stream changes mid-file;
    # stderr goes to a file, since a pipe nobody reads fills up and stalls ffmpeg.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", str(audio.channels),
             "-ar", str(audio.sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        output = proc.stdout
        assert output is not None  # stdout=PIPE
        decoded = 0
        try:
            while raw := output.read(block_bytes):
                raw = raw[: len(raw) - len(raw) % frame_bytes]
                if not raw:  # a partial frame at the very end
                    continue
                frames = np.frombuffer(raw, dtype="<f4").reshape(-1, audio.channels)
                decoded += len(frames)
                yield to_mono(frames)
            code = proc.wait()
            errors.seek(0)
            said = errors.read().decode(errors="replace")
            if code != 0 or said.strip():
                problem = "corrupt audio data" if decoded else "not a readable audio file"
                raise AudioInputError(f"{path}: {problem}: ffmpeg: {_last_line(said)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            output.close()


def _checked(path: Path, audio: AudioInfo, blocks: Iterator[np.ndarray],
             stated_frames: int | None) -> Iterator[np.ndarray]:
    position = 0
    for block in blocks:
        if not np.isfinite(block).all():
            at = (position + int(np.argmin(np.isfinite(block)))) / audio.sample_rate
            raise AudioInputError(f"{path}: invalid samples (NaN or infinite) at {at:.2f} s")
        position += len(block)
        yield block
    if position == 0:
        raise AudioInputError(f"{path}: no audio in file")
    if stated_frames is not None and position < stated_frames:
        rate = audio.sample_rate
        raise AudioInputError(f"{path}: truncated: the header states {stated_frames / rate:.2f} s, "
                              f"the file holds {position / rate:.2f} s")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
