"""Alert rules on constructed detection streams, with state in a real database."""
import itertools
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from station.alerts import AlertEngine
from station.config import AlertSettings
from station.messages import Topics
from station.publish import DetectionPublisher
from station.store import Store
from station.types import Detection, Scores, Species, Window

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
OWL = Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl")
MAGPIE = Species("Pica pica_Eurasian Magpie", "Pica pica", "Eurasian Magpie")
LABELS = (OWL, MAGPIE)


DETECTION_NUMBERS = itertools.count(1)  # ids unique across the module's tests


def detection(species, at: datetime, confidence=0.8) -> Detection:
    return Detection(f"d{next(DETECTION_NUMBERS)}", "st", "mic", "m", species, confidence, confidence, 2, at,
                     at + timedelta(seconds=4.5), 0.0, 4.5, status="closed")


def window_scores(at: datetime, values, amplitude=0.5) -> Scores:
    samples = (amplitude * np.sin(np.arange(48000) / 5)).astype(np.float32)
    return Scores(Window(samples, 16000, "mic", 0.0, at, 3.0), np.asarray(values, np.float32), LABELS)


class Station:
    """An alert engine and a store, fed like the pipeline feeds them."""

    def __init__(self, path, **settings):
        self.path, self.settings = path, AlertSettings(**settings)
        self.open()

    def open(self):
        self.store = Store.open(self.path)
        self.engine = AlertEngine(self.settings, "st", Topics("station", "st"))
        self.publisher = DetectionPublisher(Topics("station", "st"))

    def restart(self):
        self.store.close()
        self.open()

    def feed(self, detections=(), scores=()):
        with self.store.transaction():
            stored = self.store.save(detections, None)
            for listener in (self.publisher, self.engine):
                listener.on_batch(self.store.db, list(scores), stored)

    def alerts(self, alert_type=None):
        rows = self.store.db.query("SELECT * FROM alerts ORDER BY event_time, rowid")
        return [r for r in rows if alert_type in (None, r["type"])]

    def outbox_topics(self):
        return [r["topic"] for r in self.store.db.query("SELECT topic FROM outbox ORDER BY id")]


@pytest.fixture
def station(tmp_path):
    return Station(tmp_path / "st.db", cooldown_minutes=30, min_history_hours=0)


def test_rare_species_alert_names_the_detection_and_respects_the_cooldown(tmp_path):
    s = Station(tmp_path / "st.db", rare_species=["strix aluco"], new_species=False, cooldown_minutes=30)
    first = detection(OWL, T0)
    s.feed([first])
    s.feed([detection(OWL, T0 + timedelta(minutes=10))])  # within the cooldown
    s.feed([detection(MAGPIE, T0 + timedelta(minutes=11))])  # not rare
    s.feed([detection(OWL, T0 + timedelta(minutes=41))])  # cooldown over
    rare = s.alerts("RARE_SPECIES")
    assert len(rare) == 2 and json.loads(rare[0]["detection_ids"]) == [first.id]
    assert rare[0]["scientific_name"] == "Strix aluco" and rare[0]["event_time"] == "2026-05-01T12:00:00.000Z"
    payload = json.loads(rare[0]["payload"])
    assert payload["schema"] == "field-station/alert/1" and payload["id"] == rare[0]["id"]
    assert s.outbox_topics().count("station/st/alerts/RARE_SPECIES") == 2
    assert s.outbox_topics().count("station/st/detections") == 4


def test_new_species_first_ever_then_first_today_and_it_survives_a_restart(station):
    station.feed([detection(OWL, T0)])
    station.feed([detection(OWL, T0 + timedelta(hours=1))])
    station.restart()  # state comes from the database, not memory
    station.feed([detection(OWL, T0 + timedelta(hours=2))])
    station.feed([detection(OWL, T0 + timedelta(days=1))])
    new = station.alerts("NEW_SPECIES")
    assert [json.loads(a["payload"])["details"]["first_ever"] for a in new] == [True, False]
    assert new[1]["event_time"].startswith("2026-05-02")


def test_unknown_sound_and_low_confidence_need_a_loud_window(station):
    station.feed(scores=[window_scores(T0, [0.1, 0.2])])  # loud, nothing explains it
    station.feed(scores=[window_scores(T0 + timedelta(hours=1), [0.4, 0.1])])  # loud, unsure owl
    station.feed(scores=[window_scores(T0 + timedelta(hours=2), [0.1, 0.2], amplitude=0.001)])  # quiet
    station.feed(scores=[window_scores(T0 + timedelta(hours=3), [0.9, 0.1])])  # confident
    assert [a["type"] for a in station.alerts() if a["type"] in ("UNKNOWN_SOUND", "LOW_CONFIDENCE")] == [
        "UNKNOWN_SOUND", "LOW_CONFIDENCE"]
    details = json.loads(station.alerts("UNKNOWN_SOUND")[0]["payload"])["details"]
    assert details["level_dbfs"] == pytest.approx(-9.0, abs=0.5) and details["best"]["label"] == MAGPIE.label


def test_type_cooldown_overrides_the_default(tmp_path):
    s = Station(tmp_path / "st.db", cooldown_minutes=0, type_cooldown_minutes={"UNKNOWN_SOUND": 60})
    for minutes in (0, 20, 50, 70):
        s.feed(scores=[window_scores(T0 + timedelta(minutes=minutes), [0.1, 0.1])])
    assert [a["event_time"][11:16] for a in s.alerts("UNKNOWN_SOUND")] == ["12:00", "13:10"]


def steady_history(station, species, per_hour, hours, start):
    for h in range(hours):
        for k in range(per_hour):
            station.feed([detection(species, start + timedelta(hours=h, minutes=5 + 10 * k))])


def test_high_frequency_against_the_species_own_baseline(tmp_path):
    s = Station(tmp_path / "st.db", new_species=False, baseline_windows=6, min_history_hours=6, cooldown_minutes=60)
    start = T0 - timedelta(hours=6)
    steady_history(s, OWL, 1, 6, start)  # one owl an hour for six hours: mean 1, sd 0
    for k in range(4):  # then four in the current hour
        s.feed([detection(OWL, T0 + timedelta(minutes=5 + 10 * k))])
    s.feed(scores=[window_scores(T0 + timedelta(minutes=59, seconds=50), [0.9, 0.0])])  # time moves on
    high = s.alerts("HIGH_FREQUENCY")
    assert [a["label"] for a in high] == [OWL.label]  # once: the cooldown holds it back afterwards
    details = json.loads(high[0]["payload"])["details"]
    # It fires with the third owl of the hour (min_count 3), at the end of its event, and not again with the fourth.
    assert high[0]["event_time"] == "2026-05-01T12:25:04.500Z"
    assert details["count"] == 3 and details["baseline_mean"] == 1.0 and details["baseline_sd"] == 0.0


def test_low_frequency_when_a_regular_species_goes_quiet(tmp_path):
    s = Station(tmp_path / "st.db", new_species=False, baseline_windows=6, min_history_hours=6, cooldown_minutes=0)
    steady_history(s, MAGPIE, 4, 6, T0 - timedelta(hours=7))  # four an hour, then an hour with none
    s.feed(scores=[window_scores(T0 + timedelta(minutes=1), [0.0, 0.9])])
    low = s.alerts("LOW_FREQUENCY")
    assert [a["label"] for a in low] == [MAGPIE.label]
    assert json.loads(low[0]["payload"])["details"]["count"] == 0


def test_no_frequency_alerts_before_the_minimum_history(tmp_path):
    s = Station(tmp_path / "st.db", new_species=False, baseline_windows=6, min_history_hours=48, cooldown_minutes=0)
    steady_history(s, OWL, 1, 6, T0 - timedelta(hours=6))
    for k in range(5):
        s.feed([detection(OWL, T0 + timedelta(minutes=5 + 10 * k))])
    s.feed(scores=[window_scores(T0 + timedelta(minutes=59), [0.9, 0.0])])
    assert not s.alerts("HIGH_FREQUENCY") and not s.alerts("LOW_FREQUENCY")


def test_open_events_raise_no_alert_but_are_published_at_once(station):
    open_event = Detection("o1", "st", "mic", "m", OWL, 0.9, 0.9, 1, T0, T0, 0, 3, status="open")
    station.feed([open_event])
    assert station.alerts() == [] and station.outbox_topics() == ["station/st/detections"]


def test_health_rules_device_lost_and_recovered_no_audio_lag_and_disk(tmp_path):
    from station.health import HealthMonitor

    clock = [1000.0]
    store = Store.open(tmp_path / "st.db")
    monitor = HealthMonitor(lambda: {}, AlertSettings(no_audio_seconds=60, lag_seconds=30, disk_free_mb=100,
                                                      cooldown_minutes=0), "st", tmp_path / "st.db",
                            Topics("station", "st"), live=True, monotonic=lambda: clock[0])
    figures = {"audio_seconds": 10.0, "connected": True, "lag_seconds": 1.0, "disk_free_mb": 5000.0,
               "device_losses": 0, "device_recoveries": 0}
    steps = [
        # A 7 s outage between two checks: both its loss and its recovery are alerts.
        ({}, 0), ({"device_losses": 1, "device_recoveries": 1}, 10), ({"device_losses": 1, "device_recoveries": 1}, 10),
        ({"device_losses": 1, "device_recoveries": 1, "audio_seconds": 20.0}, 10),
        ({"device_losses": 1, "device_recoveries": 1, "audio_seconds": 20.0}, 70),
        ({"device_losses": 1, "device_recoveries": 1, "audio_seconds": 30.0, "lag_seconds": 45.0}, 10),
        ({"device_losses": 1, "device_recoveries": 1, "audio_seconds": 40.0, "disk_free_mb": 50.0}, 10),
    ]
    for change, advance in steps:
        clock[0] += advance
        with store.transaction():
            monitor.check(store.db, {**figures, **change}, T0 + timedelta(seconds=clock[0]))
    types = [r["type"] for r in store.db.query("SELECT type FROM alerts ORDER BY event_time, rowid")]
    assert types == ["DEVICE_LOST", "DEVICE_RECOVERED", "NO_AUDIO", "INFERENCE_BEHIND", "DISK_LOW"]
    message = monitor.message(store.db, {**figures, "windows": 3, "detections": 1})
    import jsonschema

    from conftest import REPO
    jsonschema.validate(message, json.loads((REPO / "station/schemas/health.schema.json").read_text()))
    assert message["outbox_backlog"] == 5  # each health alert was queued for MQTT


def test_a_device_lost_before_the_first_check_gives_both_alerts(tmp_path):
    from station.health import HealthMonitor

    store = Store.open(tmp_path / "st.db")
    monitor = HealthMonitor(lambda: {}, AlertSettings(), "st", tmp_path / "st.db", None, live=True)
    with store.transaction():
        monitor.check(store.db, {"audio_seconds": 5.0, "disk_free_mb": 5000.0, "device_losses": 1,
                                 "device_recoveries": 0}, T0)
        monitor.check(store.db, {"audio_seconds": 9.0, "disk_free_mb": 5000.0, "device_losses": 1,
                                 "device_recoveries": 1}, T0 + timedelta(seconds=10))
    assert [r["type"] for r in store.db.query("SELECT type FROM alerts ORDER BY event_time")] == [
        "DEVICE_LOST", "DEVICE_RECOVERED"]


def test_a_replay_raises_no_live_health_alerts(tmp_path):
    from station.health import HealthMonitor

    store = Store.open(tmp_path / "st.db")
    monitor = HealthMonitor(lambda: {}, AlertSettings(no_audio_seconds=0.001), "st", tmp_path / "st.db", None,
                            live=False)
    with store.transaction():
        for _ in range(3):
            monitor.check(store.db, {"audio_seconds": 1.0, "connected": False, "lag_seconds": 999.0,
                                     "disk_free_mb": 5000.0}, T0)
    assert list(store.db.query("SELECT * FROM alerts")) == []
