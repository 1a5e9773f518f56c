"""A full disk: DISK_LOW first, then on the failed write one line, a closed run, a non-zero exit, nothing lost."""
import os
import sqlite3
import subprocess

import pytest

from conftest import require_or_skip, station_cli, write_config


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1.6 MB tmpfs: room for the database, its reserve and a few hundred rows."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        require_or_skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_replay_that_fills_the_disk_ends_cleanly_with_one_line(tiny_disk, tiny_model, gwwa, tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for i in range(40):
        os.symlink(gwwa, folder / f"gwwa{i:02d}.mp3")
    # Every loud window raises an alert (no cooldown): the database grows until the disk is full.
    config = write_config(tmp_path / "c.yaml", "detection:\n  threshold: 0.05\n  top_k: 5\n"
                                               "alerts:\n  cooldown_minutes: 0\n  low_confidence: 1.0\n"
                                               "  unknown_sound: 0.0\n  loud_dbfs: -90\n")
    db = tiny_disk / "st.db"
    result = station_cli("replay", str(folder), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(db), cwd=tmp_path, timeout=300)
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("station: error:")]
    assert len(errors) == 1 and "full" in errors[0], result.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (status, windows), = conn.execute("SELECT status, windows FROM runs").fetchall()
        first_alert = conn.execute("SELECT type FROM alerts ORDER BY rowid LIMIT 1").fetchone()[0]
        open_events = conn.execute("SELECT count(*) FROM detections WHERE status = 'open'").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM alerts WHERE type = 'LOW_CONFIDENCE'").fetchone()[0]
    assert status == "failed" and open_events == 0, "the run and its events were closed"
    assert first_alert == "DISK_LOW", "the disk was said to be low before it was full"
    assert windows > 0 and stored > 0, "what was committed before the disk filled is kept"


def test_a_store_on_a_full_disk_is_an_error_with_exit_5_not_a_traceback(tiny_disk, tiny_model, tmp_path):
    (tiny_disk / "ballast").write_bytes(b"\0" * (1600 * 1024 - 8192))  # nothing left for a new database
    result = station_cli("replay", str(tmp_path), "--model", str(tiny_model), "--db", str(tiny_disk / "st.db"),
                         cwd=tmp_path)
    assert result.returncode in (2, 5) and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
