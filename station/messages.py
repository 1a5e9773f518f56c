"""MQTT topics and JSON payloads (a versioned contract; schema in station/schemas/).

Every payload carries `schema` (name/version), a stable `id` a subscriber can
de-duplicate on, the station id and UTC ISO-8601 times. Species are named by scientific
and common name, with the model's own label beside them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .timefmt import iso
from .types import Detection, Species

DETECTION_SCHEMA = "field-station/detection/3"  # 2: status, published on open; 3: clip
ALERT_SCHEMA = "field-station/alert/1"
HEALTH_SCHEMA = "field-station/health/1"
ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True)
class Topics:
    prefix: str
    station: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.station}"

    @property
    def detections(self) -> str:
        return f"{self.base}/detections"

    def alert(self, alert_type: str) -> str:
        return f"{self.base}/alerts/{alert_type}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"


def species_json(species: Species | None) -> dict[str, Any] | None:
    if species is None:
        return None
    return {"scientific_name": species.scientific_name, "common_name": species.common_name, "label": species.label}


def detection_payload(det: Detection, first: bool = True) -> dict[str, Any]:
    """`first`: the event's first message (event_type "detection"); later ones are "detection_update"."""
    return {
        "schema": DETECTION_SCHEMA, "event_type": "detection" if first else "detection_update",
        "id": det.id, "station": det.station,
        "model": det.model, "source": det.source, "species": species_json(det.species),
        "confidence": round(det.confidence, 4), "mean_confidence": round(det.mean_confidence, 4),
        "window_count": det.window_count, "start_time": iso(det.start_time), "end_time": iso(det.end_time),
        "start_offset": round(det.start_offset, 3), "end_offset": round(det.end_offset, 3),
        "alternatives": [{"label": label, "score": round(score, 4)} for label, score in det.alternatives],
        "status": det.status,
        "clip": {"path": det.clip.path, "start_offset": round(det.clip.start_offset, 3),
                 "end_offset": round(det.clip.end_offset, 3)} if det.clip else None,
    }


def alert_payload(alert_id: str, station: str, alert_type: str, created: str, species: Species | None,
                  detection_ids: list[str], details: dict[str, Any]) -> dict[str, Any]:
    return {"schema": ALERT_SCHEMA, "id": alert_id, "station": station, "type": alert_type, "created": created,
            "species": species_json(species), "detection_ids": detection_ids, "details": details}


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
