"""The composition root: the one place where settings become a running pipeline."""
from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Event

from .alerts import AlertEngine
from .builders import (  # noqa: F401 (the CLI imports them here)
    build_classifier,
    build_detector,
    build_evidence,
    build_mic_source,
    build_privacy,
    build_pruner,
    build_replay_source,
    build_windower,
)
from .capture import MicSource
from .config import Settings, read_secret
from .errors import StationError
from .health import HealthMonitor
from .homeassistant import Discovery
from .messages import Topics
from .mqtt import MqttService
from .notify import Notifier
from .pipeline import BatchListener, Pipeline
from .publish import DetectionPublisher
from .store import Store
from .supervise import Supervisor

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals() -> Iterator[Event]:
    """SIGTERM/SIGINT set the stop event once; a second signal interrupts at once."""
    stop = Event()
    previous: dict[signal.Signals, signal._HANDLER] = {}

    def handle(signum, frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def start_mqtt(settings: Settings, topics: Topics, model: str, supervisor: Supervisor, command: str) -> MqttService:
    discovery = None
    if settings.mqtt.homeassistant.enabled:
        discovery = Discovery(topics, settings.mqtt.homeassistant.discovery_prefix, model)
    service = MqttService(settings.mqtt, topics, settings.storage.database, read_secret("mqtt_password"),
                          on_connected=discovery.announce if discovery else None, command=command)
    if discovery:
        discovery.attach(service)
    service.start(supervisor)
    return service


def recover(store: Store, publisher: DetectionPublisher | None) -> None:
    """Events a crashed run left open are closed as `recovered` and published like any other."""
    recovered = store.recover()
    if recovered and publisher is not None:
        with store.transaction():
            publisher.publish(store.db, recovered)


def run_pipeline(settings: Settings, source, command: str, stop: Event) -> dict:
    """Build the stages, run the source to its end or to `stop`, and return the run's counters.

    Background loops (MQTT sender, health) run under one supervisor; one that cannot be
    kept alive stops the run, which then ends with an error (systemd restarts the station).
    Shutdown order: the pipeline stops capture, drains and closes events; then health
    checks stop, the outbox is flushed (bounded wait), `offline` is published, the DB closed.
    """
    classifier = build_classifier(settings)
    detector = build_detector(settings, classifier)  # loads the range model: a bad one fails before any write
    if detector.range_filter is None and classifier.folder.manifest.range_model:
        log.warning("no location set: BirdNET's range filter is off, and without it BirdNET takes species of "
                    "other continents for local ones (on the shared soundscapes: precision 46%% without a "
                    "location, 79%% with, at the same recall); set location.lat and location.lon, or give "
                    "--lat and --lon")
    store = Store.open(settings.storage.database)
    supervisor = Supervisor(stop)
    mqtt = health = None
    try:
        topics = Topics(settings.mqtt.topic_prefix, settings.station.id) if settings.mqtt.enabled else None
        publisher = DetectionPublisher(topics) if topics else None
        listeners: list[BatchListener] = [AlertEngine(settings.alerts, settings.station.id, topics)]
        if publisher is not None:
            listeners.insert(0, publisher)
        recover(store, publisher)
        run_id = store.start_run(settings.station.id, command, classifier.model_name)
        log.info("%s: %s -> %s (model %s, run %d)", command, source.name,
                 settings.storage.database, classifier.model_name, run_id)
        privacy = build_privacy(settings, classifier)
        notifier = Notifier.from_environment()
        if isinstance(source, MicSource):
            source.on_waiting = notifier.waiting
        pipeline = Pipeline(
            source, build_windower(settings, classifier), classifier,
            detector, store, run_id, stop, listeners=listeners,
            summary_seconds=settings.logging.summary_seconds, notifier=notifier,
            privacy=privacy, evidence=build_evidence(settings, privacy))
        mqtt = start_mqtt(settings, topics, classifier.model_name, supervisor, command) if topics else None
        if mqtt:
            store.after_commit.append(mqtt.wake)
        health = HealthMonitor(
            pipeline.health, settings.alerts, settings.station.id, settings.storage.database, topics,
            live=source.live, publish=(lambda t, p: mqtt.publish_now(t, p, retain=True)) if mqtt else None,
            publish_seconds=settings.mqtt.health_seconds)
        health.start(supervisor)
        supervisor.start("summary", lambda stop: pipeline.summary_loop(settings.storage.database, stop))
        pruner = build_pruner(settings)
        if pruner is not None:
            supervisor.start("clip-pruner", pruner.loop)
        counters = pipeline.run()
        if supervisor.gave_up:
            store.update_run(run_id, {}, status="failed")
    finally:
        if health:
            health.stop()
        if mqtt:
            mqtt.stop()
        supervisor.stop()
        store.close()
    if supervisor.gave_up:
        raise StationError(supervisor.gave_up)
    return counters
