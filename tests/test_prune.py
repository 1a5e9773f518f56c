"""The clip budget: the oldest clips go first, the best of each species and alert clips last."""
import json
import os
import threading
import time
from datetime import timedelta

import pytest

from conftest import T0
from station.prune import ClipPruner
from station.store import connect, write_transaction
from station.supervise import Supervisor
from station.timefmt import iso

KB = 1024


@pytest.fixture
def station(tmp_path):
    db = connect(tmp_path / "station.db")
    columns = {c.name for c in db["detections"].columns}
    if "clip_pruned" not in columns:  # until the store's migration adds it
        db.execute("ALTER TABLE detections ADD COLUMN clip_pruned TEXT")
    (tmp_path / "clips").mkdir()
    return db, tmp_path / "station.db", tmp_path / "clips"


def add_clip(station, det_id: str, species: str, confidence: float, minute: int, size: int = 10 * KB,
             spectrogram: bool = False) -> str:
    db, _, folder = station
    when = T0 + timedelta(minutes=minute)
    relative = f"{when:%Y-%m-%d}/{species.lower()}/{when:%H%M%S}_{det_id[:8]}.flac"
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (folder / relative).write_bytes(os.urandom(size))
    if spectrogram:
        (folder / relative).with_suffix(".png").write_bytes(os.urandom(size // 2))
    with write_transaction(db):
        db["detections"].insert({
            "id": det_id, "station": "st", "source": "mic", "model": "m", "label": species, "scientific_name": species,
            "common_name": species, "confidence": confidence, "start_time": iso(when),
            "end_time": iso(when + timedelta(seconds=3)), "status": "closed", "clip_path": relative})
    return relative


def add_alert(station, alert_type: str, ids: list[str]) -> None:
    db, _, _ = station
    with write_transaction(db):
        db["alerts"].insert({"id": f"{alert_type}-{ids[0]}", "station": "st", "type": alert_type,
                             "detection_ids": json.dumps(ids), "payload": "{}", "event_time": iso(T0),
                             "created": iso(T0)})


def pruned(station) -> dict[str, str | None]:
    db, _, _ = station
    return {r[0]: r[1] for r in db.execute("SELECT id, clip_pruned FROM detections").fetchall()}


def test_the_oldest_clips_go_first_but_the_best_per_species_and_alert_clips_stay(station):
    _, path, folder = station
    # Wren: six clips, minutes 0-5; its best is w3 (0.95). Owl: two clips, its best is o1.
    for i, score in enumerate([0.5, 0.6, 0.7, 0.95, 0.55, 0.65]):
        add_clip(station, f"w{i}", "Wren", score, minute=i, spectrogram=True)
    add_clip(station, "o0", "Owl", 0.4, minute=1)
    add_clip(station, "o1", "Owl", 0.9, minute=7)
    add_alert(station, "NEW_SPECIES", ["w0"])  # the oldest clip of all, protected by its alert
    add_alert(station, "LOW_CONFIDENCE", ["o0"])  # not a protected type
    total = 6 * 15 * KB + 2 * 10 * KB
    pruner = ClipPruner(path, folder, max_disk_mb=(total - 40 * KB) / (1 << 20), keep_best_per_species=1)
    report = pruner.prune_once()
    # Unprotected, oldest first: w1 (minute 1), o0 (minute 1), w2, then w4: 15 + 10 + 15 = 40 KB.
    assert sorted(report.pruned_ids) == ["o0", "w1", "w2"]
    assert report.deleted == 3 and report.protected_deleted == 0 and not report.over_budget
    assert report.bytes_before == total and report.bytes_after == total - 40 * KB
    marks = pruned(station)
    assert {k for k, v in marks.items() if v} == {"o0", "w1", "w2"}
    assert len(marks) == 8, "the detection rows stay"
    left = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert len(left) == 5 * 2 - 2 + 1  # w0 w3 w4 w5 with spectrograms, o1
    assert not any(p.stem.endswith("w1") for p in folder.rglob("*"))  # a clip's spectrogram goes with it


def test_protected_clips_go_only_when_nothing_else_is_left(station):
    _, path, folder = station
    for i in range(4):
        add_clip(station, f"w{i}", "Wren", 0.5 + i / 10, minute=i)
    add_alert(station, "RARE_SPECIES", ["w0"])
    report = ClipPruner(path, folder, max_disk_mb=15 * KB / (1 << 20), keep_best_per_species=1).prune_once()
    # w1, w2 (unprotected) go; still over budget: w3 (the best wren), then the alert clip w0 would be last.
    assert report.pruned_ids == ["w1", "w2", "w3"] and report.protected_deleted == 1
    assert [p.stem[-2:] for p in folder.rglob("*.flac")] == ["w0"]
    assert {k for k, v in pruned(station).items() if v is None} == {"w0"}


def test_under_budget_or_without_a_budget_nothing_goes(station):
    _, path, folder = station
    add_clip(station, "w0", "Wren", 0.5, minute=0)
    assert ClipPruner(path, folder, max_disk_mb=1).prune_once().deleted == 0
    assert ClipPruner(path, folder).prune_once().budget_bytes is None
    assert all(v is None for v in pruned(station).values())


def test_a_percentage_of_the_disk_is_a_budget(station):
    _, path, folder = station
    total = os.statvfs(folder).f_blocks * os.statvfs(folder).f_frsize
    pruner = ClipPruner(path, folder, max_disk_mb=10_000_000, max_disk_percent=0.5)
    assert pruner.budget_bytes() == int(total * 0.5 / 100)
    assert ClipPruner(path, folder, max_disk_mb=1, max_disk_percent=50).budget_bytes() == 1 << 20


def test_missing_clips_are_marked_and_old_orphans_go_before_any_clip(station):
    _, path, folder = station
    gone = add_clip(station, "w0", "Wren", 0.5, minute=0)
    add_clip(station, "w1", "Wren", 0.6, minute=1)
    (folder / gone).unlink()
    old_orphan, young_orphan = folder / "old.flac", folder / ".tmp-clip.flac.tmp"
    old_orphan.write_bytes(os.urandom(20 * KB))
    young_orphan.write_bytes(os.urandom(5 * KB))
    os.utime(old_orphan, (time.time() - 7200, time.time() - 7200))
    report = ClipPruner(path, folder, max_disk_mb=20 * KB / (1 << 20)).prune_once()
    assert report.missing == 1 and report.orphans_deleted == 1 and report.deleted == 0
    assert not old_orphan.exists() and young_orphan.exists()  # a clip whose row is not stored yet may be young
    assert pruned(station)["w0"] is not None and pruned(station)["w1"] is None


def test_the_pruner_runs_in_the_background_under_the_supervisor(station):
    _, path, folder = station
    for i in range(3):
        add_clip(station, f"w{i}", "Wren", 0.5, minute=i)
    pruner = ClipPruner(path, folder, max_disk_mb=10 * KB / (1 << 20), keep_best_per_species=0, interval_seconds=0.05)
    stop = threading.Event()
    supervisor = Supervisor(stop)
    supervisor.start("prune", pruner.loop)
    deadline = time.monotonic() + 10
    while (pruner.last_report is None or pruner.last_report.deleted < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    add_clip(station, "w9", "Wren", 0.5, minute=9)  # a later clip: the next pass prunes w2 for it
    while pruned(station)["w2"] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    supervisor.stop(timeout=5)
    assert not stop.is_set() and supervisor.gave_up is None
    assert {k for k, v in pruned(station).items() if v} == {"w0", "w1", "w2"}
