"""The model folder contract: everything the runtime needs about a model, in one folder.

    models/<name>/
        model.onnx             the classifier (model.<variant>.onnx for variants, e.g. int8)
        labels.tsv             label<TAB>scientific_name<TAB>common_name, one row per output
        manifest.json          how to feed the model and read its output, every file's sha256
                               (station/manifest.py)

The runtime needs only onnxruntime and numpy to use it. Producers (the Hugging Face
exporter, the BirdNET converter) write it through `write_folder`, which fills in sha256s.
`load_folder` trusts nothing in it: a malformed manifest or labels file, or a file whose
sha256 is not the manifest's, is a ModelError that names the file.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .manifest import LABELS, MANIFEST, MODEL, Manifest, parse_manifest  # noqa: F401 (re-exported)
from .taxonomy import non_bird_labels, readable_species
from .types import Species

MAX_TEXT_BYTES = 16 << 20  # manifest.json and labels.tsv are read whole; BirdNET's labels are 0.5 MB
REDO = "export/convert the model again"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    manifest: Manifest
    labels: tuple[Species, ...]

    def model_path(self, variant: str = "fp32") -> Path:
        return self.path / self.manifest.model_file(variant)

    @property
    def non_bird_labels(self) -> frozenset[str]:
        """The labels that are not birds: as the manifest records them, else as the taxonomy knows them
        (folders converted before manifests recorded it)."""
        recorded = self.manifest.label_groups
        if recorded:
            return frozenset(label for group in recorded.values() for label in group)
        return frozenset(non_bird_labels(self.labels))


def load_folder(path: Path) -> ModelFolder:
    """Read and check a model folder: the manifest, labels.tsv and every listed file's sha256.

    Each file is read and hashed once per load. Model files are hashed as a stream (constant
    memory) and onnxruntime then loads them by path, from the page cache: handing it the bytes
    instead would keep a second copy of the model in memory for the session's life
    (scripts/bench_model_load.py measures both). Symlinks are followed: what counts is
    that the content has the manifest's sha256, wherever it is stored.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no model folder here (build BirdNET with `station model ensure`, "
                         "or export one with `station model export`)")
    manifest = parse_manifest(_read_small(path / MANIFEST, f"missing (not a model folder? {REDO})"),
                              str(path / MANIFEST))
    _check_listed(manifest, path / MANIFEST)
    labels = parse_labels(_verified_bytes(path / LABELS, manifest.files[LABELS]), path / LABELS)
    for name, digest in sorted(manifest.files.items()):
        if name != LABELS:
            _verify(path / name, digest)
    return ModelFolder(path, manifest, tuple(readable_species(s) for s in labels))


def _check_listed(manifest: Manifest, where: Path) -> None:
    how = f'{REDO}, or add each file\'s sha256, as sha256sum prints it, to "files"'
    if not manifest.files:
        raise ModelError(f"{where}: lists no files with their sha256, so the station did not write it ({how})")
    unlisted = sorted(manifest.needed_files() - set(manifest.files))
    if unlisted:
        raise ModelError(f"{where}: files does not list {', '.join(unlisted)} with a sha256 ({how})")


def _open(path: Path, missing: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ModelError(f"{path}: {missing}") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, not a file ({REDO})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def _read_small(path: Path, missing: str) -> bytes:
    with _open(path, missing) as f:
        try:
            raw = f.read(MAX_TEXT_BYTES + 1)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise ModelError(f"{path}: larger than {MAX_TEXT_BYTES >> 20} MB, far too large for what it should hold")
    return raw


def _listed_but_missing() -> str:
    return f"listed in {MANIFEST} but missing (copy the whole model folder, or {REDO})"


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ModelError(f"{path}: sha256 does not match the manifest (the file changed or is corrupt; {REDO})")


def _verified_bytes(path: Path, expected: str) -> bytes:
    raw = _read_small(path, _listed_but_missing())
    _check_digest(path, hashlib.sha256(raw).hexdigest(), expected)
    return raw


def _verify(path: Path, expected: str) -> None:
    with _open(path, _listed_but_missing()) as f:
        try:
            actual = _sha256_stream(f)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    _check_digest(path, actual, expected)


def _sha256_stream(f) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def parse_labels(raw: bytes, where: Path) -> tuple[Species, ...]:
    """labels.tsv's rows as Species, one per model output; empty and repeated labels are refused."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{where}: not UTF-8 text (bad byte at offset {exc.start})") from None
    rows = _tsv_rows(text, where)
    if not rows or "label" not in rows[0][1]:
        raise ModelError(f"{where}: expected a header 'label<TAB>scientific_name<TAB>common_name'")
    header = rows[0][1]
    labels: list[Species] = []
    seen: dict[str, int] = {}
    for line, row in rows[1:]:
        if len(row) > len(header):
            raise ModelError(f"{where}:{line}: {len(row)} fields but the header has {len(header)}")
        cells = dict(zip(header, row))
        label = cells.get("label", "")
        if not label.strip():
            raise ModelError(f"{where}:{line}: empty label (every model output needs one)")
        if label in seen:
            raise ModelError(f"{where}:{line}: label {label!r} repeats line {seen[label]} (each output needs its own)")
        seen[label] = line
        labels.append(Species(label, cells.get("scientific_name") or None, cells.get("common_name") or label))
    if not labels:
        raise ModelError(f"{where}: no labels under the header")
    return tuple(labels)


def _tsv_rows(text: str, where: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    rows = []
    try:
        for row in reader:
            if row:
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise ModelError(f"{where}:{reader.line_num}: not tab-separated text ({exc})") from None
    return rows


def write_labels(path: Path, labels: list[Species]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["label", "scientific_name", "common_name"])
        for s in labels:
            writer.writerow([s.label, s.scientific_name or "", s.common_name])


def write_folder(staging: Path, destination: Path, manifest: Manifest) -> ModelFolder:
    """Seal a staged folder (model files and labels.tsv already in it) and move it into place.

    The manifest is written last, with every file's sha256, and the folder replaces any
    previous one in a single rename, so a reader never sees half a model.
    """
    files = {p.name: sha256_of(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST}
    sealed = Manifest(**{**manifest.__dict__, "files": files})
    (staging / MANIFEST).write_text(json.dumps(sealed.to_json(), indent=2) + "\n", encoding="utf-8")
    checked = load_folder(staging)  # never replace a good folder with one the station would refuse
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old-"))
        os.replace(destination, old / "folder")
    shutil.move(str(staging), str(destination))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return ModelFolder(destination, checked.manifest, checked.labels)
