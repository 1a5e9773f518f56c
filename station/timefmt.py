"""How the station writes times: UTC ISO-8601 with milliseconds and a Z, in rows and messages alike."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    return iso(datetime.now(timezone.utc))


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
