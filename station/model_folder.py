"""The model folder contract: everything the runtime needs about a model, in one folder.

    models/<name>/
        model.onnx             the classifier (model.<variant>.onnx for variants, e.g. int8)
        labels.tsv             label<TAB>scientific_name<TAB>common_name, one row per output
        manifest.json          how to feed the model and read its output (below)

The runtime needs only onnxruntime and numpy to use it. Producers (the Hugging Face
exporter, the BirdNET converter) write it through `write_folder`, which fills in sha256s.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .types import Species

MANIFEST = "manifest.json"
LABELS = "labels.tsv"
MANIFEST_SCHEMA = 1
NORMALISATIONS = ("none", "zero_mean_unit_var")
RESAMPLERS = ("soxr", "kaiser_fast")  # kaiser_fast: librosa's, as BirdNET was trained and is run
ACTIVATIONS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Manifest:
    name: str
    sample_rate: int
    window_seconds: float
    input_name: str
    output_name: str
    normalisation: str = "none"
    activation: str = "softmax"
    source: dict[str, Any] = field(default_factory=dict)
    licence: str = "unknown"
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {file, ...}
    tools: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    range_model: dict[str, Any] = field(default_factory=dict)  # {file, input, output, threshold} (BirdNET)
    resampler: str = "soxr"
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "name": self.name, "source": self.source, "licence": self.licence,
            "input": {"name": self.input_name, "sample_rate": self.sample_rate,
                      "window_seconds": self.window_seconds, "dtype": "float32",
                      "shape": ["batch", "samples"], "normalisation": self.normalisation,
                      "resampler": self.resampler},
            "output": {"name": self.output_name, "activation": self.activation},
            "labels": LABELS, "files": self.files, "variants": self.variants,
            "tools": self.tools, "verification": self.verification, "range_model": self.range_model,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "Manifest":
        try:
            manifest = cls(
                name=data["name"], sample_rate=int(data["input"]["sample_rate"]),
                window_seconds=float(data["input"]["window_seconds"]),
                input_name=data["input"]["name"], output_name=data["output"]["name"],
                normalisation=data["input"].get("normalisation", "none"),
                resampler=data["input"].get("resampler", "soxr"),
                activation=data["output"].get("activation", "softmax"),
                source=data.get("source", {}), licence=data.get("licence", "unknown"),
                files=data.get("files", {}), variants=data.get("variants", {}),
                tools=data.get("tools", {}), verification=data.get("verification", {}),
                range_model=data.get("range_model", {}), schema=int(data.get("schema", MANIFEST_SCHEMA)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: manifest is missing or has a bad value for {exc}") from None
        if manifest.schema > MANIFEST_SCHEMA:
            raise ModelError(f"{where}: manifest schema {manifest.schema} is newer than this station knows")
        if manifest.normalisation not in NORMALISATIONS:
            raise ModelError(f"{where}: unknown input.normalisation {manifest.normalisation!r}")
        if manifest.resampler not in RESAMPLERS:
            raise ModelError(f"{where}: unknown input.resampler {manifest.resampler!r}")
        if manifest.activation not in ACTIVATIONS:
            raise ModelError(f"{where}: unknown output.activation {manifest.activation!r}")
        return manifest

    def model_file(self, variant: str) -> str:
        if variant == "fp32":
            return "model.onnx"
        if variant not in self.variants:
            known = ", ".join(["fp32", *self.variants]) or "fp32"
            raise ModelError(f"model {self.name!r} has no variant {variant!r} (has: {known})")
        return self.variants[variant]["file"]


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    manifest: Manifest
    labels: tuple[Species, ...]

    def model_path(self, variant: str = "fp32") -> Path:
        return self.path / self.manifest.model_file(variant)


def load_folder(path: Path) -> ModelFolder:
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no model folder here (export one with `station model export`)")
    manifest_path = path / MANIFEST
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{manifest_path}: missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{manifest_path}: unreadable: {exc}") from None
    manifest = Manifest.from_json(data, str(manifest_path))
    labels = read_labels(path / LABELS)
    return ModelFolder(path, manifest, labels)


def read_labels(path: Path) -> tuple[Species, ...]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    if not rows or "label" not in rows[0]:
        raise ModelError(f"{path}: expected a header 'label<TAB>scientific_name<TAB>common_name'")
    return tuple(Species(r["label"], r.get("scientific_name") or None, r.get("common_name") or r["label"])
                 for r in rows)


def write_labels(path: Path, labels: list[Species]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["label", "scientific_name", "common_name"])
        for s in labels:
            writer.writerow([s.label, s.scientific_name or "", s.common_name])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_folder(staging: Path, destination: Path, manifest: Manifest) -> ModelFolder:
    """Seal a staged folder (model files and labels.tsv already in it) and move it into place.

    The manifest is written last, with every file's sha256, and the folder replaces any
    previous one in a single rename, so a reader never sees half a model.
    """
    files = {p.name: sha256_of(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST}
    sealed = Manifest(**{**manifest.__dict__, "files": files})
    (staging / MANIFEST).write_text(json.dumps(sealed.to_json(), indent=2) + "\n", encoding="utf-8")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old-"))
        os.replace(destination, old / "folder")
    shutil.move(str(staging), str(destination))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return load_folder(destination)
