"""station.prefetch: a source read ahead on a thread hands on the same chunks, stops, and fails as the source does."""
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import T0, tone
from station.prefetch import Prefetch
from station.sources import DirectorySource, FileSource
from station.types import AudioChunk
from station.windowing import Windower


class Counters:
    def __init__(self):
        self.files_ok = 0


class FakeSource:
    """Yields `count` numbered chunks, optionally fails after `fail_after`; records what happened."""

    live, connected, name = False, True, "fake"

    def __init__(self, count: int = 10, fail_after: int | None = None, wait_seconds: float = 0.0):
        self.count, self.fail_after, self.wait_seconds = count, fail_after, wait_seconds
        self.counters = Counters()
        self.produced = 0
        self.finished = threading.Event()  # the generator's cleanup ran
        self.stop_seen: threading.Event | None = None
        self.closed = False

    def chunks(self, stop):
        self.stop_seen = stop
        try:
            for i in range(self.count):
                if stop.is_set():
                    return
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError(f"decoder broke at chunk {i}")
                self.produced += 1
                yield AudioChunk(np.full(100, i, np.float32), 1000, self.name, i * 0.1, T0,
                                 final=i == self.count - 1)
                stop.wait(self.wait_seconds)  # like realtime pacing: ends early when stopped
            self.counters.files_ok += 1
        finally:
            self.finished.set()

    def close(self):
        self.closed = True


def numbers(chunks) -> list[int]:
    return [int(c.samples[0]) for c in chunks]


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_hands_on_every_chunk_in_order():
    source = FakeSource(50)
    got = list(Prefetch(source, depth=3).chunks(threading.Event()))
    assert numbers(got) == list(range(50))
    assert got[-1].final and not any(c.final for c in got[:-1])
    assert source.counters.files_ok == 1


def test_stays_at_most_depth_chunks_ahead():
    source = FakeSource(100)
    chunks = Prefetch(source, depth=3).chunks(threading.Event())
    assert numbers([next(chunks)]) == [0]
    assert wait_until(lambda: source.produced >= 4)  # it does read ahead: 3 queued after the one taken ...
    time.sleep(0.3)
    assert source.produced <= 1 + 3 + 1  # ... and at most one more, held while the queue is full
    assert numbers(chunks) == list(range(1, 100))


def test_a_failure_comes_after_the_chunks_before_it():
    source = FakeSource(10, fail_after=4)
    got = []
    with pytest.raises(RuntimeError, match="decoder broke at chunk 4"):
        for chunk in Prefetch(source).chunks(threading.Event()):
            got.append(chunk)
    assert numbers(got) == [0, 1, 2, 3]


def test_a_failure_in_prepare_reaches_the_consumer():
    def prepare(chunk):
        if chunk.samples[0] == 2:
            raise ValueError("cannot prepare chunk 2")
        return chunk

    got = []
    with pytest.raises(ValueError, match="chunk 2"):
        for chunk in Prefetch(FakeSource(10), prepare=prepare).chunks(threading.Event()):
            got.append(chunk)
    assert numbers(got) == [0, 1]


def test_prepare_runs_on_the_reading_thread():
    threads = set()

    def prepare(chunk):
        threads.add(threading.current_thread())
        return AudioChunk(chunk.samples * 2, chunk.sample_rate, chunk.source, chunk.start_offset, chunk.start_time,
                          chunk.final)

    got = list(Prefetch(FakeSource(5), prepare=prepare).chunks(threading.Event()))
    assert [int(c.samples[0]) for c in got] == [0, 2, 4, 6, 8]
    assert threads and threading.current_thread() not in threads


def test_once_stopped_no_chunk_is_handed_on_and_the_source_is_told():
    source, stop = FakeSource(1000, wait_seconds=60.0), threading.Event()
    prefetch = Prefetch(source, depth=2)
    chunks = prefetch.chunks(stop)
    assert numbers([next(chunks)]) == [0]
    stop.set()
    assert list(chunks) == []
    assert source.stop_seen.is_set()  # its 60 s wait ended
    assert source.finished.wait(5.0)
    prefetch.close()
    assert not prefetch._thread.is_alive() and source.closed
    assert source.counters.files_ok == 0


def test_a_consumer_that_leaves_early_stops_the_reading_thread():
    source = FakeSource(1000, wait_seconds=60.0)
    prefetch = Prefetch(source)
    for _ in prefetch.chunks(threading.Event()):
        break  # the pipeline failed and left the loop
    assert source.finished.wait(5.0)  # its 60 s wait ended without close()
    prefetch.close()
    assert not prefetch._thread.is_alive() and source.closed


def test_shows_the_wrapped_sources_name_state_and_counters():
    source = FakeSource()
    prefetch = Prefetch(source)
    assert (prefetch.name, prefetch.live, prefetch.connected, prefetch.counters) == (
        "fake", False, True, source.counters)
    source.connected = False
    assert prefetch.connected is False
    prefetch.close()
    assert source.closed


def test_a_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Prefetch(FakeSource(), depth=0)


def test_real_files_give_the_same_windows_and_counts(tmp_path):
    sf.write(tmp_path / "a.wav", tone(22050, 7.3, freq=1500.0), 22050)
    sf.write(tmp_path / "b.wav", tone(44100, 4.1, freq=900.0, channels=2), 44100)
    (tmp_path / "c.wav").write_bytes(b"RIFF not really")

    def windows(source):
        windower, found = Windower(48000, 3.0, 1.5, 1.0, resampler="kaiser_fast"), []
        for chunk in source.chunks(threading.Event()):
            found += windower.push(chunk)
        return found

    direct = windows(DirectorySource(tmp_path, [".wav"], chunk_seconds=0.7))
    folder = DirectorySource(tmp_path, [".wav"], chunk_seconds=0.7)
    ahead = windows(Prefetch(folder, depth=2))
    assert len(ahead) == len(direct) == 4 + 2  # 7.3 s: 3 windows and a tail; 4.1 s: 1 and a tail
    assert all(np.array_equal(a.samples, b.samples) and a.start_offset == b.start_offset
               and a.source == b.source for a, b in zip(ahead, direct))
    assert (folder.counters.files_ok, folder.counters.files_failed) == (2, 1)
    assert len(windows(Prefetch(FileSource(tmp_path / "a.wav", chunk_seconds=1.0)))) == 4
