#!/usr/bin/env python3
"""BirdNET per 3 s chunk and as replay throughput: the station's ONNX vs LiteRT, same chunks, one run.

LiteRT is what BirdNET-Pi and BirdNET-Go run. Prints figures; asserts nothing.

- per chunk: LiteRT vs ONNX (batch 1 and 8), their top-5 and largest logit difference;
- input: decoding and kaiser_fast resampling to 48 kHz, per 10 s of the recording;
- startup: a replay of the recording's first 3 s (imports, model load, one window);
- replay: `station replay` of the recording in a fresh process per run (startup included),
  for each hop and thread count, as wired and with the source read ahead on a thread
  (station.prefetch); audio seconds per wall second (best of --repeat: the machine may be
  shared), CPU seconds per audio second, and peak RSS.

    .venv/bin/python scripts/bench_birdnet.py --model models/birdnet-v2.4
    .venv/bin/python scripts/bench_birdnet.py --hops 3.0 --threads 1 --chunks 4 --repeat 1   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from station.birdnet import find_birdnet_files, recording_windows
from station.decode import open_audio
from station.inference import OnnxClassifier
from station.kaiser import KaiserFastStream

REPO = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = REPO.parent / "shared" / "data" / "audio" / "soundscapes" / "BLKFR-10-CPL_20190611_093000.mp3"

# Runs `station replay` as a user would, optionally with every file source read ahead on a
# thread, then prints its wall time, CPU time and peak RSS (VmHWM: ru_maxrss carries over exec).
REPLAY = """
import re, resource, sys, time
if sys.argv[1] == "prefetch":
    import station.builders as builders
    from station.prefetch import Prefetch
    for name in ("FileSource", "DirectorySource"):
        cls = getattr(builders, name)
        setattr(builders, name, lambda *a, _cls=cls, **k: Prefetch(_cls(*a, **k)))
from station.cli import main
started = time.perf_counter()
code = main(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_SELF)
hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())
print("BENCH", time.perf_counter() - started, usage.ru_utime + usage.ru_stime, int(hwm.group(1)) / 1024,
      file=sys.stderr)
sys.exit(code)
"""


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


def per_chunk(args, tflite: Path) -> dict:
    batch = recording_windows([args.audio], per_file=args.chunks)
    figures = {"chunks": len(batch)}
    for threads in args.threads:
        t_lite, lite = per_chunk_litert(tflite, batch, threads)
        t_onnx, ours = per_chunk_onnx(args.model, batch, threads, 1)
        t_batch, _ = per_chunk_onnx(args.model, batch, threads, 8)
        same_top5 = all(list(np.argsort(-a)[:5]) == list(np.argsort(-b)[:5]) for a, b in zip(lite, ours))
        figures[f"{threads} thread(s)"] = {
            "litert_ms": round(1000 * t_lite, 1), "onnx_ms": round(1000 * t_onnx, 1),
            "onnx_batch8_ms": round(1000 * t_batch, 1), "speedup_vs_litert": round(t_lite / t_onnx, 2),
            "identical_top5": same_top5, "max_abs_logit_diff": float(np.abs(lite - ours).max())}
    return figures


def input_costs(audio: Path, block_seconds: float = 10.0) -> dict:
    """Decoding and resampling to 48 kHz, each timed over the whole recording in 10 s blocks."""
    started = time.perf_counter()
    info, blocks = open_audio(audio, block_seconds)
    blocks = list(blocks)
    decode = time.perf_counter() - started
    stream, started = KaiserFastStream(info.sample_rate, 48000), time.perf_counter()
    for i, block in enumerate(blocks):
        stream.resample_chunk(block, last=i == len(blocks) - 1)
    resample = time.perf_counter() - started
    seconds = sum(len(b) for b in blocks) / info.sample_rate
    return {"audio_s": round(seconds, 1), "sample_rate": info.sample_rate,
            "decode_ms_per_10s": round(1e4 * decode / seconds, 1),
            "kaiser_fast_ms_per_10s": round(1e4 * resample / seconds, 1)}


def startup(folder: Path, audio: Path, threads: int) -> float:
    """Wall seconds of a replay of the recording's first 3 s: imports, model load, one window."""
    import soundfile as sf

    info, blocks = open_audio(audio, 3.0)
    with tempfile.TemporaryDirectory() as tmp:
        short = Path(tmp) / "first-3-s.wav"
        sf.write(short, next(blocks), info.sample_rate)
        seconds = replay(folder, short, 3.0, threads, 1, "as-wired")["audio_s_per_wall_s"]
    return round(3.0 / seconds, 2)


def replay(folder: Path, audio: Path, hop: float, threads: int, batch: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.yaml"
        config.write_text(f"model:\n  path: {folder}\n  threads: {threads}\n  batch_size: {batch}\n"
                          f"windowing:\n  hop_seconds: {hop}\nlogging:\n  level: WARNING\n")
        result = subprocess.run([sys.executable, "-c", REPLAY, mode, "replay", str(audio), "--config", str(config),
                                 "--db", str(Path(tmp) / "b.db")], capture_output=True, text=True, cwd=tmp)
    figures = re.search(r"^BENCH (\S+) (\S+) (\S+)$", result.stderr, re.MULTILINE)
    if result.returncode != 0 or not figures:
        raise SystemExit(f"replay failed ({mode}, hop {hop}, {threads} thread(s)): {result.stderr.strip()[-500:]}")
    wall, cpu, rss = (float(v) for v in figures.groups())
    seconds = float(re.search(r"replayed ([\d.]+) s of audio: (\d+) windows", result.stdout).group(1))
    windows = int(re.search(r"(\d+) windows", result.stdout).group(1))
    return {"audio_s_per_wall_s": seconds / wall, "cpu_s_per_audio_s": cpu / seconds, "peak_rss_mb": rss,
            "windows": windows}


def replays(args) -> list[dict]:
    """Every setting, `repeat` rounds interleaved; per setting the best throughput, its CPU and RSS."""
    settings = [(hop, threads, batch, mode) for hop in args.hops for threads in args.threads
                for batch in args.batch for mode in args.modes]
    runs: dict[tuple, list[dict]] = {s: [] for s in settings}
    for _ in range(args.repeat):
        for setting in settings:
            runs[setting].append(replay(args.model, args.audio, *setting))
    rows = []
    for (hop, threads, batch, mode), results in runs.items():
        best = max(results, key=lambda r: r["audio_s_per_wall_s"])
        rows.append({"hop_s": hop, "threads": threads, "batch": batch, "source": mode,
                     "audio_s_per_wall_s": round(best["audio_s_per_wall_s"], 1),
                     "all_runs": [round(r["audio_s_per_wall_s"], 1) for r in results],
                     "cpu_s_per_audio_s": round(best["cpu_s_per_audio_s"], 4),
                     "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results)), "windows": best["windows"]})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'hop':>5} {'threads':>7} {'batch':>5} {'source':<9} {'audio s/s':>9} {'runs':<24} "
          f"{'CPU s/audio s':>13} {'peak RSS':>8}")
    for r in rows:
        runs = ", ".join(f"{v:g}" for v in r["all_runs"])
        print(f"{r['hop_s']:>5} {r['threads']:>7} {r['batch']:>5} {r['source']:<9} {r['audio_s_per_wall_s']:>9} "
              f"{runs:<24} {r['cpu_s_per_audio_s']:>13} {r['peak_rss_mb']:>6} MB")


def numbers(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "birdnet-v2.4")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--chunks", type=int, default=40, help="3 s chunks for the LiteRT comparison")
    parser.add_argument("--hops", type=numbers, default=[3.0, 1.5])
    parser.add_argument("--threads", type=lambda t: numbers(t, int), default=[1, 2])
    parser.add_argument("--batch", type=lambda t: numbers(t, int), default=[1], help="model.batch_size values")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=["as-wired", "prefetch"],
                        help="as-wired: the station as it is; prefetch: sources wrapped in station.prefetch")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of replays; the best of each is shown")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    figures = {"load_average_at_start": round(load, 2), "cpus": os.cpu_count(),
               "per_chunk": per_chunk(args, find_birdnet_files()["classifier"]),
               "input": input_costs(args.audio), "startup_s": startup(args.model, args.audio, args.threads[-1]),
               "replay": replays(args)}
    print(json.dumps({k: v for k, v in figures.items() if k != "replay"}, indent=2))
    print_table(figures["replay"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
