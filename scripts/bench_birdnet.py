#!/usr/bin/env python3
"""BirdNET per 3 s chunk and as replay throughput: the station's ONNX vs LiteRT, same chunks, one run.

LiteRT is what BirdNET-Pi and BirdNET-Go run. Prints figures; asserts nothing.

    .venv/bin/python scripts/bench_birdnet.py --model models/birdnet-v2.4
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from station.birdnet import find_birdnet_files, recording_windows
from station.inference import OnnxClassifier

REPO = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = REPO.parent / "shared" / "data" / "audio" / "soundscapes" / "BLKFR-10-CPL_20190611_093000.mp3"


def per_chunk_litert(tflite: Path, batch: np.ndarray, threads: int) -> tuple[float, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], [1, batch.shape[1]])
    interpreter.allocate_tensors()
    outputs, started = [], None
    for i, row in enumerate(batch):
        if i == 1:
            started = time.perf_counter()  # the first call warms up
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0].copy())
    return (time.perf_counter() - started) / (len(batch) - 1), np.array(outputs)


def per_chunk_onnx(folder: Path, batch: np.ndarray, threads: int, batch_size: int) -> tuple[float, np.ndarray]:
    classifier = OnnxClassifier.from_path(folder, threads=threads, batch_size=batch_size)
    session, name = classifier.session, classifier.manifest.input_name
    session.run(None, {name: batch[:batch_size]})
    started = time.perf_counter()
    logits = np.concatenate([session.run(None, {name: batch[i:i + batch_size]})[0]
                             for i in range(0, len(batch), batch_size)])
    return (time.perf_counter() - started) / len(batch), logits


def replay(folder: Path, audio: Path, threads: int) -> dict:
    code = ("import re, sys, time; from station.cli import main; t = time.perf_counter(); main(sys.argv[1:]);"
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read());"
            "print(time.perf_counter() - t, int(hwm.group(1)) / 1024, file=sys.stderr)")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.yaml"
        config.write_text(f"model:\n  path: {folder}\n  threads: {threads}\nlogging:\n  level: WARNING\n")
        result = subprocess.run([sys.executable, "-c", code, "replay", str(audio), "--config", str(config),
                                 "--db", str(Path(tmp) / "b.db")], capture_output=True, text=True, check=True)
    wall, rss = result.stderr.strip().splitlines()[-1].split()
    seconds = float(re.search(r"replayed ([\d.]+) s", result.stdout).group(1))
    return {"audio_s_per_wall_s": round(seconds / float(wall), 1), "peak_rss_mb": round(float(rss))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "birdnet-v2.4")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--chunks", type=int, default=40)
    args = parser.parse_args()
    batch = recording_windows([args.audio], per_file=args.chunks)
    tflite = find_birdnet_files()["classifier"]
    figures = {"chunks": len(batch)}
    for threads in (1, 2):
        t_lite, lite = per_chunk_litert(tflite, batch, threads)
        t_onnx, ours = per_chunk_onnx(args.model, batch, threads, 1)
        t_batch, _ = per_chunk_onnx(args.model, batch, threads, 8)
        same_top5 = all(list(np.argsort(-a)[:5]) == list(np.argsort(-b)[:5]) for a, b in zip(lite[1:], ours[1:]))
        figures[f"{threads} thread(s)"] = {
            "litert_ms": round(1000 * t_lite, 1), "onnx_ms": round(1000 * t_onnx, 1),
            "onnx_batch8_ms": round(1000 * t_batch, 1), "speedup": round(t_lite / t_onnx, 2),
            "identical_top5": same_top5, "max_abs_logit_diff": float(np.abs(lite - ours).max()),
            "replay": replay(args.model, args.audio, threads)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
