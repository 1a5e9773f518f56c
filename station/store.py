"""SQLite: the one way in. WAL, busy timeout, numbered migrations, crash recovery at open.

Readable as is by sqlite3, sqlite-utils and Datasette. Times are UTC ISO-8601 strings.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .errors import StorageError
from .timefmt import iso, parse_iso, utc_now
from .types import ClipRef, Detection, Removal, Species

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
RESERVE_BYTES = 1 << 20
LOCK_WAIT_SECONDS = 120.0  # a write lock not granted in this long is an error, not a wait forever
REMOVAL_NAMESPACE = uuid.UUID("0e7f3c9a-52d1-4c8e-9a61-3b7d2f4e8c05")


class BusyCounter:
    """How often a writer found the database locked and had to wait again (a health figure)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0

    def add(self) -> None:
        with self._lock:
            self.retries += 1


busy = BusyCounter()


def _v1_detections_and_runs(db: sqlite_utils.Database) -> None:
    db.table("runs").create(
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
    db.table("detections").create(
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
    db.table("detections").create_index(["start_time"])
    db.table("detections").create_index(["scientific_name", "start_time"])
    db.table("detections").create_index(["status"])


def _v2_alerts_and_outbox(db: sqlite_utils.Database) -> None:
    db.table("alerts").create(
        {"id": str, "station": str, "type": str, "label": str, "scientific_name": str, "common_name": str,
         "detection_ids": str, "payload": str, "event_time": str, "created": str},
        pk="id", not_null={"station", "type", "detection_ids", "payload", "event_time", "created"})
    db.table("alerts").create_index(["type", "label", "event_time"])
    db.table("alerts").create_index(["created"])
    db.execute("""CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL,
        qos INTEGER NOT NULL DEFAULT 1, retain INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
        sent_at TEXT, attempts INTEGER NOT NULL DEFAULT 0)""")
    db.execute("CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL")
    db.execute("CREATE INDEX outbox_sent_at ON outbox (sent_at)")


def _v3_run_device_recoveries_and_dropped_tail(db: sqlite_utils.Database) -> None:
    db.table("runs").add_column("device_recoveries", int, not_null_default=0)
    db.table("runs").add_column("dropped_tail_seconds", float, not_null_default=0.0)


def _v4_alert_score_and_source(db: sqlite_utils.Database) -> None:
    """An alert's score (the detection's confidence, or a loud window's best score) and its source.

    Alerts stored before keep both in their payload and their detections: filled from there.
    """
    db.table("alerts").add_column("score", float)
    db.table("alerts").add_column("source", str)
    db.execute("""UPDATE alerts SET
        score = COALESCE(json_extract(payload, '$.details.confidence'), json_extract(payload, '$.details.best.score')),
        source = COALESCE(json_extract(payload, '$.details.source'),
                          (SELECT d.source FROM detections d
                           WHERE d.id = json_extract(alerts.detection_ids, '$[0]')))""")


def _v5_xc_recordings(db: sqlite_utils.Database) -> None:
    """The Xeno-Canto recordings `station xc seed` fetched, with their credits.

    Before this step `xc seed` created the table itself: a database that has it keeps it as it is.
    """
    if not db.table("xc_recordings").exists():
        columns = ["path", "source", "commit", "scientific_name", "common_name", "label_source", "license",
                   "duration_s", "sample_rate", "channels", "notes", "xc_id", "recordist", "quality", "url", "also"]
        db.table("xc_recordings").create({c: str for c in columns}, pk="xc_id")


def _v6_clip_offsets_and_pruning(db: sqlite_utils.Database) -> None:
    """Where a detection's clip starts and ends in its source, and when the disk budget pruned it."""
    db.table("detections").add_column("clip_start_offset", float)
    db.table("detections").add_column("clip_end_offset", float)
    db.table("detections").add_column("clip_pruned", str)
    db.table("detections").create_index(["clip_path"])
    for counter in ("clips_written", "clips_withheld", "clips_missing", "windows_masked"):
        db.table("runs").add_column(counter, int, not_null_default=0)


def _v7_removals(db: sqlite_utils.Database) -> None:
    """What a rule (the range filter) took away from the detections, one row per window and species."""
    db.table("removals").create(
        {
            "id": str, "run_id": int, "station": str, "model": str, "source": str,
            "label": str, "scientific_name": str, "common_name": str, "score": float,
            "start_time": str, "start_offset": float, "end_offset": float, "reason": str, "created": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"station", "model", "source", "label", "score", "start_time", "reason", "created"},
    )
    db.table("removals").create_index(["start_time"])
    db.table("removals").create_index(["scientific_name", "start_time"])
    db.table("runs").add_column("removed", int, not_null_default=0)


# Append only: a migration, once released, never changes. user_version = len(applied).
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_detections_and_runs, _v2_alerts_and_outbox, _v3_run_device_recoveries_and_dropped_tail,
    _v4_alert_score_and_source, _v5_xc_recordings, _v6_clip_offsets_and_pruning, _v7_removals]


def connect(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the station database.

    The connection is in autocommit mode (isolation_level None): Python's sqlite3 would
    otherwise open a deferred transaction before each write by itself. Every multi-statement
    write goes through `write_transaction`.
    """
    try:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                               isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        db = sqlite_utils.Database(conn)
        migrate(db)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"{path}: cannot open the database: {exc}") from None
    return db


def migrate(db: sqlite_utils.Database) -> None:
    """Apply the migrations this database lacks, one transaction each.

    The version is read under the write lock, so two processes opening a new file at
    once do not both apply the same step.
    """
    while _schema_version(db) < len(MIGRATIONS):
        with write_transaction(db):
            version = _schema_version(db)
            if version < len(MIGRATIONS):
                MIGRATIONS[version](db)
                db.conn.execute(f"PRAGMA user_version={version + 1}")
                log.info("database migrated to schema version %d", version + 1)


def _schema_version(db: sqlite_utils.Database) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StorageError(
            f"database schema version {version} is newer than this station knows ({len(MIGRATIONS)})")
    return version


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A write transaction that takes SQLite's write lock first (BEGIN IMMEDIATE).

    A deferred transaction that reads and then writes fails at once with "database is
    locked" when another connection committed in between, whatever the busy timeout:
    taking the lock up front makes writers queue instead. Nested uses become savepoints.
    """
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    _begin_immediate(conn)
    try:
        yield db
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and is_disk_full(exc):
            raise StorageError(f"{_database_file(db)}: {exc}: the write was rolled back; "
                               "what was committed before is kept") from None
        raise


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting (busy timeout, then retries with backoff) while another writer holds the lock."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    pause = 0.05
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() > deadline:
                raise
            busy.add()
            log.debug("database busy; waiting for the write lock again")
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _database_file(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] if row and row[2] else ":memory:"


def is_locked(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc)


def is_disk_full(exc: BaseException) -> bool:
    return (getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)
            or (isinstance(exc, OSError) and exc.errno == 28))


def detection_row(det: Detection, run_id: int | None) -> dict:
    return {
        "id": det.id, "run_id": run_id, "station": det.station, "source": det.source,
        "model": det.model, "label": det.species.label,
        "scientific_name": det.species.scientific_name, "common_name": det.species.common_name,
        "confidence": round(det.confidence, 6), "mean_confidence": round(det.mean_confidence, 6),
        "window_count": det.window_count,
        "start_time": iso(det.start_time), "end_time": iso(det.end_time),
        "start_offset": round(det.start_offset, 6), "end_offset": round(det.end_offset, 6),
        "alternatives": json.dumps([{"label": label, "score": round(score, 6)} for label, score in det.alternatives]),
        "clip_path": det.clip.path if det.clip else None,
        "clip_start_offset": round(det.clip.start_offset, 6) if det.clip else None,
        "clip_end_offset": round(det.clip.end_offset, 6) if det.clip else None,
        "status": det.status, "updated": utc_now(),
    }


def removal_row(removal: Removal, run_id: int | None, station: str, model: str) -> dict:
    """A removal as stored. Its id is what it is (as an event's), so replaying the same audio adds no copy."""
    start_time = iso(removal.start_time)
    key = "|".join([station, model, removal.source, removal.species.label, start_time,
                    f"{removal.start_offset:.6f}", removal.reason])
    return {
        "id": uuid.uuid5(REMOVAL_NAMESPACE, key).hex, "run_id": run_id, "station": station, "model": model,
        "source": removal.source, "label": removal.species.label,
        "scientific_name": removal.species.scientific_name, "common_name": removal.species.common_name,
        "score": round(removal.score, 6), "start_time": start_time,
        "start_offset": round(removal.start_offset, 6), "end_offset": round(removal.end_offset, 6),
        "reason": removal.reason, "created": utc_now(),
    }


def detection_from_row(row: dict) -> Detection:
    return Detection(
        id=row["id"], station=row["station"], source=row["source"], model=row["model"],
        species=Species(row["label"], row["scientific_name"], row["common_name"] or row["label"]),
        confidence=row["confidence"], mean_confidence=row["mean_confidence"] or row["confidence"],
        window_count=row["window_count"] or 1, start_time=parse_iso(row["start_time"]),
        end_time=parse_iso(row["end_time"]), start_offset=row["start_offset"] or 0.0,
        end_offset=row["end_offset"] or 0.0,
        alternatives=tuple((a["label"], a["score"]) for a in json.loads(row["alternatives"] or "[]")),
        status=row["status"],
        clip=ClipRef(row["clip_path"], row["clip_start_offset"], row["clip_end_offset"])
        if row["clip_path"] and not row["clip_pruned"] else None)


class Store:
    """Writes runs and detection events; every write is its own short transaction.

    Beside the database lies a small reserve file: when the disk fills up, releasing it
    leaves room to close the open events and the run cleanly before the station exits.
    """

    def __init__(self, db: sqlite_utils.Database, reserve: Path | None = None):
        self.db = db
        self.reserve = reserve
        self.after_commit: list[Callable[[], None]] = []  # called after each outermost transaction commits

    @classmethod
    def open(cls, path: Path | str) -> Store:
        db = connect(path)
        reserve = None if str(path) == ":memory:" else Path(f"{path}-reserve")
        if reserve is not None:
            _fill_reserve(reserve)
        return cls(db, reserve)

    def release_reserve(self) -> None:
        if self.reserve is not None:
            self.reserve.unlink(missing_ok=True)

    def recover(self) -> list[Detection]:
        """Close what a crashed process left open: its events (as `recovered`) and its run."""
        dead = [r["id"] for r in self.db.query("SELECT id, pid, host FROM runs WHERE status = 'running'")
                if not _alive(r["pid"], r["host"])]
        if not dead:
            return []
        marks = ",".join("?" * len(dead))
        with write_transaction(self.db):
            self.db.execute(
                f"UPDATE detections SET status = 'recovered', updated = ? "
                f"WHERE status = 'open' AND run_id IN ({marks})", [utc_now(), *dead])
            self.db.execute(
                f"UPDATE runs SET status = 'crashed', stopped = COALESCE(stopped, ?) WHERE id IN ({marks})",
                [utc_now(), *dead])
            recovered = [detection_from_row(r) for r in self.db.query(
                f"SELECT * FROM detections WHERE status = 'recovered' AND run_id IN ({marks})", dead)]
        if recovered:
            log.warning("closed %d detection(s) left open by a run that did not stop cleanly", len(recovered))
        return recovered

    def start_run(self, station: str, command: str, model: str) -> int:
        with write_transaction(self.db):
            run_id = self.db.table("runs").insert({
                "station": station, "command": command, "model": model, "pid": os.getpid(),
                "host": os.uname().nodename, "started": utc_now(), "status": "running",
            }).last_pk
        assert isinstance(run_id, int)  # runs.id is an INTEGER PRIMARY KEY
        return run_id

    def update_run(self, run_id: int, counters: dict, status: str | None = None) -> None:
        values = dict(counters)
        if status:
            values.update(status=status, stopped=utc_now())
        with write_transaction(self.db):
            self.db.table("runs").update(run_id, values)

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction for several writes; nested uses become savepoints."""
        outermost = not self.db.conn.in_transaction
        with write_transaction(self.db) as db:
            yield db
        if outermost:
            for hook in self.after_commit:
                hook()

    def save(self, detections: Iterable[Detection], run_id: int | None) -> list[Detection]:
        """Store events by id; return those stored. A closed event is final: the same event
        from a second pass over the same audio (same id) leaves it as it is."""
        detections = list(detections)
        if not detections:
            return []
        with write_transaction(self.db):
            marks = ",".join("?" * len(detections))
            final = {r[0] for r in self.db.execute(
                f"SELECT id FROM detections WHERE status = 'closed' AND id IN ({marks})", [d.id for d in detections])}
            changed = [d for d in detections if d.id not in final]
            self.db.table("detections").upsert_all([detection_row(d, run_id) for d in changed], pk="id")
        return changed

    def save_removals(self, removals: Iterable[Removal], run_id: int | None, station: str, model: str) -> int:
        """Store what the rules removed; return how many are new (the same window again is not)."""
        rows = [removal_row(r, run_id, station, model) for r in removals]
        if not rows:
            return 0
        with write_transaction(self.db):
            before = self.db.execute("SELECT total_changes()").fetchone()[0]
            self.db.table("removals").insert_all(rows, pk="id", ignore=True)
            return self.db.execute("SELECT total_changes()").fetchone()[0] - before

    def recent_removals(self, limit: int = 20) -> list[dict]:
        """What the rules removed, newest first, with the columns `recent` shows for detections."""
        return list(self.db.query(
            "SELECT start_time, common_name, scientific_name, score, source, start_offset, end_offset, reason "
            "FROM removals ORDER BY start_time DESC, start_offset DESC LIMIT ?", [limit]))

    def recent(self, limit: int = 20) -> list[dict]:
        return list(self.db.query(
            "SELECT start_time, end_time, common_name, scientific_name, confidence, window_count, "
            "source, status FROM detections ORDER BY start_time DESC LIMIT ?", [limit]))

    def recent_clips(self, limit: int = 20) -> list[dict]:
        return list(self.db.query(
            "SELECT id, start_time, common_name, scientific_name, confidence, clip_path FROM detections "
            "WHERE clip_path IS NOT NULL AND clip_pruned IS NULL ORDER BY start_time DESC LIMIT ?", [limit]))

    def clip_of(self, detection_id: str) -> dict | None:
        """The detection whose id is or starts with `detection_id` and still has its clip."""
        return next(iter(self.db.query(
            "SELECT id, clip_path FROM detections WHERE id LIKE ? || '%' AND clip_path IS NOT NULL "
            "AND clip_pruned IS NULL ORDER BY start_time DESC LIMIT 1", [detection_id])), None)

    def recent_alerts(self, limit: int = 20, alert_type: str | None = None) -> list[dict]:
        """The latest alerts (of one type), newest first; `detection_ids` as a list."""
        rows = self.db.query(
            "SELECT event_time, type, common_name, scientific_name, score, source, detection_ids, created "
            "FROM alerts WHERE ? IS NULL OR type = ? ORDER BY event_time DESC LIMIT ?", [alert_type, alert_type, limit])
        return [{**row, "detection_ids": json.loads(row["detection_ids"] or "[]")} for row in rows]

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


def _fill_reserve(path: Path) -> None:
    """Keep RESERVE_BYTES on disk for the last writes after a disk-full error (best effort)."""
    try:
        if path.stat().st_size >= RESERVE_BYTES:
            return
    except FileNotFoundError:
        pass
    try:
        with open(path, "wb") as f:
            f.write(bytes(RESERVE_BYTES))
    except OSError:
        path.unlink(missing_ok=True)  # no room even for the reserve: DISK_LOW says so
