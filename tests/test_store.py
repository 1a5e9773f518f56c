import json
import subprocess
import sys
from datetime import timedelta

import pytest

from conftest import REPO, T0
from helpers import database_at_schema
from station.errors import StorageError
from station.store import MIGRATIONS, Store, connect
from station.types import Detection, Removal, Species


def detection(i: int = 0, status: str = "open") -> Detection:
    return Detection(
        id=f"det{i}", station="st1", source="f.wav", model="m",
        species=Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl"),
        confidence=0.9, mean_confidence=0.8, window_count=3,
        start_time=T0, end_time=T0 + timedelta(seconds=6), start_offset=0.0, end_offset=6.0,
        alternatives=(("Strix aluco_Tawny Owl", 0.9), ("Pica pica_Eurasian Magpie", 0.05)), status=status)


def test_new_database_is_migrated_and_in_wal_mode(tmp_path):
    db = connect(tmp_path / "a" / "st.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert {"detections", "runs"} <= set(db.table_names())


def test_reopening_does_not_migrate_again(tmp_path):
    connect(tmp_path / "st.db").conn.close()
    db = connect(tmp_path / "st.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_newer_schema_is_refused(tmp_path):
    db = connect(tmp_path / "st.db")
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.conn.close()
    with pytest.raises(StorageError, match="newer than this station knows"):
        connect(tmp_path / "st.db")


def test_detections_are_upserted_by_id_with_alternatives_as_json(tmp_path):
    store = Store.open(tmp_path / "st.db")
    run = store.start_run("st1", "replay", "m")
    store.save([detection(1)], run)
    store.save([detection(1, status="closed")], run)
    rows = list(store.db["detections"].rows)
    assert len(rows) == 1 and rows[0]["status"] == "closed"
    assert rows[0]["start_time"] == "2026-05-01T06:00:00.000Z" and rows[0]["end_time"] == "2026-05-01T06:00:06.000Z"
    assert json.loads(rows[0]["alternatives"])[1] == {"label": "Pica pica_Eurasian Magpie", "score": 0.05}
    assert rows[0]["scientific_name"] == "Strix aluco" and rows[0]["run_id"] == run


def test_open_events_of_a_dead_process_are_recovered_at_start(tmp_path):
    path = tmp_path / "st.db"
    # A process that opens a run and an event, then dies without closing either.
    code = ("import sys; sys.path.insert(0, 'tests'); from test_store import detection;"
            "from station.store import Store;"
            "s = Store.open(sys.argv[1]); r = s.start_run('st1', 'run', 'm'); s.save([detection(7)], r)")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO)
    store = Store.open(path)
    assert [d.id for d in store.recover()] == ["det7"]
    assert store.db["detections"].get("det7")["status"] == "recovered"
    assert [r["status"] for r in store.db["runs"].rows] == ["crashed"]
    assert store.recover() == []


def test_open_events_of_a_live_process_are_left_alone(tmp_path):
    store = Store.open(tmp_path / "st.db")
    run = store.start_run("st1", "run", "m")
    store.db["runs"].update(run, {"pid": 1})  # pid 1 is alive on every system
    store.save([detection(3)], run)
    assert store.recover() == []
    assert store.db["detections"].get("det3")["status"] == "open"


def removal(offset: float, label: str = "Strix aluco_Tawny Owl", score: float = 0.8) -> Removal:
    scientific, common = label.split("_")
    return Removal("f.wav", Species(label, scientific, common), score, T0 + timedelta(seconds=offset),
                   offset, offset + 3.0, "range")


def test_a_database_of_schema_6_gains_removals_and_a_run_count(tmp_path):
    path = tmp_path / "old.db"
    old = database_at_schema(path, 6)
    run = old["runs"].insert({"station": "st1", "command": "replay", "started": "s", "status": "stopped"}).last_pk
    old.conn.close()
    store = Store.open(path)
    assert store.db["runs"].get(run)["removed"] == 0
    assert store.save_removals([removal(0.0)], run, "st1", "m") == 1
    assert store.recent_removals()[0]["common_name"] == "Tawny Owl"


def test_removals_are_stored_once_and_listed_newest_first(tmp_path):
    store = Store.open(tmp_path / "st.db")
    run = store.start_run("st1", "replay", "m")
    batch = [removal(0.0), removal(1.5), removal(1.5, "Pica pica_Eurasian Magpie", 0.6)]
    assert store.save_removals(batch, run, "st1", "m") == 3
    assert store.save_removals(batch[1:], run, "st1", "m") == 0  # the same audio replayed again
    assert store.save_removals([], run, "st1", "m") == 0
    listed = store.recent_removals(limit=2)
    assert [(r["start_time"], r["start_offset"]) for r in listed] == [("2026-05-01T06:00:01.500Z", 1.5)] * 2
    assert {r["common_name"] for r in listed} == {"Tawny Owl", "Eurasian Magpie"}
    assert listed[0].keys() == {"start_time", "common_name", "scientific_name", "score", "source",
                                "start_offset", "end_offset", "reason"}
    row = store.db["removals"].get(next(iter(store.db.query("SELECT id FROM removals WHERE start_offset = 0")))["id"])
    assert (row["run_id"], row["label"], row["score"], row["end_offset"], row["reason"]) == (
        run, "Strix aluco_Tawny Owl", 0.8, 3.0, "range")
