"""Export a Hugging Face audio-classification model into a model folder (optimum-onnx).

Heavy imports (torch, transformers, optimum) happen inside the functions: this module is
the `export` extra's, and the daemon never loads it. The export is refused unless ONNX
and PyTorch agree on the same windows, and unless the station's numpy preprocessing
equals the model's own feature extractor.

Before export, weight-norm parametrisations (wav2vec2's positional convolution) are folded
into plain weights: the same function, with a constant weight in the graph that quantisation
can reach. An int8 variant records its top-1 agreement with fp32 on synthetic windows and, when
given recordings (`agreement_audio`), on real audio windows cut from them.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .decode import decode_at
from .errors import ModelError
from .inference import normalise
from .manifest import tool_versions
from .model_folder import LABELS, Manifest, ModelFolder, write_folder, write_labels
from .names import DIMA806_SCIENTIFIC, species_from_label, with_scientific_names
from .optional import require
from .sources import walk_audio_files
from .types import Species

log = logging.getLogger(__name__)

DEFAULT_MODEL = "dima806/bird_sounds_classification"
LOGIT_TOLERANCE = 1e-3
PREPROCESSING_TOLERANCE = 1e-4
PARITY_WINDOWS = 6
AGREEMENT_WINDOWS_PER_FILE = 4
AGREEMENT_MAX_WINDOWS = 96
AUDIO_SUFFIXES = (".wav", ".mp3", ".ogg", ".flac")
EXPORT_TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy")


@dataclass(frozen=True)
class ExportOptions:
    source: str = DEFAULT_MODEL  # hub id or local directory
    output: Path | None = None  # default models/<name>
    window_seconds: float = 3.0
    int8: bool = False
    name: str | None = None
    agreement_audio: tuple[Path, ...] = ()  # recordings (or folders of them) for the int8 agreement


def export_model(options: ExportOptions) -> ModelFolder:
    require("torch", "export")
    require("optimum.exporters.onnx", "export")
    name = options.name or re.sub(r"[^A-Za-z0-9_.-]+", "_", options.source.rstrip("/").split("/")[-1])
    output = Path(options.output or Path("models") / name)
    with tempfile.TemporaryDirectory(prefix="station-export-") as tmp:
        onnx_dir = Path(tmp) / "onnx"
        _optimum_export(options.source, onnx_dir)
        config = json.loads((onnx_dir / "config.json").read_text())
        extractor = json.loads((onnx_dir / "preprocessor_config.json").read_text())
        rate = int(extractor.get("sampling_rate", 16000))
        normalisation = "zero_mean_unit_var" if extractor.get("do_normalize") else "none"
        windows = parity_windows(rate, options.window_seconds)
        _check_preprocessing(options.source, windows, rate, normalisation)
        verification = _check_parity(options.source, onnx_dir / "model.onnx", windows, normalisation)
        staging = Path(tmp) / "folder"
        staging.mkdir()
        for f in onnx_dir.glob("model.onnx*"):
            shutil.move(str(f), staging / f.name)
        write_labels(staging / LABELS, labels_from_config(config))
        variants = {}
        if options.int8:
            real = real_audio_windows(options.agreement_audio, rate, options.window_seconds)
            variants["int8"] = quantize_int8(staging / "model.onnx", staging / "model.int8.onnx",
                                             windows, normalisation, real)
        manifest = Manifest(
            name=name, sample_rate=rate, window_seconds=options.window_seconds,
            input_name="input_values", output_name="logits", normalisation=normalisation,
            activation="softmax", source=_source_info(options.source, config),
            licence=_licence(options.source), variants=variants, tools=tool_versions(EXPORT_TOOLS),
            verification=verification)
        folder = write_folder(staging, output, manifest)
    log.info("exported %s to %s (%d labels, max |ONNX - PyTorch| = %.2g)", options.source, output,
             len(folder.labels), verification["max_abs_logit_diff"])
    return folder


def _optimum_export(source: str, out: Path) -> None:
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForAudioClassification

    if _looks_like_path(source) and not Path(source).is_dir():
        raise ModelError(f"cannot load {source!r}: no such model directory")
    try:
        model = AutoModelForAudioClassification.from_pretrained(source).eval()
        folded = fold_weight_norm(model)
        # Validation is ours (_check_parity, against the model as published, not as folded).
        onnx_export_from_model(model, out, task="audio-classification", do_validation=False)
    except Exception as exc:  # hub, network and exporter errors come in many types; each is one line here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load {source!r}: {first} (offline? pass a local model directory)") from None
    log.info("%s: %d weight-norm parametrisation(s) folded into plain weights", source, folded)


def fold_weight_norm(model) -> int:
    """Replace each weight-norm parametrisation by the weight it computes; returns how many.

    In the graph the weight is then one constant instead of ReduceL2/Div/Mul over two, which
    dynamic quantisation cannot take as a weight.
    """
    from torch.nn.utils import parametrize

    folded = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
    return folded


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1 or Path(source).exists()


def parity_windows(rate: int, seconds: float, count: int = PARITY_WINDOWS) -> np.ndarray:
    """Deterministic test windows: noise, tones and chirps at bird-like frequencies."""
    rng = np.random.default_rng(20261123)
    t = np.arange(round(rate * seconds)) / rate
    windows = []
    for i in range(count):
        f0 = 1000 + 700 * i
        chirp = np.sin(2 * np.pi * (f0 * t + 300 * t**2)) * (0.5 + 0.5 * np.sin(2 * np.pi * (i + 1) * t))
        windows.append(0.3 * chirp + (0.05 * i + 0.01) * rng.standard_normal(len(t)))
    return np.asarray(windows, dtype=np.float32)


def _check_preprocessing(source: str, windows: np.ndarray, rate: int, normalisation: str) -> None:
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(source)
    theirs = extractor(list(windows), sampling_rate=rate, return_tensors="np")["input_values"]
    diff = float(np.abs(theirs - normalise(windows, normalisation)).max())
    if diff > PREPROCESSING_TOLERANCE:
        raise ModelError(f"{source}: the station's {normalisation!r} preprocessing differs from the "
                         f"model's feature extractor by {diff:.2g}; refusing to export")


def _check_parity(source: str, onnx_path: Path, windows: np.ndarray, normalisation: str) -> dict:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForAudioClassification

    inputs = normalise(windows, normalisation)
    model = AutoModelForAudioClassification.from_pretrained(source).eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).logits.numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = session.run(["logits"], {"input_values": inputs})[0]
    diff = float(np.abs(reference - ours).max())
    same_top1 = bool((reference.argmax(1) == ours.argmax(1)).all())
    if diff > LOGIT_TOLERANCE or not same_top1:
        raise ModelError(f"{source}: ONNX and PyTorch disagree (max logit diff {diff:.3g}, "
                         f"same top-1: {same_top1}); refusing to export")
    return {"windows": len(windows), "max_abs_logit_diff": diff, "same_top1": same_top1,
            "against": "pytorch"}


def quantize_int8(fp32: Path, out: Path, windows: np.ndarray, normalisation: str,
                  real_windows: RealWindows | None = None) -> dict:
    """Dynamic int8 of MatMul/Gemm only, with its top-1 agreement with fp32 measured.

    The convolutions stay fp32: quantising wav2vec2's feature encoder (as ConvInteger, or
    as MatMuls) dropped top-1 agreement on real audio to 86-89%, and the positional
    convolution as ConvInteger agreed but ran slower (scripts/benchmark.py's docstring).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8)
    a, b = _logits(fp32, windows, normalisation), _logits(out, windows, normalisation)
    synthetic = _agreement(a, b)
    record: dict[str, Any] = {"file": out.name, "quantisation": "dynamic int8, MatMul/Gemm only",
              "top1_agreement": synthetic, "windows": len(windows), "agreement_on": "synthetic windows",
              "top1_agreement_synthetic": synthetic, "max_abs_logit_diff": float(np.abs(a - b).max())}
    if real_windows is not None:  # what users hear decides: real audio is the headline figure
        a, b = (_logits(p, real_windows.windows, normalisation) for p in (fp32, out))
        record |= {"top1_agreement": _agreement(a, b), "windows": len(a),
                   "agreement_on": f"real audio windows from {len(real_windows.files)} recordings",
                   "recordings": real_windows.files, "max_abs_logit_diff": float(np.abs(a - b).max())}
    log.info("int8 variant: top-1 agreement with fp32 %.1f%% on %d %s", 100 * float(record["top1_agreement"]),
             record["windows"], record["agreement_on"])
    return record


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def _logits(model: Path, windows: np.ndarray, normalisation: str, batch: int = 8) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    parts = [session.run(None, {"input_values": normalise(windows[i:i + batch], normalisation)})[0]
             for i in range(0, len(windows), batch)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class RealWindows:
    windows: np.ndarray  # [n, samples] float32 at the model's rate
    files: list[str]  # file names the windows were cut from


def real_audio_windows(paths: tuple[Path, ...], rate: int, seconds: float) -> RealWindows | None:
    """Up to AGREEMENT_WINDOWS_PER_FILE windows from each recording, spread over it; None without paths."""
    if not paths:
        return None
    files = sorted(f for p in paths for f in (walk_audio_files(p, set(AUDIO_SUFFIXES))[0] if Path(p).is_dir()
                                              else [Path(p)]) if f.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ModelError(f"no recordings ({', '.join(AUDIO_SUFFIXES)}) in {', '.join(map(str, paths))}")
    size = round(rate * seconds)
    windows: list[np.ndarray] = []
    used: list[str] = []
    for f in files:
        cut = _spread_windows(decode_at(f, rate), size)
        windows += cut
        used += [f.name] if cut else []
        if len(windows) >= AGREEMENT_MAX_WINDOWS:
            break
    if not windows:
        raise ModelError(f"no {seconds:g} s window with sound in {', '.join(map(str, paths))}")
    return RealWindows(np.stack(windows[:AGREEMENT_MAX_WINDOWS]).astype(np.float32), used)


def _spread_windows(audio: np.ndarray, size: int) -> list[np.ndarray]:
    if len(audio) < size:
        return []
    starts = sorted({int(s) for s in np.linspace(0, len(audio) - size, AGREEMENT_WINDOWS_PER_FILE)})
    # Digital silence normalises to nothing: it has no top-1 to compare.
    return [w for w in (audio[s:s + size] for s in starts) if w.std() > 0]


def labels_from_config(config: dict) -> list[Species]:
    """Labels in output order; 'Genus species_Common Name' labels give both names."""
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    if not id2label or sorted(id2label) != list(range(len(id2label))):
        raise ModelError("model config has no complete id2label table")
    labels = [species_from_label(id2label[i]) for i in range(len(id2label))]
    return with_scientific_names(labels, DIMA806_SCIENTIFIC)


def _source_info(source: str, config: dict) -> dict:
    kind = "local" if Path(source).is_dir() else "huggingface"
    return {"kind": kind, "id": source, "architecture": (config.get("architectures") or ["?"])[0],
            "exporter": "optimum-onnx onnx_export_from_model, task audio-classification, weight norm folded"}


def _licence(source: str) -> str:
    """The `license:` of the model card's front matter, when the card can be read offline."""
    if Path(source).is_dir():
        card = Path(source) / "README.md"
        text = card.read_text(errors="replace") if card.is_file() else ""
        match = re.search(r"^license:\s*(\S+)", text, re.MULTILINE)
        return match.group(1) if match else "unknown"
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(source).data.license or "unknown"
    except Exception:  # offline, or no card: the licence stays unknown rather than guessed
        return "unknown"


