"""Malformed model folders, as a bad copy, a hand edit or an attacker makes them.

A valid folder is built once (the tiny exported wav2vec2 plus a tiny range model, sealed by
the station's own writer); each case copies it, breaks one thing, and must get exactly one
ModelError line that names the broken file. Every case runs in-process; a representative
set also runs through the real CLI, as a user meets it (exit 3, one stderr line, no traceback).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import station_cli, tone, write_config
from station.errors import ModelError
from station.inference import OnnxClassifier
from station.model_folder import Manifest, load_folder, sha256_of, write_folder
from station.range_filter import RangeFilter

CLASSES = 50  # the tiny model's outputs


def write_range_model(path: Path, classes: int) -> None:
    """A tiny stand-in for BirdNET's range model: [lat, lon, week] -> one occurrence per label."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.linspace(-1, 1, 3 * classes, dtype=np.float32).reshape(3, classes), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["coords", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["occurrence"])],
        "range", [helper.make_tensor_value_info("coords", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("occurrence", TensorProto.FLOAT, ["batch", classes])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def valid(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("valid")
    staging = shutil.copytree(tiny_model, root / "staging")
    (staging / "manifest.json").unlink()
    write_range_model(staging / "range.onnx", CLASSES)
    range_model = {"file": "range.onnx", "input": "coords", "output": "occurrence", "threshold": 0.03}
    manifest = Manifest(**{**load_folder(tiny_model).manifest.__dict__, "range_model": range_model})
    return write_folder(staging, root / "model", manifest).path


# --- ways to break a folder -------------------------------------------------------------

def manifest_edit(change: Callable[[dict], object]):
    def apply(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        change(data)
        (folder / "manifest.json").write_text(json.dumps(data))
    return apply


def set_key(section: str | None, key: str, value):
    return manifest_edit(lambda d: (d[section] if section else d).__setitem__(key, value))


def write(name: str, content: bytes | str):
    def apply(folder: Path) -> None:
        (folder / name).unlink()
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return apply


def flip_byte(name: str):
    def apply(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / name).write_bytes(bytes(data))
    return apply


def truncate(name: str):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:1000])


def remove(name: str):
    return lambda folder: (folder / name).unlink()


def make_directory(name: str):
    def apply(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
    return apply


def labels_lines(change: Callable[[list[str]], list[str]]):
    def apply(folder: Path) -> None:
        lines = (folder / "labels.tsv").read_text().splitlines()
        (folder / "labels.tsv").write_text("\n".join(change(lines)) + "\n")
    return apply


def resealed(*breaks):
    """Break the folder, then record the broken files' sha256s, as a careless hand edit would:
    the folder-level check passes and the check behind it must catch the problem."""
    def apply(folder: Path) -> None:
        for step in breaks:
            step(folder)
        data = json.loads((folder / "manifest.json").read_text())
        data["files"] = {name: sha256_of(folder / name) for name in data["files"]}
        (folder / "manifest.json").write_text(json.dumps(data))
    return apply


def without_file(name: str):
    return manifest_edit(lambda d: d["files"].pop(name))


def wrong_sha(name: str):
    def change(data: dict) -> None:
        digest = data["files"][name]
        data["files"][name] = ("1" if digest[0] != "1" else "2") + digest[1:]
    return manifest_edit(change)


def narrower_range_model(folder: Path) -> None:
    write_range_model(folder / "range.onnx", CLASSES - 1)


@dataclass(frozen=True)
class Case:
    id: str
    breaks: Callable[[Path], None]
    file: str  # the file the error must name
    message: str
    stage: str = "folder"  # what refuses it: load_folder, the classifier (fp32/int8) or the range filter


def manifest_case(id: str, breaks: Callable[[Path], None], message: str) -> Case:
    return Case(id, breaks, "manifest.json", message)


NOT_A_RATE = "input.sample_rate must be a whole number from 8,000 to 384,000"
NOT_A_WINDOW = "input.window_seconds must be a number of seconds above 0 and at most 60"
SHA = "sha256 does not match the manifest (the file changed or is corrupt; export/convert the model again)"
MISSING = "listed in manifest.json but missing"
ORT = "onnxruntime cannot load it: "

CASES = [
    # manifest.json itself
    manifest_case("manifest-missing", remove("manifest.json"), "missing (not a model folder?"),
    manifest_case("manifest-a-directory", make_directory("manifest.json"), "is a directory, not a file"),
    manifest_case("manifest-not-json", write("manifest.json", '{"name": '), "not valid JSON"),
    manifest_case("manifest-not-utf8", write("manifest.json", b'{"name": "\xff"}'), "not UTF-8 text"),
    manifest_case("manifest-nested-too-deeply", write("manifest.json", "[" * 100_000), "not valid JSON"),
    manifest_case("manifest-a-list", write("manifest.json", "[]"), "the manifest must be a JSON object"),
    manifest_case("manifest-newer-schema", set_key(None, "schema", 99), "newer than this station knows"),
    manifest_case("schema-a-string", set_key(None, "schema", "1"), "schema must be a whole number"),
    manifest_case("name-missing", manifest_edit(lambda d: d.pop("name")), "name is missing"),
    manifest_case("labels-key-elsewhere", set_key(None, "labels", "names.tsv"), 'unknown labels "names.tsv"'),
    # its types
    manifest_case("input-a-string", set_key(None, "input", "input_values"), "input must be a JSON object"),
    manifest_case("output-a-list", set_key(None, "output", ["logits"]), "output must be a JSON object, not a list"),
    manifest_case("input-name-a-list", set_key("input", "name", ["x"]), "input.name must be a non-empty string"),
    manifest_case("output-name-empty", set_key("output", "name", " "), "output.name must be a non-empty string"),
    manifest_case("files-a-list", set_key(None, "files", ["model.onnx"]), "files must be a JSON object"),
    manifest_case("files-sha-a-number", set_key("files", "model.onnx", 123), "files.model.onnx must be a sha256"),
    manifest_case("files-outside-the-folder", set_key("files", "../model.onnx", "0" * 64),
                  'files: "../model.onnx" is not a file name inside the model folder'),
    manifest_case("variants-a-string", set_key(None, "variants", "int8"), "variants must be a JSON object"),
    manifest_case("variant-a-list", manifest_edit(lambda d: d["variants"].update(int8=["model.int8.onnx"])),
                  "variants.int8 must be a JSON object, not a list"),
    manifest_case("variant-without-file", manifest_edit(lambda d: d["variants"]["int8"].pop("file")),
                  "variants.int8.file is missing"),
    manifest_case("variant-file-a-list", set_key("variants", "int8", {"file": ["model.int8.onnx"]}),
                  "variants.int8.file must be a non-empty string"),
    manifest_case("variant-file-elsewhere", set_key("variants", "int8", {"file": "/tmp/model.onnx"}),
                  "variants.int8.file must be a file name inside the model folder"),
    manifest_case("variant-named-fp32", manifest_edit(lambda d: d.update(variants={"fp32": d["variants"]["int8"]})),
                  '"fp32" is not a variant name'),
    manifest_case("range-model-a-list", set_key(None, "range_model", ["range.onnx"]),
                  "range_model must be a JSON object, not a list"),
    manifest_case("range-model-without-file", manifest_edit(lambda d: d["range_model"].pop("file")),
                  "range_model.file is missing"),
    manifest_case("range-model-input-a-number", set_key("range_model", "input", 3),
                  "range_model.input must be a non-empty string"),
    manifest_case("range-threshold-a-string", set_key("range_model", "threshold", "0.03"),
                  "range_model.threshold must be a number of 0 to 1"),
    # its values
    *[manifest_case(f"sample-rate-{value}", set_key("input", "sample_rate", value), NOT_A_RATE)
      for value in (0, -16000, 10**9, "16000", 16000.5, True, None)],
    manifest_case("sample-rate-missing", manifest_edit(lambda d: d["input"].pop("sample_rate")),
                  "input.sample_rate is missing"),
    *[manifest_case(f"window-seconds-{value}", set_key("input", "window_seconds", value), NOT_A_WINDOW)
      for value in (0, -3.0, float("nan"), float("inf"), 61, "3", None)],
    manifest_case("window-of-0-samples", set_key("input", "window_seconds", 1e-5), "a window of 0 samples"),
    manifest_case("unknown-normalisation", set_key("input", "normalisation", "l2"),
                  'unknown input.normalisation "l2"'),
    manifest_case("unknown-resampler", set_key("input", "resampler", "linear"), 'unknown input.resampler "linear"'),
    manifest_case("unknown-activation", set_key("output", "activation", "relu"), 'unknown output.activation "relu"'),
    manifest_case("unknown-dtype", set_key("input", "dtype", "float16"), 'unknown input.dtype "float16"'),
    # what it lists, and what the files hold
    manifest_case("no-files-listed", set_key(None, "files", {}), "lists no files with their sha256"),
    manifest_case("model-not-listed", without_file("model.onnx"), "does not list model.onnx"),
    manifest_case("variant-not-listed", without_file("model.int8.onnx"), "does not list model.int8.onnx"),
    manifest_case("labels-not-listed", without_file("labels.tsv"), "does not list labels.tsv"),
    manifest_case("range-model-not-listed", without_file("range.onnx"), "does not list range.onnx"),
    Case("sha256-edited", wrong_sha("model.onnx"), "model.onnx", SHA),
    Case("model-byte-flipped", flip_byte("model.onnx"), "model.onnx", SHA),
    Case("model-truncated", truncate("model.onnx"), "model.onnx", SHA),
    Case("model-missing", remove("model.onnx"), "model.onnx", MISSING),
    Case("model-a-directory", make_directory("model.onnx"), "model.onnx", "is a directory, not a file"),
    Case("variant-byte-flipped", flip_byte("model.int8.onnx"), "model.int8.onnx", SHA),
    Case("variant-missing", remove("model.int8.onnx"), "model.int8.onnx", MISSING),
    Case("range-model-byte-flipped", flip_byte("range.onnx"), "range.onnx", SHA),
    Case("range-model-missing", remove("range.onnx"), "range.onnx", MISSING),
    Case("labels-byte-flipped", flip_byte("labels.tsv"), "labels.tsv", SHA),
    Case("labels-missing", remove("labels.tsv"), "labels.tsv", MISSING),
    Case("labels-a-directory", make_directory("labels.tsv"), "labels.tsv", "is a directory, not a file"),
    Case("labels-broken-symlink", lambda f: ((f / "labels.tsv").unlink(), (f / "labels.tsv").symlink_to(f / "gone")),
         "labels.tsv", MISSING),
    # labels.tsv with the right sha256 but bad content
    Case("labels-not-utf8", resealed(write("labels.tsv", b"label\n\xe9\n")), "labels.tsv", "not UTF-8 text"),
    Case("labels-empty", resealed(write("labels.tsv", b"")), "labels.tsv", "expected a header"),
    Case("labels-without-label-column", resealed(labels_lines(lambda ls: ["name", *ls[1:]])), "labels.tsv",
         "expected a header"),
    Case("labels-header-only", resealed(labels_lines(lambda ls: ls[:1])), "labels.tsv", "no labels under the header"),
    Case("labels-1MB-field", resealed(labels_lines(lambda ls: [ls[0], "x" * (1 << 20), *ls[2:]])), "labels.tsv",
         "labels.tsv:2: not tab-separated text (field larger than field limit"),
    Case("labels-over-16MB", resealed(write("labels.tsv", "label\n" + "x\n" * (9 << 20))), "labels.tsv",
         "larger than 16 MB"),
    Case("labels-duplicate", resealed(labels_lines(lambda ls: [*ls[:-1], ls[1]])), "labels.tsv",
         "labels.tsv:51: label 'Andean Guan' repeats line 2"),
    Case("labels-empty-label", resealed(labels_lines(lambda ls: [*ls[:3], "\tTinamus\tTinamou", *ls[4:]])),
         "labels.tsv", "labels.tsv:4: empty label"),
    Case("labels-extra-field", resealed(labels_lines(lambda ls: [*ls[:2], ls[2] + "\textra", *ls[3:]])),
         "labels.tsv", "labels.tsv:3: 4 fields but the header has 3"),
    # sealed, readable, and still not a model the station can run
    Case("labels-one-short", resealed(labels_lines(lambda ls: ls[:-1])), "model.onnx",
         "output has 50 classes but labels.tsv has 49", stage="fp32"),
    Case("model-garbage", resealed(write("model.onnx", b"not a model")), "model.onnx", ORT, stage="fp32"),
    Case("model-truncated-resealed", resealed(truncate("model.onnx")), "model.onnx", ORT, stage="fp32"),
    Case("model-empty", resealed(write("model.onnx", b"")), "model.onnx", ORT, stage="fp32"),
    Case("input-not-in-model", set_key("input", "name", "audio"), "model.onnx",
         "manifest input 'audio' not in the model", stage="fp32"),
    Case("output-not-in-model", set_key("output", "name", "probs"), "model.onnx",
         "manifest output 'probs' not in the model", stage="fp32"),
    Case("variant-garbage", resealed(write("model.int8.onnx", b"\x08\x07garbage")), "model.int8.onnx", ORT,
         stage="int8"),
    Case("range-model-garbage", resealed(write("range.onnx", b"not a model")), "range.onnx", ORT, stage="range"),
    Case("range-input-not-in-model", set_key("range_model", "input", "latlon"), "range.onnx",
         "manifest range_model.input 'latlon' not in the model", stage="range"),
    Case("range-model-too-few-outputs", resealed(narrower_range_model), "range.onnx",
         "gives 49 values per place, but labels.tsv has 50", stage="range"),
]
BY_ID = {case.id: case for case in CASES}


def broken_copy(valid: Path, tmp_path: Path, case: Case) -> Path:
    folder = shutil.copytree(valid, tmp_path / "model")
    case.breaks(folder)
    return folder


def load(folder: Path, stage: str):
    """What `station run`/`replay` does with a folder (with location set, for the range model)."""
    loaded = load_folder(folder)
    if stage == "range":
        return RangeFilter(loaded, 18.2, -66.5)
    return OnnxClassifier(loaded, variant=stage if stage != "folder" else "fp32")


def test_the_valid_folder_loads_in_full(valid):
    load(valid, "range")
    assert OnnxClassifier.from_path(valid, variant="int8").model_name == "tiny-random:int8"


def test_the_cases_are_distinct():
    assert len(BY_ID) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_malformed_folder_is_one_model_error_naming_the_file(valid, tmp_path, case):
    folder = broken_copy(valid, tmp_path, case)
    if case.stage != "folder":
        load_folder(folder)  # the folder itself passes: the check behind it must catch this
    with pytest.raises(ModelError) as caught:
        load(folder, case.stage)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert str(folder / case.file) in message and case.message in message, message


def test_a_symlink_to_a_file_elsewhere_is_fine_when_its_content_is_right(valid, tmp_path):
    folder = shutil.copytree(valid, tmp_path / "model")
    shared = shutil.copy(folder / "model.onnx", tmp_path / "shared.onnx")
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(shared)
    assert OnnxClassifier.from_path(folder).model_name == "tiny-random"
    flip_byte("shared.onnx")(tmp_path)
    with pytest.raises(ModelError, match=r"model\.onnx: sha256 does not match"):
        load_folder(folder)


def test_a_folder_written_by_the_station_needs_no_trust(valid, tmp_path):
    """write_folder refuses to put in place a folder that load_folder would refuse."""
    staging = shutil.copytree(valid, tmp_path / "staging")
    (staging / "labels.tsv").write_text("label\nA\nA\n")
    manifest = load_folder(valid).manifest
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep").write_text("the previous folder")
    with pytest.raises(ModelError, match="repeats line 2"):
        write_folder(staging, tmp_path / "model", manifest)
    assert (tmp_path / "model" / "keep").read_text() == "the previous folder"


# --- through the command line -----------------------------------------------------------

CLI_CASES = ["manifest-not-json", "input-a-string", "sample-rate-0", "window-seconds-0", "no-files-listed",
             "variant-file-a-list", "sha256-edited", "model-byte-flipped", "model-missing", "labels-a-directory",
             "labels-1MB-field", "labels-duplicate"]
RUN_ONLY_CASES = ["model-garbage", "labels-one-short"]  # folder intact: only loading the model finds these


def refused_on_the_command_line(args: list[str], cwd: Path, file: Path) -> None:
    result = station_cli(*args, cwd=cwd)
    lines = result.stderr.splitlines()
    assert result.returncode == 3 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and str(file) in lines[0], result.stderr


@pytest.fixture
def short_wav(tmp_path) -> Path:
    import soundfile

    path = tmp_path / "short.wav"
    soundfile.write(path, tone(16000, 1.0), 16000)
    return path


@pytest.mark.parametrize("case_id", CLI_CASES + RUN_ONLY_CASES)
def test_the_command_line_refuses_it_in_one_line(valid, tmp_path, short_wav, case_id):
    case = BY_ID[case_id]
    folder = broken_copy(valid, tmp_path, case)
    if case_id in CLI_CASES:
        refused_on_the_command_line(["model", "info", str(folder)], tmp_path, folder / case.file)
    refused_on_the_command_line(["replay", str(short_wav), "--model", str(folder), "--db", str(tmp_path / "st.db")],
                                tmp_path, folder / case.file)


def test_a_broken_range_model_is_refused_where_it_is_used(valid, tmp_path, short_wav):
    folder = broken_copy(valid, tmp_path, BY_ID["range-model-garbage"])
    # The daemon opens the database before it builds the range filter, so INFO lines come first;
    # at WARNING the error is the only line.
    config = write_config(tmp_path / "config.yaml",
                          "location:\n  lat: 18.2\n  lon: -66.5\nlogging:\n  level: WARNING\n")
    refused_on_the_command_line(["replay", str(short_wav), "--model", str(folder), "--db", str(tmp_path / "st.db"),
                                 "--config", str(config)], tmp_path, folder / "range.onnx")
    refused_on_the_command_line(["model", "species", "--model", str(folder), "--lat", "18.2", "--lon", "-66.5"],
                                tmp_path, folder / "range.onnx")



def write_model_of_unknown_width(path: Path) -> None:
    """8 samples in, 5 scores out; but the 5 is TopK's k, computed from the audio, so nothing but
    a run can tell the output's width (5 on silence)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.ones((8, 5), np.float32), "w"),
                 numpy_helper.from_array(np.array(5, np.float32), "five"),
                 numpy_helper.from_array(np.array([1], np.int64), "one")]
    graph = helper.make_graph([
        helper.make_node("MatMul", ["audio", "w"], ["raw"]),
        helper.make_node("ReduceSum", ["audio"], ["total"], keepdims=0),
        helper.make_node("Add", ["total", "five"], ["k_float"]),
        helper.make_node("Cast", ["k_float"], ["k_scalar"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["k_scalar", "one"], ["k"]),
        helper.make_node("TopK", ["raw", "k"], ["scores", "order"], axis=1)], "toy",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "classes"])], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_class_count_only_a_run_reveals_is_checked_by_a_run(tmp_path):
    from station.model_folder import write_labels
    from station.types import Species

    def folder_with(labels: int) -> Path:
        staging = tmp_path / f"staging-{labels}"
        staging.mkdir()
        write_model_of_unknown_width(staging / "model.onnx")
        write_labels(staging / "labels.tsv", [Species(f"s{i}", None, f"s{i}") for i in range(labels)])
        manifest = Manifest("toy", 8000, 0.001, "audio", "scores")
        return write_folder(staging, tmp_path / f"model-{labels}", manifest).path

    agreeing = OnnxClassifier.from_path(folder_with(5))
    assert agreeing.session.get_outputs()[0].shape == ["batch", "classes"]  # the width is not declared
    with pytest.raises(ModelError, match=r"model\.onnx: output has 5 classes but labels\.tsv has 4"):
        OnnxClassifier.from_path(folder_with(4))
