"""Write a validation run's results: per-file CSV, metrics, plots, a Markdown report, alerts.

alerts.json holds what the station's own alert rules raised over the replayed files
(station.validation.AlertPass, with the configured `alerts` settings), each with its file.
Soundscapes (timed labels) add a `soundscape` section to metrics.json and report.md, a per-segment
segments.csv and a precision/recall plot; every run adds what the range filter removed and what
was detected on non-bird clips (a bird there is a false alarm).

Plots use matplotlib (the `companion` extra), imported only here.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .metrics import Metrics
from .soundscape import SEGMENT_SECONDS, SegmentMetrics
from .types import Species
from .validation import FileResult, SoundscapeSummary

NON_BIRD_KINDS = ("noise", "non-bird")

CSV_COLUMNS = ["path", "kind", "scientific_name", "common_name", "model_label", "top1", "top1_score",
               "top2", "top2_score", "top3", "top3_score", "correct_top1", "correct_top3", "windows",
               "detections", "detected_species", "error", "licence", "notes"]


def write_report(results: Sequence[FileResult], metrics: Metrics, labels: Sequence[Species],
                 out: Path, model: str, soundscapes: SoundscapeSummary | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results": _write_csv(results, labels, out / "results.csv"),
        "metrics": _write_metrics(metrics, out / "metrics.json", results, soundscapes),
        "scores": _write_scores(results, labels, out / "scores.npz"),
        "alerts": _write_json([a for r in results for a in r.alerts], out / "alerts.json"),
    }
    files.update(_plots(results, metrics, labels, out))
    if soundscapes is not None:
        files["segments"] = _write_segments(soundscapes, out / "segments.csv")
        files["pr_curve"] = _pr_plot(soundscapes, out / "pr_curve.png")
    files["report"] = _write_markdown(results, metrics, model, files, out / "report.md", soundscapes)
    return files


def _write_csv(results, labels, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            ranking = r.ranking(labels, 3) + [(None, None)] * 3
            names = [s.label if s else "" for s, _ in ranking[:3]]
            row = {"path": str(r.clip.path), "kind": r.clip.kind, "scientific_name": r.clip.scientific_name,
                   "common_name": r.clip.common_name, "model_label": r.truth.label if r.truth else "",
                   "windows": r.windows, "detections": len(r.detections),
                   "detected_species": ";".join(sorted({d.species.label for d in r.detections})),
                   "error": r.error or "", "licence": r.clip.licence, "notes": r.clip.notes}
            for i, (species, score) in enumerate(ranking[:3], start=1):
                row[f"top{i}"] = species.label if species else ""
                row[f"top{i}_score"] = f"{score:.6f}" if score is not None else ""
            if r.evaluable:
                row["correct_top1"] = int(names[0] == r.truth.label)
                row["correct_top3"] = int(r.truth.label in names)
            writer.writerow(row)
    return path


def _write_metrics(metrics: Metrics, path: Path, results: Sequence[FileResult],
                   soundscapes: SoundscapeSummary | None) -> Path:
    data = {"files": metrics.files, "top1": metrics.top1, "top3": metrics.top3,
            "macro": _prf(metrics.macro), "weighted": _prf(metrics.weighted),
            "per_class": [asdict(c) for c in metrics.per_class],
            "confusion": {"labels": metrics.labels, "matrix": metrics.confusion.tolist()},
            "removals": _removals(results), "non_bird": _non_bird(results)}
    if soundscapes is not None:
        data["soundscape"] = _soundscape_json(soundscapes)
    return _write_json(data, path)


def _prf(values: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(("precision", "recall", "f1"), values))


def _segment_json(m: SegmentMetrics) -> dict:
    return {"segments": m.segments, "segments_with_calls": m.segments_with_calls,
            "true_positives": m.true_positives, "false_positives": m.false_positives,
            "false_negatives": m.false_negatives, "micro": _prf(m.micro), "macro": _prf(m.macro),
            "per_species": [{"label": s.label, "labelled": s.labelled, "true_positives": s.true_positives,
                             "false_positives": s.false_positives, "false_negatives": s.false_negatives,
                             "precision": s.precision, "recall": s.recall, "f1": s.f1} for s in m.species],
            "false_positives_by_species": [{"label": label, "segments": n, "labelled": labelled}
                                           for label, n, labelled in m.false_positives_by_species()]}


def _soundscape_json(summary: SoundscapeSummary) -> dict:
    per_file = []
    for r in summary.files:
        assert r.segments is not None  # the summary holds only scored soundscapes
        per_file.append({"file": str(r.clip.path), "labels": str(r.segments.labels.path),
                         "duration_s": r.duration, "labelled_segments": r.segments.labelled_segments,
                         "unmatched_names": r.segments.unmatched, **_segment_json(r.segments.metrics)})
    return {"segment_seconds": SEGMENT_SECONDS, "threshold": summary.threshold,
            "macro_over": "species labelled in at least one scored segment",
            "scored_segments": "segments wholly inside the audio and inside the labels",
            **_segment_json(summary.metrics), "files": per_file,
            "pr_curve": [{"threshold": p.threshold, **_prf(p.metrics.micro),
                          "macro": _prf(p.metrics.macro)} for p in summary.curve]}


def _removals(results: Sequence[FileResult]) -> dict:
    by_species = Counter(r.species.label for f in results for r in f.removals)
    return {"total": sum(by_species.values()),
            "per_file": {str(f.clip.path): len(f.removals) for f in results if f.removals},
            "per_species": dict(by_species.most_common())}


def _non_bird(results: Sequence[FileResult]) -> list[dict]:
    """Non-bird clips and what was detected on them: every detection there is a false alarm."""
    return [{"file": str(r.clip.path), "kind": r.clip.kind, "group": r.clip.group,
             "detections": [{"label": d.species.label, "confidence": round(d.confidence, 4),
                             "start_s": round(d.start_offset, 2), "end_s": round(d.end_offset, 2)}
                            for d in sorted(r.detections, key=lambda d: d.start_offset)]}
            for r in results if r.clip.kind in NON_BIRD_KINDS]


def _write_segments(summary: SoundscapeSummary, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "segment", "start_s", "end_s", "labelled", "detected"])
        for r in summary.files:
            assert r.segments is not None
            for i, truth in r.segments.truth.items():
                writer.writerow([str(r.clip.path), i, i * SEGMENT_SECONDS, (i + 1) * SEGMENT_SECONDS,
                                 ";".join(sorted(truth)), ";".join(sorted(r.segments.predicted.get(i, ())))])
    return path


def _write_scores(results, labels, path: Path) -> Path:
    """Per-file best scores for every label, for `station xc calibrate`."""
    scored = [r for r in results if r.best is not None]
    index = {s.label: i for i, s in enumerate(labels)}
    np.savez_compressed(
        path, scores=np.stack([r.best for r in scored]) if scored else np.zeros((0, len(labels))),
        labels=np.array([s.label for s in labels]),
        truth=np.array([index[r.truth.label] if r.evaluable else -1 for r in scored]),
        paths=np.array([str(r.clip.path) for r in scored]))
    return path


def _write_json(data, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _plots(results, metrics: Metrics, labels, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    predicted = Counter(r.ranking(labels, 1)[0][0].label for r in results if r.best is not None)
    if predicted:
        names, counts = zip(*predicted.most_common(30))
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(names) + 1.5))
        ax.barh(names[::-1], counts[::-1], color="#4a7ba6")
        ax.set_xlabel("files with this top-1 species")
        ax.set_title("Predicted species (top 30)")
        paths["predicted_frequency"] = _save(fig, out / "predicted_frequency.png")
    if metrics.labels:
        size = min(0.35 * len(metrics.labels) + 3, 30)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(metrics.confusion, cmap="Blues")
        ax.set_xticks(range(len(metrics.labels)), metrics.labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(metrics.labels)), metrics.labels, fontsize=7)
        ax.set_xlabel("predicted (top-1)")
        ax.set_ylabel("true")
        ax.set_title("Confusion matrix")
        paths["confusion"] = _save(fig, out / "confusion.png")
        classes = [c for c in metrics.per_class if c.support > 0]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(classes) + 1.5))
        y = np.arange(len(classes))
        for offset, (name, values) in zip((-0.27, 0, 0.27), (
                ("precision", [c.precision for c in classes]), ("recall", [c.recall for c in classes]),
                ("F1", [c.f1 for c in classes]))):
            ax.barh(y + offset, values, height=0.27, label=name)
        ax.set_yticks(y, [c.label for c in classes], fontsize=7)
        ax.set_xlim(0, 1)
        ax.legend(loc="lower right")
        ax.set_title("Per-species precision, recall, F1")
        paths["per_species"] = _save(fig, out / "per_species_prf.png")
    return paths


def _pr_plot(summary: SoundscapeSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    recall = [p.metrics.micro[1] for p in summary.curve]
    precision = [p.metrics.micro[0] for p in summary.curve]
    ax.plot(recall, precision, marker="o", color="#4a7ba6")
    for p in summary.curve[::3]:
        ax.annotate(f"{p.threshold:g}", (p.metrics.micro[1], p.metrics.micro[0]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    at = summary.metrics.micro
    ax.plot([at[1]], [at[0]], marker="*", markersize=14, color="#c0392b", linestyle="",
            label=f"configured threshold {summary.threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (segments x species)")
    ax.set_ylabel("precision")
    ax.set_title(f"Soundscapes per {SEGMENT_SECONDS:g} s segment, over the detection threshold")
    ax.legend(loc="lower left")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _write_markdown(results, metrics: Metrics, model: str, files: dict, path: Path,
                    soundscapes: SoundscapeSummary | None = None) -> Path:
    kinds = Counter(r.clip.kind for r in results)
    unknown = sorted({r.clip.scientific_name for r in results if r.clip.kind == "species" and r.truth is None})
    failed = [r for r in results if r.error]
    lines = [
        f"# Validation of `{model}`", "",
        f"{len(results)} files: {kinds.get('species', 0)} single-species, {kinds.get('soundscape', 0)} soundscapes "
        f"with timed labels, {kinds.get('multi', 0)} multi-species without times, {kinds.get('unlabelled', 0)} "
        f"unlabelled, {kinds.get('non-bird', 0)} non-bird, {kinds.get('noise', 0)} noise; {len(failed)} unreadable.",
        f"Scored: {metrics.files} files whose species the model knows. A file's score for a species is the "
        "best score it holds in two overlapping windows (its best window's, where no windows overlap).", "",
        "| metric | value |", "|---|---|",
        f"| top-1 accuracy | {metrics.top1:.3f} |", f"| top-3 accuracy | {metrics.top3:.3f} |",
        f"| macro precision / recall / F1 | {' / '.join(f'{v:.3f}' for v in metrics.macro)} |",
        f"| weighted precision / recall / F1 | {' / '.join(f'{v:.3f}' for v in metrics.weighted)} |", "",
        "| species | precision | recall | F1 | files |", "|---|---|---|---|---|",
        *[f"| {c.label} | {c.precision:.2f} | {c.recall:.2f} | {c.f1:.2f} | {c.support} |"
          for c in metrics.per_class if c.support], "",
    ]
    if unknown:
        lines += [f"Species not among the model's labels (not scored): {', '.join(unknown)}.", ""]
    for key, title in (("predicted_frequency", "Predicted species"), ("confusion", "Confusion matrix"),
                       ("per_species", "Per-species precision, recall, F1")):
        if key in files:
            lines += [f"## {title}", "", f"![{title}]({files[key].name})", ""]
    if soundscapes is not None:
        lines += _soundscape_markdown(soundscapes, files)
    lines += _non_bird_markdown(results) + _removals_markdown(results)
    raised = Counter(a["type"] for r in results for a in r.alerts)
    lines += [f"Alerts the station's rules raised over these files: "
              f"{', '.join(f'{n} {t}' for t, n in sorted(raised.items())) or 'none'} (`alerts.json`).", "",
              "Per-file results: `results.csv`; recordings' licences and recordists are in the CSV's "
              "`licence` and `notes` columns.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _row(values: tuple[float, float, float]) -> str:
    return " | ".join(f"{v:.3f}" for v in values)


def _soundscape_markdown(summary: SoundscapeSummary, files: dict) -> list[str]:
    m = summary.metrics
    lines = [f"## Soundscapes, per {SEGMENT_SECONDS:g} s segment", "",
             f"A segment's truth is every species labelled in it; its prediction every bird species with a "
             f"detection event (at the configured rules, threshold {summary.threshold:g}) overlapping it. "
             "Micro figures count segment x species pairs; macro figures average over the species labelled "
             "in at least one scored segment. Only segments wholly inside the audio and inside the labels are "
             "scored.", "",
             "| file | scored segments | labelled segments | with calls | micro P | micro R | micro F1 | "
             "macro P | macro R | macro F1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in summary.files:
        assert r.segments is not None
        s = r.segments
        lines.append(f"| {r.clip.path.name} | {s.metrics.segments} | {s.labelled_segments} | "
                     f"{s.metrics.segments_with_calls} | {_row(s.metrics.micro)} | {_row(s.metrics.macro)} |")
        if s.labelled_segments > s.metrics.segments:
            notes.append(f"{r.clip.path.name}: its labels cover {s.labelled_segments} segments but its audio "
                         f"is {r.duration:.1f} s: {s.labelled_segments - s.metrics.segments} segment(s) past the "
                         "end of the audio are not scored.")
        if s.unmatched:
            notes.append(f"{r.clip.path.name}: label rows naming species the model does not know (not scored): "
                         + ", ".join(f"{name} ({n})" for name, n in sorted(s.unmatched.items())) + ".")
    lines += [f"| **all** | {m.segments} | | {m.segments_with_calls} | {_row(m.micro)} | {_row(m.macro)} |", "",
              *[f"- {n}" for n in notes], *([""] if notes else []),
              "### Precision and recall over the detection threshold", "",
              "The audio is replayed once; a fresh detector with `detection.threshold` set to each value runs over "
              "the kept window scores (per-species thresholds, when configured, still win).", "",
              f"![Precision and recall]({files['pr_curve'].name})", "",
              "| threshold | micro P | micro R | micro F1 | macro P | macro R | macro F1 |",
              "|---|---|---|---|---|---|---|",
              *[f"| {p.threshold:g} | {_row(p.metrics.micro)} | {_row(p.metrics.macro)} |" for p in summary.curve], "",
              "### Per species (all soundscapes)", "",
              "| species | labelled segments | detected right | missed | false positives | P | R | F1 |",
              "|---|---|---|---|---|---|---|---|",
              *[f"| {s.label} | {s.true_positives + s.false_negatives} | {s.true_positives} | {s.false_negatives} | "
                f"{s.false_positives} | {s.precision:.2f} | {s.recall:.2f} | {s.f1:.2f} |"
                for s in m.species if s.labelled], ""]
    false_positives = m.false_positives_by_species()
    if false_positives:
        lines += ["### False positives by species", "",
                  "| species | segments | labelled anywhere |", "|---|---|---|",
                  *[f"| {label} | {n} | {'yes' if labelled else 'no'} |" for label, n, labelled in false_positives],
                  ""]
    return [*lines, "Per-segment truth and detections: `segments.csv`.", ""]


def _non_bird_markdown(results) -> list[str]:
    clips = _non_bird(results)
    if not clips:
        return []
    alarmed = [c for c in clips if c["detections"]]
    lines = ["## Non-bird clips", "",
             f"{len(clips)} clips hold no bird by their labels (noise, frogs, soundscapes without birds); "
             f"{len(alarmed)} got bird detections, each a false alarm:", ""]
    for c in clips:
        found = ", ".join(f"{d['label']} {d['confidence']:.2f} at {d['start_s']:g}-{d['end_s']:g} s"
                          for d in c["detections"]) or "nothing"
        lines.append(f"- `{Path(c['file']).name}` ({c['group'] or c['kind']}): {found}")
    return [*lines, ""]


def _removals_markdown(results) -> list[str]:
    removed = _removals(results)
    if not removed["total"]:
        return ["The range filter removed nothing (or is off: set location.lat and location.lon).", ""]
    return [f"The range filter removed {removed['total']} window detection(s) in {len(removed['per_file'])} "
            "file(s) (species BirdNET's range model gives no chance at the configured place and week):", "",
            "| species | windows removed |", "|---|---|",
            *[f"| {label} | {n} |" for label, n in removed["per_species"].items()], "",
            "Per file: " + ", ".join(f"`{Path(f).name}` {n}" for f, n in removed["per_file"].items()) + ".", ""]
