"""Write a validation run's results: per-file CSV, metrics, plots, a Markdown report, alerts.

alerts.json holds what the station's own alert rules raised over the replayed files
(station.validation.AlertPass, with the configured `alerts` settings), each with its file.

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
from .types import Species
from .validation import FileResult

CSV_COLUMNS = ["path", "kind", "scientific_name", "common_name", "model_label", "top1", "top1_score",
               "top2", "top2_score", "top3", "top3_score", "correct_top1", "correct_top3", "windows",
               "detections", "detected_species", "error", "licence", "notes"]


def write_report(results: Sequence[FileResult], metrics: Metrics, labels: Sequence[Species],
                 out: Path, model: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results": _write_csv(results, labels, out / "results.csv"),
        "metrics": _write_metrics(metrics, out / "metrics.json"),
        "scores": _write_scores(results, labels, out / "scores.npz"),
        "alerts": _write_json([a for r in results for a in r.alerts], out / "alerts.json"),
    }
    files.update(_plots(results, metrics, labels, out))
    files["report"] = _write_markdown(results, metrics, model, files, out / "report.md")
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


def _write_metrics(metrics: Metrics, path: Path) -> Path:
    data = {"files": metrics.files, "top1": metrics.top1, "top3": metrics.top3,
            "macro": dict(zip(("precision", "recall", "f1"), metrics.macro)),
            "weighted": dict(zip(("precision", "recall", "f1"), metrics.weighted)),
            "per_class": [asdict(c) for c in metrics.per_class],
            "confusion": {"labels": metrics.labels, "matrix": metrics.confusion.tolist()}}
    return _write_json(data, path)


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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _write_markdown(results, metrics: Metrics, model: str, files: dict, path: Path) -> Path:
    kinds = Counter(r.clip.kind for r in results)
    unknown = sorted({r.clip.scientific_name for r in results if r.clip.kind == "species" and r.truth is None})
    failed = [r for r in results if r.error]
    lines = [
        f"# Validation of `{model}`", "",
        f"{len(results)} files: {kinds.get('species', 0)} single-species, {kinds.get('multi', 0)} multi-species, "
        f"{kinds.get('unlabelled', 0)} unlabelled, {kinds.get('noise', 0)} noise; {len(failed)} unreadable.",
        f"Scored: {metrics.files} files whose species the model knows. A file's score for a species is its "
        "best window's score.", "",
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
    raised = Counter(a["type"] for r in results for a in r.alerts)
    lines += [f"Alerts the station's rules raised over these files: "
              f"{', '.join(f'{n} {t}' for t, n in sorted(raised.items())) or 'none'} (`alerts.json`).", "",
              "Per-file results: `results.csv`; recordings' licences and recordists are in the CSV's "
              "`licence` and `notes` columns.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
