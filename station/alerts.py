"""Alert rules over the detection stream: the notebook's five, NEW_SPECIES and station health.

All state comes from the database (earlier detections and alerts), so a restart changes
nothing. Times are event times (when the sound was heard), so a replay at full speed
raises the same alerts, with the same cooldowns, as the same audio heard live.

- RARE_SPECIES: a closed detection of a species on `alerts.rare_species`.
- NEW_SPECIES: a closed detection of a species not heard earlier today (local time) at this
  station; `first_ever` says whether it was ever heard before.
- UNKNOWN_SOUND / LOW_CONFIDENCE: a loud window (>= `loud_dbfs`) whose best score is below
  `unknown_sound` / `low_confidence`: something is there that no class, or no class
  confidently, explains.
- HIGH_FREQUENCY / LOW_FREQUENCY: a species' detections in the last window against the same
  species' counts in the `baseline_windows` windows before it (mean + high_sigma*sd /
  mean - low_sigma*sd), once the station has `min_history_hours` of detections.
- Health (station.health): NO_AUDIO, DEVICE_LOST, DEVICE_RECOVERED, INFERENCE_BEHIND, DISK_LOW.
Each (type, species) pair has a cooldown; `type_cooldown_minutes` overrides it per type.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlite_utils

from .config import AlertSettings
from .detection import EVENT_NAMESPACE, SpeciesFilter
from .messages import Topics, alert_payload, encode
from .outbox import enqueue
from .timefmt import iso, utc_now
from .types import Detection, Scores, Species

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertWriter:
    """Stores an alert (unless its cooldown holds) and queues its message, in the caller's transaction."""

    station: str
    settings: AlertSettings
    topics: Topics | None

    def raise_alert(self, db: sqlite_utils.Database, alert_type: str, when: datetime, species: Species | None = None,
                    detection_ids: Sequence[str] = (), details: dict[str, Any] | None = None,
                    score: float | None = None, source: str | None = None) -> dict | None:
        alert_id = uuid.uuid5(EVENT_NAMESPACE, "|".join(
            [self.station, alert_type, species.label if species else "", iso(when)])).hex
        if self._already_raised(db, alert_id) or self._cooling_down(db, alert_type, species, when):
            return None
        payload = alert_payload(alert_id, self.station, alert_type, utc_now(), species, list(detection_ids),
                                {"event_time": iso(when), **(details or {})})
        db.table("alerts").insert({
            "id": alert_id, "station": self.station, "type": alert_type,
            "label": species.label if species else None,
            "scientific_name": species.scientific_name if species else None,
            "common_name": species.common_name if species else None,
            "detection_ids": json.dumps(list(detection_ids)), "payload": encode(payload),
            "event_time": iso(when), "created": payload["created"],
            "score": None if score is None else round(score, 4), "source": source})
        if self.topics:
            enqueue(db, self.topics.alert(alert_type), encode(payload))
        log.info("alert %s%s", alert_type, f": {species.name}" if species else "")
        return payload

    @staticmethod
    def _already_raised(db, alert_id: str) -> bool:
        """The same alert (type, species, event time) from an earlier pass over the same audio."""
        return db.execute("SELECT 1 FROM alerts WHERE id = ?", [alert_id]).fetchone() is not None

    def _cooling_down(self, db, alert_type: str, species: Species | None, when: datetime) -> bool:
        minutes = self.settings.type_cooldown_minutes.get(alert_type, self.settings.cooldown_minutes)
        if minutes <= 0:
            return False
        since = iso(when - timedelta(minutes=minutes))
        row = db.execute("SELECT 1 FROM alerts WHERE station = ? AND type = ? AND label IS ? "
                         "AND event_time > ? AND event_time <= ? LIMIT 1",
                         [self.station, alert_type, species.label if species else None, since, iso(when)]).fetchone()
        return row is not None


class AlertEngine:
    """A pipeline BatchListener: raises stream alerts (stored, and queued for MQTT when `topics`)."""

    def __init__(self, settings: AlertSettings, station: str, topics: Topics | None):
        self.settings = settings
        self.station = station
        self.topics = topics
        self.writer = AlertWriter(station, settings, topics)
        self.rare = SpeciesFilter(0.0, {}, settings.rare_species, []) if settings.rare_species else None
        self._next_frequency_check: datetime | None = None

    def on_batch(self, db: sqlite_utils.Database, scores: Sequence[Scores], detections: Sequence[Detection]) -> None:
        closed = [d for d in detections if d.status == "closed"]
        if not self.settings.enabled:
            return
        for det in closed:
            self._species_alerts(db, det)
        for window_scores in scores:
            self._window_alerts(db, window_scores)
        latest = max([d.end_time for d in closed] + [s.window.end_time for s in scores], default=None)
        if latest is not None:
            self._frequency_alerts(db, latest)

    def _species_alerts(self, db, det: Detection) -> None:
        if self.rare and self.rare.allows(det.species):
            self.writer.raise_alert(db, "RARE_SPECIES", det.start_time, det.species, [det.id],
                                    {"confidence": round(det.confidence, 4)}, det.confidence, det.source)
        if self.settings.new_species:
            heard_before = self._heard_before(db, det, since=None)
            if not heard_before or not self._heard_before(db, det, since=local_midnight(det.start_time)):
                self.writer.raise_alert(db, "NEW_SPECIES", det.start_time, det.species, [det.id],
                                        {"first_ever": not heard_before, "confidence": round(det.confidence, 4)},
                                        det.confidence, det.source)

    def _heard_before(self, db, det: Detection, since: datetime | None) -> bool:
        sql = "SELECT 1 FROM detections WHERE station = ? AND label = ? AND id != ? AND start_time < ?"
        args = [self.station, det.species.label, det.id, iso(det.start_time)]
        if since is not None:
            sql += " AND start_time >= ?"
            args.append(iso(since))
        return db.execute(sql + " LIMIT 1", args).fetchone() is not None

    def _window_alerts(self, db, scores: Scores) -> None:
        w = scores.window
        audio = w.samples[: max(1, round(w.valid_seconds * w.sample_rate))]
        level = 10 * np.log10(float(np.mean(audio.astype(np.float64) ** 2)) + 1e-12)
        if level < self.settings.loud_dbfs:
            return
        species, best = scores.top(1)[0]
        details = {"level_dbfs": round(level, 1), "best": {"label": species.label, "score": round(best, 4)},
                   "source": w.source, "start_offset": round(w.start_offset, 3)}
        if best < self.settings.unknown_sound:
            self.writer.raise_alert(db, "UNKNOWN_SOUND", w.start_time, None, [], details, best, w.source)
        elif best < self.settings.low_confidence:
            self.writer.raise_alert(db, "LOW_CONFIDENCE", w.start_time, species, [], details, best, w.source)

    def _frequency_alerts(self, db, now: datetime) -> None:
        window = timedelta(minutes=self.settings.frequency_window_minutes)
        if self._next_frequency_check and now < self._next_frequency_check:
            return
        self._next_frequency_check = now + window / 4
        first = db.execute("SELECT min(start_time) FROM detections WHERE station = ?", [self.station]).fetchone()[0]
        if first is None or first > iso(now - timedelta(hours=self.settings.min_history_hours)):
            return
        for species, count, mean, sd in self._activity(db, now, window):
            details = {"count": count, "baseline_mean": round(mean, 3), "baseline_sd": round(sd, 3),
                       "window_minutes": self.settings.frequency_window_minutes}
            if count >= self.settings.min_count and count > mean + self.settings.high_sigma * sd:
                self.writer.raise_alert(db, "HIGH_FREQUENCY", now, species, [], details)
            elif count < mean - self.settings.low_sigma * sd:
                self.writer.raise_alert(db, "LOW_FREQUENCY", now, species, [], details)

    def _activity(self, db, now: datetime, window: timedelta):
        """Per species: detections in the current window, and mean/sd over the baseline windows."""
        n = self.settings.baseline_windows
        rows = db.query("SELECT label, scientific_name, common_name, start_time FROM detections "
                        "WHERE station = ? AND start_time >= ? AND start_time < ? AND status != 'open'",
                        [self.station, iso(now - window * (n + 1)), iso(now)])
        counts: dict[str, np.ndarray] = {}
        names: dict[str, Species] = {}
        for r in rows:
            bucket = int((now - datetime.fromisoformat(r["start_time"].replace("Z", "+00:00"))) / window)
            counts.setdefault(r["label"], np.zeros(n + 1))[min(bucket, n)] += 1
            names[r["label"]] = Species(r["label"], r["scientific_name"], r["common_name"])
        for label, c in counts.items():
            yield names[label], int(c[0]), float(c[1:].mean()), float(c[1:].std())


def local_midnight(moment: datetime) -> datetime:
    local = moment.astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0)
