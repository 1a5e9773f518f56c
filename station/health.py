"""A health monitor thread: station health alerts and the retained health message.

It reads the pipeline's live figures (never writes to the pipeline) and has its own
database connection. Live runs check NO_AUDIO, DEVICE_LOST / DEVICE_RECOVERED and
INFERENCE_BEHIND; every run checks DISK_LOW where the database lives.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from .alerts import AlertWriter, local_midnight
from .config import AlertSettings
from .messages import HEALTH_SCHEMA, Topics, encode
from .outbox import backlog
from .store import connect, write_transaction
from .supervise import Supervised, Supervisor
from .timefmt import iso

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, figures: Callable[[], dict], settings: AlertSettings, station: str, database: Path,
                 topics: Topics | None, live: bool, publish: Callable[[str, str], bool] | None = None,
                 publish_seconds: float = 60.0, monotonic: Callable[[], float] = time.monotonic):
        self.figures = figures
        self.settings = settings
        self.station = station
        self.database = Path(database)
        self.topics = topics
        self.live = live
        self.publish = publish
        self.publish_seconds = publish_seconds
        self.writer = AlertWriter(station, settings, topics)
        self.monotonic = monotonic
        self._loop_handle: Supervised | None = None
        self._device_events_seen = {"device_losses": 0, "device_recoveries": 0}
        self._audio_seen: tuple[float | None, float] = (None, monotonic())

    def start(self, supervisor: Supervisor) -> None:
        self._loop_handle = supervisor.start("health", self._loop)

    def stop(self) -> None:
        if self._loop_handle is not None:
            self._loop_handle.stop(10)

    def _loop(self, stop: threading.Event) -> None:
        """Check at once (a disk already low is said before anything is written), then every period,
        and once more when stopping (a short replay's last state is checked too)."""
        db = connect(self.database)
        next_publish = self.monotonic()
        period = self.settings.check_seconds if self.live else min(self.settings.check_seconds, 1)
        stopping = False
        try:
            while True:
                figures = {**self.figures(), "disk_free_mb": self._disk_free_mb()}
                if self.settings.enabled:
                    with write_transaction(db):
                        self.check(db, figures, datetime.now(timezone.utc))
                if self.publish and self.topics and (stopping or self.monotonic() >= next_publish):
                    next_publish = self.monotonic() + self.publish_seconds
                    self.publish(self.topics.health, encode(self.message(db, figures)))
                if stopping:
                    return
                stopping = stop.wait(period)
        finally:
            db.conn.close()

    def check(self, db, figures: dict, now: datetime) -> None:
        raise_alert = lambda kind, details: self.writer.raise_alert(db, kind, now, details=details)  # noqa: E731
        if figures["disk_free_mb"] < self.settings.disk_free_mb or figures.get("clips_low_space"):
            raise_alert("DISK_LOW", {"free_mb": round(figures["disk_free_mb"]), "path": str(self.database.parent)})
        if not self.live:
            return
        # From the capture's own loss and recovery counts, not from sampling its state: an outage
        # shorter than check_seconds is still a loss and a recovery.
        for counter, alert in (("device_losses", "DEVICE_LOST"), ("device_recoveries", "DEVICE_RECOVERED")):
            count = figures.get(counter, 0)
            if count > self._device_events_seen[counter]:
                raise_alert(alert, {"device_losses": figures.get("device_losses", 0),
                                    "device_recoveries": figures.get("device_recoveries", 0)})
            self._device_events_seen[counter] = count
        audio, since = self._audio_seen
        if figures["audio_seconds"] != audio:
            self._audio_seen = (figures["audio_seconds"], self.monotonic())
        elif self.monotonic() - since >= self.settings.no_audio_seconds:
            raise_alert("NO_AUDIO", {"silent_seconds": round(self.monotonic() - since)})
        if figures.get("lag_seconds", 0) > self.settings.lag_seconds:
            raise_alert("INFERENCE_BEHIND", {"lag_seconds": figures["lag_seconds"],
                                             "dropped_seconds": figures.get("dropped_seconds", 0)})

    def message(self, db, figures: dict) -> dict:
        today = db.execute("SELECT count(*) FROM detections WHERE station = ? AND status != 'open' AND start_time >= ?",
                           [self.station, iso(local_midnight(datetime.now(timezone.utc)))]).fetchone()[0]
        return {"schema": HEALTH_SCHEMA, "id": f"{self.station}-{iso(datetime.now(timezone.utc))}",
                "station": self.station, "time": iso(datetime.now(timezone.utc)), "detections_today": today,
                "outbox_backlog": backlog(db), **figures}

    def _disk_free_mb(self) -> float:
        return shutil.disk_usage(self.database.parent).free / 1e6
