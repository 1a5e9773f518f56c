#!/usr/bin/env python3
"""What clips cost: CPU per event and at real time, a prune pass, and disk per hour of dawn chorus.

    scripts/bench_clips.py --model models/birdnet-v2.4 [--data ../shared/data] [--pre 1 --post 1]

1. ClipBuffer.push per second of audio, at 22.05 and 48 kHz (chunks of 0.5 s, as a microphone).
2. Per event: cut + FLAC write (atomic, fsync) and the PNG spectrogram, for clips of 3, 6.5 and
   15 s at both rates (real audio: the BLKFR soundscape, 22.05 kHz, and the magpie, 48 kHz).
3. A prune pass over 10,000 clips (small files; the pass reads sizes, not contents): under
   budget (a scan), and over it (deleting 1,000 and marking their rows).
4. Disk per hour of a busy dawn chorus: BirdNET (3 s windows, 1.5 s hop, threshold 0.5, the
   station's defaults) over the BLKFR soundscape (Sierra Nevada, 470 s, June, 09:30), a clip
   for every closed detection with the pre- and post-roll given, at the file's own rate;
   MB per hour = bytes written x 3600 / 470; and, from the clip seconds per hour, what the
   same chorus costs at each rate's measured FLAC bytes per second (a 48 kHz microphone's
   clips are bigger than the 22.05 kHz file's). Without --model this part is skipped.

The real-time share adds the push cost per audio second, the per-event cost times the chorus's
events per second, and one prune pass every 300 s. Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from station.clips import ClipBuffer, ClipWriter
from station.decode import open_audio
from station.prune import ClipPruner
from station.spectrogram import spectrogram_png
from station.store import connect, write_transaction
from station.timefmt import iso
from station.types import AudioChunk

T0 = datetime(2026, 5, 1, 5, 0, tzinfo=timezone.utc)
SOUNDSCAPE = "audio/soundscapes/BLKFR-10-CPL_20190611_093000.mp3"
MAGPIE = "audio/birds_misc/Pica_pica_30s.wav"


def decoded(path: Path) -> tuple[np.ndarray, int]:
    info, blocks = open_audio(path, 10.0)
    return np.concatenate(list(blocks)), info.sample_rate


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def push_cost(audio: np.ndarray, rate: int) -> float:
    """Seconds of CPU per second of audio pushed into a 60 s ClipBuffer in 0.5 s chunks."""
    block = rate // 2
    chunks = [AudioChunk(audio[i:i + block], rate, "mic", i / rate, T0) for i in range(0, len(audio) - block, block)]

    def push_all():
        buffer = ClipBuffer(60.0)
        for chunk in chunks:
            buffer.push(chunk)
    return best_of(3, push_all) / (len(chunks) * block / rate)


def event_costs(audio: np.ndarray, rate: int, folder: Path) -> dict[str, dict[float, float]]:
    buffer = ClipBuffer(60.0)
    for i in range(0, min(len(audio), 60 * rate), rate // 2):
        buffer.push(AudioChunk(audio[i:i + rate // 2], rate, "mic", i / rate, T0))
    writer = ClipWriter(folder, min_free_mb=0)
    costs: dict[str, dict[float, float]] = {"cut": {}, "flac": {}, "png": {}, "flac_kb": {}, "png_kb": {}}
    for seconds in (3.0, 6.5, 15.0):
        for name, figure in one_event_costs(buffer, writer, rate, folder, seconds).items():
            costs[name][seconds] = figure
    return costs


def one_event_costs(buffer: ClipBuffer, writer: ClipWriter, rate: int, folder: Path,
                    seconds: float) -> dict[str, float]:
    """Cut, FLAC and PNG of one event `seconds` long: best CPU seconds of 5, and the two files' sizes in kB."""
    cut = buffer.cut("mic", 20.0, 20.0 + seconds)
    figures = {"cut": best_of(5, lambda: buffer.cut("mic", 20.0, 20.0 + seconds))}
    paths = []
    figures["flac"] = best_of(5, lambda: paths.append(
        writer.write(f"{len(paths):016x}", "bench", T0, cut.samples, rate)))
    png = folder / f"bench-{rate}-{seconds}.png"
    figures["png"] = best_of(5, lambda: spectrogram_png(cut.samples, rate, png))
    figures["flac_kb"] = (folder / paths[-1]).stat().st_size / 1024
    figures["png_kb"] = png.stat().st_size / 1024
    return figures


def prune_costs(folder: Path, clips: int = 10_000) -> tuple[float, float, int]:
    db_path = folder.with_name("prune.db")
    db = connect(db_path)
    if "clip_pruned" not in {c.name for c in db["detections"].columns}:  # until the store's migration adds it
        db.execute("ALTER TABLE detections ADD COLUMN clip_pruned TEXT")
    rows = []
    for i in range(clips):
        when = T0 + timedelta(seconds=20 * i)
        relative = f"{when:%Y-%m-%d}/species-{i % 40}/{when:%H%M%S}_{i:08x}.flac"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(b"\0" * 1000)
        species = f"s{i % 40}"
        rows.append({"id": f"{i:016x}", "station": "st", "source": "mic", "model": "m", "label": species,
                     "scientific_name": species, "common_name": species, "confidence": (i * 7919 % 1000) / 1000,
                     "start_time": iso(when), "end_time": iso(when), "status": "closed", "clip_path": relative})
    with write_transaction(db):
        db["detections"].insert_all(rows)
    under = ClipPruner(db_path, folder, max_disk_mb=1000)
    scan = best_of(3, under.prune_once)
    over = ClipPruner(db_path, folder, max_disk_mb=(clips - 1000) * 1000 / (1 << 20) + 1e-9)
    started = time.perf_counter()
    report = over.prune_once()
    return scan, time.perf_counter() - started, report.deleted


def dawn_chorus(model: Path, data: Path, folder: Path, pre: float, post: float, threshold: float) -> dict:
    from station.detection import Detector, SpeciesFilter
    from station.inference import OnnxClassifier
    from station.sources import FileSource
    from station.windowing import Windower

    classifier = OnnxClassifier.from_path(model)
    windower = Windower(classifier.sample_rate, 3.0, 1.5, 1.0, resampler=classifier.manifest.resampler)
    detector = Detector("st", classifier.model_name, SpeciesFilter(threshold, {}, [], []), 3)
    buffer, writer = ClipBuffer(120.0), ClipWriter(folder, min_free_mb=0)
    closed, written, seconds = [], 0, 0.0
    for chunk in FileSource(data / SOUNDSCAPE, 0.5).chunks(threading.Event()):
        buffer.push(chunk)
        seconds = chunk.end_offset
        found = detector.push(classifier.classify(windower.push(chunk)))
        for det in [d for d in found + (detector.flush() if chunk.final else []) if d.status == "closed"]:
            # as the station would: when the event closes (the post-roll is in the buffer by then)
            cut = buffer.cut(det.source, det.start_offset - pre, det.end_offset + post)
            relative = writer.write(det.id, det.species.common_name, det.start_time, cut.samples, cut.sample_rate)
            written += (folder / relative).stat().st_size
            closed.append(det)
    return {"seconds": seconds, "events": len(closed), "bytes": written,
            "clip_seconds": sum(d.end_offset - d.start_offset + pre + post for d in closed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a BirdNET model folder, for the dawn chorus figure")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    parser.add_argument("--pre", type=float, default=1.0)
    parser.add_argument("--post", type=float, default=1.0)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    soundscape, magpie = decoded(args.data / SOUNDSCAPE), decoded(args.data / MAGPIE)
    with tempfile.TemporaryDirectory(prefix="bench-clips-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        per_rate = {}
        for name, (audio, rate) in (("soundscape", soundscape), ("magpie", magpie)):
            per_rate[rate] = (push_cost(audio, rate), event_costs(audio, rate, tmp / name))
            push, costs = per_rate[rate]
            print(f"{name} at {rate} Hz: push {push * 1e6:.0f} us per audio second ({push * 100:.4f}% of a core)")
            for seconds in costs["cut"]:
                print(f"  {seconds:>4} s clip: cut {costs['cut'][seconds] * 1e3:.2f} ms, FLAC write "
                      f"{costs['flac'][seconds] * 1e3:.1f} ms ({costs['flac_kb'][seconds]:.0f} KB), spectrogram "
                      f"{costs['png'][seconds] * 1e3:.1f} ms ({costs['png_kb'][seconds]:.0f} KB)")
        scan, over, deleted = prune_costs(tmp / "prune")
        print(f"prune pass over 10,000 clips: {scan * 1e3:.0f} ms under budget (scan), "
              f"{over * 1e3:.0f} ms deleting {deleted} and marking their rows")
        if args.model:
            chorus = dawn_chorus(args.model, args.data, tmp / "chorus", args.pre, args.post, args.threshold)
            report_chorus(chorus, per_rate, scan, args)
        else:
            print("dawn chorus: skipped (give --model with a BirdNET model folder)")


def report_chorus(chorus: dict, per_rate: dict, scan: float, args) -> None:
    hours = chorus["seconds"] / 3600
    events_per_s = chorus["events"] / chorus["seconds"]
    print(f"dawn chorus (BLKFR, {chorus['seconds']:.0f} s, threshold {args.threshold}, "
          f"pre/post {args.pre}/{args.post} s): "
          f"{chorus['events']} clips, {chorus['clip_seconds']:.0f} s of clips, {chorus['bytes'] / 2**20:.1f} MB: "
          f"{chorus['bytes'] / 2**20 / hours:.0f} MB per hour ({chorus['clip_seconds'] / chorus['seconds']:.2f} s of "
          f"clip per second heard)")
    clip_seconds_per_hour = chorus["clip_seconds"] / hours
    for rate, (push, costs) in sorted(per_rate.items()):
        kb_per_clip_second = costs["flac_kb"][15.0] / 15.0
        print(f"  at {rate} Hz ({kb_per_clip_second:.0f} KB per clip second, measured on 15 s): "
              f"{clip_seconds_per_hour * kb_per_clip_second / 1024:.0f} MB per hour of this chorus")
        per_event = costs["cut"][6.5] + costs["flac"][6.5]
        share = push + events_per_s * per_event + scan / 300
        with_png = share + events_per_s * costs["png"][6.5]
        print(f"  at {rate} Hz: {per_event * 1e3:.1f} ms per 6.5 s clip; share of one core at real time "
              f"{share * 100:.2f}% ({with_png * 100:.2f}% with spectrograms)")


if __name__ == "__main__":
    main()
