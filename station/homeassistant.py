"""Home Assistant MQTT discovery: one device, an event entity for detections, a few sensors.

Config topics are retained; every entity shares the station's availability (status)
topic; the detection event entity is fed by the (not retained) detections topic, whose
payload carries `event_type`. Entity ids are suggested with `default_entity_id`
("<domain>.<id>"): Home Assistant deprecated `object_id` in 2025.10 and ignores it since 2026.4.
The configs are published again whenever Home Assistant announces itself `online` on
`<discovery_prefix>/status`.
"""
from __future__ import annotations

from typing import Any

from . import __version__
from .messages import OFFLINE, ONLINE, Topics, encode

HEALTH_SENSORS = [
    # key, name, unit, device_class
    ("detections_today", "Detections today", None, None),
    ("lag_seconds", "Inference lag", "s", "duration"),
    ("dropped_seconds", "Dropped audio", "s", "duration"),
    ("outbox_backlog", "Messages queued", None, None),
]


def discovery_messages(topics: Topics, discovery_prefix: str, model: str) -> list[tuple[str, str]]:
    node = f"field_station_{topics.station}".replace("-", "_").replace(".", "_")
    common = {
        "availability_topic": topics.status, "payload_available": ONLINE, "payload_not_available": OFFLINE,
        "device": {"identifiers": [node], "name": f"Field Station {topics.station}",
                   "manufacturer": "Field Station", "model": model, "sw_version": __version__},
    }
    configs: list[tuple[str, str, dict[str, Any]]] = [
        ("event", "detection", {"name": "Bird detection", "state_topic": topics.detections,
                                "event_types": ["detection", "detection_update"], "icon": "mdi:bird"}),
        ("sensor", "last_species", {"name": "Last species", "state_topic": topics.detections,
                                    "value_template": "{{ value_json.species.common_name }}",
                                    "json_attributes_topic": topics.detections, "icon": "mdi:bird"}),
        ("binary_sensor", "microphone", {"name": "Microphone", "state_topic": topics.health,
                                         "value_template": "{{ 'ON' if value_json.connected else 'OFF' }}",
                                         "device_class": "connectivity"}),
    ]
    for key, name, unit, device_class in HEALTH_SENSORS:
        sensor = {"name": name, "state_topic": topics.health, "value_template": f"{{{{ value_json.{key} }}}}",
                  "state_class": "measurement"}
        if unit:
            sensor["unit_of_measurement"] = unit
        if device_class:
            sensor["device_class"] = device_class
        configs.append(("sensor", key, sensor))
    return [(f"{discovery_prefix}/{component}/{node}/{object_id}/config",
             encode({**common, **config, "unique_id": f"{node}_{object_id}",
                     "default_entity_id": f"{component}.{node}_{object_id}"}))
            for component, object_id, config in configs]


class Discovery:
    """Announces the configs on every connect and when Home Assistant comes back online."""

    def __init__(self, topics: Topics, discovery_prefix: str, model: str):
        self.messages = discovery_messages(topics, discovery_prefix, model)
        self.status_topic = f"{discovery_prefix}/status"

    def attach(self, service) -> None:
        service.subscribe(self.status_topic, lambda payload: self.announce(service) if payload == ONLINE else None)

    def announce(self, service) -> None:
        for topic, payload in self.messages:
            service.publish_now(topic, payload, retain=True)
