"""`station replay` as a user runs it: real recordings in, rows in SQLite out."""
import io
import json
import logging
import math
import signal
import subprocess
import sys
from itertools import pairwise
from threading import Event

import numpy as np
import pytest
import soundfile as sf

from conftest import station_cli, tone, write_config
from helpers import rows, rows_once_there, wait_for

CONFIG = """
station:
  id: test-station
detection:
  threshold: 0.3
  pair_threshold: null  # one rule, so the windows in events can be counted independently (rules: test_detection)
  top_k: 3
logging:
  summary_seconds: 1
"""


def expected_windows(seconds: float, window=3.0, hop=1.5, tail_min=1.0) -> int:
    full = max(0, math.floor((seconds - window) / hop) + 1)
    covered = (full - 1) * hop + window if full else 0.0
    return full + (seconds - covered >= tail_min)


def test_replay_of_a_real_recording_writes_merged_well_formed_events(tiny_model, gwwa, tmp_path):
    config = write_config(tmp_path / "c.yaml", CONFIG)
    db = tmp_path / "st.db"
    result = station_cli("replay", str(gwwa), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    duration = sf.info(str(gwwa)).duration
    (run,) = rows(db, "SELECT * FROM runs")
    assert run["status"] == "stopped" and run["command"] == "replay" and run["files_ok"] == 1
    assert run["windows"] == expected_windows(run["audio_seconds"])
    assert run["audio_seconds"] == pytest.approx(duration, abs=0.5)

    events = rows(db, "SELECT * FROM detections ORDER BY start_offset, label")
    assert events, "the tiny model at threshold 0.3 detects something in 50 s of birdsong"
    assert run["detections"] == len(events)
    assert {e["status"] for e in events} == {"closed"}
    assert {(e["station"], e["model"], e["source"]) for e in events} == {("test-station", "tiny-random", str(gwwa))}
    windows_in_events = 0
    full = math.floor((run["audio_seconds"] - 3.0) / 1.5) + 1  # whole windows; a tail window starts at full * 1.5
    for e in events:
        assert 0 <= e["start_offset"] < e["end_offset"] <= duration + 0.01
        assert on_the_hop_grid(e["start_offset"])
        at_the_end = e["end_offset"] == pytest.approx(run["audio_seconds"], abs=0.01)
        last_start = full * 1.5 if at_the_end else e["end_offset"] - 3.0
        assert on_the_hop_grid(last_start), e
        # Windows 1.5 s apart merge; one missed window between two detected ones does not split an event.
        n, spanned = e["window_count"], round((last_start - e["start_offset"]) / 1.5)
        assert n - 1 <= spanned <= 2 * (n - 1), e
        assert 0.3 <= e["mean_confidence"] <= e["confidence"] <= 1.0
        assert e["start_time"].endswith("Z") and e["start_time"] < e["end_time"]
        alternatives = json.loads(e["alternatives"])
        assert len(alternatives) == 3 and e["label"] in [a["label"] for a in alternatives]
        windows_in_events += e["window_count"]
    assert any(e["window_count"] > 1 for e in events), "consecutive windows were merged"
    # No two events of one species overlap: merging left nothing to merge.
    by_label = {}
    for e in events:
        by_label.setdefault(e["label"], []).append(e)
    for same in by_label.values():
        for a, b in pairwise(same):
            assert b["start_offset"] > a["end_offset"]
    # Independently, in this process: every window's top 3 at threshold 0.3 is one window of one event.
    assert windows_in_events == sum(detected_windows(tiny_model, gwwa).values())
    by_species = {}
    for e in events:
        by_species[e["label"]] = by_species.get(e["label"], 0) + e["window_count"]
    assert by_species == detected_windows(tiny_model, gwwa)

    listed = station_cli("detections", "--db", str(db), "--limit", "5", cwd=tmp_path)
    assert listed.returncode == 0 and "common_name" in listed.stdout.splitlines()[0]


def on_the_hop_grid(offset: float) -> bool:
    return abs(offset / 1.5 - round(offset / 1.5)) < 1e-3


def detected_windows(model, recording) -> dict[str, int]:
    """Per species, the windows whose top 3 hold it at a score of at least 0.3 (the CONFIG's detection)."""
    from station.inference import OnnxClassifier
    from station.sources import FileSource
    from station.windowing import Windower

    classifier = OnnxClassifier.from_path(model)
    windower = Windower(classifier.sample_rate, 3.0, 1.5, 1.0, classifier.manifest.resampler)
    found = {}
    for chunk in FileSource(recording).chunks(Event()):
        for scores in classifier.classify(windower.push(chunk)):
            for species, score in scores.top(3):
                if score >= 0.3:
                    found[species.label] = found.get(species.label, 0) + 1
    return found


def test_replay_is_deterministic(tiny_model, gwwa, tmp_path):
    config = write_config(tmp_path / "c.yaml", CONFIG)
    found = []
    for name in ("a.db", "b.db"):
        station_cli("replay", str(gwwa), "--config", str(config), "--model", str(tiny_model),
                    "--db", str(tmp_path / name), cwd=tmp_path)
        found.append(rows(tmp_path / name, "SELECT label, start_offset, end_offset, window_count, "
                                           "round(confidence, 5) AS c FROM detections ORDER BY 2, 1"))
    assert found[0] == found[1] and found[0]


def test_a_folder_with_bad_files_is_replayed_and_the_bad_ones_skipped(tiny_model, shared_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_text.wav").write_text("not audio\n" * 100)
    sf.write(folder / "b_empty.wav", tone(16000, 0.0), 16000)
    (folder / "c_real.mp3").write_bytes((shared_data / "audio/xc_puerto_rico/XC46677.mp3").read_bytes())
    sf.write(folder / "d_tone.wav", tone(22050, 4.0), 22050)
    config = write_config(tmp_path / "c.yaml", CONFIG)
    result = station_cli("replay", str(folder), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(tmp_path / "st.db"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 file(s) skipped" in result.stdout
    skipped = [line for line in result.stderr.splitlines() if "skipped:" in line]
    assert len(skipped) == 2 and "a_text.wav" in skipped[0] and "b_empty.wav" in skipped[1]
    progress = [line.split("station.progress: ", 1)[1] for line in result.stderr.splitlines()
                if "station.progress: " in line]
    assert [p.split(";")[0] for p in progress] == ["1 file(s) replayed, 2 skipped", "2 file(s) replayed, 2 skipped"]
    (run,) = rows(tmp_path / "st.db", "SELECT * FROM runs")
    assert (run["files_ok"], run["files_failed"]) == (2, 2)
    sources = {r["source"].rsplit("/", 1)[-1] for r in rows(tmp_path / "st.db", "SELECT source FROM detections")}
    assert sources <= {"c_real.mp3", "d_tone.wav"} and "c_real.mp3" in sources


def test_replay_errors_are_one_line_with_exit_codes(tiny_model, tmp_path):
    bad = write_config(tmp_path / "bad.yaml", "detection:\n  top_k: 0\n")
    cases = [
        (["replay", "nowhere.wav", "--model", str(tiny_model)], 4, "no such file or folder"),
        (["replay", str(tmp_path), "--model", str(tmp_path / "none")], 3, "no model folder here"),
        (["replay", str(tmp_path), "--config", str(bad), "--model", str(tiny_model)], 2, "detection.top_k"),
    ]
    for args, code, message in cases:
        result = station_cli(*args, "--db", str(tmp_path / "x.db"), cwd=tmp_path)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1


def test_sigterm_mid_replay_leaves_a_sound_database_with_every_closed_event(tiny_model, gwwa, tmp_path):
    config = write_config(tmp_path / "c.yaml", CONFIG)
    db = tmp_path / "st.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "replay", str(gwwa), "--realtime", "--config", str(config),
         "--model", str(tiny_model), "--db", str(db)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(rows_once_there(db, "SELECT id FROM detections")) >= 2, 60, 0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "received SIGTERM; stopping" in err

    assert rows(db, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    (run,) = rows(db, "SELECT * FROM runs")
    assert run["status"] == "stopped" and 0 < run["audio_seconds"] < sf.info(str(gwwa)).duration
    events = rows(db, "SELECT * FROM detections")
    assert events and {e["status"] for e in events} == {"closed"}, "open events are closed on shutdown"
    assert run["detections"] == len(events)


def test_a_running_watcher_survives_bad_files_and_loses_nothing(tiny_model, gwwa, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", CONFIG + "replay:\n  poll_seconds: 0.3\n")
    db = tmp_path / "st.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "replay", str(folder), "--watch", "--config", str(config),
         "--model", str(tiny_model), "--db", str(db)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (folder / "1_text.wav").write_text("not audio\n" * 100)
        nan = tone(16000, 5.0)
        nan[40000] = np.nan
        sf.write(folder / "2_nan.wav", nan, 16000, subtype="FLOAT")
        (folder / "3_bird.mp3").write_bytes(gwwa.read_bytes())
        wait_for(lambda: any(r["files_ok"] >= 1 for r in rows_once_there(db, "SELECT files_ok FROM runs")), 60, 0.5)
        assert proc.poll() is None, "the watcher is still running after the bad files"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    (run,) = rows(db, "SELECT * FROM runs")
    assert (run["files_ok"], run["files_failed"]) == (1, 2)
    assert "2_nan.wav: invalid samples (NaN or infinite) at 2.50 s" in err
    assert rows(db, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    sources = {r["source"].rsplit("/", 1)[-1] for r in rows(db, "SELECT source FROM detections")}
    assert "3_bird.mp3" in sources and run["windows"] >= 30


class FakeFolder:
    """A source of two one-second files, the second unreadable, with the counters a DirectorySource keeps."""

    name, live, connected = "fake-folder", False, True

    def __init__(self):
        from station.sources import SourceCounters

        self.counters = SourceCounters()
        self.closed = False

    def chunks(self, stop):
        from datetime import datetime, timezone

        from station.types import AudioChunk

        for i in range(2):
            yield AudioChunk(np.zeros(8000, np.float32), 16000, "a.wav", 0.5 * i, datetime.now(timezone.utc),
                             final=i == 1)
        self.counters.files_ok += 1
        self.counters.files_failed += 1  # b.wav: nothing readable, no chunk

    def close(self):
        self.closed = True


def test_replay_progress_without_a_terminal_is_a_line_when_files_finish(caplog):
    from station.progress import ReplayProgress

    caplog.set_level(logging.INFO, logger="station.progress")
    clock = iter(range(100))
    source = ReplayProgress(FakeFolder(), terminal=False, clock=lambda: float(next(clock)))
    assert (source.name, source.live, source.counters.files_ok) == ("fake-folder", False, 0)  # the folder's own
    assert len(list(source.chunks(Event()))) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "1 file(s) replayed, 1 skipped; 1.0 s of audio in 1.0 s (1.0x real time)"]
    source.close()
    assert source.source.closed


def test_replay_progress_on_a_terminal_is_one_line_redrawn_and_wiped_before_log_lines(caplog):
    from station.progress import CLEAR_LINE, ReplayProgress

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        clock = iter(range(100))  # a second per look at the clock: every redraw is due
        source = ReplayProgress(FakeFolder(), terminal=True, stream=stream, clock=lambda: float(next(clock)))
        for _ in source.chunks(Event()):
            logging.getLogger("station.test").warning("a log line")
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert text.endswith(CLEAR_LINE) and "\n" not in text.replace("a log line\n", "")
    assert text.count(CLEAR_LINE + "a log line\n") == 2  # the status line never shares a line with a log line
    assert "replay: 1 file(s) replayed, 1 skipped; 1.0 s of audio" in text
    assert not [f for f in handler.filters]  # the handler is as it was


def test_replay_progress_on_a_terminal_redraws_at_most_four_times_a_second():
    from station.progress import ReplayProgress

    stream = io.StringIO()
    source = ReplayProgress(FakeFolder(), terminal=True, stream=stream, clock=lambda: 5.0)  # time stands still
    list(source.chunks(Event()))
    assert stream.getvalue().count("replay: ") == 2  # the first draw, and the last one, which is always shown
