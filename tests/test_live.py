"""`station run` end to end as systemd would run it: a virtual microphone, a real broker, a notify socket."""
import signal
import sqlite3
import subprocess
import sys

from conftest import write_config
from mosquitto import Mosquitto, Subscriber
from test_capture import recording_at_16k
from test_notify import NotifySocket


def test_station_run_is_ready_detects_a_played_bird_publishes_it_and_stops_cleanly(virtual_mic, tiny_model, gwwa,
                                                                                  tmp_path):
    recording_at_16k(gwwa, 8.0, tmp_path / "bird.wav")
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port, "station/live/#")
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    config = write_config(tmp_path / "c.yaml",
                          "station:\n  id: live\naudio:\n  device: pulse\n  sample_rate: 16000\n  block_seconds: 0.1\n"
                          "detection:\n  threshold: 0.05\n"
                          f"mqtt:\n  enabled: true\n  port: {broker.port}\n  reconnect_max_seconds: 1\n")
    env = {**virtual_mic.env, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "4000000"}
    db = tmp_path / "st.db"
    station = subprocess.Popen([sys.executable, "-m", "station.cli", "run", "--config", str(config),
                                "--model", str(tiny_model), "--db", str(db)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        notify.wait_for("READY=1", timeout=60)
        virtual_mic.play(tmp_path / "bird.wav").wait(timeout=30)
        subscriber.wait_for(lambda: subscriber.json("station/live/detections"), timeout=60)
        notify.wait_for("WATCHDOG=1", timeout=10)
        station.send_signal(signal.SIGTERM)
        _, err = station.communicate(timeout=60)
        notify.wait_for("STOPPING=1", timeout=10)
        late = Subscriber(broker.port, "station/live/status", client_id="late-reader")
        late.wait_for(lambda: late.messages, timeout=10)
        late.close()
    finally:
        if station.poll() is None:
            station.kill()
        notify.close()
        subscriber.close()
        broker.stop()
    assert station.returncode == 0, err
    assert "Traceback" not in err
    messages = subscriber.json("station/live/detections")
    detection = messages[0]
    assert detection["source"] == "mic:pulse" and detection["status"] == "open", "published as the event opened"
    assert detection["event_type"] == "detection"
    final = [m for m in messages if m["id"] == detection["id"] and m["status"] == "closed"]
    assert final and final[-1]["event_type"] == "detection_update", "and again, same id, when it closed"
    assert late.messages == [("station/live/status", "offline", True)], "the retained status says offline"
    fields = notify.fields()
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    with sqlite3.connect(db) as conn:
        status, stopped, windows = conn.execute("SELECT status, stopped, windows FROM runs").fetchone()
        stored = {r[0] for r in conn.execute("SELECT id FROM detections WHERE status = 'closed'")}
    assert status == "stopped" and stopped and windows > 0
    assert detection["id"] in stored
