"""Xeno-Canto API v3: tagged queries, pages, retries, a response cache, and a key kept secret.

The key travels only in request parameters. Every message this module logs or raises
goes through `mask`, cached responses are named by a hash of the query (never the key),
and httpx's own request log is silenced because it prints full URLs.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import StationError

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

API_URL = "https://xeno-canto.org/api/3/recordings"
RETRY_STATUSES = {429, 500, 502, 503, 504}
QUALITY_ORDER = "ABCDE"


class XenoCantoError(StationError):
    pass


def mask(text: str, key: str | None) -> str:
    text = re.sub(r"(key=)[^&\s\"']+", r"\1***", str(text))
    return text.replace(key, "***") if key else text


@dataclass(frozen=True)
class Recording:
    id: str
    scientific_name: str
    common_name: str
    recordist: str
    country: str
    licence: str
    quality: str
    length_s: float
    file_url: str  # "" when restricted
    page_url: str
    file_name: str
    also: tuple[str, ...]
    sample_rate: str

    @classmethod
    def from_json(cls, r: dict, base_scheme: str = "https") -> Recording:
        file_url = r.get("file") or ""
        if file_url == "restricted_species":
            file_url = ""
        return cls(
            id=str(r.get("id", "")), scientific_name=f"{r.get('gen', '')} {r.get('sp', '')}".strip(),
            common_name=r.get("en") or "", recordist=r.get("rec") or "", country=r.get("cnt") or "",
            licence=absolute(r.get("lic") or "", "https"), quality=r.get("q") or "",
            length_s=parse_length(r.get("length") or ""), file_url=absolute(file_url, base_scheme),
            page_url=absolute(r.get("url") or "", "https"), file_name=r.get("file-name") or "",
            also=tuple(a for a in (r.get("also") or []) if a), sample_rate=str(r.get("smp") or ""))

    @property
    def restricted(self) -> bool:
        return not self.file_url

    @property
    def extension(self) -> str:
        suffix = Path(self.file_name).suffix.lower()
        return suffix if suffix in (".mp3", ".wav", ".flac", ".ogg", ".m4a") else ".mp3"


def absolute(url: str, scheme: str) -> str:
    return f"{scheme}:{url}" if url.startswith("//") else url


def parse_length(text: str) -> float:
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        return 0.0
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def check_tagged(query: str) -> str:
    """v3 accepts tags only (`tag:value`); plain words are refused here, before a request."""
    try:
        tokens = shlex.split(query)
    except ValueError as exc:
        raise XenoCantoError(f"query {query!r}: {exc}") from None
    untagged = [t for t in tokens if not re.match(r"^[a-z-]+:.+", t)]
    if not tokens or untagged:
        raise XenoCantoError(f"query {query!r}: Xeno-Canto v3 takes tags only (e.g. gen:Strix sp:aluco "
                             f"cnt:\"Puerto Rico\"); not tags: {' '.join(untagged) or '(empty)'}")
    return query


def quote(value: str) -> str:
    return f'"{value}"' if re.search(r"[\s<>=]", value) else value


@dataclass
class XenoCantoClient:
    key: str
    base_url: str = API_URL
    cache_dir: Path | None = None
    min_interval: float = 1.0  # the API's etiquette: about one request per second
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 30.0

    def __post_init__(self):
        if not self.key:
            raise XenoCantoError("no Xeno-Canto API key: set STATION_XC_KEY or the systemd credential xc_key")
        self._last_request = 0.0
        self._lock = asyncio.Lock()

    async def search(self, http, query: str, per_page: int = 500, limit: int | None = None) -> list[Recording]:
        check_tagged(query)
        scheme = urlsplit(self.base_url).scheme or "https"
        recordings: list[Recording] = []
        page, pages = 1, 1
        while page <= pages and (limit is None or len(recordings) < limit):
            data = await self._page(http, query, page, per_page)
            pages = int(data.get("numPages") or 1)
            recordings += [Recording.from_json(r, scheme) for r in data.get("recordings") or []]
            page += 1
        return recordings if limit is None else recordings[:limit]

    async def _page(self, http, query: str, page: int, per_page: int) -> dict:
        cache = self._cache_path(query, page, per_page)
        if cache and cache.is_file():
            return json.loads(cache.read_text(encoding="utf-8"))
        params = {"query": query, "per_page": per_page, "page": page, "key": self.key}
        response = await self.request(http, self.base_url, params=params)
        data = response.json()
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(data), encoding="utf-8")
        return data

    def _cache_path(self, query: str, page: int, per_page: int) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(f"{self.base_url}|{query}|{page}|{per_page}".encode()).hexdigest()[:20]
        return Path(self.cache_dir) / f"{digest}.json"

    async def request(self, http, url: str, params: dict | None = None, api: bool = True):
        """GET with rate limiting (API calls), retries on 429/5xx/timeouts, and clear errors."""
        import httpx

        for attempt in range(1, self.retries + 1):
            if api:
                await self._wait_turn()
            try:
                response = await http.get(url, params=params, timeout=self.timeout, follow_redirects=True)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise XenoCantoError(self._describe(response))
                problem = f"HTTP {response.status_code}"
            if attempt == self.retries:
                raise XenoCantoError(mask(f"{url}: {problem}, gave up after {attempt} attempts", self.key))
            delay = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
            log.info("%s; retrying in %.1f s", mask(f"{url}: {problem}", self.key), delay)
            await asyncio.sleep(delay)

    async def _wait_turn(self) -> None:
        async with self._lock:
            wait = self._last_request + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_request = time.monotonic()

    def _describe(self, response) -> str:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) else None
        message = (error.get("message") if isinstance(error, dict) else body.get("message")) if body else None
        if response.status_code == 401:
            return "Xeno-Canto refused the API key (HTTP 401): missing or invalid; check STATION_XC_KEY"
        return mask(f"Xeno-Canto HTTP {response.status_code}: {message or response.reason_phrase}", self.key)
