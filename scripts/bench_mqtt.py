#!/usr/bin/env python3
"""MQTT figures against a real Mosquitto on loopback: latency, outbox throughput, backlog drain.

- latency: a recording replayed in real time (0.5 s chunks) through the whole pipeline; for
  each detection, the time from the moment the end of the first window that heard it reached
  the pipeline to the arrival of its first message at a subscriber (what a user waits for; an
  event the two-window rule opens arrives one hop later, by design), from its last audio's
  arrival to its final message, and from an outbox row's commit to arrival. Times are taken
  from when each chunk was handed to the pipeline, so the start-up (model load, connecting)
  and the pacing's phase do not count. Run twice: on the recording as it is (44.1 kHz into a
  16 kHz model: the resampler's look-ahead holds a window's last samples until the next 0.5 s
  chunk), and resampled beforehand to the model's rate, as a BirdNET station captures at 48 kHz;
- throughput: 10,000 queued messages sent with the broker up;
- drain: 10,000 messages queued during an outage, sent once the broker is back.

    .venv/bin/python scripts/bench_mqtt.py --model .benchmarks/tiny-onnx
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from mosquitto import Mosquitto, Subscriber  # noqa: E402
from station.app import run_pipeline  # noqa: E402
from station.config import MqttSettings, Settings  # noqa: E402
from station.decode import decode_at  # noqa: E402
from station.messages import Topics  # noqa: E402
from station.mqtt import MqttService  # noqa: E402
from station.outbox import backlog, enqueue  # noqa: E402
from station.sources import FileSource  # noqa: E402
from station.store import connect  # noqa: E402

DEFAULT_AUDIO = REPO.parent / "shared" / "data" / "audio" / "birds_misc" / "XC13738_GWWA.mp3"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class StampedSource(FileSource):
    """A file source that notes when each chunk's audio reached the pipeline: (end offset, wall time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.available: list[tuple[float, float]] = []

    def chunks(self, stop):
        for chunk in super().chunks(stop):
            self.available.append((chunk.end_offset, time.time()))
            yield chunk

    def reached_at(self, offset: float) -> float:
        """When the audio up to `offset` had reached the pipeline."""
        return next((wall for end, wall in self.available if end >= offset - 1e-6), self.available[-1][1])


def at_model_rate(model: Path, audio: Path, seconds: float, out: Path) -> Path:
    """The recording's first `seconds` (and a window more), decoded as the station does, at the model's rate."""
    rate = json.loads((model / "manifest.json").read_text())["input"]["sample_rate"]
    sf.write(str(out), decode_at(audio, rate)[: round((seconds + 5) * rate)], rate)
    return out


def latency(model: Path, audio: Path, seconds: float, workdir: Path) -> dict:
    workdir.mkdir()
    broker = Mosquitto(workdir).start()
    subscriber = Subscriber(broker.port, "station/bench/detections", client_id="bench-latency")
    first_arrival: dict[str, float] = {}
    last_arrival: dict[str, float] = {}
    original = subscriber._on_message

    def stamp(client, userdata, message):
        event_id = json.loads(message.payload)["id"]
        first_arrival.setdefault(event_id, time.time())
        last_arrival[event_id] = time.time()
        original(client, userdata, message)

    subscriber.client.on_message = stamp
    db = workdir / "latency.db"
    settings = Settings.model_validate({
        "station": {"id": "bench"}, "storage": {"database": str(db)}, "model": {"path": str(model)},
        "detection": {"threshold": 0.3}, "alerts": {"enabled": False},
        "replay": {"realtime": True, "chunk_seconds": 0.5},
        "mqtt": {"enabled": True, "port": broker.port}, "logging": {"summary_seconds": 3600}})
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    source = StampedSource(audio, 0.5, realtime=True)
    run_pipeline(settings, source, "replay", stop)
    time.sleep(1)
    window = json.loads((model / "manifest.json").read_text())["input"]["window_seconds"]
    rows = [r for r in connect(db).query(
        "SELECT d.id, d.start_offset, d.end_offset, min(o.created) AS created FROM detections d JOIN outbox o "
        "ON o.payload LIKE '%' || d.id || '%' WHERE d.status = 'closed' GROUP BY d.id") if r["id"] in first_arrival]
    first = [first_arrival[r["id"]] - source.reached_at(r["start_offset"] + window) for r in rows]
    final = [last_arrival[r["id"]] - source.reached_at(r["end_offset"]) for r in rows]
    committed = [first_arrival[r["id"]] - datetime.fromisoformat(r["created"].replace("Z", "+00:00")).timestamp()
                 for r in rows]
    subscriber.close()
    broker.stop()
    summary = lambda values, scale=1.0: {"median": round(scale * statistics.median(values), 3),  # noqa: E731
                                         "p95": round(scale * percentile(values, 0.95), 3)}
    return {"detections": len(rows), "first_window_end_to_first_message_s": summary(first),
            "audio_end_to_final_message_s": summary(final),
            "outbox_commit_to_subscriber_ms": summary(committed, 1000)}


def fill_outbox(db_path: Path, topics: Topics, count: int) -> None:
    db = connect(db_path)
    with db.atomic():
        for i in range(count):
            enqueue(db, topics.detections, json.dumps({"id": f"m{i:05d}", "pad": "x" * 400}))
    db.conn.close()


def wait_until_sent(db_path: Path, timeout: float = 600) -> float:
    db = connect(db_path)
    started = time.monotonic()
    while backlog(db) and time.monotonic() - started < timeout:
        time.sleep(0.02)
    db.conn.close()
    return time.monotonic() - started


def throughput(workdir: Path, count: int) -> dict:
    from station.supervise import Supervisor

    broker = Mosquitto(workdir / "b2").start()
    subscriber = Subscriber(broker.port, "station/bench/#", client_id="bench-throughput")
    topics, db = Topics("station", "bench"), workdir / "throughput.db"
    connect(db).conn.close()
    service = MqttService(MqttSettings(enabled=True, port=broker.port), topics, db, None)
    service.start(Supervisor(threading.Event()))
    service.connected.wait(10)
    fill_outbox(db, topics, count)
    elapsed = wait_until_sent(db)
    subscriber.wait_for(lambda: len(subscriber.messages) >= count, timeout=120)
    service.stop()
    subscriber.close()
    broker.stop()
    return {"messages": count, "seconds": round(elapsed, 2), "messages_per_second": round(count / elapsed)}


def drain_after_outage(workdir: Path, count: int) -> dict:
    from station.supervise import Supervisor

    (workdir / "b3").mkdir()
    broker = Mosquitto(workdir / "b3").start()
    subscriber = Subscriber(broker.port, "station/bench/#", client_id="bench-drain")
    topics, db = Topics("station", "bench"), workdir / "drain.db"
    connect(db).conn.close()
    service = MqttService(MqttSettings(enabled=True, port=broker.port, reconnect_max_seconds=1), topics, db, None)
    service.start(Supervisor(threading.Event()))
    service.connected.wait(10)
    broker.stop()
    fill_outbox(db, topics, count)
    started = time.monotonic()
    broker.start()
    wait_until_sent(db)
    subscriber.wait_for(lambda: len({json.loads(p)["id"] for t, p, _ in subscriber.messages
                                      if t.endswith("/detections")}) >= count, timeout=300)
    elapsed = time.monotonic() - started
    service.stop()
    subscriber.close()
    broker.stop()
    return {"messages": count, "seconds_from_broker_start_to_all_received": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / ".benchmarks" / "tiny-onnx")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--seconds", type=float, default=45.0, help="real-time replay length for latency")
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--only-latency", action="store_true",
                        help="just the latency (it also runs against older checkouts: PYTHONPATH=<checkout>)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "b2").mkdir()
        resampled = at_model_rate(args.model, args.audio, args.seconds, work / "at_model_rate.wav")
        figures = {"latency": latency(args.model, args.audio, args.seconds, work / "as-recorded"),
                   "latency_at_the_models_rate": latency(args.model, resampled, args.seconds, work / "at-rate")}
        if not args.only_latency:
            figures.update(throughput=throughput(work, args.messages),
                           drain_after_outage=drain_after_outage(work, args.messages))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
