"""Publishing against a real Mosquitto on a free loopback port."""
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import jsonschema
import pytest

from conftest import REPO, T0, station_cli, tone, write_config
from helpers import rows
from mosquitto import Mosquitto, Subscriber, make_test_ca
from station.config import MqttSettings, Settings
from station.messages import Topics
from station.mqtt import MqttService
from station.outbox import enqueue
from station.publish import DetectionPublisher
from station.store import Store
from station.supervise import Supervisor
from station.types import Detection, Species

SCHEMAS = {name: json.loads((REPO / "station" / "schemas" / f"{name}.schema.json").read_text())
           for name in ("detection", "alert", "health")}
OWL = Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl")


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "broker").mkdir()
    server = Mosquitto(tmp_path / "broker").start()
    yield server
    server.stop()


def mqtt_config(port: int, extra: str = "") -> str:
    return (f"station:\n  id: st1\ndetection:\n  threshold: 0.3\nmqtt:\n  enabled: true\n  port: {port}\n"
            f"  reconnect_max_seconds: 2\n{extra}")



def test_a_replay_publishes_every_detection_and_alert_valid_against_the_schemas(broker, tiny_model, gwwa, tmp_path):
    subscriber = Subscriber(broker.port, "station/#")
    config = write_config(tmp_path / "c.yaml", mqtt_config(broker.port))
    Store.open(tmp_path / "daemon.db").close()
    daemon = MqttService(MqttSettings(enabled=True, port=broker.port), Topics("station", "st1"),
                         tmp_path / "daemon.db", None)  # the station's own daemon, running meanwhile
    daemon.start(Supervisor(threading.Event()))
    assert daemon.connected.wait(10)
    result = station_cli("replay", str(gwwa), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(tmp_path / "st.db"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "already connected" not in broker.log(), "the replay has a client id of its own"
    assert daemon.connected.is_set()
    stored = rows(tmp_path / "st.db", "SELECT id FROM detections WHERE status = 'closed'")
    alerts = rows(tmp_path / "st.db", "SELECT id, type FROM alerts")
    assert stored and alerts, "the tiny model detects and NEW_SPECIES fires on a first replay"
    subscriber.wait_for(lambda: len(subscriber.json("station/st1/detections")) >= len(stored)
                        and len(subscriber.json("station/st1/alerts/")) >= len(alerts))
    detections = subscriber.json("station/st1/detections")
    assert {d["id"] for d in detections} == {r["id"] for r in stored}
    for payload in detections:
        jsonschema.validate(payload, SCHEMAS["detection"])
    published_alerts = subscriber.json("station/st1/alerts/")
    assert {a["id"] for a in published_alerts} == {a["id"] for a in alerts}
    for payload in published_alerts:
        jsonschema.validate(payload, SCHEMAS["alert"])
    assert rows(tmp_path / "st.db", "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")[0]["n"] == 0
    daemon.stop()
    statuses = [p for t, p, _ in subscriber.messages if t == "station/st1/status"]
    assert statuses == ["online", "offline"], "only the daemon speaks for the station's availability"
    subscriber.close()


def feed(store, publisher, detections):
    for det in detections:
        with store.transaction():
            store.save([det], None)
            publisher.on_batch(store.db, [], [det])


def test_a_broker_outage_loses_nothing_and_keeps_order(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="station.mqtt")
    subscriber = Subscriber(broker.port, "station/st1/detections")
    store = Store.open(tmp_path / "st.db")
    topics = Topics("station", "st1")
    publisher = DetectionPublisher(topics)
    service = MqttService(MqttSettings(enabled=True, port=broker.port, reconnect_max_seconds=1), topics,
                          tmp_path / "st.db", None)
    service.start(Supervisor(threading.Event()))
    sent = [Detection(f"det{i:03d}", "st1", "mic", "m", OWL, 0.9, 0.9, 1, T0 + timedelta(seconds=i),
                      T0 + timedelta(seconds=i + 3), i, i + 3, status="closed") for i in range(90)]
    feed(store, publisher, sent[:30])
    subscriber.wait_for(lambda: len(subscriber.json("station")) >= 30)
    broker.stop()
    feed(store, publisher, sent[30:60])  # the broker is down: these wait in the outbox
    time.sleep(1.5)
    broker.start()
    feed(store, publisher, sent[60:])
    subscriber.wait_for(lambda: len({m["id"] for m in subscriber.json("station")}) >= 90, timeout=60)
    service.stop()
    store.close()
    received = [m["id"] for m in subscriber.json("station")]
    first_seen = list(dict.fromkeys(received))
    assert first_seen == [d.id for d in sent], "every message arrived, first copies in order"
    assert set(received) == set(first_seen)  # duplicates, if any, carry an id already seen
    messages = [r.getMessage() for r in caplog.records if r.name == "station.mqtt"]
    assert sum(m.rsplit(": ", 1)[-1] == "connected" for m in messages) == 2
    assert sum("disconnected" in m for m in messages) == 1
    assert sum("unreachable" in m for m in messages) <= 1, "one line per state change, not per attempt"
    subscriber.close()


def test_a_wrong_password_is_reported_detections_are_kept_and_sent_once_fixed(tmp_path, tiny_model, gwwa):
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", users={"station": "right-pass", "reader": "reader-pass"}).start()
    try:
        subscriber = Subscriber(broker.port, "station/st1/detections", username="reader", password="reader-pass")
        config = write_config(tmp_path / "c.yaml", mqtt_config(broker.port, "  username: station\n"))
        db = tmp_path / "st.db"
        args = ["replay", "--config", str(config), "--model", str(tiny_model), "--db", str(db)]
        env = {**os.environ, "STATION_MQTT_PASSWORD": "wrong-pass"}
        first = subprocess.run([sys.executable, "-m", "station.cli", *args[:1], str(gwwa), *args[1:]],
                               cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert first.returncode == 0, first.stderr
        refused = [line for line in first.stderr.splitlines() if "connection refused" in line]
        assert len(refused) == 1 and "mqtt_password" in refused[0]
        assert "wrong-pass" not in first.stderr
        stored = rows(db, "SELECT id FROM detections WHERE status = 'closed'")
        assert stored and rows(db, "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")[0]["n"] >= len(stored)

        import soundfile as sf
        sf.write(tmp_path / "short.wav", tone(16000, 2.0), 16000)
        env["STATION_MQTT_PASSWORD"] = "right-pass"
        second = subprocess.run([sys.executable, "-m", "station.cli", "replay", str(tmp_path / "short.wav"), *args[1:]],
                                cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 0, second.stderr
        subscriber.wait_for(lambda: {m["id"] for m in subscriber.json("station")} >= {r["id"] for r in stored})
        subscriber.close()
    finally:
        broker.stop()


def test_tls_with_a_test_ca(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "broker").mkdir()
    pki = make_test_ca(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "broker", tls=pki).start()
    try:
        good = write_config(tmp_path / "good.yaml", mqtt_config(broker.port, "  tls:\n    ca_file: pki/ca.crt\n"))
        ok = station_cli("mqtt", "test", "--config", str(good), cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert "acknowledged" in ok.stdout
        untrusted = write_config(tmp_path / "bad.yaml", mqtt_config(broker.port, "  tls: {}\n"))
        refused = station_cli("mqtt", "test", "--config", str(untrusted), cwd=tmp_path)
        assert refused.returncode == 1 and "certificate verify failed" in refused.stderr
        assert refused.stderr.count("\n") == 1
    finally:
        broker.stop()


def test_mqtt_test_command_reports_success_and_an_unreachable_broker(broker, tmp_path):
    Store.open(tmp_path / "daemon.db").close()
    daemon = MqttService(MqttSettings(enabled=True, port=broker.port), Topics("station", "st1"),
                         tmp_path / "daemon.db", None)  # the station's own daemon, running meanwhile
    daemon.start(Supervisor(threading.Event()))
    assert daemon.connected.wait(10)
    ok = station_cli("mqtt", "test", "--config", str(write_config(tmp_path / "a.yaml", mqtt_config(broker.port))),
                     cwd=tmp_path)
    assert ok.returncode == 0 and f"127.0.0.1:{broker.port}: connected" in ok.stdout
    assert "already connected" not in broker.log(), "the test connects under a client id of its own"
    daemon.stop()
    broker.stop()
    down = station_cli("mqtt", "test", "--config", str(write_config(tmp_path / "b.yaml", mqtt_config(broker.port))),
                       cwd=tmp_path)
    assert down.returncode == 1 and "cannot connect" in down.stderr


def test_home_assistant_discovery_is_retained_and_re_announced(broker, tmp_path):
    from station.app import start_mqtt
    from station.homeassistant import discovery_messages

    settings = Settings.model_validate({"station": {"id": "st1"}, "storage": {"database": str(tmp_path / "st.db")},
                                        "mqtt": {"enabled": True, "port": broker.port,
                                                 "homeassistant": {"enabled": True}}})
    Store.open(tmp_path / "st.db").close()
    topics = Topics("station", "st1")
    expected = discovery_messages(topics, "homeassistant", "m")
    subscriber = Subscriber(broker.port, "homeassistant/#", client_id="ha")
    service = start_mqtt(settings, topics, "m", Supervisor(threading.Event()), "run")
    subscriber.wait_for(lambda: len(subscriber.messages) >= len(expected))
    configs = {t: json.loads(p) for t, p, _ in subscriber.messages}
    event = configs["homeassistant/event/field_station_st1/detection/config"]
    assert event["event_types"] == ["detection", "detection_update"]
    assert event["state_topic"] == "station/st1/detections"
    assert all(c["availability_topic"] == "station/st1/status" and c["device"]["identifiers"] == ["field_station_st1"]
               for c in configs.values())
    assert event["default_entity_id"] == "event.field_station_st1_detection"
    for topic, config in configs.items():  # Home Assistant 2026.4+: default_entity_id is "<domain>.<id>"
        assert "object_id" not in config and config["default_entity_id"].split(".")[0] == topic.split("/")[1]
    late = Subscriber(broker.port, "homeassistant/+/+/+/config", client_id="late")
    late.wait_for(lambda: len(late.messages) >= len(expected))
    assert all(retained for _, _, retained in late.messages)
    before = len(subscriber.messages)
    service.publish_now("homeassistant/status", "online")
    subscriber.wait_for(lambda: len(subscriber.messages) >= before + 1 + len(expected))
    service.stop()
    subscriber.close()
    late.close()


def test_the_sender_survives_broker_kills_in_mid_drain_and_every_message_arrives(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="station")
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port, "station/st1/detections", client_id="persistent-reader")
    broker.save()  # the subscriber's session survives a kill -9, so it misses nothing while it reconnects
    store = Store.open(tmp_path / "st.db")
    topics = Topics("station", "st1")
    total = 6000
    with store.transaction():
        for i in range(total):
            enqueue(store.db, topics.detections, json.dumps({"id": f"m{i:05d}"}))
    stop_process = threading.Event()
    supervisor = Supervisor(stop_process)
    service = MqttService(MqttSettings(enabled=True, port=broker.port, reconnect_max_seconds=1), topics,
                          tmp_path / "st.db", None)
    service.start(supervisor)
    try:
        for _ in range(3):
            received = len(subscriber.json("station"))
            subscriber.wait_for(lambda expected=received + 500: len(subscriber.json("station")) >= expected, timeout=60)
            broker.kill()
            broker.start()
        subscriber.wait_for(lambda: len({m["id"] for m in subscriber.json("station")}) >= total, timeout=120)
    finally:
        service.stop()
        supervisor.stop()
        broker.stop()
        subscriber.close()
    assert {m["id"] for m in subscriber.json("station")} == {f"m{i:05d}" for i in range(total)}
    assert store.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0] == 0
    store.close()
    assert supervisor.gave_up is None and not stop_process.is_set()
    assert not [r for r in caplog.records if r.exc_info], "no thread died along the way"


def test_an_exception_in_a_callback_is_logged_and_the_client_keeps_reconnecting(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="station.mqtt")
    store = Store.open(tmp_path / "st.db")
    topics = Topics("station", "st1")
    announcements = []

    def broken_announce(service):
        announcements.append(1)
        raise RuntimeError("discovery went wrong")

    service = MqttService(MqttSettings(enabled=True, port=broker.port, reconnect_max_seconds=1), topics,
                          tmp_path / "st.db", None, on_connected=broken_announce)
    service.start(Supervisor(threading.Event()))
    deadline = time.monotonic() + 20
    while len(announcements) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    broker.stop()
    broker.start()
    while len(announcements) < 2 and time.monotonic() < deadline + 20:
        time.sleep(0.05)
    assert len(announcements) >= 2, "paho's thread survived the first exception and reconnected"
    service.stop()
    store.close()
    assert any("error in an MQTT callback" in r.getMessage() and r.exc_info for r in caplog.records)
