"""Where audio comes from: one file, a directory of files, or a live microphone.

Sources yield AudioChunks at their own rate; resampling and windowing happen downstream,
so live capture and replay share everything after this point. A bad file is one log line
and one count, whatever went wrong while decoding it; the run goes on. What native
libraries write to stderr while a file is read goes into that file's one line.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path
from threading import Event

from . import chatter
from .decode import describe_os_error, open_audio
from .errors import AudioInputError
from .recorded import recording_start
from .types import AudioChunk

log = logging.getLogger(__name__)


class SourceCounters:
    def __init__(self) -> None:
        self.files_ok = 0
        self.files_failed = 0


class FileSource:
    """One recording, as fast as possible or paced like a live microphone (`realtime`).

    Its chunks are stamped from the recording's start (station.recorded): the file's metadata
    or name, else `recorded` (a date or time the caller knows, e.g. from a Xeno-Canto manifest),
    else its modification time.
    """

    live, connected = False, True

    def __init__(self, path: Path, chunk_seconds: float = 10.0, realtime: bool = False,
                 counters: SourceCounters | None = None, recorded: date | datetime | None = None):
        self.path = Path(path)
        self.name = str(self.path)
        self.chunk_seconds = chunk_seconds
        self.realtime = realtime
        self.counters = counters or SourceCounters()
        self.recorded = recorded

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        """The file's chunks; a file that cannot be read to its end costs one line and one count.

        Only decoding is guarded: errors raised by whoever consumes the chunks are theirs.
        """
        replayed = 0.0
        with chatter.about(self.name) as heard, closing(self._chunks(stop)) as blocks:
            while True:
                try:
                    chunk = next(blocks, None)
                except AudioInputError as exc:
                    self._skipped(str(exc), replayed, heard)
                    return
                except Exception as exc:  # a decoder's bug must cost this file, not the run
                    log.debug("decoding %s failed", self.path, exc_info=True)
                    self._skipped(f"{self.path}: {type(exc).__name__}: {exc}", replayed, heard)
                    return
                if chunk is None:
                    break
                yield chunk
                replayed = chunk.end_offset
        if not stop.is_set():
            self.counters.files_ok += 1

    def _skipped(self, problem: str, replayed: float, heard: chatter.Heard) -> None:
        self.counters.files_failed += 1
        details = [f"the first {replayed:.1f} s were replayed"] if replayed else []
        details += [said] if (said := heard.take()) else []
        log.error("skipped: %s%s", problem.replace("\n", " "), f" ({'; '.join(details)})" if details else "")

    def _chunks(self, stop: Event) -> Generator[AudioChunk, None, None]:
        info, blocks = open_audio(self.path, self.chunk_seconds)
        started_wall = time.monotonic()
        start_time = recording_start(self.path, info.duration, self.recorded)
        offset = 0.0
        pending = next(blocks, None)
        while pending is not None and not stop.is_set():
            block, failure = pending, None
            try:
                pending = next(blocks, None)
            except Exception as exc:  # the audio before a decoding error is still heard, as the stream's end
                pending, failure = None, exc
            yield AudioChunk(block, info.sample_rate, self.name, offset,
                             start_time + timedelta(seconds=offset), final=pending is None)
            if failure:
                raise failure
            offset += len(block) / info.sample_rate
            if self.realtime:
                stop.wait(max(0.0, offset - (time.monotonic() - started_wall)))

    def close(self) -> None:
        pass


class DirectorySource:
    """Every audio file in a folder tree, sorted by path; optionally watch for new ones.

    Anything with an audio extension is tried, so FIFOs, broken links and link loops named
    like recordings are each one skipped file. Links to folders are followed once; a loop or
    an unreadable folder is one line (once, however often a watched folder is walked).
    """

    live, connected = False, True

    def __init__(self, folder: Path, extensions: list[str], chunk_seconds: float = 10.0,
                 realtime: bool = False, watch: bool = False, poll_seconds: float = 5.0):
        self.folder = Path(folder)
        self.name = str(self.folder)
        self.extensions = {e.lower() for e in extensions}
        self.chunk_seconds = chunk_seconds
        self.realtime = realtime
        self.watch = watch
        self.poll_seconds = poll_seconds
        self.counters = SourceCounters()
        self._done: set[Path] = set()
        self._reported: set[Path] = set()

    def chunks(self, stop: Event) -> Iterator[AudioChunk]:
        while not stop.is_set():
            for path in self._new_files():
                if stop.is_set():
                    return
                self._done.add(path)
                yield from FileSource(path, self.chunk_seconds, self.realtime, self.counters).chunks(stop)
            if not self.watch:
                return
            stop.wait(self.poll_seconds)

    def _new_files(self) -> list[Path]:
        found, problems = walk_audio_files(self.folder, self.extensions)
        for folder, problem in problems:
            if folder not in self._reported:
                self._reported.add(folder)
                log.warning("skipped folder: %s: %s", folder, problem)
        files = [p for p in found if p not in self._done]
        if self.watch:
            files = [p for p in files if _settled(p, self.poll_seconds)]
        return files

    def close(self) -> None:
        pass


_Folder = tuple[Path, frozenset[tuple[int, int]]]  # a folder to walk, and the (device, inode)s above it


def walk_audio_files(folder: Path, extensions: set[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Paths under `folder` with one of `extensions` that are not folders, sorted; and folders not walked.

    Path.rglob neither follows links to folders nor reports what it cannot read. This walk
    follows each real folder once (by device and inode), so a link loop ends at once, and
    walks links last, so files are found under their real folder's name when it is in the tree.
    """
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    walked: dict[tuple[int, int], Path] = {}
    real: list[_Folder] = [(Path(folder), frozenset())]
    links: list[_Folder] = []
    while real or links:
        directory, ancestors = real.pop() if real else links.pop()
        try:
            status = directory.stat()
            key = (status.st_dev, status.st_ino)
            if key in walked:
                problems.append((directory, "symbolic link loop" if key in ancestors
                                 else f"a link to {walked[key]}, walked there"))
                continue
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)  # popped in order
        except OSError as exc:
            problems.append((directory, describe_os_error(exc, directory)))
            continue
        walked[key] = directory
        for entry in entries:
            path = Path(entry.path)
            if _is_folder(entry):
                (links if entry.is_symlink() else real).append((path, ancestors | {key}))
            elif path.suffix.lower() in extensions:
                files.append(path)
    return sorted(files), problems


def check_replay_path(path: Path) -> None:
    """Refuse, with one line, a replay path that is missing, a link loop or an unreadable folder."""
    try:
        if Path(path).is_dir():
            os.scandir(path).close()
        else:
            Path(path).stat()
    except OSError as exc:
        raise AudioInputError(f"{path}: {describe_os_error(exc, Path(path))}") from None


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; a link loop raises
    except OSError:
        return False


def _settled(path: Path, quiet_seconds: float) -> bool:
    """A file still being written (modified within `quiet_seconds`) waits for the next poll."""
    try:
        return time.time() - path.stat().st_mtime >= quiet_seconds
    except OSError:  # a loop or a vanished file: let the file source say so
        return True

