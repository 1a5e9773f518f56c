"""After a crash: recovered events are published, and replaying the same audio again changes nothing."""
import json
import signal
import subprocess
import sys
import time

import soundfile as sf

from conftest import REPO, station_cli, tone, write_config
from helpers import rows, rows_once_there
from mosquitto import Mosquitto, Subscriber

CONFIG = "station:\n  id: st1\ndetection:\n  threshold: 0.3\n"



def test_replaying_the_same_audio_again_gives_the_same_events_and_no_new_alerts(tiny_model, gwwa, tmp_path):
    config = write_config(tmp_path / "c.yaml", CONFIG)
    db = tmp_path / "st.db"
    args = ["replay", str(gwwa), "--config", str(config), "--model", str(tiny_model), "--db", str(db)]
    first = station_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    events = rows(db, "SELECT id, label, start_offset, end_offset, confidence FROM detections ORDER BY id")
    alerts = rows(db, "SELECT id, type FROM alerts ORDER BY id")
    assert events and any(a["type"] == "NEW_SPECIES" for a in alerts)
    second = station_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert rows(db, "SELECT id, label, start_offset, end_offset, confidence FROM detections ORDER BY id") == events
    assert rows(db, "SELECT id, type FROM alerts ORDER BY id") == alerts
    assert "0 detections" in second.stdout, "a second pass stores nothing new"


def test_a_replay_killed_mid_file_and_run_again_leaves_no_duplicates(tiny_model, gwwa, tmp_path):
    config = write_config(tmp_path / "c.yaml", CONFIG)
    db = tmp_path / "st.db"
    args = [sys.executable, "-m", "station.cli", "replay", str(gwwa), "--config", str(config),
            "--model", str(tiny_model), "--db", str(db)]
    killed = subprocess.Popen([*args, "--realtime"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not rows_once_there(db, "SELECT 1 FROM detections"):
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert rows(db, "SELECT status FROM runs") == [{"status": "running"}]
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in rows(db, "SELECT status FROM runs ORDER BY id")] == ["crashed", "stopped"]
    groups = rows(db, "SELECT source, label, start_offset, count(*) AS n FROM detections GROUP BY 1, 2, 3")
    assert groups and all(g["n"] == 1 for g in groups)
    assert {r["status"] for r in rows(db, "SELECT status FROM detections")} == {"closed"}, \
        "the second pass closed what the crash left open"
    new_species = rows(db, "SELECT label, count(*) AS n FROM alerts WHERE type = 'NEW_SPECIES' GROUP BY 1")
    assert all(r["n"] == 1 for r in new_species)


def test_events_a_crash_left_open_are_published_as_recovered(tmp_path, tiny_model):
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port, "station/st1/detections")
    db = tmp_path / "st.db"
    code = ("import sys; sys.path.insert(0, 'tests'); from test_store import detection;"
            "from station.store import Store;"
            "s = Store.open(sys.argv[1]); r = s.start_run('st1', 'run', 'm'); s.save([detection(7)], r)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, cwd=REPO)
    sf.write(tmp_path / "quiet.wav", tone(16000, 2.0), 16000)
    config = write_config(tmp_path / "c.yaml", CONFIG + f"mqtt:\n  enabled: true\n  port: {broker.port}\n")
    try:
        result = station_cli("replay", str(tmp_path / "quiet.wav"), "--config", str(config),
                             "--model", str(tiny_model), "--db", str(db), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        subscriber.wait_for(lambda: any(m["id"] == "det7" for m in subscriber.json("station/")))
    finally:
        broker.stop()
        subscriber.close()
    (message,) = [m for m in subscriber.json("station/") if m["id"] == "det7"]
    assert message["status"] == "recovered" and message["species"]["scientific_name"] == "Strix aluco"
    schema = json.loads((REPO / "station/schemas/detection.schema.json").read_text())
    import jsonschema
    jsonschema.validate(message, schema)
