"""When a recording started: from the file's metadata, its name, what the caller knows, or its mtime.

The range filter (BirdNET weeks) and NEW_SPECIES go by the recording's date, and a download
or a copy resets a file's modification time. So the start is taken from, in this order:

1. metadata: a WAV file's GUANO `Timestamp` (the `guan` chunk Song Meters and bat detectors
   write, https://github.com/riggsd/guano-py/blob/master/doc/guano_specification.md), then what
   libsndfile exposes (wav/flac/ogg/mp3): an AudioMoth comment
   ("Recorded at 10:00:00 11/06/2019 (UTC+1) by AudioMoth ..."), a Xeno-Canto comment
   ("... // 05:55h, 2007-06-14 // ..."), or a `date` tag (ICRD, DATE, ID3 TDRC) in ISO form;
2. the name: AudioMoth `YYYYMMDD_HHMMSS`, SongMeter `PREFIX_YYYYMMDD_HHMMSS`, with `_`, `T`, `-`
   or a space between date and time and optional dashes inside them; a name with only
   `YYYYMMDD` or `YYYY-MM-DD` gives that day;
3. a date or time the caller knows (a Xeno-Canto manifest's `date=YYYY-MM-DD`);
4. the modification time minus the recording's length.

A time of day beats a bare day: the first of 1-3 with a time wins, else the first with a
day (at 00:00). Dates no calendar holds (month 13), years before 1950 and starts more than
a day in the future are not dates but other numbers, and are passed over.

Time zones: a start that states its zone (AudioMoth's "(UTC+1)", GUANO's or an ISO tag's
offset) is converted to UTC. A start without one (every name, Xeno-Canto's local times, tags
without an offset) is read as UTC. AudioMoth names are UTC by default; SongMeter names are the
recorder's local time, so where no GUANO timestamp states the zone their stored times are off by
the zone's offset, which moves the BirdNET week only for recordings made within hours of a week's
edge. The station knows no recorder's zone, and guessing the replaying machine's zone would be
wrong as often.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import soundfile as sf

from .decode import wav_chunks

log = logging.getLogger(__name__)

MIN_YEAR = 1950
Found = tuple[datetime, bool]  # the start in UTC, and whether it has a time of day (else 00:00 of its day)

_AUDIOMOTH = re.compile(r"Recorded at (\d{1,2}):(\d{2}):(\d{2}) (\d{1,2})/(\d{1,2})/(\d{4}) "
                        r"\(UTC(?:([+-])(\d{1,2})(?::(\d{2}))?)?\)")
_XENO_CANTO = re.compile(r"//\s*(?:(\d{1,2}):(\d{2}))?[^,/]*,\s*(\d{4})-(\d{2})-(\d{2})\s*//")
# Separators are captured and repeated (\2, \6) so that 2019-0611 or 09-3000 are not read as dates.
_NAME_TIME = re.compile(r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})[_T -](\d{2})([-:]?)(\d{2})\6(\d{2})(?!\d)")
_NAME_DAY = re.compile(r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})(?!\d)")
_NOTES_DATE = re.compile(r"(?:^|[;\s])date=(\d{4})-(\d{2})-(\d{2})(?![\d-])")


def recording_start(path: Path, duration: float | None, known: date | datetime | None = None) -> datetime:
    """The UTC time the recording at `path` (`duration` seconds long) started, by the rules above."""
    path = Path(path)
    finders: list[tuple[str, Callable[[], Found | None]]] = [
        ("its GUANO metadata", lambda: _iso(guano(path).get("Timestamp", ""))),
        ("its metadata", lambda: time_in_metadata(_metadata(path))),
        ("its name", lambda: time_in_name(path.name)),
        ("the caller", lambda: _given(known)),
    ]
    day: tuple[str, datetime] | None = None
    for where, find in finders:
        found = find()
        if found is None:
            continue
        moment, has_time = found
        if has_time:
            log.debug("%s: recorded at %s, from %s", path, moment.isoformat(), where)
            return moment
        day = day or (where, moment)
    if day is not None:
        log.debug("%s: recorded on %s, from %s", path, day[1].date().isoformat(), day[0])
        return day[1]
    start = modified_start(path, duration)
    log.debug("%s: no recording time in its metadata or name; %s from its modification time",
              path, start.isoformat())
    return start


def time_in_metadata(tags: dict[str, str]) -> Found | None:
    """A start in a file's tags (as soundfile's copy_metadata gives them); None if there is none."""
    comment, tagged = tags.get("comment", ""), tags.get("date", "").strip()
    return (_audiomoth(comment) or _xeno_canto(comment)
            or (_iso(tagged) if len(tagged) >= 8 else None))  # a bare year ("2019") says no week


def time_in_name(name: str) -> Found | None:
    """The first date and time in a file name, else the first date; None if it has neither."""
    for match in _NAME_TIME.finditer(name):
        y, _, mo, d, h, _, mi, s = match.groups()
        if found := _checked(y, mo, d, h, mi, s):
            return found, True
    for match in _NAME_DAY.finditer(name):
        y, _, mo, d = match.groups()
        if found := _checked(y, mo, d):
            return found, False
    return None


def date_in_notes(notes: str) -> date | None:
    """The `date=YYYY-MM-DD` of a Xeno-Canto manifest row's notes; None if absent or impossible."""
    match = _NOTES_DATE.search(notes or "")
    found = match and _checked(*match.groups())
    return found.date() if found else None


def modified_start(path: Path, duration: float | None) -> datetime:
    """When writing ended (mtime) minus the recording's length: the last resort.

    A modification time no calendar can hold (a clock gone wild) gives way to the time of the replay.
    """
    try:
        end = datetime.fromtimestamp(Path(path).stat().st_mtime, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        end = datetime.now(timezone.utc)
    return end - timedelta(seconds=duration or 0.0)


def guano(path: Path) -> dict[str, str]:
    """The GUANO fields of a WAV file (`Timestamp`, `Loc Position`, ...); {} if it has none or is no WAV.

    Only little-endian RIFF: a RIFX file's sizes would be misread. A `guan` chunk cut short
    by the end of the file is passed over.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"RIFF":
                return {}
            f.seek(0)
            size = os.fstat(f.fileno()).st_size
            for chunk_id, length in wav_chunks(f):
                if chunk_id == b"guan" and f.tell() + length <= size:
                    return _guano_fields(f.read(length).decode("utf-8", errors="replace"))
    except OSError:
        log.debug("%s: no GUANO metadata", path, exc_info=True)
    return {}


def _guano_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip():
            fields[key.strip()] = value.strip().strip("\0").strip()
    return fields


def _metadata(path: Path) -> dict[str, str]:
    try:
        with sf.SoundFile(str(path)) as f:
            return f.copy_metadata()
    except Exception:  # metadata is a hint: what libsndfile cannot read, the name may still tell
        log.debug("%s: no metadata from libsndfile", path, exc_info=True)
        return {}


def _audiomoth(comment: str) -> Found | None:
    match = _AUDIOMOTH.search(comment)
    if not match:
        return None
    h, mi, s, d, mo, y, sign, zone_h, zone_m = match.groups()
    local = _checked(y, mo, d, h, mi, s)
    if local is None:
        return None
    offset = timedelta(hours=int(zone_h or 0), minutes=int(zone_m or 0)) * (-1 if sign == "-" else 1)
    return _plausible(local - offset, has_time=True)


def _xeno_canto(comment: str) -> Found | None:
    match = _XENO_CANTO.search(comment)
    if not match:
        return None
    h, mi, y, mo, d = match.groups()
    if h is not None and (found := _checked(y, mo, d, h, mi, "0")):
        return found, True
    found = _checked(y, mo, d)
    return (found, False) if found else None


def _iso(text: str) -> Found | None:
    """An ISO 8601 date, or date and time (a zone converted to UTC, none read as UTC)."""
    try:
        day = date.fromisoformat(text)
        return _plausible(datetime(day.year, day.month, day.day, tzinfo=timezone.utc), has_time=False)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", text))
    except ValueError:
        return None
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return _plausible(moment, has_time=True)


def _given(known: date | datetime | None) -> Found | None:
    if isinstance(known, datetime):
        moment = known.replace(tzinfo=timezone.utc) if known.tzinfo is None else known.astimezone(timezone.utc)
        return moment, True
    if isinstance(known, date):
        return datetime(known.year, known.month, known.day, tzinfo=timezone.utc), False
    return None


def _checked(*parts: str) -> datetime | None:
    """A UTC datetime of (year, month, day[, hour, minute, second]) if the calendar holds it and it is plausible."""
    y, mo, d, h, mi, s = (int(p) for p in (*parts, "0", "0", "0")[:6])
    try:
        moment = datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)
    except ValueError:
        return None
    found = _plausible(moment, has_time=True)
    return found[0] if found else None


def _plausible(moment: datetime, has_time: bool) -> Found | None:
    """None for what cannot be a recording's start: before MIN_YEAR, or more than a day ahead of now."""
    if moment.year < MIN_YEAR or moment > datetime.now(timezone.utc) + timedelta(days=1):
        return None
    return moment, has_time
