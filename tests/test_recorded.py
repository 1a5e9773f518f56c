"""When a recording started: metadata, then name, then what the caller knows, then mtime (station.recorded).

Files are built here with soundfile (which writes WAV INFO, FLAC and Ogg comments), so each
rule is seen on a real file; the mtime of every file is set far from any date under test,
so a test that passes cannot be passing on the modification time.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from station.recorded import date_in_notes, guano, recording_start, time_in_metadata, time_in_name
from station.sources import FileSource

RATE = 8000
SECONDS = 2.0
MTIME = datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc)  # what no test's other rule gives


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def recording(folder: Path, name: str, fmt: str | None = None, **tags: str) -> Path:
    """A 2 s file named `name` with `tags` (comment, date) set before any audio, and its mtime at MTIME."""
    path = folder / name
    with sf.SoundFile(path, "w", RATE, 1, format=fmt) as f:
        for key, value in tags.items():
            setattr(f, key, value)
        f.write(np.zeros(round(RATE * SECONDS), np.float32))
    os.utime(path, (MTIME.timestamp(), MTIME.timestamp()))
    return path


# --- metadata --------------------------------------------------------------------------

@pytest.mark.parametrize("comment, expected", [
    ("Recorded at 10:00:00 11/06/2019 (UTC) by AudioMoth 24F319055FDF2B5D at gain setting 2 while battery "
     "state was 4.2V.", utc(2019, 6, 11, 10, 0, 0)),
    ("Recorded at 21:15:30 24/02/2021 (UTC+1) by AudioMoth 24A04F085FDF2793", utc(2021, 2, 24, 20, 15, 30)),
    ("Recorded at 01:00:00 01/03/2022 (UTC-5) during deployment X", utc(2022, 3, 1, 6, 0, 0)),
    ("Recorded at 10:00:00 11/06/2019 (UTC+5:30) by AudioMoth", utc(2019, 6, 11, 4, 30, 0)),
    ("XC13738 \u00a9 Andrew Spencer // Lake County, Minnesota // ?m // 18:15h, 2007-06-12 // song",
     utc(2007, 6, 12, 18, 15)),
    ("XC105979 // Arecibo Observatory // 300m // 11:00 ASTh, 2012-03-11 // song", utc(2012, 3, 11, 11, 0)),
])
def test_a_wav_comment_gives_the_start_in_utc(tmp_path, comment, expected):
    path = recording(tmp_path, "MOTH.WAV", comment=comment)
    assert recording_start(path, SECONDS) == expected


@pytest.mark.parametrize("fmt, name, tagged, expected", [
    ("FLAC", "a.flac", "2019-06-11T09:30:00", utc(2019, 6, 11, 9, 30)),
    ("OGG", "a.ogg", "2019-06-11T09:30:00-07:00", utc(2019, 6, 11, 16, 30)),
    ("WAV", "a.wav", "2019-06-11T09:30:00Z", utc(2019, 6, 11, 9, 30)),
    ("FLAC", "a.flac", "2019-06-11", utc(2019, 6, 11)),
])
def test_a_date_tag_gives_the_start(tmp_path, fmt, name, tagged, expected):
    path = recording(tmp_path, name, fmt, date=tagged)
    assert recording_start(path, SECONDS) == expected


def test_an_mp3_date_tag_is_read_too(tmp_path):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed (it writes the ID3 date that libsndfile cannot)")
    wav = recording(tmp_path, "a.wav")
    mp3 = tmp_path / "a.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-metadata", "date=2019-06-11T09:30:00",
                    str(mp3)], check=True)
    assert recording_start(mp3, SECONDS) == utc(2019, 6, 11, 9, 30)


@pytest.mark.parametrize("tags", [
    {"comment": "Recorded at 10:00:00 31/02/2019 (UTC) by AudioMoth"},  # no 31 February
    {"comment": "Recorded at 25:00:00 11/06/2019 (UTC) by AudioMoth"},
    {"comment": "a nice morning // 2019-13-01 //"},
    {"date": "2019"},  # a year says no week
    {"date": "last tuesday"},
    {"date": "2019-02-30"},
    {"date": "1900-06-11"},
    {"date": "2999-06-11T09:30:00"},
    {"comment": "", "date": ""},
])
def test_metadata_that_is_no_plausible_date_is_passed_over(tags):
    assert time_in_metadata(tags) is None


# --- names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("20190611_093000.WAV", utc(2019, 6, 11, 9, 30)),  # AudioMoth
    ("SMA01234_20190611_093000.wav", utc(2019, 6, 11, 9, 30)),  # SongMeter
    ("S4A09876_20190611_093000_+1.wav", utc(2019, 6, 11, 9, 30)),
    ("BLKFR-10-CPL_20190611_093000.mp3", utc(2019, 6, 11, 9, 30)),
    ("site3_20190611T093000.flac", utc(2019, 6, 11, 9, 30)),
    ("20190611-093000.wav", utc(2019, 6, 11, 9, 30)),
    ("2019-06-11T09-30-00.wav", utc(2019, 6, 11, 9, 30)),
    ("2019-06-11_09:30:00.wav", utc(2019, 6, 11, 9, 30)),
    ("2019-06-11 093000.wav", utc(2019, 6, 11, 9, 30)),
    ("dawn 2019-06-11.wav", utc(2019, 6, 11)),
    ("20190611.wav", utc(2019, 6, 11)),
    ("252909__kijjaz__20141026-chihuahua-barking.ogg", utc(2014, 10, 26)),
    ("x_20191301_093000_20190611.wav", utc(2019, 6, 11)),  # month 13 is no date; the later day is
    ("20190611_253000.wav", utc(2019, 6, 11)),  # hour 25: only the day holds
])
def test_a_name_gives_the_start(name, expected):
    found = time_in_name(name)
    assert found is not None and found[0] == expected
    assert found[1] == (expected.time() != datetime.min.time())


@pytest.mark.parametrize("name", [
    "XC13738_GWWA.mp3", "SSW49.mp3", "p286_011_speech.wav", "20191301_093000.wav", "2019-0611_093000.wav",
    "20190230.wav", "12345678.wav", "29990101_000000.wav", "recording_1234567890123.wav", "201906111.wav",
])
def test_a_name_without_a_plausible_date_gives_none(name):
    assert time_in_name(name) is None


# --- GUANO (Song Meters, bat detectors) -------------------------------------------------

GUANO = ("GUANO|Version: 1.0\nMake: Wildlife Acoustics, Inc.\nModel: Song Meter Mini\n"
         "Timestamp: 2019-06-11T09:30:00-07:00\nLoc Position: 39.30 -120.30\n\nWA|Song Meter|Prefix: BLKFR\n")


def with_guano(path: Path, text: str, before_data: bool = False) -> Path:
    """`path` rewritten with a `guan` chunk holding `text`, after the audio (as recorders write it) or before."""
    raw = path.read_bytes()
    chunks, at = [], 12
    while at < len(raw):
        length = int.from_bytes(raw[at + 4:at + 8], "little")
        chunks.append(raw[at:at + 8 + length + (length & 1)])
        at += 8 + length + (length & 1)
    body = text.encode()
    guan = b"guan" + len(body).to_bytes(4, "little") + body + b" " * (len(body) & 1)
    data = next(i for i, c in enumerate(chunks) if c[:4] == b"data")
    chunks.insert(data if before_data else len(chunks), guan)
    riff = b"WAVE" + b"".join(chunks)
    path.write_bytes(b"RIFF" + len(riff).to_bytes(4, "little") + riff)
    os.utime(path, (MTIME.timestamp(), MTIME.timestamp()))
    return path


@pytest.mark.parametrize("before_data", [False, True])
def test_a_guano_timestamp_with_its_zone_beats_the_song_meters_local_name(tmp_path, before_data):
    path = with_guano(recording(tmp_path, "BLKFR_20190611_093000.wav"), GUANO, before_data)
    assert guano(path)["Loc Position"] == "39.30 -120.30" and guano(path)["WA|Song Meter|Prefix"] == "BLKFR"
    assert sf.info(str(path)).frames == round(RATE * SECONDS), "still a WAV libsndfile reads"
    assert recording_start(path, SECONDS) == utc(2019, 6, 11, 16, 30)  # the name alone says 09:30 UTC


def test_guano_beats_an_audiomoth_comment_and_odd_lengths_are_padded(tmp_path):
    comment = "Recorded at 10:00:00 11/06/2019 (UTC) by AudioMoth"
    text = "Timestamp:\u00a02020-01-02T03:04:05z \0\n12"  # a no-break space, a lower-case zone, a NUL
    path = with_guano(recording(tmp_path, "a.wav", comment=comment), text)
    assert len(text.encode()) % 2 == 1
    assert recording_start(path, SECONDS) == utc(2020, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("damage", ["no timestamp", "not a date", "cut short", "not riff"])
def test_a_guano_chunk_that_tells_nothing_leaves_the_other_rules(tmp_path, damage):
    text = {"no timestamp": "GUANO|Version: 1.0\n", "not a date": "Timestamp: soon\n"}.get(damage, GUANO)
    path = with_guano(recording(tmp_path, "20190611_093000.wav"), text)
    if damage == "cut short":  # a chunk that claims more bytes than the file holds
        path.write_bytes(path.read_bytes()[:-20])
    if damage == "not riff":
        path.write_bytes(b"RIFX" + path.read_bytes()[4:])
    assert recording_start(path, SECONDS) == utc(2019, 6, 11, 9, 30)


# --- order, the caller's date and the last resort -------------------------------------

def test_metadata_beats_the_name(tmp_path):
    path = recording(tmp_path, "20200101_000000.wav", comment="Recorded at 10:00:00 11/06/2019 (UTC) by AudioMoth")
    assert recording_start(path, SECONDS) == utc(2019, 6, 11, 10)


def test_the_name_beats_the_callers_date(tmp_path):
    path = recording(tmp_path, "20190611_093000.wav")
    assert recording_start(path, SECONDS, date(2020, 1, 1)) == utc(2019, 6, 11, 9, 30)


def test_a_time_of_day_beats_a_bare_day_found_first(tmp_path):
    tagged = recording(tmp_path, "20190611_093000.flac", "FLAC", date="2019-06-11")
    assert recording_start(tagged, SECONDS) == utc(2019, 6, 11, 9, 30)
    named = recording(tmp_path, "2019-06-11.wav")
    assert recording_start(named, SECONDS, utc(2019, 6, 11, 5, 45)) == utc(2019, 6, 11, 5, 45)
    assert recording_start(named, SECONDS, date(2020, 1, 1)) == utc(2019, 6, 11)  # both days: the name's


def test_the_callers_date_when_the_file_tells_nothing(tmp_path):
    path = recording(tmp_path, "XC46677.wav")
    assert recording_start(path, SECONDS, date(2010, 4, 6)) == utc(2010, 4, 6)
    local = datetime(2010, 4, 6, 6, 30, tzinfo=timezone(timedelta(hours=-4)))
    assert recording_start(path, SECONDS, local) == utc(2010, 4, 6, 10, 30)


def test_the_modification_time_minus_the_length_is_the_last_resort(tmp_path):
    path = recording(tmp_path, "XC46677.wav", comment="a fine recording", date="2019")
    assert recording_start(path, SECONDS) == MTIME - timedelta(seconds=SECONDS)


def test_a_file_libsndfile_cannot_read_is_dated_by_its_name(tmp_path):
    path = tmp_path / "20190611_093000.m4a"
    path.write_bytes(b"not audio libsndfile knows")
    assert recording_start(path, None) == utc(2019, 6, 11, 9, 30)


def test_the_source_of_the_date_is_logged_at_debug(tmp_path, caplog):
    path = recording(tmp_path, "20190611_093000.wav")
    with caplog.at_level(logging.DEBUG, logger="station.recorded"):
        recording_start(path, SECONDS)
    assert "from its name" in caplog.text


@pytest.mark.parametrize("notes, expected", [
    ("XC682524 rec=Rainforest Connection; q=A; type=song; date=2021-05-02; also=-", date(2021, 5, 2)),
    ("XC1 rec=A; date=2010-04-00; also=-", None),  # Xeno-Canto's unknown day
    ("XC1 rec=A; update=2010-04-06", None),
    ("", None),
])
def test_a_manifest_date_in_notes(notes, expected):
    assert date_in_notes(notes) == expected


# --- through the file source -----------------------------------------------------------

def chunk_times(source: FileSource) -> list[datetime]:
    return [c.start_time for c in source.chunks(threading.Event())]


def test_a_copied_recording_keeps_its_date(tmp_path):
    path = recording(tmp_path, "SMA01234_20190611_093000.wav")
    (tmp_path / "downloads").mkdir()
    copy = Path(shutil.copy(path, tmp_path / "downloads"))  # a fresh mtime, as a download gives
    assert copy.stat().st_mtime > MTIME.timestamp() + 86400
    assert chunk_times(FileSource(copy, chunk_seconds=1.0)) == [utc(2019, 6, 11, 9, 30), utc(2019, 6, 11, 9, 30, 1)]


def test_the_file_source_takes_the_callers_date(tmp_path):
    path = recording(tmp_path, "XC46677.wav")
    assert chunk_times(FileSource(path, chunk_seconds=SECONDS, recorded=date(2010, 4, 6))) == [utc(2010, 4, 6)]
    assert chunk_times(FileSource(path, chunk_seconds=SECONDS)) == [MTIME - timedelta(seconds=SECONDS)]


def test_the_shared_blkfr_soundscape_dates_to_its_name(shared_data, tmp_path):
    original = shared_data / "audio" / "soundscapes" / "BLKFR-10-CPL_20190611_093000.mp3"
    assert recording_start(original, 470.0) == utc(2019, 6, 11, 9, 30)
    assert chunk_times(FileSource(original))[0] == utc(2019, 6, 11, 9, 30)
