"""The database under two writers and many readers: waited for, never `database is locked`."""
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, station_cli, write_config
from mosquitto import Mosquitto, Subscriber
from station.store import Store, busy, connect, write_transaction
from test_replay import expected_windows

WRITER = """
import sys
from station.store import connect, write_transaction
db = connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    with write_transaction(db):
        n = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        db.execute("INSERT INTO runs (station, command, started, status) VALUES (?, 'load', ?, 'stopped')",
                   [sys.argv[3], str(n)])
"""

READER = """
import sqlite3, sys, time
from station.store import connect
db = connect(sys.argv[1])
errors = reads = 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        db.execute("SELECT count(*), max(confidence) FROM detections").fetchone()
        db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        reads += 1
    except sqlite3.OperationalError as exc:
        errors += 1
        print(exc, file=sys.stderr)
print(reads, errors)
"""


def test_a_read_then_write_transaction_waits_for_the_lock_instead_of_failing(tmp_path):
    path = tmp_path / "st.db"
    first, second = connect(path), connect(path)
    # The failure mode: a deferred transaction reads, another connection commits, the first then writes.
    first.execute("BEGIN")
    first.execute("SELECT count(*) FROM runs").fetchone()
    second.execute("INSERT INTO runs (station, command, started, status) VALUES ('b', 'x', 't', 'stopped')")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        first.execute("INSERT INTO runs (station, command, started, status) VALUES ('a', 'x', 't', 'stopped')")
    first.execute("ROLLBACK")

    # With the write lock taken first, the second writer queues behind the first.
    order = []
    with write_transaction(first):
        first.execute("SELECT count(*) FROM runs").fetchone()
        waiter = threading.Thread(target=lambda: (_insert(second, "b2"), order.append("second")))
        waiter.start()
        time.sleep(0.3)
        first.execute("INSERT INTO runs (station, command, started, status) VALUES ('a', 'x', 't', 'stopped')")
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"]
    assert [r[0] for r in first.execute("SELECT station FROM runs ORDER BY id")] == ["b", "a", "b2"]


def _insert(db, station: str) -> None:
    with write_transaction(db):
        db.execute("SELECT count(*) FROM runs").fetchone()
        db.execute("INSERT INTO runs (station, command, started, status) VALUES (?, 'x', 't', 'stopped')", [station])


def test_a_lock_held_past_the_busy_timeout_is_waited_for_again_and_counted(tmp_path, monkeypatch):
    import station.store as store_module

    path = tmp_path / "st.db"
    holder, waiter = connect(path), connect(path)
    waiter.execute("PRAGMA busy_timeout=100")  # so the test need not hold the lock for 5 s
    holder.execute("BEGIN IMMEDIATE")
    before = busy.retries
    releaser = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    releaser.start()
    _insert(waiter, "patient")
    releaser.join()
    assert busy.retries > before
    assert waiter.execute("SELECT count(*) FROM runs WHERE station = 'patient'").fetchone()[0] == 1
    monkeypatch.setattr(store_module, "LOCK_WAIT_SECONDS", 0.3)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _insert(waiter, "impatient")  # a bounded wait: an error, not a hang
    holder.execute("ROLLBACK")


def test_writer_processes_racing_read_then_write_transactions_lose_nothing(tmp_path):
    path = tmp_path / "st.db"
    Store.open(path).close()
    per_process = 150
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(per_process), f"w{i}"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0] * 4, errors
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 4 * per_process


def test_a_replay_with_mqtt_survives_readers_and_a_second_writer_on_the_same_database(tmp_path, tiny_model, gwwa):
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port, "station/+/detections")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(6):  # five minutes of audio per replay, so that the writers overlap for a while
            os.symlink(gwwa, tmp_path / folder / f"gwwa{i}.mp3")
    db = tmp_path / "st.db"
    Store.open(db).close()
    config = write_config(tmp_path / "c.yaml", f"detection:\n  threshold: 0.3\nmqtt:\n  enabled: true\n"
                                               f"  port: {broker.port}\n  reconnect_max_seconds: 2\n")
    try:
        readers = [subprocess.Popen([sys.executable, "-c", READER, str(db), "20"], cwd=REPO, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        replays = [subprocess.Popen([sys.executable, "-m", "station.cli", "replay", str(tmp_path / folder),
                                     "--config", str(config), "--model", str(tiny_model), "--db", str(db)],
                                    cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    for folder in ("a", "b")]
        listings = [station_cli("detections", "--db", str(db), "--json", "--limit", "50", cwd=tmp_path)
                    for _ in range(5)]
        outputs = [p.communicate(timeout=300) for p in replays]
        read_results = [r.communicate(timeout=60) for r in readers]
        with sqlite3.connect(db) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM detections WHERE status = 'closed'")}
        subscriber.wait_for(lambda: {m["id"] for m in subscriber.json("station/")} >= stored)
        assert "already connected" not in broker.log(), "each replay connects under a client id of its own"
    finally:
        broker.stop()
        subscriber.close()
    for process, (_out, err) in zip(replays, outputs):
        assert process.returncode == 0, err
        assert "OperationalError" not in err and "locked" not in err and "Traceback" not in err, err
    for listing in listings:
        assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    for out, err in read_results:
        reads, errors = map(int, out.split())
        assert reads > 0 and errors == 0, err
    with sqlite3.connect(db) as conn:
        runs = conn.execute("SELECT status, windows, files_ok, audio_seconds FROM runs").fetchall()
    assert [r[0] for r in runs] == ["stopped", "stopped"]
    assert all(files_ok == 6 for _, _, files_ok, _ in runs)
    for _, windows, _, audio_seconds in runs:
        assert windows == 6 * expected_windows(audio_seconds / 6), "every window of the replay was stored"
