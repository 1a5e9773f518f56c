import json
import subprocess
import sys
from datetime import timedelta

import pytest

from conftest import REPO, T0
from station.errors import StorageError
from station.store import MIGRATIONS, Store, connect
from station.types import Detection, Species


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
