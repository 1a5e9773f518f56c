#!/usr/bin/env python3
"""What verifying a model folder costs at every start, and hashing as a stream vs reading the bytes once.

    scripts/bench_model_load.py models/birdnet-v2.4 --random-mb 52 378

For each folder: `load_folder` (manifest, labels, every listed file's sha256), then for each
ONNX file, in a fresh process each: onnxruntime loading it by path with no hash, the station's
way (hash as a stream, then load by path), and the other way (read the bytes once, hash them,
hand them to onnxruntime), with peak and settled RSS above the process's start. `--random-mb`
times sha256 on files of random bytes of those sizes. Warm page cache: a cold start on an SD
card adds the read itself, which loading needs anyway. Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def child(mode: str, path: str) -> None:
    """One measurement in this (fresh) process; prints one line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    base = rss_mb()
    start = time.perf_counter()
    source: str | bytes = path
    if mode == "stream":
        with open(path, "rb") as f:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    elif mode == "bytes":
        source = Path(path).read_bytes()
        hashlib.sha256(source).hexdigest()
    hashed = time.perf_counter()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    loaded = time.perf_counter()
    del source
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {mode:7s} hash {hashed - start:6.3f} s  session {loaded - hashed:6.3f} s  "
          f"peak RSS +{peak - base:5.0f} MB  after +{rss_mb() - base:5.0f} MB", flush=True)
    assert session


def best_of(repeat: int, work) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_folder(folder: Path, repeat: int) -> None:
    from station.model_folder import load_folder

    loaded = load_folder(folder)
    sizes = {name: (folder / name).stat().st_size / 1e6 for name in loaded.manifest.files}
    print(f"{folder}: {len(sizes)} files, {sum(sizes.values()):.1f} MB")
    load_seconds = best_of(repeat, lambda: load_folder(folder))
    print(f"  load_folder (all sha256s, labels): {load_seconds:.3f} s (best of {repeat})")
    for name, size in sorted(sizes.items()):
        if name.endswith(".onnx"):
            print(f" {name} ({size:.1f} MB)")
            for mode in ("no-hash", "stream", "bytes"):
                subprocess.run([sys.executable, __file__, "--child", mode, str(folder / name)], check=True)


def bench_random(megabytes: list[float], repeat: int) -> None:
    for mb in megabytes:
        with tempfile.NamedTemporaryFile(prefix="bench-sha-") as f:
            size = int(mb * 1e6)
            for offset in range(0, size, 1 << 24):
                f.write(os.urandom(min(1 << 24, size - offset)))
            f.flush()
            from station.model_folder import sha256_of

            seconds = best_of(repeat, lambda: sha256_of(Path(f.name)))
            print(f"sha256 of {mb:g} MB of random bytes: {seconds:.3f} s ({mb / seconds:.0f} MB/s, best of {repeat})")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--random-mb", nargs="*", type=float, default=[], help="also hash random files of these sizes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for folder in args.folders:
        bench_folder(folder, args.repeat)
    bench_random(args.random_mb, args.repeat)


if __name__ == "__main__":
    main()
