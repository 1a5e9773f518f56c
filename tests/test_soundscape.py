"""Soundscapes scored per 5 s segment: label files, the segment grid, metrics recounted another way."""
import csv
import random
from datetime import timedelta

import numpy as np
import pytest

from conftest import T0
from station.config import Settings
from station.errors import StationError
from station.inference import OnnxClassifier
from station.names import LabelIndex
from station.soundscape import (
    ScoredFile,
    pr_curve,
    read_timed_labels,
    segment_count,
    segment_metrics,
    segment_predictions,
    segment_truth,
)
from station.types import Detection, Species
from station.validation import Clip, detector_factory, read_manifest, validate

JAY = Species("Cyanocitta cristata_Blue Jay", "Cyanocitta cristata", "Blue Jay")
CROW = Species("Corvus brachyrhynchos_American Crow", "Corvus brachyrhynchos", "American Crow")
DOG = Species("Dog_Dog", None, "Dog")
LABELS = [JAY, CROW, DOG]


def recount(truth_rows, predicted_rows):
    """Micro/macro P/R/F1 from (segment, species) rows with plain loops: the test's own arithmetic."""
    truth_rows, predicted_rows = set(truth_rows), set(predicted_rows)
    species = sorted({s for _, s in truth_rows})
    per = {}
    for sp in sorted({s for _, s in truth_rows | predicted_rows}):
        tp = len([1 for row in predicted_rows if row[1] == sp and row in truth_rows])
        fp = len([1 for row in predicted_rows if row[1] == sp and row not in truth_rows])
        fn = len([1 for row in truth_rows if row[1] == sp and row not in predicted_rows])
        per[sp] = (tp, fp, fn)

    def prf(tp, fp, fn):
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    micro = prf(*(sum(v[i] for v in per.values()) for i in range(3)))
    macro = tuple(float(np.mean([prf(*per[s])[i] for s in species])) if species else 0.0 for i in range(3))
    return micro, macro, per


def rows_of(segments):
    return {(i, s) for i, found in segments.items() for s in found}


def test_segment_metrics_match_a_recount_on_random_segments():
    rng = random.Random(3)
    names = [f"sp{i}" for i in range(6)]
    truth = {i: set(rng.sample(names[:4], rng.randint(0, 2))) for i in range(80)}
    predicted = {i: set(rng.sample(names, rng.randint(0, 3))) for i in range(80)}
    predicted[99] = {"sp0"}  # outside the scored segments: ignored
    m = segment_metrics(truth, predicted)
    micro, macro, per = recount(rows_of(truth), rows_of({i: s for i, s in predicted.items() if i in truth}))
    assert m.micro == pytest.approx(micro) and m.macro == pytest.approx(macro)
    assert {s.label: (s.true_positives, s.false_positives, s.false_negatives) for s in m.species} == per
    assert m.segments == 80 and m.segments_with_calls == sum(1 for s in truth.values() if s)
    never_labelled = {label for label, _, labelled in m.false_positives_by_species() if not labelled}
    assert never_labelled == {"sp4", "sp5"}  # predicted, never labelled: still counted as false positives


def write_segment_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "start_s", "end_s", "ebird_code", "scientific_name", "common_name"])
        writer.writerows(rows)
    return path


def test_both_label_formats_mark_the_segments_they_overlap(tmp_path):
    five = write_segment_csv(tmp_path / "x_5s_labels.csv", [
        ["x.mp3", 0, 5, "nocall", "", "(no call)"], ["x.mp3", 5, 10, "blujay", "Cyanocitta cristata", "Blue Jay"],
        ["x.mp3", 5, 10, "amecro", "", "American Crow"], ["x.mp3", 10, 15, "x", "Strix nowhere", "Nobody Owl"],
        ["x.mp3", 15, 20, "nocall", "", "(no call)"]])
    labels = read_timed_labels(five)
    assert labels.kind == "segments" and labels.covered_seconds == 20 and len(labels.calls) == 3
    index = LabelIndex(LABELS)
    assert segment_truth(labels, 60.0, index) == {0: set(), 1: {JAY.label, CROW.label}, 2: set(), 3: set()}

    raven = tmp_path / "x.Table.1.selections.txt"
    raven.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
                     "1\tSpectrogram 1\t1\t4.0\t11.0\tBlue Jay\n"
                     "2\tSpectrogram 1\t1\t20.0\t20.5\tAmerican Crow\n")
    labels = read_timed_labels(raven)
    assert labels.kind == "raven" and labels.covered_seconds is None
    truth = segment_truth(labels, 23.0, index)  # four whole segments; 20-23 s is not a whole one
    assert truth == {0: {JAY.label}, 1: {JAY.label}, 2: {JAY.label}, 3: set()}

    bad = write_segment_csv(tmp_path / "bad.csv", [["x.mp3", 0, 5, "nocall", "", ""],
                                                    ["x.mp3", "five", 10, "a", "A b", ""]])
    with pytest.raises(StationError, match=r"bad\.csv: row 3: start/end 'five'/'10' are not numbers") as caught:
        read_timed_labels(bad)
    assert "\n" not in str(caught.value)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(StationError, match=r"other\.csv: not a labels file"):
        read_timed_labels(other)


def detection(species: Species, start: float, end: float) -> Detection:
    return Detection(id=f"{species.label}{start}", station="s", source="f", model="m", species=species,
                     confidence=0.9, mean_confidence=0.9, window_count=1, start_time=T0 + timedelta(seconds=start),
                     end_time=T0 + timedelta(seconds=end), start_offset=start, end_offset=end)


def test_a_detection_predicts_every_segment_it_overlaps_and_only_birds_count():
    found = [detection(JAY, 3.0, 6.0), detection(CROW, 10.0, 15.0), detection(DOG, 0.0, 3.0),
             detection(CROW, 18.0, 21.0)]
    predicted = segment_predictions(found, 19.0, non_bird_labels={DOG.label})
    assert predicted == {0: {JAY.label}, 1: {JAY.label}, 2: {CROW.label}}  # 15-19 s is not a whole segment
    assert segment_count(585.795918, covered_seconds=600.0) == 117  # SSW49: labels past the audio's end
    assert segment_count(600.058776, covered_seconds=600.0) == 120


@pytest.fixture(scope="module")
def ssw51_run(birdnet_folder, shared_data):
    classifier = OnnxClassifier.from_path(birdnet_folder)
    audio = shared_data / "audio" / "soundscapes" / "SSW51.mp3"
    clip = Clip(audio, "MULTI: see the _5s_labels.csv beside it", "Soundscape",
                labels=audio.with_name("SSW51_5s_labels.csv"))
    settings = Settings()
    [result] = validate([clip], classifier, settings, progress=False)
    return classifier, settings, result


def test_ssw51_segment_figures_match_a_recount_from_the_labels_and_detections(ssw51_run):
    classifier, _, result = ssw51_run
    assert result.error is None and result.segments is not None
    index = {s.scientific_name: s.label for s in classifier.labels if s.scientific_name}
    with open(result.segments.labels.path) as f:
        truth_rows = {(int(float(r["start_s"]) // 5), index[r["scientific_name"]]) for r in csv.DictReader(f)
                      if r["ebird_code"] != "nocall"}
    assert len(truth_rows) == 20
    non_bird = classifier.folder.non_bird_labels
    predicted_rows = set()
    for d in result.detections:
        for i in range(120):
            if d.species.label not in non_bird and d.start_offset < 5 * i + 5 and d.end_offset > 5 * i:
                predicted_rows.add((i, d.species.label))
    micro, macro, per = recount(truth_rows, predicted_rows)
    m = result.segments.metrics
    assert m.segments == 120 and m.micro == pytest.approx(micro) and m.macro == pytest.approx(macro)
    assert {s.label: (s.true_positives, s.false_positives, s.false_negatives) for s in m.species} == per


def test_the_sweep_at_the_configured_threshold_repeats_the_replayed_figures(ssw51_run):
    classifier, settings, result = ssw51_run
    segments = result.segments
    files = [ScoredFile("SSW51", segments.scores, result.duration, segments.truth)]
    threshold = settings.detection.threshold
    curve = pr_curve(files, detector_factory(settings, classifier), [0.1, threshold, 0.9],
                     non_bird_labels=classifier.folder.non_bird_labels)
    assert curve[1].metrics == segments.metrics  # a fresh detector over kept scores = the replay
    pairs = [c.metrics.true_positives + c.metrics.false_positives for c in curve]
    assert pairs == sorted(pairs, reverse=True)  # a higher threshold never predicts more


def test_the_shared_manifest_classifies_clips_by_its_own_fields(shared_data):
    clips = {c.path.name: c for c in read_manifest(shared_data / "manifest.csv")}
    frogs = [c for c in clips.values() if "frogs" in c.notes]
    assert len(frogs) == 4 and {c.kind for c in frogs} == {"non-bird"} and {c.group for c in frogs} == {"frogs"}
    assert (clips["XC211637.mp3"].kind, clips["XC211637.mp3"].group) == ("non-bird", "soundscape/none")
    blkfr = clips["BLKFR-10-CPL_20190611_093000.mp3"]
    assert blkfr.kind == "soundscape" and blkfr.labels is not None
    assert blkfr.labels.name == "BLKFR-10-CPL_20190611_093000_5s_labels.csv"
    assert clips["SSW49.mp3"].kind == clips["SSW51.mp3"].kind == "soundscape"
    assert clips["birds_10s.wav"].kind == "unlabelled" and clips["silence_10s.mp3"].kind == "noise"
    assert clips["XC682524.mp3"].kind == "species" and clips["XC13738_GWWA.mp3"].kind == "species"
