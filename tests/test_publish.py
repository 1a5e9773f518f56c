"""Detection messages: one when an event opens, one (same id) when it closes."""
import json
from dataclasses import replace
from datetime import timedelta

from conftest import REPO, T0
from station.messages import Topics
from station.publish import DetectionPublisher
from station.store import Store
from station.types import Detection, Species

OWL = Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl")
SCHEMA = json.loads((REPO / "station/schemas/detection.schema.json").read_text())


def messages(store):
    return [json.loads(r["payload"]) for r in store.db.query("SELECT payload FROM outbox ORDER BY id")]


def test_an_event_is_published_when_it_opens_and_again_when_it_closes(tmp_path):
    import jsonschema

    store = Store.open(tmp_path / "st.db")
    publisher = DetectionPublisher(Topics("station", "st"))
    opened = Detection("e1", "st", "mic", "m", OWL, 0.6, 0.6, 1, T0, T0 + timedelta(seconds=3), 0, 3)
    grown = replace(opened, confidence=0.9, mean_confidence=0.75, window_count=2, end_offset=4.5)
    for batch in ([opened], [grown], [grown.closed()]):
        with store.transaction():
            publisher.on_batch(store.db, [], batch)
    first, last = messages(store)
    assert (first["id"], first["status"], first["event_type"], first["confidence"]) == ("e1", "open", "detection", 0.6)
    assert (last["id"], last["status"], last["event_type"], last["confidence"]) == (
        "e1", "closed", "detection_update", 0.9)
    for message in (first, last):
        jsonschema.validate(message, SCHEMA)


def test_an_event_that_opens_and_closes_in_one_batch_is_one_first_message(tmp_path):
    store = Store.open(tmp_path / "st.db")
    publisher = DetectionPublisher(Topics("station", "st"))
    closed = Detection("e2", "st", "f.wav", "m", OWL, 0.7, 0.7, 1, T0, T0, 0, 3, status="closed")
    with store.transaction():
        publisher.on_batch(store.db, [], [closed])
    (only,) = messages(store)
    assert only["event_type"] == "detection" and only["status"] == "closed"


def test_the_sender_is_woken_by_a_commit(tmp_path):
    store = Store.open(tmp_path / "st.db")
    woken = []
    store.after_commit.append(lambda: woken.append(1))
    with store.transaction():
        with store.transaction():  # a nested transaction is no commit
            pass
        assert woken == []
    assert woken == [1]
