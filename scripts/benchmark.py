#!/usr/bin/env python3
"""Replay throughput and per-window cost split, ONNX vs the notebook's transformers pipeline.

Prints figures; it asserts nothing. Random-weight wav2vec2 models are built and exported
once into --workdir (tiny: seconds; base: wav2vec2-base's size, ~95M parameters), the int8
variant's top-1 agreement with fp32 measured on windows of --agreement-audio (the shared
recordings) and printed from the manifest.

    .venv/bin/python scripts/benchmark.py --sizes tiny,base --seconds 30

It also prints a ceiling: a window's multiply-accumulates (PyTorch's FLOP counter: for
wav2vec2-base and a 3 s window, 8.1 G in convolutions, 12.7 G in matrix products) at
onnxruntime's best GEMM rate on this machine (~40 G/s fp32 at 1 thread, which is this AVX2
CPU's FMA peak at its clock, and ~80 G/s int8). Nothing that does all of that work can be
faster, so the ratio to the seed's way cannot exceed it (1.4-1.6x fp32, 2.1-2.3x int8 with fp32
convolutions, at 1 thread here): wav2vec2-base exact and 2.5x faster needs less work per
window, not faster kernels.

What was tried for wav2vec2-base and left out (random weights, real audio windows, 2-core
AVX2 machine without VNNI, onnxruntime 1.32), so the next attempt starts from the numbers:
- Reusing the feature encoder across overlapping windows: only the first convolution's output
  on raw audio is the same in both windows (max difference 0). The window's own normalisation
  and then the first layer's GroupNorm (per channel, over the whole window) change every later
  feature: over the overlap, windows 1.5 s apart differ by 29-43% of the features' range at
  every layer. The first convolution is ~3% of PyTorch's time for a window, less in
  onnxruntime: not worth a stateful runtime.
- The encoder's convolutions as MatMuls (im2col, time-major): exact (3e-7) but no faster in fp32.
  Quantised with the transformer (as MatMuls, or as ConvInteger), int8 top-1 agreement with
  fp32 fell to 86-89% on 57 real audio windows; leaving out layers 1-2 only still gave 88%.
- The positional convolution quantised (possible once weight norm is folded): agreement 100%
  but ConvInteger made the variant ~10% slower. onnxruntime's transformer optimiser (model
  type bert: no attention fusion matches; SkipLayerNorm and BiasGelu fuse) changed fp32 time
  by less than the noise and made the int8 variant ~15% slower.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soxr

# The notebook's way is PyTorch: transformers need not import TensorFlow (the convert extra's) at all.
os.environ.setdefault("USE_TF", "0")

from station.detection import Detector, SpeciesFilter
from station.export import ExportOptions, export_model
from station.inference import OnnxClassifier
from station.model_folder import load_folder
from station.random_model import build_random_wav2vec2
from station.sources import FileSource
from station.store import Store
from station.types import AudioChunk
from station.windowing import Windower

REPO = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = REPO.parent / "shared" / "data" / "audio" / "birds_misc" / "XC13738_GWWA.mp3"


def timed(fn, *args, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - started)
    return best, result


def interleaved(contenders: dict, windows: list, rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds per round for each contender, each round running all of them in turn, and their results.

    Other processes share this machine: in turn, each round's ratios compare runs made under
    the same load, where timing one contender after the other would compare different loads.
    """
    for classify in contenders.values():
        classify(windows[:1])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    results = {}
    for _ in range(rounds):
        for name, classify in contenders.items():
            t, results[name] = timed(classify, windows)
            seconds[name].append(t)
    return seconds, results


def prepare_model(workdir: Path, size: str, agreement_audio: tuple[Path, ...]) -> tuple[Path, Path]:
    hf, folder = workdir / f"{size}-hf", workdir / f"{size}-onnx"
    if not (hf / "config.json").exists():
        build_random_wav2vec2(hf, size=size)
    if not (folder / "manifest.json").exists():
        export_model(ExportOptions(str(hf), folder, int8=True, name=f"random-{size}",
                                   agreement_audio=agreement_audio))
    return hf, folder


def int8_agreement(folder: Path) -> dict:
    """What the export measured: top-1 agreement of int8 with fp32, and on which windows."""
    record = load_folder(folder).manifest.variants["int8"]
    # Folders exported before the record had a headline figure carry the synthetic one only.
    return {"top1_agreement": record.get("top1_agreement", record.get("top1_agreement_synthetic")),
            "windows": record.get("windows"), "on": record.get("agreement_on", "synthetic windows")}


def window_macs(hf: Path, samples: int) -> dict[str, float]:
    """Multiply-accumulates (G) of one window's forward pass, split as the int8 variant splits them.

    Counted by PyTorch's FLOP counter on the model itself. Convolutions stay fp32 in the int8
    variant; matrix products (linear layers, attention) are what it quantises.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(hf).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, samples))
    by_op = {str(op): flops / 2e9 for op, flops in counter.get_flop_counts()["Global"].items()}
    conv = sum(g for op, g in by_op.items() if "convolution" in op)
    return {"conv": conv, "matmul": sum(by_op.values()) - conv}


def gemm_rates(threads: int, shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """onnxruntime's best multiply-accumulate rate (G/s) on a lone MatMul, fp32 and dynamic int8.

    The best of the shapes: a generous ceiling, so a floor computed from it is a true floor.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng, best = np.random.default_rng(0), {"fp32": 0.0, "int8": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for m, k, n in shapes:
            weights = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "W")
            graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "gemm",
                                      [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])],
                                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], [weights])
            fp32, int8 = Path(tmp) / "gemm.onnx", Path(tmp) / "gemm.int8.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
            quantize_dynamic(str(fp32), str(int8), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
            x = rng.standard_normal((m, k), dtype=np.float32)
            for variant, path in (("fp32", fp32), ("int8", int8)):
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                t, _ = timed(session.run, None, {"X": x}, repeat=20)
                best[variant] = max(best[variant], m * k * n / t / 1e9)
    return best


def roofline(hf: Path, samples: int, threads: list[int]) -> dict:
    """The fastest any implementation of these windows could run here, from MACs and GEMM rates."""
    config = json.loads((hf / "config.json").read_text())
    frames = samples // int(np.prod(config["conv_stride"]))
    shapes = [(frames, config["hidden_size"], config["intermediate_size"]), (1024, 1024, 1024)]
    macs = window_macs(hf, samples)
    report: dict = {"gmac_per_window": macs}
    for t in threads:
        rate = gemm_rates(t, shapes)
        report[f"{t}t"] = {"gmac_per_s": rate,
                           "fp32_floor_ms": 1000 * (macs["conv"] + macs["matmul"]) / rate["fp32"],
                           "int8_floor_ms": 1000 * (macs["conv"] / rate["fp32"] + macs["matmul"] / rate["int8"])}
    return report


def decode(path: Path, seconds: float) -> list[AudioChunk]:
    chunks = []
    for chunk in FileSource(path, chunk_seconds=10.0).chunks(threading.Event()):
        chunks.append(chunk)
        if chunk.end_offset >= seconds:
            break
    return chunks


def resample(chunks: list[AudioChunk]) -> list[AudioChunk]:
    stream = soxr.ResampleStream(chunks[0].sample_rate, 16000, 1, dtype="float32", quality="HQ")
    out = []
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        out.append(AudioChunk(stream.resample_chunk(c.samples, last=last), 16000, c.source,
                              c.start_offset, c.start_time, final=last))
    return out


def window(chunks: list[AudioChunk]):
    windower, windows = Windower(16000, 3.0, 1.5, 1.0), []
    for c in chunks:
        windows += windower.push(c)
    return windows


def detect_and_store(scores, db_path: Path) -> int:
    detector = Detector("bench", "m", SpeciesFilter(0.0, {}, [], []), 3)
    store = Store.open(db_path)
    run = store.start_run("bench", "bench", "m")
    changed = 0
    for i in range(0, len(scores), 8):
        found = detector.push(scores[i:i + 8])
        with store.transaction():
            store.save(found, run)
        changed += len(found)
    store.save(detector.flush(), run)
    store.close()
    return changed


def seed_pipeline(hf: Path, threads: int):
    """The notebook's way: a transformers pipeline on PyTorch, fed one window per call."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    # framework="pt": with the convert extra installed, transformers would otherwise pick TensorFlow
    # for the model and stop at "Keras 3 is not supported"; the notebook ran PyTorch.
    classify = pipeline("audio-classification", model=str(hf), device="cpu", top_k=1, framework="pt")
    return lambda windows: [classify({"raw": w.samples, "sampling_rate": 16000})[0]["label"] for w in windows]


def replay_rss(folder: Path, audio: Path, variant: str, threads: int) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of a whole `station replay` process."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of this (torch-laden)
    # process would report the parent's peak.
    code = ("import re, sys, time; from station.cli import main; t = time.perf_counter();"
            "main(sys.argv[1:]); hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read());"
            "print(time.perf_counter() - t, int(hwm.group(1)) / 1024, file=sys.stderr)")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.yaml"
        config.write_text(f"model:\n  variant: {variant}\n  threads: {threads}\n  batch_size: 1\n"
                          "logging:\n  level: WARNING\n")
        result = subprocess.run([sys.executable, "-c", code, "replay", str(audio), "--config", str(config),
                                 "--model", str(folder), "--db", str(Path(tmp) / "b.db")],
                                capture_output=True, text=True, check=True)
    wall, rss = result.stderr.strip().splitlines()[-1].split()
    return float(rss), float(wall)


def bench_size(size: str, args) -> dict:
    hf, folder = prepare_model(args.workdir, size, args.agreement_audio)
    t_decode, chunks = timed(decode, args.audio, args.seconds, repeat=3)
    t_resample, resampled = timed(resample, chunks, repeat=3)
    t_window, windows = timed(window, resampled, repeat=3)
    n, audio_seconds = len(windows), sum(c.duration for c in chunks)
    report = {"size": size, "windows": n, "audio_seconds": round(audio_seconds, 1),
              "ms_per_window": {"decode": 1000 * t_decode / n, "resample": 1000 * t_resample / n,
                                "windowing": 1000 * t_window / n}}
    top1: dict[str, list[str]] = {}
    rounds = args.rounds or (2 if size == "tiny" else 3)
    speedups: dict[str, list[float]] = {}
    seed_rounds_ms: dict[int, list[float]] = {}
    for threads in args.threads:
        contenders = {f"seed pipeline {threads}t": seed_pipeline(hf, threads)}
        batches = [1, 8] if threads == args.threads[-1] else [1]
        for variant in ("fp32", "int8"):
            for batch in batches:
                classifier = OnnxClassifier.from_path(folder, variant=variant, threads=threads, batch_size=batch)
                name = f"onnx {variant} {threads}t" + (f" batch {batch}" if batch > 1 else "")
                contenders[name] = classifier.classify
        seconds, results = interleaved(contenders, windows, rounds)
        seed = seconds.pop(f"seed pipeline {threads}t")
        seed_rounds_ms[threads] = [1000 * s / n for s in seed]
        report["ms_per_window"][f"seed pipeline {threads}t"] = 1000 * min(seed) / n
        for name, times in seconds.items():
            report["ms_per_window"][name] = 1000 * min(times) / n
            speedups[name] = [s / t for s, t in zip(seed, times)]
        top1["seed"] = results[f"seed pipeline {threads}t"]
        for variant in ("fp32", "int8"):
            top1[variant] = [s.top(1)[0][0].label for s in results[f"onnx {variant} {threads}t"]]
    report["speedup_vs_seed"] = {name: {"median": float(np.median(r)), "min": min(r), "max": max(r)}
                                 for name, r in speedups.items()}
    scores = results[f"onnx fp32 {args.threads[-1]}t"]
    with tempfile.TemporaryDirectory() as tmp:
        t_store, _ = timed(detect_and_store, scores, Path(tmp) / "b.db")
    report["ms_per_window"]["detection + store"] = 1000 * t_store / n
    report["int8_top1_agreement_with_fp32"] = int8_agreement(folder)
    report["roofline"] = roofline(hf, len(windows[0].samples), args.threads)
    for t in args.threads:  # the ceiling as the speedups are taken: per round, then the median
        bound = report["roofline"][f"{t}t"]
        for variant in ("fp32", "int8"):
            bound[f"{variant}_ceiling_vs_seed"] = float(np.median(
                [seed_ms / bound[f"{variant}_floor_ms"] for seed_ms in seed_rounds_ms[t]]))
    report["top1_agreement_with_seed"] = {
        v: float(np.mean([a == b for a, b in zip(top1[v], top1["seed"])])) for v in ("fp32", "int8")}
    for variant in ("fp32", "int8"):
        rss, wall = replay_rss(folder, args.audio, variant, args.threads[-1])
        report[f"replay {variant} {args.threads[-1]}t"] = {"peak_rss_mb": round(rss), "wall_s": round(wall, 2)}
    return report


def summarise(report: dict, threads: list[int]) -> None:
    ms = report["ms_per_window"]
    print(f"\n== {report['size']} model: {report['windows']} windows from {report['audio_seconds']} s of audio")
    for name, value in ms.items():
        print(f"  {name:<24} {value:9.2f} ms/window")
    overhead = ms["decode"] + ms["resample"] + ms["windowing"] + ms["detection + store"]
    for t in threads:
        for variant in ("fp32", "int8"):
            inference = ms[f"onnx {variant} {t}t"]
            total_s = report["windows"] * (inference + overhead) / 1000
            print(f"  {t} thread(s), {variant}: {report['audio_seconds'] / total_s:7.1f} s of audio per second; "
                  f"non-inference share {100 * overhead / (inference + overhead):4.1f}%; "
                  f"inference {speedup(report, f'onnx {variant} {t}t')} than the seed's way")
    macs = report["roofline"]["gmac_per_window"]
    print(f"  a window is {macs['conv']:.2f} G multiply-accumulates in convolutions (fp32 in both variants) "
          f"and {macs['matmul']:.2f} G in matrix products (int8 in the int8 variant)")
    for t in threads:
        bound = report["roofline"][f"{t}t"]
        rate = bound["gmac_per_s"]
        print(f"  {t} thread(s): onnxruntime's best GEMM here {rate['fp32']:.1f} G/s fp32, {rate['int8']:.1f} G/s int8")
        for variant in ("fp32", "int8"):
            floor, ceiling = bound[f"{variant}_floor_ms"], bound[f"{variant}_ceiling_vs_seed"]
            print(f"    {variant}: all of a window's multiply-accumulates at that rate take {floor:.0f} ms, so "
                  f"anything that does them all is at most {ceiling:.2f}x faster than the seed's way; "
                  f"onnx reaches {100 * floor / ms[f'onnx {variant} {t}t']:.0f}% of that")
    for name in [k for k in ms if k.startswith("onnx") and "batch" in k]:
        print(f"  {name}: inference {speedup(report, name)} than the seed's way")
    print(f"  top-1 agreement with the seed's way: {report['top1_agreement_with_seed']}")
    agreement = report["int8_top1_agreement_with_fp32"]
    count = f"{agreement['windows']} " if agreement["windows"] else ""  # older folders did not record it
    print(f"  int8 top-1 agreement with fp32 (recorded at export): {agreement['top1_agreement']:.3f} "
          f"on {count}{agreement['on']}")
    for key in [k for k in report if k.startswith("replay")]:
        print(f"  {key}: {report[key]}")


def speedup(report: dict, name: str) -> str:
    r = report["speedup_vs_seed"][name]
    return f"{r['median']:4.2f}x faster (rounds {r['min']:.2f}-{r['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio to use from the file")
    parser.add_argument("--workdir", type=Path, default=REPO / ".benchmarks")
    parser.add_argument("--agreement-audio", type=Path, action="append",
                        help="recordings (files or folders) for the int8 agreement at export; "
                             "default: the shared recordings if present, else --audio")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 2 for tiny, 3 for base)")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    shared = Path(os.environ.get("STATION_TEST_DATA") or REPO.parent / "shared" / "data") / "audio"
    args.agreement_audio = tuple(args.agreement_audio or [shared if shared.is_dir() else args.audio])
    args.workdir.mkdir(exist_ok=True)
    reports = [bench_size(size, args) for size in args.sizes.split(",")]
    for report in reports:
        summarise(report, args.threads)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
