"""manifest.json of a model folder, parsed strictly: every bad key is one error naming the key.

No file access here: `model_folder` reads the bytes and checks the files the manifest lists.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError

MANIFEST = "manifest.json"
LABELS = "labels.tsv"
MODEL = "model.onnx"
MANIFEST_SCHEMA = 1
NORMALISATIONS = ("none", "zero_mean_unit_var")
RESAMPLERS = ("soxr", "kaiser_fast")  # kaiser_fast: librosa's, as BirdNET was trained and is run
ACTIVATIONS = ("softmax", "sigmoid")
SAMPLE_RATES = (8_000, 384_000)  # Hz: from telephone audio to the fastest ultrasonic recorders
MAX_WINDOW_SECONDS = 60.0
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REQUIRED = object()


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
    label_groups: dict[str, list[str]] = field(default_factory=dict)  # non-bird labels by group (BirdNET)

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
            "label_groups": self.label_groups,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        top = _Fields(data, where)
        schema = top.whole("schema", 1, 10**6, default=MANIFEST_SCHEMA)
        if schema > MANIFEST_SCHEMA:
            raise ModelError(f"{where}: manifest schema {schema} is newer than this station knows")
        top.choice("labels", (LABELS,), LABELS)
        given, wanted = top.section("input"), top.section("output")
        given.choice("dtype", ("float32",), "float32")
        manifest = cls(
            name=top.text("name"), sample_rate=given.whole("sample_rate", *SAMPLE_RATES),
            window_seconds=given.number("window_seconds", lambda s: 0 < s <= MAX_WINDOW_SECONDS,
                                        f"seconds above 0 and at most {MAX_WINDOW_SECONDS:g}"),
            input_name=given.text("name"), output_name=wanted.text("name"),
            normalisation=given.choice("normalisation", NORMALISATIONS, "none"),
            resampler=given.choice("resampler", RESAMPLERS, "soxr"),
            activation=wanted.choice("activation", ACTIVATIONS, "softmax"),
            source=top.section("source", {}).data, licence=top.text("licence", "unknown", one_line=False),
            files=_files(top.section("files", {})), variants=_variants(top.section("variants", {})),
            tools=top.section("tools", {}).data, verification=top.section("verification", {}).data,
            range_model=_range_model(top.section("range_model", {})), schema=schema,
            label_groups=_label_groups(top.section("label_groups", {})))
        if round(manifest.window_seconds * manifest.sample_rate) < 1:
            raise ModelError(f"{where}: input.window_seconds {manifest.window_seconds:g} at "
                             f"{manifest.sample_rate} Hz is a window of 0 samples")
        return manifest

    def model_file(self, variant: str) -> str:
        if variant == "fp32":
            return MODEL
        if variant not in self.variants:
            known = ", ".join(["fp32", *self.variants]) or "fp32"
            raise ModelError(f"model {self.name!r} has no variant {variant!r} (has: {known})")
        return self.variants[variant]["file"]

    def needed_files(self) -> set[str]:
        """The files the station may load: each must be listed in `files` with its sha256."""
        needed = {MODEL, LABELS} | {v["file"] for v in self.variants.values()}
        return needed | ({self.range_model["file"]} if self.range_model else set())


def parse_manifest(raw: bytes, where: str) -> Manifest:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"{where}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except RecursionError:
        raise ModelError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError, and integers too long to convert
        raise ModelError(f"{where}: not valid JSON ({exc})") from None
    return Manifest.from_json(data, where)


def _label_groups(section: _Fields) -> dict[str, list[str]]:
    """{group: [label, ...]} for the model's non-bird classes (amphibian, insect, mammal, human, sound)."""
    for group, labels in section.data.items():
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ModelError(f"{section.where}: label_groups.{group} must be a list of labels")
    return dict(section.data)


class _Fields:
    """Typed reads of one JSON object of the manifest; every error names the file and the key."""

    def __init__(self, data: Any, where: str, prefix: str = ""):
        if not isinstance(data, dict):
            what = prefix.rstrip(".") or "the manifest"
            raise ModelError(f"{where}: {what} must be a JSON object, not {_show(data)}")
        self.data, self.where, self.prefix = data, where, prefix

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise ModelError(f"{self.where}: {self.prefix}{key} is missing")
        return default

    def fail(self, key: str, expected: str):
        raise ModelError(f"{self.where}: {self.prefix}{key} must be {expected}, not {_show(self.data[key])}")

    def text(self, key: str, default: Any = _REQUIRED, one_line: bool = True) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value.strip() or (one_line and not value.isprintable()):
            self.fail(key, "a non-empty string" + (" on one line" if one_line else ""))
        return value

    def file_name(self, key: str) -> str:
        if not is_file_name(self.text(key)):
            self.fail(key, "a file name inside the model folder")
        return self.data[key]

    def whole(self, key: str, low: int, high: int, default: Any = _REQUIRED) -> int:
        value = self._get(key, default)
        if type(value) is not int or not low <= value <= high:
            self.fail(key, f"a whole number from {low:,} to {high:,}")
        return value

    def number(self, key: str, ok: Callable[[float], bool], expected: str, default: Any = _REQUIRED) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            self.fail(key, f"a number of {expected}")
        return float(value)

    def choice(self, key: str, known: tuple[str, ...], default: str) -> str:
        value = self._get(key, default)
        if value not in known:
            raise ModelError(f"{self.where}: unknown {self.prefix}{key} {_show(value)} (known: {', '.join(known)})")
        return value

    def section(self, key: str, default: Any = _REQUIRED) -> _Fields:
        return _Fields(self._get(key, default), self.where, f"{self.prefix}{key}.")


def is_file_name(name: str) -> bool:
    """A plain name in the folder itself: the manifest can never point outside it."""
    return bool(name) and name.isprintable() and "/" not in name and "\\" not in name and name not in (".", "..")


def _show(value: Any) -> str:
    """A JSON value as the user wrote it, short and on one line."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _files(fields: _Fields) -> dict[str, str]:
    for name, digest in fields.data.items():
        if not is_file_name(name):
            raise ModelError(f"{fields.where}: files: {_show(name)} is not a file name inside the model folder")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            fields.fail(name, "a sha256 (64 hex digits)")
    return {name: digest.lower() for name, digest in fields.data.items()}


def _variants(fields: _Fields) -> dict[str, dict[str, Any]]:
    for name in fields.data:
        if not VARIANT_NAME.fullmatch(name) or name == "fp32":
            raise ModelError(f"{fields.where}: variants: {_show(name)} is not a variant name "
                             "(letters, digits, '_', '.', '-'; not fp32)")
        fields.section(name).file_name("file")
    return fields.data


def _range_model(fields: _Fields) -> dict[str, Any]:
    if fields.data:
        fields.file_name("file"), fields.text("input"), fields.text("output")
        fields.number("threshold", lambda t: 0 <= t <= 1, "0 to 1", default=0.0)
    return fields.data


def tool_versions(packages: Iterable[str]) -> dict[str, str]:
    """The installed versions of the tools that made a model folder (for its manifest); absent ones left out."""
    versions: dict[str, str] = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions
