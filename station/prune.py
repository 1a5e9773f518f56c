"""Keep the clips folder within its disk budget, deleting the least valuable clips first.

The budget is `max_disk_mb`, or `max_disk_percent` of the filesystem the clips live on, or
the smaller of the two; `min_free_mb` also makes room when the disk itself runs low. Over
budget, clips go in this order, each group oldest first (by the time the sound was heard):

1. files no detection refers to, once older than `orphan_grace_seconds` (a clip whose row
   is not stored yet is younger than that; a temporary file a crash left behind is not);
2. clips nothing protects;
3. clips among the `keep_best_per_species` best-scoring of their species;
4. clips an alert of a protected type (RARE_SPECIES, NEW_SPECIES) refers to.

Groups 3 and 4 go only when nothing else is left. A clip's spectrogram goes with it. The
detection row stays, with `clip_pruned` set to when its clip went; a row whose clip file
has disappeared (deleted by hand, or a crash between delete and update) is marked too.
Writes are short transactions through station.store.write_transaction.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from .store import connect, write_transaction
from .timefmt import utc_now

log = logging.getLogger(__name__)

MB = 1 << 20
MARK_BATCH = 500  # rows per transaction: short enough never to hold the write lock for long


@dataclass
class PruneReport:
    bytes_before: int = 0
    bytes_after: int = 0
    budget_bytes: int | None = None
    deleted: int = 0  # clips deleted (with their spectrograms)
    deleted_bytes: int = 0
    protected_deleted: int = 0  # of which protected ones, because nothing else was left
    missing: int = 0  # rows whose clip was already gone, now marked pruned
    orphans_deleted: int = 0
    seconds: float = 0.0
    pruned_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def over_budget(self) -> bool:
        return self.budget_bytes is not None and self.bytes_after > self.budget_bytes


@dataclass
class _Clip:
    id: str
    species: str
    confidence: float
    start_time: str
    paths: list[str]  # the clip and its spectrogram, relative to the folder
    size: int


class ClipPruner:
    def __init__(self, db_path: Path | str, clips_folder: Path | str, max_disk_mb: float | None = None,
                 max_disk_percent: float | None = None, keep_best_per_species: int = 3,
                 protected_alert_types: tuple[str, ...] = ("RARE_SPECIES", "NEW_SPECIES"),
                 interval_seconds: float = 300.0, min_free_mb: float = 0.0, orphan_grace_seconds: float = 3600.0):
        self.db_path, self.folder = db_path, Path(clips_folder)
        self.max_disk_mb, self.max_disk_percent = max_disk_mb, max_disk_percent
        self.keep_best = keep_best_per_species
        self.protected_alert_types = tuple(protected_alert_types)
        self.interval_seconds = interval_seconds
        self.min_free_mb = min_free_mb
        self.orphan_grace_seconds = orphan_grace_seconds
        self.last_report: PruneReport | None = None
        self._db: sqlite_utils.Database | None = None

    def loop(self, stop: threading.Event) -> None:
        """Prune every `interval_seconds` until `stop` (run under station.supervise.Supervisor)."""
        while not stop.is_set():
            report = self.prune_once()
            if report.deleted or report.missing or report.orphans_deleted:
                log.info("clips: pruned %d clip(s) (%.1f MB, %d protected), %d orphan file(s); %d row(s) whose clip "
                         "was gone; %.1f of %.1f MB used", report.deleted, report.deleted_bytes / MB,
                         report.protected_deleted, report.orphans_deleted, report.missing, report.bytes_after / MB,
                         (report.budget_bytes or 0) / MB)
            stop.wait(self.interval_seconds)

    def budget_bytes(self) -> int | None:
        """What the clips may use now: the smallest of the configured limits, or None without any."""
        usage = shutil.disk_usage(self.folder)
        limits = []
        if self.max_disk_mb:
            limits.append(int(self.max_disk_mb * MB))
        if self.max_disk_percent:
            limits.append(int(usage.total * self.max_disk_percent / 100))
        return min(limits) if limits else None

    def prune_once(self) -> PruneReport:
        started = time.monotonic()
        report = PruneReport()
        if not self.folder.is_dir():
            return report
        files = _scan(self.folder)
        clips, missing = self._clips(files)
        report.missing = len(missing)
        report.bytes_before = report.bytes_after = sum(size for size, _ in files.values())
        report.budget_bytes = self._target(report.bytes_before)
        gone = list(missing)
        if report.over_budget:
            gone += self._delete_until_within(report, files, clips)
        self._mark_pruned(gone)
        report.pruned_ids = gone
        report.seconds = time.monotonic() - started
        self.last_report = report
        return report

    def _target(self, used: int) -> int | None:
        budget = self.budget_bytes()
        if self.min_free_mb:
            shortfall = int(self.min_free_mb * MB) - shutil.disk_usage(self.folder).free
            if shortfall > 0:
                budget = min(budget if budget is not None else used, max(0, used - shortfall))
        return budget

    def _delete_until_within(self, report: PruneReport, files: dict, clips: list[_Clip]) -> list[str]:
        referenced = {p for clip in clips for p in clip.paths}
        orphans = sorted((mtime, path, size) for path, (size, mtime) in files.items()
                         if path not in referenced and time.time() - mtime > self.orphan_grace_seconds)
        for _, path, size in orphans:
            if not report.over_budget:
                return []
            if _unlink(self.folder / path):
                report.orphans_deleted += 1
                report.bytes_after -= size
        deleted = []
        for clip, protected in self._in_pruning_order(clips):
            if not report.over_budget:
                break
            for path in clip.paths:
                _unlink(self.folder / path)
            deleted.append(clip.id)
            report.deleted += 1
            report.deleted_bytes += clip.size
            report.bytes_after -= clip.size
            report.protected_deleted += protected
        return deleted

    def _in_pruning_order(self, clips: list[_Clip]) -> list[tuple[_Clip, bool]]:
        alerted = self._alerted_ids()
        best = _best_per_species(clips, self.keep_best)
        tier = {c.id: 2 if c.id in alerted else 1 if c.id in best else 0 for c in clips}
        ordered = sorted(clips, key=lambda c: (tier[c.id], c.start_time, c.id))
        return [(c, tier[c.id] > 0) for c in ordered]

    def _clips(self, files: dict) -> tuple[list[_Clip], list[str]]:
        """The detections whose clips are present, and the ids of those whose clip file is gone."""
        rows = self.db.execute(
            "SELECT id, label, scientific_name, confidence, start_time, clip_path FROM detections "
            "WHERE clip_path IS NOT NULL AND clip_path != '' AND clip_pruned IS NULL").fetchall()
        clips, missing = [], []
        for det_id, label, scientific, confidence, start_time, clip_path in rows:
            if clip_path not in files:
                missing.append(det_id)
                continue
            paths = [clip_path] + [p for p in (_spectrogram_of(clip_path),) if p in files]
            clips.append(_Clip(det_id, scientific or label, confidence or 0.0, start_time or "", paths,
                               sum(files[p][0] for p in paths)))
        return clips, missing

    def _alerted_ids(self) -> set[str]:
        if not self.protected_alert_types:
            return set()
        marks = ",".join("?" * len(self.protected_alert_types))
        ids: set[str] = set()
        for (text,) in self.db.execute(f"SELECT detection_ids FROM alerts WHERE type IN ({marks})",
                                       list(self.protected_alert_types)).fetchall():
            try:
                ids.update(str(i) for i in json.loads(text or "[]"))
            except ValueError:
                log.debug("an alert's detection_ids is not JSON: %.80r", text)
        return ids

    def _mark_pruned(self, ids: list[str]) -> None:
        when = utc_now()
        for i in range(0, len(ids), MARK_BATCH):
            batch = ids[i:i + MARK_BATCH]
            with write_transaction(self.db):
                self.db.execute(f"UPDATE detections SET clip_pruned = ? WHERE id IN ({','.join('?' * len(batch))})",
                                [when, *batch])

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            self._db = connect(self.db_path)
        return self._db


def _scan(folder: Path) -> dict[str, tuple[int, float]]:
    """Every regular file under `folder`: relative POSIX path -> (size, mtime). Links are not followed."""
    found: dict[str, tuple[int, float]] = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            try:
                st = path.lstat()
            except OSError:
                continue  # deleted while we looked
            if stat.S_ISREG(st.st_mode):
                found[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime)
    return found


def _spectrogram_of(clip_path: str) -> str:
    return str(Path(clip_path).with_suffix(".png").as_posix())


def _best_per_species(clips: list[_Clip], keep: int) -> set[str]:
    by_species: dict[str, list[_Clip]] = {}
    for clip in clips:
        by_species.setdefault(clip.species, []).append(clip)
    best: set[str] = set()
    for group in by_species.values():
        group.sort(key=lambda c: (-c.confidence, c.start_time))
        best.update(c.id for c in group[:keep])
    return best


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
