"""`station replay` as a user runs it: real recordings in, rows in SQLite out."""
import json
import math
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import station_cli, tone, write_config

CONFIG = """
station:
  id: test-station
detection:
  threshold: 0.3
  top_k: 3
logging:
  summary_seconds: 1
"""


def rows(db, sql, *args):
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


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
    for e in events:
        assert 0 <= e["start_offset"] < e["end_offset"] <= duration + 0.01
        assert e["end_offset"] - e["start_offset"] == pytest.approx(3.0 + 1.5 * (e["window_count"] - 1), abs=1.6)
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
        for a, b in zip(same, same[1:]):
            assert b["start_offset"] > a["end_offset"]
    assert windows_in_events <= run["windows"] * 3

    listed = station_cli("detections", "--db", str(db), "--limit", "5", cwd=tmp_path)
    assert listed.returncode == 0 and "common_name" in listed.stdout.splitlines()[0]


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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some events have been stored
        time.sleep(0.5)
        if db.exists() and rows(db, "SELECT count(*) AS n FROM detections")[0]["n"] >= 2:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if db.exists() and rows(db, "SELECT files_ok FROM runs")[0]["files_ok"] >= 1:
                break
        assert proc.poll() is None, "the watcher is still running after the bad files"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    (run,) = rows(db, "SELECT * FROM runs")
    assert (run["files_ok"], run["files_failed"]) == (1, 2)
    assert "2_nan.wav: invalid samples (NaN or infinite) at 2.50 s" in err
    assert rows(db, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    sources = {r["source"].rsplit("/", 1)[-1] for r in rows(db, "SELECT source FROM detections")}
    assert "3_bird.mp3" in sources and run["windows"] >= 30
