"""Publish the outbox over MQTT (paho-mqtt 2, callback API v2), surviving any broker outage.

A sender thread with its own database connection publishes unsent outbox rows oldest
first at their QoS and marks a row sent only once the broker acknowledged it (PUBACK).
After a reconnect it starts again from the oldest unsent row, and sends again what the
broker acknowledged in the RESEND_SECONDS before the connection was lost (a broker that
died may not have delivered it), so a message may arrive twice, always with the same id,
never not at all. Publishing survives any disconnect timing: a publish refused or lost
with the connection just means "send again after the reconnect". The retained status topic says
`online` once the broker accepted us and `offline` on a clean stop; the same `offline`
is the last will for an unclean one. Each connection state change is logged once.

Only the daemon speaks for the station's availability. A replay (or any other command)
connects under its own client id and leaves the status topic alone: a broker drops the
older of two connections with one client id, so a replay sharing the daemon's id would
knock both offline in turn, and its `offline` would mark a running station down.
"""
from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .config import MqttSettings
from .errors import StationError
from .messages import OFFLINE, ONLINE, Topics
from .outbox import backlog, mark_sent, purge_sent, unsent
from .store import connect
from .supervise import Supervised, Supervisor
from .timefmt import iso

log = logging.getLogger(__name__)

MAX_INFLIGHT = 100
# A broker killed or powered off loses what it acknowledged moments before and had not yet
# delivered; after a reconnect what it acknowledged this recently is sent again (same ids).
RESEND_SECONDS = 10.0
POLL_SECONDS = 0.1
IDLE_SECONDS = 1.0  # the sender is woken by commits and acknowledgements; this catches anything else
PURGE_EVERY_SECONDS = 3600.0


def client_id(settings: MqttSettings, topics: Topics, command: str) -> str:
    base = settings.client_id or f"field-station-{topics.station}"
    return base if command == "run" else f"{base}-{command}-{os.getpid()}"


def make_client(settings: MqttSettings, topics: Topics, password: str | None, command: str) -> paho.Client:
    """A paho client with identity, last will (the daemon's), credentials, TLS and reconnect backoff set."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id(settings, topics, command))
    if command == "run":
        client.will_set(topics.status, OFFLINE, qos=1, retain=True)
    if settings.username:
        client.username_pw_set(settings.username, password)
    if settings.tls:
        tls = settings.tls
        client.tls_set(ca_certs=str(tls.ca_file) if tls.ca_file else None,
                       certfile=str(tls.cert_file) if tls.cert_file else None,
                       keyfile=str(tls.key_file) if tls.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(tls.insecure)
    client.reconnect_delay_set(min_delay=1, max_delay=int(settings.reconnect_max_seconds))
    client.max_inflight_messages_set(MAX_INFLIGHT)
    return client


def _guarded(callback: Callable) -> Callable:
    """An exception in a paho callback would end paho's network thread, leaving a client that
    never reconnects: log it and carry on instead."""

    def guarded(*args):
        try:
            callback(*args)
        except Exception:
            log.exception("error in an MQTT callback (%s); the connection carries on",
                          getattr(callback, "__name__", "callback"))

    return guarded


class MqttService:
    def __init__(self, settings: MqttSettings, topics: Topics, database: Path, password: str | None,
                 on_connected: Callable[[MqttService], None] | None = None, command: str = "run"):
        self.settings = settings
        self.topics = topics
        self.speaks_for_station = command == "run"
        self.database = database
        self.on_connected = on_connected
        self.connected = threading.Event()
        self.sent = 0
        self._stop = threading.Event()
        self._state = ""
        self._restart_from_oldest = threading.Event()
        self._wake = threading.Event()
        self._message_handlers: dict[str, Callable[[str], None]] = {}
        self.client = self._make_client(password, command)
        self._sender: Supervised | None = None
        self._connection_lost_at: datetime | None = None

    def _make_client(self, password: str | None, command: str) -> paho.Client:
        client = make_client(self.settings, self.topics, password, command)
        client.on_connect = _guarded(self._on_connect)
        client.on_connect_fail = _guarded(self._on_connect_fail)
        client.on_disconnect = _guarded(self._on_disconnect)
        client.on_message = _guarded(self._on_message)
        client.on_publish = _guarded(lambda *args: self._wake.set())  # an acknowledgement: mark it sent now
        return client

    def start(self, supervisor: Supervisor) -> None:
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self.client.loop_start()
        self._sender = supervisor.start("mqtt-sender", self._send_loop)

    def subscribe(self, topic: str, handler: Callable[[str], None]) -> None:
        """Handle messages on `topic` (subscribed again after every reconnect)."""
        self._message_handlers[topic] = handler
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def publish_now(self, topic: str, payload: str, retain: bool = False, qos: int = 1) -> bool:
        """Publish outside the outbox (health, discovery): skipped, not queued, while offline."""
        if not self.connected.is_set():
            return False
        return self.client.publish(topic, payload, qos=qos, retain=retain).rc == paho.MQTT_ERR_SUCCESS

    def _log_state(self, state: str, level: int = logging.INFO) -> None:
        if state != self._state:
            self._state = state
            log.log(level, "mqtt %s:%d: %s", self.settings.host, self.settings.port, state)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._log_state(f"connection refused: {reason_code} (check mqtt.username and the mqtt_password "
                            "secret); detections are kept in the outbox", logging.ERROR)
            return
        if self.speaks_for_station:
            client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        for topic in self._message_handlers:
            client.subscribe(topic, qos=1)
        self._restart_from_oldest.set()
        self.connected.set()
        self._wake.set()
        self._log_state("connected")
        if self.on_connected:
            self.on_connected(self)

    def _on_connect_fail(self, client, userdata) -> None:
        self._log_state("broker unreachable; retrying with backoff", logging.WARNING)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.connected.is_set():
            return  # a refused or failed attempt: its own state line says so, once
        self.connected.clear()
        self._connection_lost_at = datetime.now(timezone.utc)
        if not self._stop.is_set():
            self._log_state(f"disconnected ({reason_code}); reconnecting", logging.WARNING)

    def _on_message(self, client, userdata, message) -> None:
        handler = self._message_handlers.get(message.topic)
        if handler:
            handler(message.payload.decode("utf-8", errors="replace"))

    def _send_loop(self, stop: threading.Event) -> None:
        """Publish unsent rows oldest first; mark them sent on PUBACK. Runs under the supervisor."""
        db = connect(self.database)
        pending: dict[int, paho.MQTTMessageInfo] = {}
        last_queued, next_purge = 0, time.monotonic()
        resend_since: str | None = None
        try:
            while not stop.is_set():
                if self._restart_from_oldest.is_set():
                    self._restart_from_oldest.clear()
                    pending.clear()
                    last_queued = 0
                    lost_at = self._connection_lost_at
                    resend_since = iso(lost_at - timedelta(seconds=RESEND_SECONDS)) if lost_at else None
                acked = self._acknowledged(pending)
                if acked:
                    mark_sent(db, acked)
                    self.sent += len(acked)
                published = 0
                if self.connected.is_set() and len(pending) < MAX_INFLIGHT:
                    for row in unsent(db, last_queued, MAX_INFLIGHT - len(pending), resend_since):
                        info = self.client.publish(row["topic"], row["payload"], qos=row["qos"],
                                                   retain=bool(row["retain"]))
                        if info.rc != paho.MQTT_ERR_SUCCESS:
                            self._restart_from_oldest.set()  # the connection went: resend from the oldest unsent
                            break
                        pending[row["id"]] = info
                        last_queued = row["id"]
                        published += 1
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY_SECONDS
                    purge_sent(db, self.settings.keep_sent_hours)
                if not (acked or published):  # while a backlog drains, the next batch goes out at once
                    self._wake.wait(IDLE_SECONDS)
                    self._wake.clear()
        finally:
            db.conn.close()

    def _acknowledged(self, pending: dict[int, paho.MQTTMessageInfo]) -> list[int]:
        """Rows the broker acknowledged, removed from `pending`.

        paho 2 raises from is_published() for a message whose connection was lost before
        it went out: such a message is resent after the reconnect, never counted as sent.
        """
        acked: list[int] = []
        for row_id, info in list(pending.items()):
            try:
                done = info.is_published()
            except (RuntimeError, ValueError):
                self._restart_from_oldest.set()
                return acked
            if done:
                acked.append(row_id)
                del pending[row_id]
        return acked

    def wake(self) -> None:
        """New rows were committed to the outbox: send them now rather than at the next poll."""
        self._wake.set()

    def stop(self, flush_seconds: float = 10.0) -> None:
        """Send what is queued (bounded wait), say offline, disconnect. Unsent rows stay queued."""
        db = connect(self.database)
        try:
            deadline = time.monotonic() + flush_seconds
            # A connection lost a moment ago is waited for too: the client is reconnecting.
            while (self.connected.is_set() or self._connection_lost_at is not None) \
                    and time.monotonic() < deadline and backlog(db):
                time.sleep(POLL_SECONDS)
            self._stop.set()
            self._wake.set()
            if self._sender is not None:
                self._sender.stop(5)
            if self.connected.is_set() and self.speaks_for_station:
                self.client.publish(self.topics.status, OFFLINE, qos=1, retain=True).wait_for_publish(2)
            self.client.disconnect()
            self.client.loop_stop()
            log.info("mqtt stopped: %d message(s) sent this run, %d still queued", self.sent, backlog(db))
        finally:
            db.conn.close()


def check_connection(settings: MqttSettings, topics: Topics, password: str | None, timeout: float = 10.0) -> str:
    """Connect, publish one QoS 1 test message, wait for its acknowledgement; a line to report."""
    result: dict = {}
    done = threading.Event()
    client = make_client(settings, topics, password, "mqtt-test")  # never the daemon's id: it would knock it off

    def on_connect(c, userdata, flags, reason_code, properties):
        result["reason"] = reason_code
        done.set()

    client.on_connect = on_connect
    started = time.monotonic()
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except (OSError, ssl.SSLError) as exc:
        raise StationError(f"mqtt {settings.host}:{settings.port}: cannot connect: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise StationError(f"mqtt {settings.host}:{settings.port}: no answer within {timeout:.0f} s")
        if result["reason"].is_failure:
            raise StationError(f"mqtt {settings.host}:{settings.port}: connection refused: {result['reason']}")
        info = client.publish(f"{topics.base}/test", "field-station mqtt test", qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise StationError(f"mqtt {settings.host}:{settings.port}: test message not acknowledged")
        return (f"mqtt {settings.host}:{settings.port}: connected and published to {topics.base}/test "
                f"(acknowledged after {1000 * (time.monotonic() - started):.0f} ms)")
    finally:
        client.disconnect()
        client.loop_stop()
