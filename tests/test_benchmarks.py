"""Each benchmark script runs once, as the README says, with small settings: figures printed, no timing asserted.

They run where `scripts/test.sh` installs everything (the `dev` extra), which is where
`scripts/benchmark.py` once stopped: with the convert extra, transformers picked TensorFlow.
"""
import json
import subprocess
import sys

import pytest

from conftest import REPO


def run_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    return result


def test_benchmark_replays_and_compares_with_the_notebooks_pipeline(tmp_path, gwwa, tiny_model):
    (tmp_path / "tiny-hf").symlink_to(tiny_model.parent / "hf")  # the session's tiny model, not another export
    (tmp_path / "tiny-onnx").symlink_to(tiny_model)
    result = run_script("benchmark.py", "--sizes", "tiny", "--seconds", "6", "--threads", "1",
                        "--audio", str(gwwa), "--workdir", str(tmp_path), "--json", str(tmp_path / "figures.json"))
    (report,) = json.loads((tmp_path / "figures.json").read_text())
    assert report["windows"] >= 3
    assert {"decode", "onnx fp32 1t", "onnx int8 1t", "seed pipeline 1t", "detection + store"} <= set(
        report["ms_per_window"])
    assert set(report["top1_agreement_with_seed"]) == {"fp32", "int8"}
    assert report["int8_top1_agreement_with_fp32"]["on"] == "synthetic windows"  # the session's model: no recordings
    assert "int8 top-1 agreement with fp32 (recorded at export)" in result.stdout
    assert "s of audio per second" in result.stdout and report["replay fp32 1t"]["peak_rss_mb"] > 0
    macs, bound = report["roofline"]["gmac_per_window"], report["roofline"]["1t"]
    assert macs["conv"] > 0 and macs["matmul"] > 0 and bound["fp32_floor_ms"] > 0 and bound["int8_floor_ms"] > 0
    assert "multiply-accumulates at that rate take" in result.stdout


@pytest.fixture(scope="module")
def birdnet(birdnet_folder):
    return birdnet_folder


def test_bench_birdnet_compares_with_litert_and_replays(birdnet, gwwa, tmp_path):
    result = run_script("bench_birdnet.py", "--model", str(birdnet), "--audio", str(gwwa), "--chunks", "4",
                        "--hops", "3.0", "--threads", "1", "--repeat", "1", "--json", str(tmp_path / "figures.json"))
    figures = json.loads((tmp_path / "figures.json").read_text())
    chunk = figures["per_chunk"]["1 thread(s)"]
    assert chunk["identical_top5"] and chunk["max_abs_logit_diff"] < 1e-3  # the conversion's promise, not a timing
    assert figures["input"]["sample_rate"] == 44100 and figures["startup_s"] > 0
    rows = {row["source"]: row for row in figures["replay"]}
    assert set(rows) == {"as-wired", "prefetch"}
    assert rows["as-wired"]["windows"] == rows["prefetch"]["windows"] == 18  # 54.8 s: 18 whole 3 s windows
    assert "audio s/s" in result.stdout


def test_bench_mqtt_measures_latency_throughput_and_drain(tiny_model, gwwa):
    result = run_script("bench_mqtt.py", "--model", str(tiny_model), "--audio", str(gwwa), "--seconds", "6",
                        "--messages", "200")
    figures = json.loads(result.stdout[result.stdout.index("{"):])
    assert figures["throughput"]["messages"] == figures["drain_after_outage"]["messages"] == 200
    for run in ("latency", "latency_at_the_models_rate"):  # resampled on the way, and not
        assert figures[run]["detections"] > 0 and "first_window_end_to_first_message_s" in figures[run]


def test_bench_model_load_times_hashing_and_loading(tiny_model):
    result = run_script("bench_model_load.py", str(tiny_model), "--repeat", "1", "--random-mb", "1")
    assert "load_folder" in result.stdout and "model.onnx" in result.stdout
