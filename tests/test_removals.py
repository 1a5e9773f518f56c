"""What the range filter removes is stored and shown: `station replay`, then `station detections --removed`.

A hand-made model folder makes every window's scores known: the classifier gives each of its
three birds the same score whatever it hears, and the range model keeps the Puerto Rican Tody
in the first weeks of the year only. The recording is named for 11 June 2019 and its
modification time is in January, so the tody is removed only if the name dates it.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import station_cli, tone, write_config
from helpers import rows

RATE = 16000
LABELS = [("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl"),
          ("Pica pica_Eurasian Magpie", "Pica pica", "Eurasian Magpie"),
          ("Todus mexicanus_Puerto Rican Tody", "Todus mexicanus", "Puerto Rican Tody")]
LOGIT = 1.5  # sigmoid(1.5) = 0.818 for every bird in every window: short of out_of_range_threshold
JANUARY = datetime(2019, 1, 20, tzinfo=timezone.utc).timestamp()


def save(graph, path: Path) -> None:
    import onnx
    from onnx import helper

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def constant_classifier(path: Path) -> None:
    """[batch, 3 s at 16 kHz] -> the same logits for every window."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["audio", "axes"], ["total"], keepdims=1),
         helper.make_node("Mul", ["total", "zero"], ["nothing"]),
         helper.make_node("Add", ["nothing", "bias"], ["logits"])],
        "constant", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 3 * RATE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
         numpy_helper.from_array(np.full(len(LABELS), LOGIT, np.float32), "bias")])
    save(graph, path)


def seasonal_range_model(path: Path) -> None:
    """[lat, lon, week] -> occurrence: owl and magpie all year, the tody sigmoid(10 - week) (gone by week 14)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3, len(LABELS)), np.float32)
    weights[2, 2] = -1.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["coords", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["occurrence"])],
        "range", [helper.make_tensor_value_info("coords", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("occurrence", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([5.0, 5.0, 10.0], np.float32), "b")])
    save(graph, path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    pytest.importorskip("onnx", reason="the dev extra builds the test model: pip install -e '.[dev]'")
    from station.model_folder import Manifest, write_folder, write_labels
    from station.types import Species

    root = tmp_path_factory.mktemp("seasonal")
    staging = root / "staging"
    staging.mkdir()
    constant_classifier(staging / "model.onnx")
    seasonal_range_model(staging / "range.onnx")
    write_labels(staging / "labels.tsv", [Species(*label) for label in LABELS])
    manifest = Manifest("seasonal", RATE, 3.0, "audio", "logits", activation="sigmoid",
                        range_model={"file": "range.onnx", "input": "coords", "output": "occurrence",
                                     "threshold": 0.03})
    return write_folder(staging, root / "model", manifest).path


CONFIG = """
station:
  id: test-station
detection:
  threshold: 0.5
  top_k: 3
location:
  lat: 18.2
  lon: -66.5
  out_of_range_threshold: 0.9
clips:
  enabled: false
"""


@pytest.fixture(scope="module")
def replayed(model, tmp_path_factory) -> tuple[Path, Path]:
    """A 9 s recording named for 11 June 2019 (modified in January), replayed into a fresh database."""
    root = tmp_path_factory.mktemp("replayed")
    audio = root / "SMA00001_20190611_093000.wav"
    sf.write(audio, tone(RATE, 9.0), RATE)
    os.utime(audio, (JANUARY, JANUARY))
    db = root / "st.db"
    result = station_cli("replay", str(audio), "--config", str(write_config(root / "c.yaml", CONFIG)),
                         "--model", str(model), "--db", str(db), cwd=root)
    assert result.returncode == 0, result.stderr
    return audio, db


def test_the_range_filter_removals_are_stored_and_counted(replayed):
    audio, db = replayed
    (run,) = rows(db, "SELECT * FROM runs")
    removals = rows(db, "SELECT * FROM removals ORDER BY start_offset")
    windows = [0.0, 1.5, 3.0, 4.5, 6.0]  # 9 s in 3 s windows, 1.5 s apart
    assert run["windows"] == len(windows) and run["removed"] == len(windows)
    assert [r["start_offset"] for r in removals] == windows
    assert {(r["label"], r["source"], r["reason"], r["run_id"]) for r in removals} == {
        ("Todus mexicanus_Puerto Rican Tody", str(audio), "range", run["id"])}
    assert removals[0]["start_time"] == "2019-06-11T09:30:00.000Z"  # the name's date, not January's mtime
    assert all(r["score"] == pytest.approx(1 / (1 + np.exp(-LOGIT)), abs=1e-5) for r in removals)
    detected = {d["common_name"] for d in rows(db, "SELECT common_name FROM detections")}
    assert detected == {"Tawny Owl", "Eurasian Magpie"}


def test_detections_removed_lists_them_newest_first_as_json(replayed, tmp_path):
    audio, db = replayed
    result = station_cli("detections", "--removed", "--json", "--limit", "2", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["start_offset"] for r in listed] == [6.0, 4.5]
    assert listed[0] == {"start_time": "2019-06-11T09:30:06.000Z", "common_name": "Puerto Rican Tody",
                         "scientific_name": "Todus mexicanus", "score": listed[0]["score"], "source": str(audio),
                         "start_offset": 6.0, "end_offset": 9.0, "reason": "range"}


def test_detections_removed_as_a_table(replayed, tmp_path):
    _, db = replayed
    table = station_cli("detections", "--removed", "--db", str(db), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "Puerto Rican Tody" in table.stdout and "range" in table.stdout and "Tawny Owl" not in table.stdout
    plain = station_cli("detections", "--db", str(db), cwd=tmp_path)
    assert "Tawny Owl" in plain.stdout and "Puerto Rican Tody" not in plain.stdout


def test_nothing_removed_yet_says_so(tmp_path):
    from station.store import Store

    Store.open(tmp_path / "st.db").close()
    result = station_cli("detections", "--removed", "--db", str(tmp_path / "st.db"), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "nothing yet", result.stderr
