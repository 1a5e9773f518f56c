"""Validation companion: metrics checked against scikit-learn, names, calibration, end to end."""
import csv
import json
import math
import os
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import REPO, tone
from station.calibrate import calibrate, load_scores, snippet
from station.cli import main
from station.config import Settings
from station.inference import OnnxClassifier
from station.metrics import compute
from station.names import LabelIndex, normalise_common, species_from_label
from station.report import write_report
from station.types import Scores, Species
from station.validation import Clip, metrics_of, read_manifest, validate

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the dev extra")


def test_metrics_match_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = [f"sp{i}" for i in range(7)]
    truths = list(rng.choice(labels, 60))
    rankings = [list(rng.permutation(labels)) for _ in truths]
    for r, t in zip(rankings[:25], truths[:25]):  # some right answers, so precision is not all zero
        r.remove(t)
        r.insert(0, t)
    m = compute(truths, rankings)
    predicted = [r[0] for r in rankings]
    assert m.top1 == pytest.approx(sklearn_metrics.accuracy_score(truths, predicted))
    score_matrix = np.array([[len(labels) - r.index(label) for label in labels] for r in rankings])
    assert m.top3 == pytest.approx(sklearn_metrics.top_k_accuracy_score(truths, score_matrix, k=3, labels=labels))
    assert (m.confusion == sklearn_metrics.confusion_matrix(truths, predicted, labels=m.labels)).all()
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(truths, predicted, labels=m.labels, zero_division=0)
    assert np.allclose([c.precision for c in m.per_class], p) and np.allclose([c.recall for c in m.per_class], r)
    assert np.allclose([c.f1 for c in m.per_class], f) and [c.support for c in m.per_class] == list(s)
    for average, ours in (("macro", m.macro), ("weighted", m.weighted)):
        theirs = sklearn_metrics.precision_recall_fscore_support(truths, predicted, average=average, zero_division=0)
        assert np.allclose(ours, theirs[:3])


def test_names_match_by_scientific_name_synonym_and_normalised_common_name():
    labels = [Species("Setophaga petechia_Yellow Warbler", "Setophaga petechia", "Yellow Warbler"),
              Species("Bartletts Tinamou", "Crypturellus bartletti", "Bartletts Tinamou"),
              Species("Grey Kingbird", None, "Grey Kingbird")]
    index = LabelIndex(labels)
    assert index.match("Setophaga aestiva", "American Yellow Warbler") is labels[0]
    assert index.match(None, "Bartlett's Tinamou") is labels[1]
    assert index.match("Tyrannus dominicensis", "Gray Kingbird") is labels[2]
    assert index.match("Strix aluco", "Tawny Owl") is None
    assert normalise_common("Spix\u2019s  Guan") == normalise_common("Spixs Guan")  # \u2019: a typographic apostrophe


def test_birdnet_style_labels_give_both_names():
    assert species_from_label("Strix aluco_Tawny Owl") == Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl")
    assert species_from_label("Spixs Guan") == Species("Spixs Guan", None, "Spixs Guan")


def test_calibrated_thresholds_reach_the_target_precision():
    rng = np.random.default_rng(1)
    files, labels = 400, ["a", "b", "c"]
    truth = rng.integers(-1, 3, files)
    scores = rng.uniform(0, 0.6, (files, 3))
    for j in range(3):  # true species score higher on average, with overlap
        scores[truth == j, j] += rng.uniform(0.1, 0.5, (truth == j).sum())
    for target in (0.8, 0.9, 0.95):
        found = calibrate(scores, truth, labels, target)
        assert {t.label for t in found} == set(labels)
        for t in found:
            j = labels.index(t.label)
            kept = scores[:, j] >= t.threshold
            assert (truth[kept] == j).mean() >= target  # independent recount
            assert t.recall == pytest.approx((kept & (truth == j)).sum() / (truth == j).sum())
            lower = scores[:, j][scores[:, j] < t.threshold].max()  # the next lower cut misses the target
            assert (truth[scores[:, j] >= lower] == j).mean() < target


def test_calibration_skips_species_with_too_few_files_and_writes_a_loadable_snippet():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    found = calibrate(scores, np.array([0, 0, 1]), ["a", "b"], 0.9, min_positives=2)
    assert [t.label for t in found] == ["a"] and found[0].threshold == pytest.approx(0.8)
    text = snippet(found, 0.9, "validation/scores.npz")
    assert yaml.safe_load(text) == {"a": 0.8}


OWL = Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl")
MAGPIE = Species("Pica pica_Eurasian Magpie", "Pica pica", "Eurasian Magpie")


class ScriptedClassifier:
    """A classifier whose scores are set per window start: a confident magpie unless `script` says otherwise."""

    sample_rate = 16000
    model_name = "scripted"
    labels = (OWL, MAGPIE)
    manifest = SimpleNamespace(window_seconds=3.0, resampler="soxr")
    folder = SimpleNamespace(non_bird_labels=frozenset())

    def __init__(self, script: dict[float, tuple[float, float]]):
        self.script = script

    def classify(self, windows):
        return [Scores(w, np.asarray(self.script.get(round(w.start_offset, 1), (0.0, 0.95)), np.float32), self.labels)
                for w in windows]


def loud_clips(tmp_path, count: int) -> list[Clip]:
    """12 s of loud tone each, heard an hour apart on 1 May 2026 from noon (local time)."""
    clips = []
    for i in range(count):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, tone(16000, 12.0), 16000)
        end = datetime(2026, 5, 1, 12 + i, 0, 12).timestamp()
        os.utime(path, (end, end))
        clips.append(Clip(path, "Pica pica", "Eurasian Magpie"))
    return clips


# Windows at 0, 1.5, ... 9 s: a magpie throughout but for an unsure owl at 4.5 s and nothing clear at 6 s.
SCRIPT = {4.5: (0.4, 0.1), 6.0: (0.1, 0.15)}


def raised(results):
    return [[(a["type"], a["species"]["label"] if a["species"] else None) for a in r.alerts] for r in results]


def test_the_report_alerts_are_the_station_rules_with_the_configured_settings(tmp_path):
    clips = loud_clips(tmp_path, 2)
    results = validate(clips, ScriptedClassifier(SCRIPT), Settings(), progress=False)
    assert [sorted(a) for a in raised(results)] == [
        [("LOW_CONFIDENCE", OWL.label), ("NEW_SPECIES", MAGPIE.label), ("UNKNOWN_SOUND", None)],
        [("LOW_CONFIDENCE", OWL.label), ("UNKNOWN_SOUND", None)]]  # the magpie is not new an hour later
    schema = json.loads((REPO / "station/schemas/alert.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    for result, clip in zip(results, clips):
        for alert in result.alerts:
            assert alert["file"] == str(clip.path)
            jsonschema.validate({k: v for k, v in alert.items() if k != "file"}, schema)
    low = results[0].alerts[[a["type"] for a in results[0].alerts].index("LOW_CONFIDENCE")]
    assert low["details"]["best"] == {"label": OWL.label, "score": 0.4}

    strict = Settings.model_validate({"alerts": {"low_confidence": 0.3, "unknown_sound": 0.1,
                                                 "rare_species": ["eurasian magpie"], "new_species": False}})
    results = validate(clips[:1], ScriptedClassifier(SCRIPT), strict, progress=False)
    assert sorted(raised(results)[0]) == [("LOW_CONFIDENCE", MAGPIE.label), ("RARE_SPECIES", MAGPIE.label)]

    results = validate(clips[:1], ScriptedClassifier(SCRIPT), Settings(), progress=False, rare_species=["Pica pica"])
    assert ("RARE_SPECIES", MAGPIE.label) in raised(results)[0]
    off = Settings.model_validate({"alerts": {"enabled": False}})
    assert raised(validate(clips, ScriptedClassifier(SCRIPT), off, progress=False)) == [[], []]


def test_calibrate_writes_into_a_folder_it_creates_and_a_bad_out_is_one_line(tmp_path, capsys):
    scores = tmp_path / "scores.npz"
    np.savez(scores, scores=np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), truth=np.array([0, 0, 1]),
             labels=np.array(["a", "b"]))
    out = tmp_path / "new" / "deeper" / "t.yaml"
    assert main(["xc", "calibrate", str(scores), "--out", str(out), "--min-files", "2"]) == 0
    assert yaml.safe_load(out.read_text()) == {"a": 0.8}
    (tmp_path / "a-file").write_text("")
    capsys.readouterr()
    assert main(["xc", "calibrate", str(scores), "--out", str(tmp_path / "a-file" / "t.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "a-file/t.yaml: cannot write" in err, err


@pytest.fixture(scope="module")
def shared_species_model(tmp_path_factory, shared_data):
    """A random tiny model whose labels are the shared clips' species (plus ones never heard)."""
    pytest.importorskip("torch")
    from station.export import ExportOptions, export_model
    from station.random_model import build_random_wav2vec2

    clips = read_manifest(shared_data / "manifest.csv")
    species = sorted({f"{c.scientific_name}_{c.common_name}" for c in clips if c.kind == "species"
                      and c.scientific_name not in ("Agelaius xanthomus", "Strix aluco")})
    root = tmp_path_factory.mktemp("validation-model")
    hf = build_random_wav2vec2(root / "hf", labels=[*species, "Nothura maculosa_Spotted Nothura"])
    return export_model(ExportOptions(str(hf), root / "model", name="shared-species")).path


def test_validate_the_shared_clips_end_to_end(shared_species_model, shared_data, tmp_path):
    classifier = OnnxClassifier.from_path(shared_species_model)
    settings = Settings.model_validate({"detection": {"threshold": 0.3}, "windowing": {"hop_seconds": 3.0}})
    clips = read_manifest(shared_data / "manifest.csv")
    results = validate(clips, classifier, settings, progress=False)
    assert len(results) == len(clips) and not [r.error for r in results if r.error]
    left_out = {r.clip.scientific_name for r in results if r.clip.kind == "species" and r.truth is None}
    assert left_out == {"Agelaius xanthomus", "Strix aluco"}  # reported, not silently matched
    metrics = metrics_of(results, classifier.labels)
    assert metrics.files == sum(r.evaluable for r in results) >= 60

    files = write_report(results, metrics, classifier.labels, tmp_path / "report", "shared-species")
    assert json.loads(files["alerts"].read_text()) == [a for r in results for a in r.alerts]
    for key in ("results", "metrics", "scores", "alerts", "report", "confusion", "per_species", "predicted_frequency"):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    assert files["confusion"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every metric again, independently, from the per-file CSV the report wrote.
    with open(files["results"]) as f:
        rows = [r for r in csv.DictReader(f) if r["correct_top1"] != ""]
    truths, predicted = [r["model_label"] for r in rows], [r["top1"] for r in rows]
    saved = json.loads(files["metrics"].read_text())
    assert saved["files"] == len(rows)
    assert saved["top1"] == pytest.approx(sklearn_metrics.accuracy_score(truths, predicted))
    in_top3 = [t in (r["top1"], r["top2"], r["top3"]) for t, r in zip(truths, rows)]
    assert saved["top3"] == pytest.approx(np.mean(in_top3))
    p, r, f1, _ = sklearn_metrics.precision_recall_fscore_support(truths, predicted, average="macro", zero_division=0)
    assert [saved["macro"][k] for k in ("precision", "recall", "f1")] == pytest.approx([p, r, f1])
    labels = saved["confusion"]["labels"]
    assert saved["confusion"]["matrix"] == sklearn_metrics.confusion_matrix(truths, predicted, labels=labels).tolist()
    scores, truth, _ = load_scores(files["scores"])
    assert scores.shape == (len(clips), len(classifier.labels)) and (truth >= 0).sum() == len(rows)
    assert "top-1 accuracy" in files["report"].read_text()


def best_precision(column, positive) -> float:
    return max((positive[column >= cut].mean() for cut in set(column) if positive[column >= cut].any()), default=0.0)


def lowest_cuts(scores, truth, labels, target) -> dict[str, float]:
    """calibrate()'s answer, counted again the slow way: per species, the lowest score that keeps precision."""
    found = {}
    for j, label in enumerate(labels):
        positive = truth == j
        cuts = [cut for cut in set(scores[:, j])
                if positive[scores[:, j] >= cut].any() and positive[scores[:, j] >= cut].mean() >= target]
        if positive.any() and cuts:
            found[label] = round(float(min(cuts)), 4)
    return found


def test_validate_and_calibrate_on_the_command_line(shared_species_model, shared_data, tmp_path):
    from conftest import station_cli

    folder = tmp_path / "clips"
    folder.mkdir()
    with open(shared_data / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["path"].startswith("audio/birds_misc/") or r["path"].startswith("audio/noise/")]
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        for r in chosen:
            writer.writerow({**r, "path": str(shared_data / r["path"])})
    result = station_cli("xc", "validate", str(folder), "--model", str(shared_species_model),
                         "--out", str(tmp_path / "report"), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "files scored: top-1" in result.stdout and (tmp_path / "report" / "report.md").is_file()
    # A random model has no skill: aim at the best precision any species reaches, so some species must pass.
    scores, truth, labels = load_scores(tmp_path / "report" / "scores.npz")
    target = math.floor(max(best_precision(scores[:, j], truth == j) for j in set(truth[truth >= 0])) * 100) / 100
    calibrated = station_cli("xc", "calibrate", str(tmp_path / "report" / "scores.npz"), "--precision", str(target),
                             "--min-files", "1", "--out", str(tmp_path / "t.yaml"), cwd=tmp_path)
    assert calibrated.returncode == 0, calibrated.stderr
    thresholds = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert thresholds and thresholds == lowest_cuts(scores, truth, labels, target)
    assert f"{len(thresholds)} species reach precision {target:.2f}" in calibrated.stdout
    config = tmp_path / "c.yaml"
    config.write_text("detection:\n  thresholds_file: t.yaml\n")
    checked = station_cli("config", "check", str(config), "--model", str(shared_species_model), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    bad = station_cli("xc", "calibrate", str(tmp_path / "report" / "results.csv"), cwd=tmp_path)
    assert bad.returncode == 1 and "not a scores file" in bad.stderr


def test_validate_a_soundscape_and_a_non_bird_clip_on_the_command_line(tiny_model, tmp_path):
    """`station validate` on a folder (no manifest) and `station xc validate` on a manifest, end to end."""
    from conftest import station_cli

    folder = tmp_path / "set"
    folder.mkdir()
    sf.write(folder / "dawn.wav", tone(16000, 20.0), 16000)
    with open(folder / "dawn_5s_labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "start_s", "end_s", "ebird_code", "scientific_name", "common_name"])
        writer.writerows([["dawn.wav", 0, 5, "nocall", "", "(no call)"],
                          ["dawn.wav", 5, 10, "grtina", "", "Great Tinamou"],
                          ["dawn.wav", 10, 15, "x", "", "Nobody Owl"],
                          ["dawn.wav", 15, 20, "grtina", "", "Great Tinamou"]])
    config = tmp_path / "c.yaml"
    config.write_text("detection:\n  threshold: 0.02\n")
    out = tmp_path / "report"
    result = station_cli("validate", str(folder), "--model", str(tiny_model), "--config", str(config),
                         "--out", str(out), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 soundscapes, 4 segments at threshold 0.02: micro P/R/F1" in result.stdout
    saved = json.loads((out / "metrics.json").read_text())["soundscape"]
    with open(out / "segments.csv") as f:
        rows = list(csv.DictReader(f))
    truth = {(r["segment"], s) for r in rows for s in r["labelled"].split(";") if s}
    guessed = {(r["segment"], s) for r in rows for s in r["detected"].split(";") if s}
    assert truth == {("1", "Great Tinamou"), ("3", "Great Tinamou")}
    assert saved["true_positives"] == len(truth & guessed) and saved["false_positives"] == len(guessed - truth)
    assert saved["false_negatives"] == len(truth - guessed)
    assert saved["files"][0]["unmatched_names"] == {"Nobody Owl": 1}
    assert len(saved["pr_curve"]) == 19 and (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Soundscapes, per 5 s segment" in (out / "report.md").read_text()

    sf.write(folder / "frog.wav", tone(16000, 6.0, freq=700.0), 16000)
    manifest = folder / "manifest.csv"
    manifest.write_text("path,scientific_name,common_name,notes\n"
                        "dawn.wav,MULTI: see the labels beside it,Soundscape,\n"
                        "frog.wav,Eleutherodactylus coqui,Puerto Rican Coqui,NON-BIRD (frogs). group=frogs\n")
    result = station_cli("xc", "validate", str(manifest), "--model", str(tiny_model), "--config", str(config),
                         "--out", str(out), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "results.csv") as f:
        frog = next(r for r in csv.DictReader(f) if r["path"].endswith("frog.wav"))
    [listed] = metrics["non_bird"]
    assert listed["group"] == "frogs" and frog["kind"] == "non-bird"
    assert ";".join(sorted({d["label"] for d in listed["detections"]})) == frog["detected_species"]
    assert metrics["files"] == 0 and metrics["soundscape"]["segments"] == 4
    assert "## Non-bird clips" in (out / "report.md").read_text()
