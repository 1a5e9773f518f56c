"""A deterministic corpus of malformed audio inputs, with a few good files among them.

`build_corpus(folder, shared_data)` writes over a thousand small inputs that a station may
meet in a recordings folder (random bytes under every extension, absurd WAV and FLAC
headers, NaN samples, real recordings cut short, empty files, FIFOs, link loops, links to
devices) and returns what each one must do in a replay: a "bad" entry is exactly one log
line and one skipped file; a "good" one is replayed and stored. Everything is seeded, and
most files are under 20 kB, so building and replaying the corpus is quick.

What makes an entry bad or good is stated here by construction, never by asking the
station's decoder. Where a case could go either way, the reason is in `why`.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

EXTENSIONS = [".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aac"]
MP3 = "audio/birds_misc/XC13742_GWWA.mp3"  # 36 kB, 2.3 s, a 4096-byte ID3v2.4 tag first
OGG = "audio/noise/252909__kijjaz__20141026-chihuahua-barking-licking-01.ogg"  # 73 kB, 6.7 s
WAV = "audio/birds_misc/lesgol.wav"  # 132 kB, 3.0 s at 22.05 kHz
MP3_TAG_BYTES = 4096


@dataclass(frozen=True)
class Entry:
    name: str  # path relative to the corpus folder
    expect: str  # "bad": one line, one skipped file; "good": replayed and stored
    why: str
    seconds: float = 0.0  # good entries: the audio's length


class Corpus:
    def __init__(self, folder: Path, seed: int):
        self.folder = folder
        self.rng = np.random.default_rng(seed)
        self.entries: list[Entry] = []
        self.folder_problems: list[str] = []  # folders (relative) that must be reported once, not counted

    def bad(self, name: str, data: bytes, why: str) -> None:
        (self.folder / name).write_bytes(data)
        self.entries.append(Entry(name, "bad", why))

    def good(self, name: str, data: bytes, why: str, seconds: float) -> None:
        (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(data)
        self.entries.append(Entry(name, "good", why, seconds))

    def noise(self, size: int) -> bytes:
        return self.rng.integers(0, 256, size, dtype=np.uint8).tobytes()

    def size(self) -> int:
        return int(np.exp(self.rng.uniform(np.log(1), np.log(20000))))


def build_corpus(folder: Path, shared_data: Path, seed: int = 2026) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder, seed)
    for add in (_random_bytes, _random_after_magic, _wav_headers, _other_containers, _flac_headers, _nan_samples,
                _truncated, _empty_and_header_only, _file_system):
        add(corpus, shared_data)
    _good_files(corpus, shared_data)
    return corpus


# --- bad: bytes that are no audio ----------------------------------------------------------

def _random_bytes(c: Corpus, shared: Path) -> None:
    for ext in EXTENSIONS:
        for i in range(12):
            c.bad(f"random_{i:02d}{ext}", c.noise(c.size()), f"random bytes named {ext}")


def _random_after_magic(c: Corpus, shared: Path) -> None:
    """Garbage behind the first bytes each parser looks for, so it gets past the format check."""
    magics = {
        ".wav": b"RIFF\x24\x08\x00\x00WAVEfmt ",
        ".flac": b"fLaC\x00\x00\x00\x22",
        ".ogg": b"OggS\x00\x02" + bytes(20),
        ".opus": b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead",
        ".mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00",  # an empty ID3v2.3 tag, then garbage
        ".m4a": b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom",
    }
    for ext, magic in magics.items():
        for i in range(6):
            c.bad(f"magic_{i:02d}{ext}", magic + c.noise(c.size()), f"{ext} magic bytes, then garbage")
    tag = _id3_tag(b"TIT2", b"\x03a recording whose audio is gone")
    for i in range(8):
        c.bad(f"id3_garbage_{i:02d}.mp3", tag + c.noise(2000 + c.size() // 2), "a valid ID3 tag, then garbage")


def _id3_tag(frame_id: bytes, text: bytes) -> bytes:
    frame = frame_id + struct.pack(">I", len(text)) + b"\x00\x00" + text
    size = len(frame)
    synchsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + synchsafe + frame


# --- bad: absurd headers over plausible data ------------------------------------------------

def wav_bytes(rate: int, channels: int, bits: int, frames: int, data: bytes | None = None,
              fmt: int = 1, data_size: int | None = None) -> bytes:
    """A RIFF/WAVE file with the header fields as given, however absurd."""
    width = max(bits // 8, 1)
    if data is None:
        data = np.random.default_rng(frames).integers(0, 256, frames * max(channels, 1) * width,
                                                      dtype=np.uint8).tobytes()
    block_align = (channels * width) & 0xFFFF
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels & 0xFFFF, rate & 0xFFFFFFFF,
                            (rate * block_align) & 0xFFFFFFFF, block_align, bits)
    size = len(data) if data_size is None else data_size
    return (b"RIFF" + struct.pack("<I", 4 + 24 + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
            + fmt_chunk + b"data" + struct.pack("<I", size & 0xFFFFFFFF) + data)


def _layouts(rate: int) -> list[tuple[int, int]]:
    """Channel counts and widths to try a rate with. libsndfile refuses rates its int cannot hold,
    so those go on to ffprobe (~0.1 s each on a busy machine): one layout is enough there."""
    if rate == 0 or rate >= 2**31:
        return [(1, 16)]
    return [(channels, bits) for channels in (1, 2, 3, 4) for bits in (8, 16, 24, 32)]


def _wav_headers(c: Corpus, shared: Path) -> None:
    low = [0, 1, 2, 3, 5, 8, 10, 16, 25, 50, 100, 200, 441, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 7999]
    high = [384001, 400000, 705600, 768000, 1_000_000, 10_000_000, 2**31 - 1, 2**31, 4_000_000_000]
    for rate in low + high:
        for channels, bits in _layouts(rate):
            c.bad(f"rate_{rate}_{channels}ch_{bits}bit.wav", wav_bytes(rate, channels, bits, 800),
                  f"sample rate {rate} Hz (below 8 kHz or above 384 kHz)")
    for channels in (0, 65, 100, 128, 255, 256, 1000, 4096, 65535):
        rates = (8000, 16000, 44100, 48000, 96000) if 0 < channels < 4096 else (16000,)  # else: to ffprobe
        for rate in rates:
            for bits in (8, 16):
                frames = max(1, 4000 // max(channels, 1))  # small files, however many channels
                c.bad(f"channels_{channels}_{rate}_{bits}bit.wav", wav_bytes(rate, channels, bits, frames),
                      f"{channels} channels (none, or more than 64)")
    c.bad("bits_0.wav", wav_bytes(16000, 1, 0, 800, data=c.noise(800)), "0 bits per sample: no decoder")
    for fmt in (0, 99, 0x1234, 0xFFFF):
        c.bad(f"format_tag_{fmt}.wav", wav_bytes(16000, 1, 16, 800, fmt=fmt), f"unknown WAV format tag {fmt}")
    for i, claimed in enumerate([1602, 4000, 10**5, 10**6, 10**7, 10**8, 2**31 - 1, 2**32 - 2]):
        c.bad(f"data_size_{i}.wav", wav_bytes(16000, 1, 16, 800, data_size=claimed),
              f"data chunk claims {claimed} bytes in a 1.6 kB file: truncated")
    body = wav_bytes(16000, 1, 16, 800)
    for size in (0, 2, 8, 14, 1000, 2**31):
        c.bad(f"fmt_size_{size}.wav", body[:16] + struct.pack("<I", size) + body[20:], f"a fmt chunk of {size} bytes")
    c.bad("no_data_chunk.wav", body[:36], "a fmt chunk and no data chunk")
    c.bad("no_fmt_chunk.wav", b"RIFF\x00\x00\x00\x00WAVEdata\x40\x06\x00\x00" + body[44:], "data without fmt")
    c.bad("riff_not_wave.wav", body[:8] + b"AVI " + body[12:], "a RIFF file that is not WAVE")


def au_bytes(rate: int, channels: int, encoding: int, data: bytes) -> bytes:
    """A Sun/NeXT .au file (which libsndfile reads whatever the name): big-endian header fields as given."""
    return b".snd" + struct.pack(">IIIII", 24, len(data), encoding, rate & 0xFFFFFFFF, channels & 0xFFFFFFFF) + data


def aiff_bytes(rate: float, channels: int, bits: int, frames: int) -> bytes:
    """An AIFF file: COMM (rate as an 80-bit extended float, so NaN and infinity fit) and SSND."""
    data = np.random.default_rng(frames).integers(0, 256, frames * max(channels, 1) * max(bits // 8, 1),
                                                  dtype=np.uint8).tobytes()
    comm = struct.pack(">hIh", channels, frames, bits) + _extended(rate)
    ssnd = struct.pack(">II", 0, 0) + data
    chunks = b"COMM" + struct.pack(">I", len(comm)) + comm + b"SSND" + struct.pack(">I", len(ssnd)) + ssnd
    return b"FORM" + struct.pack(">I", 4 + len(chunks)) + b"AIFF" + chunks


def _extended(x: float) -> bytes:
    if np.isnan(x):
        return b"\x7f\xff" + b"\xc0" + bytes(7)
    if np.isinf(x) or x == 0:
        return (b"\xff\xff" if x < 0 else b"\x7f\xff") + bytes(8) if x else bytes(10)
    sign, x = (0x8000, -x) if x < 0 else (0, x)
    exponent = int(np.floor(np.log2(x)))
    mantissa = int(x / 2.0**exponent * 2**63)
    return struct.pack(">HQ", sign | (exponent + 16383), mantissa)


def _other_containers(c: Corpus, shared: Path) -> None:
    """The same absurd fields in the other headers libsndfile reads, under a .wav or .flac name."""
    for rate in (0, 1, 2, 100, 7999, 384001, 10**7, 2**32 - 1):
        for channels, encoding in [(1, 3)] if rate in (0, 2**32 - 1) else [(1, 2), (1, 3), (1, 6), (2, 3)]:
            c.bad(f"au_rate_{rate}_{channels}ch_enc{encoding}.wav", au_bytes(rate, channels, encoding, c.noise(1600)),
                  f"an .au header with rate {rate} Hz")
    for channels in (0, 65, 1000, 2**32 - 1):
        c.bad(f"au_channels_{channels}.wav", au_bytes(16000, channels, 3, c.noise(1600)),
              f"an .au header, {channels} channels")
    for value in (np.nan, np.inf, -np.inf):
        for at in (0, 1000, 3999):
            samples = np.full(4000, 0.1, dtype=">f4")
            samples[at] = value
            c.bad(f"au_float_{value}_{at}.wav", au_bytes(16000, 1, 6, samples.tobytes()), f".au float with {value}")
    for encoding in (0, 8, 99, 2**32 - 1):
        c.bad(f"au_encoding_{encoding}.wav", au_bytes(16000, 1, encoding, c.noise(1600)), f".au encoding {encoding}")
    for rate in (0.0, 1.0, 2.0, 0.5, 7999.0, 384001.0, 1e9, 1e300, np.inf, np.nan, -16000.0):
        for channels in (1, 2):
            for bits in (8, 16):
                c.bad(f"aiff_rate_{rate}_{channels}ch_{bits}bit.flac", aiff_bytes(rate, channels, bits, 800),
                      f"an AIFF header with rate {rate}")
    for channels in (0, -1, 65, 1000, 32767):
        c.bad(f"aiff_channels_{channels}.flac", aiff_bytes(16000.0, channels, 16, 100), f"AIFF, {channels} channels")
    for bits in (33, 64, -16):
        c.bad(f"aiff_bits_{bits}.flac", aiff_bytes(16000.0, 1, bits, 800), f"AIFF, {bits} bits per sample")


def flac_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 700 * t)).astype(np.float32), rate, format="FLAC")
    return buffer.getvalue()


def with_streaminfo(flac: bytes, rate: int | None = None, total: int | None = None) -> bytes:
    """FLAC bytes with STREAMINFO's sample rate (20 bits) or total samples (36 bits) replaced."""
    fields = int.from_bytes(flac[18:26], "big")  # rate:20 channels-1:3 bits-1:5 total:36
    if rate is not None:
        fields = (fields & ~(0xFFFFF << 44)) | ((rate & 0xFFFFF) << 44)
    if total is not None:
        fields = (fields & ~0xFFFFFFFFF) | (total & 0xFFFFFFFFF)
    return flac[:18] + fields.to_bytes(8, "big") + flac[26:]


def _flac_headers(c: Corpus, shared: Path) -> None:
    flac = flac_bytes()
    for rate in (1, 2, 3, 5, 8, 10, 16, 50, 100, 300, 441, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 7999,
                 384_001, 400_000, 500_000, 655_350, 768_000, 1_000_000, 1_048_575):
        c.bad(f"flac_rate_{rate}.flac", with_streaminfo(flac, rate=rate), f"FLAC header rate {rate} Hz")
    for total in (16000 * 3600 * 101, 16000 * 3600 * 1000, 2**36 - 1, 2**35):
        c.bad(f"flac_total_{total}.flac", with_streaminfo(flac, total=total),
              f"FLAC header claims {total / 16000 / 3600:.0f} h")
    for total in (8001, 9000, 16000, 10**6):
        c.bad(f"flac_more_{total}.flac", with_streaminfo(flac, total=total),
              "FLAC header states more samples than the file holds: truncated")


def _nan_samples(c: Corpus, shared: Path) -> None:
    for subtype in ("FLOAT", "DOUBLE"):
        for channels in (1, 2, 3):
            for value in (np.nan, np.inf, -np.inf):
                for at in (0, 1, 1999, 2000, 2001, 3999):  # around the 0.25 s chunks the test reads
                    audio = (0.1 * np.ones((4000, channels))).astype(np.float64)
                    audio[at, channels - 1] = value
                    buffer = io.BytesIO()
                    sf.write(buffer, audio, 8000, subtype=subtype, format="WAV")
                    c.bad(f"nonfinite_{subtype}_{channels}ch_{value}_{at}.wav", buffer.getvalue(),
                          f"{value} at sample {at}")


# --- bad: recordings cut short ----------------------------------------------------------------

def _truncated(c: Corpus, shared: Path) -> None:
    mp3 = (shared / MP3).read_bytes()
    for cut in (1, 3, 10, 100, 1000, 2000, 3000, 4000, MP3_TAG_BYTES - 1):
        c.bad(f"mp3_cut_in_tag_{cut}.mp3", mp3[:cut], "an MP3 cut inside its ID3 tag: no audio")
    ogg = (shared / OGG).read_bytes()
    rate = sf.info(str(shared / OGG)).samplerate
    for cut in (4, 27, 58, 100, 1000, 3000, 4000, 8000, 20000, 40000, 60000, len(ogg) - 100, len(ogg) - 1):
        seconds = ogg_complete_samples(ogg[:cut]) / rate
        if seconds > 0:  # Ogg states no length: a cut file is a shorter one, up to its last whole page
            c.good(f"ogg_cut_{cut}.ogg", ogg[:cut], "an Ogg Vorbis recording cut after some audio pages", seconds)
        else:
            c.bad(f"ogg_cut_{cut}.ogg", ogg[:cut], "an Ogg Vorbis recording cut before its first audio page")
    wav = (shared / WAV).read_bytes()
    for cut in (4, 12, 20, 36, 43, 44, 45, 46, 1000, 20000, 60000, 100000, len(wav) - 2):
        c.bad(f"wav_cut_{cut}.wav", wav[:cut], "a WAV recording cut short (its header states more)")
    buffer = io.BytesIO()
    audio, rate = sf.read(str(shared / WAV), dtype="float32")
    sf.write(buffer, audio, rate, format="FLAC")
    flac = buffer.getvalue()
    for cut in (4, 8, 20, 41, 42, 100, 2000, 10000, 30000, len(flac) // 2, len(flac) - 10, len(flac) - 1):
        c.bad(f"flac_cut_{cut}.flac", flac[:cut], "a FLAC recording cut short")


def ogg_complete_samples(data: bytes) -> int:
    """The granule position (samples decoded) at the end of the last complete Ogg page."""
    position, granule = 0, 0
    while data[position:position + 4] == b"OggS" and position + 27 <= len(data):
        segments = data[position + 26]
        table = data[position + 27:position + 27 + segments]
        end = position + 27 + segments + sum(table)
        if len(table) < segments or end > len(data):
            break
        granule = max(granule, int.from_bytes(data[position + 6:position + 14], "little", signed=True))
        position = end
    return granule


def _empty_and_header_only(c: Corpus, shared: Path) -> None:
    for ext in EXTENSIONS:
        for i in range(3):
            c.bad(f"empty_{i}{ext}", b"", "an empty file")
    for rate in (8000, 16000, 44100, 48000, 96000):
        c.bad(f"header_only_{rate}.wav", wav_bytes(rate, 1, 16, 0), "a valid WAV header and no samples")
    flac = flac_bytes()
    c.bad("header_only.flac", flac[:42], "FLAC STREAMINFO and no frames")
    c.bad("header_only_unknown_length.flac", with_streaminfo(flac[:42], total=0),
          "FLAC header, length unknown, no frames")
    c.bad("tag_only.mp3", _id3_tag(b"TIT2", b"\x03nothing after this"), "an ID3 tag and nothing else")


# --- bad: things that are not regular files -------------------------------------------------

def _file_system(c: Corpus, shared: Path) -> None:
    for ext in EXTENSIONS:
        os.mkfifo(c.folder / f"fifo{ext}")
        c.entries.append(Entry(f"fifo{ext}", "bad", "a FIFO: opening it would block"))
        os.symlink(f"self_loop{ext}", c.folder / f"self_loop{ext}")
        c.entries.append(Entry(f"self_loop{ext}", "bad", "a link to itself"))
        os.symlink(f"loop_b{ext}", c.folder / f"loop_a{ext}")
        os.symlink(f"loop_a{ext}", c.folder / f"loop_b{ext}")
        c.entries += [Entry(f"loop_a{ext}", "bad", "a two-link loop"), Entry(f"loop_b{ext}", "bad", "a two-link loop")]
        os.symlink(f"nowhere{ext}", c.folder / f"dangling{ext}")
        c.entries.append(Entry(f"dangling{ext}", "bad", "a link to nothing"))
    for device in ("zero", "null", "urandom"):
        os.symlink(f"/dev/{device}", c.folder / f"dev_{device}.wav")
        c.entries.append(Entry(f"dev_{device}.wav", "bad", f"a link to /dev/{device}: never to be read"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(c.folder / "socket.wav"))
        c.entries.append(Entry("socket.wav", "bad", "a Unix socket"))
    except OSError:
        pass  # a path too long for a socket address: the other cases still run
    finally:
        sock.close()
    (c.folder / "loops").mkdir()
    os.symlink("..", c.folder / "loops" / "up")
    c.folder_problems.append("loops/up")


# --- good -----------------------------------------------------------------------------------------

def _good_files(c: Corpus, shared: Path) -> None:
    def wav(audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, audio, rate, subtype=subtype, format="WAV")
        return buffer.getvalue()

    def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
        t = np.arange(round(rate * seconds)) / rate
        mono = (0.3 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)
        return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)

    c.good("good/tone_16k.wav", wav(tone(16000, 4.0), 16000), "a generated 16 kHz tone", 4.0)
    c.good("good/tone_8k_lowest_rate.wav", wav(tone(8000, 2.0), 8000), "the lowest accepted rate", 2.0)
    c.good("good/tone_384k_highest_rate.wav", wav(tone(384000, 1.5), 384000), "the highest accepted rate", 1.5)
    c.good("good/tone_64ch_most_channels.wav", wav(tone(8000, 1.2, 64), 8000), "the most accepted channels", 1.2)
    for bits in range(1, 8):  # fewer valid bits than the byte that holds them, as the WAV format allows
        u8 = np.round(tone(8000, 1.5) * 127 + 128).astype(np.uint8).tobytes()
        c.good(f"good/bits_{bits}_in_a_byte.wav", wav_bytes(8000, 1, bits, 0, data=u8),
               f"{bits} bits per sample in one-byte containers: read as 8-bit PCM", 1.5)
    c.good("good/tone_float_stereo.wav", wav(tone(44100, 3.0, 2), 44100, "FLOAT"), "float stereo", 3.0)
    streaming = wav_bytes(16000, 1, 16, 0, data=(tone(16000, 2.0) * 32767).astype("<i2").tobytes(),
                          data_size=0xFFFFFFFF)
    c.good("good/streaming_placeholder_size.wav", streaming,
           "data size 0xFFFFFFFF, the placeholder a streaming writer leaves: not a length claim", 2.0)
    c.good("dir_named_like_audio.wav/inside.wav", wav(tone(16000, 2.0), 16000),
           "a folder named like a recording is walked as a folder", 2.0)

    old = c.folder / "good" / "mtime_out_of_range.wav"
    c.good("good/mtime_out_of_range.wav", wav(tone(16000, 2.0), 16000), "a clock gone wild: mtime in year 30000+", 2.0)
    os.utime(old, (1e12, 1e12))

    real = sf.read(str(shared / WAV), dtype="float32")
    c.good("good/lesgol.wav", (shared / WAV).read_bytes(), "a real recording, whole", real[0].shape[0] / real[1])
    c.good("good/XC13742_GWWA.mp3", (shared / MP3).read_bytes(), "a real mp3, whole",
           _ffprobe_seconds(shared / MP3))
    c.good("good/chihuahua.ogg", (shared / OGG).read_bytes(), "a real ogg, whole", sf.info(str(shared / OGG)).duration)
    buffer = io.BytesIO()
    sf.write(buffer, real[0], real[1], format="FLAC")
    c.good("good/lesgol.flac", buffer.getvalue(), "a real recording as FLAC", real[0].shape[0] / real[1])
    os.symlink("good/lesgol.wav", c.folder / "link_to_good.wav")
    c.entries.append(Entry("link_to_good.wav", "good", "a link to a good file", real[0].shape[0] / real[1]))
    m4a = c.folder / "good" / "lesgol.m4a"  # libsndfile reads no MP4: the ffmpeg path
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(c.folder / "good" / "lesgol.wav"), "-c:a", "alac",
                    str(m4a)], check=True)
    c.entries.append(Entry("good/lesgol.m4a", "good", "a real recording as ALAC in MP4", real[0].shape[0] / real[1]))


def _ffprobe_seconds(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


if __name__ == "__main__":  # build one to look at: python tests/malformed_corpus.py OUT_DIR [SHARED_DATA]
    import sys

    target = Path(sys.argv[1])
    data = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "shared" / "data"
    built = build_corpus(target, data)
    print(f"{sum(e.expect == 'bad' for e in built.entries)} bad, "
          f"{sum(e.expect == 'good' for e in built.entries)} good in {target}")
