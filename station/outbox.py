"""The outbox: messages written to SQLite with the rows they describe, sent later, oldest first.

A message is enqueued in the same transaction as its detection or alert row, so a crash
or a broker outage can lose neither without the other. The sender marks a message sent
only after the broker acknowledged it (QoS 1 PUBACK); sent messages are deleted after
`mqtt.keep_sent_hours`, unsent ones never.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlite_utils

from .store import write_transaction
from .timefmt import iso, utc_now


def enqueue(db: sqlite_utils.Database, topic: str, payload: str, qos: int = 1, retain: bool = False) -> int:
    cursor = db.execute("INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                        [topic, payload, qos, int(retain), utc_now()])
    row_id = cursor.lastrowid
    assert row_id is not None  # set by every INSERT
    return row_id


def unsent(db: sqlite_utils.Database, after_id: int = 0, limit: int = 100, sent_since: str | None = None) -> list[dict]:
    """Unsent rows after `after_id`, oldest first; with `sent_since`, also rows acknowledged since then."""
    return list(db.query("SELECT id, topic, payload, qos, retain FROM outbox "
                         "WHERE (sent_at IS NULL OR sent_at >= ?) AND id > ? ORDER BY id LIMIT ?",
                         [sent_since or "~", after_id, limit]))


def mark_sent(db: sqlite_utils.Database, ids: list[int]) -> None:
    if ids:
        marks = ",".join("?" * len(ids))
        with write_transaction(db):
            db.execute(f"UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id IN ({marks})",
                       [utc_now(), *ids])


def purge_sent(db: sqlite_utils.Database, keep_hours: float) -> int:
    cutoff = iso(datetime.now(timezone.utc) - timedelta(hours=keep_hours))
    with write_transaction(db):
        return db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", [cutoff]).rowcount


def backlog(db: sqlite_utils.Database) -> int:
    return db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
