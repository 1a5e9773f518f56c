"""Decode an audio file to mono float32 blocks at its own rate, streaming.

libsndfile (via soundfile) reads wav/flac/ogg/mp3; anything else it refuses (m4a, aac,
opus in some builds) goes through ffmpeg. Channels are averaged to mono here, the same
way for both decoders. Every block is checked: NaN or infinite samples end the file with
an error, since no model score over them would mean anything.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from .errors import AudioInputError


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    decoder: str
    duration: float | None  # seconds, when the container says


def open_audio(path: Path, block_seconds: float) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """The file's format and an iterator of mono float32 blocks; raises AudioInputError."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: empty file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        return _open_with_ffmpeg(path, block_seconds, reason=str(exc))
    if info.frames == 0:
        raise AudioInputError(f"{path}: no audio in file")
    audio = AudioInfo(info.samplerate, info.channels, "libsndfile", info.frames / info.samplerate)
    return audio, _checked(path, audio, _soundfile_blocks(path, info, block_seconds))


def _soundfile_blocks(path: Path, info, block_seconds: float) -> Iterator[np.ndarray]:
    block = max(1, int(block_seconds * info.samplerate))
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                if not len(data):
                    return
                yield data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioInputError(f"{path}: corrupt audio data: {exc}") from None


def _open_with_ffmpeg(path: Path, block_seconds: float, reason: str):
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise AudioInputError(f"{path}: not readable by libsndfile ({_first_line(reason)}) "
                              "and ffmpeg is not installed")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels", "-of", "json", str(path)],
        capture_output=True, text=True)
    streams = json.loads(probe.stdout or "{}").get("streams") if probe.returncode == 0 else None
    if not streams:
        raise AudioInputError(f"{path}: not a readable audio file")
    audio = AudioInfo(int(streams[0]["sample_rate"]), int(streams[0]["channels"]), "ffmpeg", None)
    return audio, _checked(path, audio, _ffmpeg_blocks(path, audio, block_seconds))


def _ffmpeg_blocks(path: Path, audio: AudioInfo, block_seconds: float) -> Iterator[np.ndarray]:
    frame_bytes = 4 * audio.channels
    block_bytes = max(1, int(block_seconds * audio.sample_rate)) * frame_bytes
    proc = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
         "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            raw = proc.stdout.read(block_bytes)
            raw = raw[: len(raw) - len(raw) % frame_bytes]
            if not raw:
                break
            frames = np.frombuffer(raw, dtype="<f4").reshape(-1, audio.channels)
            yield frames.mean(axis=1, dtype=np.float32) if audio.channels > 1 else frames[:, 0].copy()
        if proc.wait() != 0:
            raise AudioInputError(f"{path}: ffmpeg: {_first_line(proc.stderr.read().decode(errors='replace'))}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _checked(path: Path, audio: AudioInfo, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    position = 0
    for block in blocks:
        if not np.isfinite(block).all():
            at = (position + int(np.argmin(np.isfinite(block)))) / audio.sample_rate
            raise AudioInputError(f"{path}: invalid samples (NaN or infinite) at {at:.2f} s")
        position += len(block)
        yield block
    if position == 0:
        raise AudioInputError(f"{path}: no audio in file")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
