"""Helpers the tests share: read a database as dicts, wait for a condition."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


def rows(db: Path | str, sql: str, *args) -> list[dict]:
    """Rows of `sql` as dicts, on a connection of its own (closed again, so nothing holds the file)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def database_at_schema(path: Path, version: int):
    """A database as an older station left it: migrations 1..version only (sqlite_utils.Database)."""
    import sqlite_utils

    from station.store import MIGRATIONS

    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    for migration in MIGRATIONS[:version]:
        migration(db)
    db.execute(f"PRAGMA user_version={version}")
    return db


def rows_once_there(db: Path, sql: str, *args) -> list[dict]:
    """`rows`, or [] while another process has not yet created the file or its tables (a poll's view)."""
    if not db.exists():
        return []
    try:
        return rows(db, sql, *args)
    except sqlite3.OperationalError as exc:
        if "no such" in str(exc):  # table or column: the station's migrations have not run yet
            return []
        raise


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """Poll `condition` until it is true or `timeout` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def sealed_model_folder(root: Path, labels=None) -> Path:
    """A model folder that passes the station's checks (manifest, labels, sha256) but holds no real model:
    for commands that read a folder and never run it (xc seed's labels, config check)."""
    from station.model_folder import Manifest, write_folder, write_labels
    from station.types import Species

    staging = root / "staging"
    staging.mkdir(parents=True)
    write_labels(staging / "labels.tsv", labels or [
        Species("Todus mexicanus_Puerto Rican Tody", "Todus mexicanus", "Puerto Rican Tody"),
        Species("Spixs Guan", None, "Spixs Guan")])
    (staging / "model.onnx").write_bytes(b"never run: only the folder is read")
    return write_folder(staging, root / "model", Manifest("m", 48000, 3.0, "x", "y")).path
