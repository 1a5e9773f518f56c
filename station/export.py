"""Export a Hugging Face audio-classification model into a model folder (optimum-onnx).

Heavy imports (torch, transformers, optimum) happen inside the functions: this module is
the `export` extra's, and the daemon never loads it. The export is refused unless ONNX
and PyTorch agree on the same windows, and unless the station's numpy preprocessing
equals the model's own feature extractor.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .inference import normalise
from .manifest import tool_versions
from .model_folder import LABELS, Manifest, ModelFolder, write_folder, write_labels
from .names import DIMA806_SCIENTIFIC, species_from_label, with_scientific_names
from .optional import require
from .types import Species

log = logging.getLogger(__name__)

DEFAULT_MODEL = "dima806/bird_sounds_classification"
LOGIT_TOLERANCE = 1e-3
PREPROCESSING_TOLERANCE = 1e-4
PARITY_WINDOWS = 6
EXPORT_TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy")


@dataclass(frozen=True)
class ExportOptions:
    source: str = DEFAULT_MODEL  # hub id or local directory
    output: Path | None = None  # default models/<name>
    window_seconds: float = 3.0
    int8: bool = False
    name: str | None = None


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
            variants["int8"] = quantize_int8(staging / "model.onnx", staging / "model.int8.onnx",
                                             windows, normalisation)
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
    from optimum.exporters.onnx import main_export

    if _looks_like_path(source) and not Path(source).is_dir():
        raise ModelError(f"cannot load {source!r}: no such model directory")
    try:
        main_export(source, out, task="audio-classification")
    except Exception as exc:  # hub, network and exporter errors come in many types; each is one line here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load {source!r}: {first} (offline? pass a local model directory)") from None


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


def quantize_int8(fp32: Path, out: Path, windows: np.ndarray, normalisation: str) -> dict:
    """Dynamic int8 of MatMul/Gemm only: wav2vec2's weight-normed conv cannot be quantised."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8)
    inputs = normalise(windows, normalisation)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"input_values": inputs})[0]
    a, b = run(fp32), run(out)
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    log.info("int8 variant: top-1 agreement with fp32 %.0f%% on %d synthetic windows "
             "(check on real audio with scripts/benchmark.py)", 100 * agreement, len(windows))
    return {"file": out.name, "quantisation": "dynamic int8, MatMul/Gemm only",
            "top1_agreement_synthetic": agreement, "max_abs_logit_diff": float(np.abs(a - b).max())}


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
            "exporter": "optimum-onnx main_export, task audio-classification"}


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


