"""SQLite: the one way in. WAL, busy timeout, numbered migrations, crash recovery at open.

Readable as is by sqlite3, sqlite-utils and Datasette. Times are UTC ISO-8601 strings.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import sqlite_utils

from .types import Detection

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000


def utc_now() -> str:
    return iso(datetime.now(timezone.utc))


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _v1_detections_and_runs(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int, "station": str, "command": str, "model": str, "pid": int, "host": str,
            "started": str, "stopped": str, "status": str,
            "windows": int, "detections": int, "audio_seconds": float, "dropped_seconds": float,
            "overflows": int, "device_losses": int, "files_ok": int, "files_failed": int,
        },
        pk="id",
        not_null={"station", "command", "started", "status"},
        defaults={k: 0 for k in ("windows", "detections", "audio_seconds", "dropped_seconds",
                                  "overflows", "device_losses", "files_ok", "files_failed")},
    )
    db["detections"].create(
        {
            "id": str, "run_id": int, "station": str, "source": str, "model": str,
            "label": str, "scientific_name": str, "common_name": str,
            "confidence": float, "mean_confidence": float, "window_count": int,
            "start_time": str, "end_time": str, "start_offset": float, "end_offset": float,
            "alternatives": str, "clip_path": str, "status": str, "updated": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"station", "source", "model", "label", "confidence", "start_time", "end_time", "status"},
    )
    db["detections"].create_index(["start_time"])
    db["detections"].create_index(["scientific_name", "start_time"])
    db["detections"].create_index(["status"])


def _v2_alerts_and_outbox(db: sqlite_utils.Database) -> None:
    db["alerts"].create(
        {"id": str, "station": str, "type": str, "label": str, "scientific_name": str, "common_name": str,
         "detection_ids": str, "payload": str, "event_time": str, "created": str},
        pk="id", not_null={"station", "type", "detection_ids", "payload", "event_time", "created"})
    db["alerts"].create_index(["type", "label", "event_time"])
    db["alerts"].create_index(["created"])
    db.execute("""CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL,
        qos INTEGER NOT NULL DEFAULT 1, retain INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
        sent_at TEXT, attempts INTEGER NOT NULL DEFAULT 0)""")
    db.execute("CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL")
    db.execute("CREATE INDEX outbox_sent_at ON outbox (sent_at)")


# Append only: a migration, once released, never changes. user_version = len(applied).
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1_detections_and_runs, _v2_alerts_and_outbox]


def connect(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the station database."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"database schema version {version} is newer than this station knows ({len(MIGRATIONS)})")
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            step(db)
            db.conn.execute(f"PRAGMA user_version={number}")
        log.info("database migrated to schema version %d", number)


def detection_row(det: Detection, run_id: int | None) -> dict:
    return {
        "id": det.id, "run_id": run_id, "station": det.station, "source": det.source,
        "model": det.model, "label": det.species.label,
        "scientific_name": det.species.scientific_name, "common_name": det.species.common_name,
        "confidence": round(det.confidence, 6), "mean_confidence": round(det.mean_confidence, 6),
        "window_count": det.window_count,
        "start_time": iso(det.start_time), "end_time": iso(det.end_time),
        "start_offset": round(det.start_offset, 6), "end_offset": round(det.end_offset, 6),
        "alternatives": json.dumps([{"label": l, "score": round(s, 6)} for l, s in det.alternatives]),
        "clip_path": det.clip_path, "status": det.status, "updated": utc_now(),
    }


class Store:
    """Writes runs and detection events; every write is its own short transaction."""

    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        return cls(connect(path))

    def recover(self) -> int:
        """Close what a crashed process left open: its events and its run. Returns events closed."""
        dead = [r["id"] for r in self.db.query("SELECT id, pid, host FROM runs WHERE status = 'running'")
                if not _alive(r["pid"], r["host"])]
        if not dead:
            return 0
        marks = ",".join("?" * len(dead))
        with self.db.atomic():
            cur = self.db.execute(
                f"UPDATE detections SET status = 'recovered', updated = ? "
                f"WHERE status = 'open' AND run_id IN ({marks})", [utc_now(), *dead])
            self.db.execute(
                f"UPDATE runs SET status = 'crashed', stopped = COALESCE(stopped, ?) WHERE id IN ({marks})",
                [utc_now(), *dead])
        if cur.rowcount:
            log.warning("closed %d detection(s) left open by a run that did not stop cleanly", cur.rowcount)
        return cur.rowcount

    def start_run(self, station: str, command: str, model: str) -> int:
        with self.db.atomic():
            return self.db["runs"].insert({
                "station": station, "command": command, "model": model, "pid": os.getpid(),
                "host": os.uname().nodename, "started": utc_now(), "status": "running",
            }).last_pk

    def update_run(self, run_id: int, counters: dict, status: str | None = None) -> None:
        values = dict(counters)
        if status:
            values.update(status=status, stopped=utc_now())
        with self.db.atomic():
            self.db["runs"].update(run_id, values)

    def transaction(self):
        """One transaction for several writes; nested uses become savepoints."""
        return self.db.atomic()

    def save(self, detections: Iterable[Detection], run_id: int | None) -> None:
        rows = [detection_row(d, run_id) for d in detections]
        if rows:
            with self.db.atomic():
                self.db["detections"].upsert_all(rows, pk="id")

    def recent(self, limit: int = 20) -> list[dict]:
        return list(self.db.query(
            "SELECT start_time, end_time, common_name, scientific_name, confidence, window_count, "
            "source, status FROM detections ORDER BY start_time DESC LIMIT ?", [limit]))

    def recent_alerts(self, limit: int = 20, alert_type: str | None = None) -> list[dict]:
        return list(self.db.query(
            "SELECT event_time, type, common_name, scientific_name, detection_ids, created FROM alerts "
            "WHERE ? IS NULL OR type = ? ORDER BY event_time DESC LIMIT ?", [alert_type, alert_type, limit]))

    def close(self) -> None:
        self.db.conn.close()


def _alive(pid: int | None, host: str | None) -> bool:
    if pid is None or host != os.uname().nodename:
        return False
    if pid == os.getpid():
        return False  # our own pid on an old row: a previous life of this process id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
