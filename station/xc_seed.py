"""Seed a validation set from Xeno-Canto: choose recordings, download them, keep their credits.

Downloads run a few at a time and resume: a finished file is only ever created by an
atomic rename of a complete `.part`, so an existing file is complete and is skipped, and
an interrupted one is fetched again. Each recording's licence and recordist go into
manifest.csv (the same columns as the shared test data, so `station xc validate` reads
either) and into the `xc_recordings` table of the station database.
"""
from __future__ import annotations

import asyncio
import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from .progress import terminal_bar
from .xc_api import QUALITY_ORDER, Recording, XenoCantoClient, XenoCantoError, mask, quote

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "source", "commit", "scientific_name", "common_name", "label_source", "license",
                    "duration_s", "sample_rate", "channels", "notes", "xc_id", "recordist", "quality", "url", "also"]


@dataclass(frozen=True)
class SeedOptions:
    out: Path
    species: Sequence[str] = ()  # "Genus species" or an English name
    country: str | None = None
    query: str | None = None  # extra raw tags, e.g. 'type:song'
    per_species: int = 5
    min_quality: str | None = None  # "B": grades A and B
    max_length: float | None = None  # seconds
    licence: str | None = None  # e.g. "BY-NC-SA"
    no_background: bool = False
    concurrency: int = 3
    database: Path | None = None


@dataclass
class SeedReport:
    selected: list[Recording] = field(default_factory=list)
    downloaded: int = 0
    already_present: int = 0
    restricted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    manifest: Path | None = None


def species_query(name: str, options: SeedOptions) -> str:
    words = name.split()
    if len(words) == 2 and words[0][:1].isupper() and words[1].islower():
        tags = [f"gen:{words[0]}", f"sp:{words[1]}"]
    else:
        tags = [f'en:"={name}"']
    if options.country:
        tags.append(f"cnt:{quote(options.country)}")
    if options.min_quality:
        tags.append(f'q:">{QUALITY_ORDER[QUALITY_ORDER.index(options.min_quality) + 1]}"'
                    if options.min_quality != "E" else "")
    if options.max_length:
        tags.append(f'len:"<{options.max_length:g}"')
    if options.licence:
        tags.append(f"lic:{options.licence}")
    if options.query:
        tags.append(options.query)
    return " ".join(t for t in tags if t)


def choose(recordings: list[Recording], options: SeedOptions) -> list[Recording]:
    """The best N: usable files first, then by quality grade, then by id for a stable order."""
    usable = [r for r in recordings if not (options.no_background and r.also)]
    usable.sort(key=lambda r: (r.restricted, _grade(r.quality), int(r.id or 0)))
    return usable[: options.per_species]


def _grade(quality: str) -> int:
    """A=0 ... E=4; 'no score' and unknown after every grade."""
    return QUALITY_ORDER.index(quality) if quality in tuple(QUALITY_ORDER) else len(QUALITY_ORDER)


async def seed(options: SeedOptions, client: XenoCantoClient, progress: bool | None = None) -> SeedReport:
    import httpx

    report = SeedReport()
    options.out.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(headers={"User-Agent": "field-station (validation seeding)"}) as http:
        for query in _queries(options):
            found = choose(await client.search(http, query, limit=None), options)
            if not found:
                report.not_found.append(query)
            report.selected += found
        restricted = [r for r in report.selected if r.restricted]
        report.restricted = [f"XC{r.id} {r.scientific_name}" for r in restricted]
        wanted = [r for r in report.selected if not r.restricted]
        outcomes = await _download_all(http, client, wanted, options, progress)
    for recording, outcome in zip(wanted, outcomes):
        if outcome == "present":
            report.already_present += 1
        elif outcome == "downloaded":
            report.downloaded += 1
        else:
            report.failed.append(f"XC{recording.id}: {outcome}")
    done = [r for r, o in zip(wanted, outcomes) if o in ("present", "downloaded")]
    report.manifest = write_manifest(done, options.out)
    if options.database:
        record_in_database(done, options.out, options.database)
    return report


def _queries(options: SeedOptions) -> list[str]:
    if options.species:
        return [species_query(name, options) for name in options.species]
    if options.query or options.country:
        return [species_query("", options).strip()]
    raise XenoCantoError("nothing to seed: give species (or a model whose labels to use), --country or --query")


async def _download_all(http, client, recordings, options, progress) -> list[str]:
    limit = asyncio.Semaphore(options.concurrency)
    bar = terminal_bar(len(recordings), "downloading", progress)

    async def one(recording: Recording) -> str:
        async with limit:
            try:
                return await download(http, client, recording, options.out)
            except XenoCantoError as exc:
                log.error("XC%s: %s", recording.id, exc)
                return str(exc)
            finally:
                if bar is not None:
                    bar.update(1)

    try:
        return await asyncio.gather(*(one(r) for r in recordings))
    finally:
        if bar is not None:
            bar.close()


async def download(http, client: XenoCantoClient, recording: Recording, out: Path) -> str:
    target = out / f"XC{recording.id}{recording.extension}"
    if target.is_file():
        return "present"
    partial = target.with_name(target.name + ".part")
    for _ in range(client.retries):
        response = await client.request(http, recording.file_url, api=False)
        expected = response.headers.get("content-length")
        if expected is None or len(response.content) == int(expected):
            try:
                partial.write_bytes(response.content)
                os.replace(partial, target)
            except BaseException:  # a full disk, a cancelled task: no half-written file stays behind
                partial.unlink(missing_ok=True)
                raise
            return "downloaded"
        log.warning("XC%s: got %d of %s bytes; fetching again", recording.id, len(response.content), expected)
    raise XenoCantoError(mask(f"{recording.file_url}: incomplete after {client.retries} attempts", client.key))


def write_manifest(recordings: list[Recording], out: Path) -> Path:
    path = out / "manifest.csv"
    existing = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            existing = {row["xc_id"]: row for row in csv.DictReader(f)}
    for r in recordings:
        existing[r.id] = manifest_row(r)
    temporary = path.with_suffix(".csv.part")
    with open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(existing[k] for k in sorted(existing, key=lambda k: int(k or 0)))
    os.replace(temporary, path)
    return path


def manifest_row(r: Recording) -> dict:
    return {
        "path": f"XC{r.id}{r.extension}", "source": f"xeno-canto XC{r.id}", "commit": "",
        "scientific_name": r.scientific_name, "common_name": r.common_name,
        "label_source": "Xeno-Canto foreground species (clip-level)", "license": r.licence,
        "duration_s": f"{r.length_s:g}", "sample_rate": r.sample_rate, "channels": "",
        "notes": f"XC{r.id} rec={r.recordist}; q={r.quality}; {r.country}; also={';'.join(r.also) or '-'}",
        "xc_id": r.id, "recordist": r.recordist, "quality": r.quality, "url": r.page_url, "also": ";".join(r.also),
    }


def record_in_database(recordings: list[Recording], out: Path, database: Path) -> None:
    """Upsert into `xc_recordings` (a table of the station's schema since migration 5)."""
    from .store import connect, write_transaction

    db: sqlite_utils.Database = connect(database)
    try:
        rows = [{**manifest_row(r), "path": str(out / manifest_row(r)["path"])} for r in recordings]
        with write_transaction(db):
            db.table("xc_recordings").upsert_all(rows, pk="xc_id")
    finally:
        db.conn.close()


