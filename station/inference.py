"""Score windows with an ONNX model folder: the manifest's preprocessing, onnxruntime, activation.

Only numpy and onnxruntime here: the daemon never imports torch or transformers.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ModelError
from .model_folder import ModelFolder, load_folder
from .types import Scores, Window

log = logging.getLogger(__name__)

BIRDNET_LOGIT_CLIP = 15.0


def normalise(batch: np.ndarray, method: str) -> np.ndarray:
    """Per-window preprocessing named by the manifest."""
    if method == "zero_mean_unit_var":
        # As transformers' Wav2Vec2FeatureExtractor(do_normalize=True): (x - mean) / sqrt(var + 1e-7)
        mean = batch.mean(axis=1, keepdims=True)
        var = batch.var(axis=1, keepdims=True)
        return (batch - mean) / np.sqrt(var + 1e-7)
    return batch


def activate(logits: np.ndarray, activation: str, sensitivity: float = 1.0) -> np.ndarray:
    if activation == "softmax":
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    # BirdNET's sigmoid with sensitivity: higher sensitivity, steeper curve around 0.
    slope = max(0.5, min(2.0 - sensitivity, 1.5))
    return 1.0 / (1.0 + np.exp(-slope * np.clip(logits, -BIRDNET_LOGIT_CLIP, BIRDNET_LOGIT_CLIP)))


def open_session(path: Path, threads: int | None = None):
    """An onnxruntime session for a model file; a file it cannot load is a one-line ModelError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt models
        raise ModelError(f"{path}: onnxruntime cannot load it: {first_line(exc)}") from None


def session_tensor(tensors, name: str, kind: str, path: Path):
    """The model's float input or output the manifest names."""
    found = {t.name: t for t in tensors}
    if name not in found:
        raise ModelError(f"{path}: manifest {kind} {name!r} not in the model (has {sorted(found)})")
    if found[name].type != "tensor(float)":
        raise ModelError(f"{path}: {kind} {name!r} is {found[name].type}, the station feeds and reads float32")
    return found[name]


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class OnnxClassifier:
    def __init__(self, folder: ModelFolder, variant: str = "fp32", threads: int = 2,
                 batch_size: int = 8, sensitivity: float = 1.0):
        self.folder = folder
        self.manifest = folder.manifest
        self.labels = folder.labels
        self.model_name = self.manifest.name if variant == "fp32" else f"{self.manifest.name}:{variant}"
        self.sample_rate = self.manifest.sample_rate
        self.window_samples = round(self.manifest.window_seconds * self.sample_rate)
        self.batch_size = batch_size
        self.sensitivity = sensitivity
        path = folder.model_path(variant)
        self.session = open_session(path, threads)
        self._check_signature(path)

    @classmethod
    def from_path(cls, path: Path, **kwargs) -> OnnxClassifier:
        return cls(load_folder(path), **kwargs)

    def _check_signature(self, path: Path) -> None:
        m = self.manifest
        model_input = session_tensor(self.session.get_inputs(), m.input_name, "input", path)
        model_output = session_tensor(self.session.get_outputs(), m.output_name, "output", path)
        unfed = sorted(i.name for i in self.session.get_inputs() if i.name != m.input_name)
        if unfed:
            raise ModelError(f"{path}: the model also needs input(s) {unfed} that the station does not feed")
        shape = model_input.shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != self.window_samples):
            raise ModelError(f"{path}: input {m.input_name!r} has shape {shape}, manifest says "
                             f"[batch, {self.window_samples}]")
        if len(model_output.shape) != 2:
            raise ModelError(f"{path}: output {m.output_name!r} has shape {model_output.shape}, "
                             "expected [batch, classes]")
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        width = model_output.shape[1]
        if not isinstance(width, int):  # only a run tells how many classes there are
            width = self._probe(path).shape[1]
        if width != len(self.labels):
            raise ModelError(f"{path}: output has {width} classes but labels.tsv has {len(self.labels)}")

    def _probe(self, path: Path) -> np.ndarray:
        batch = np.zeros((self._fixed_batch or 1, self.window_samples), np.float32)
        try:
            return self.session.run([self.manifest.output_name], {self.manifest.input_name: batch})[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelError(f"{path}: fails on a window of {self.window_samples} samples: {first_line(exc)}") from None

    def classify(self, windows: Sequence[Window]) -> list[Scores]:
        scores: list[Scores] = []
        step = self._fixed_batch or self.batch_size
        for i in range(0, len(windows), step):
            part = windows[i:i + step]
            values = self._run(np.stack([self._checked(w) for w in part]))
            scores += [Scores(w, v, self.labels) for w, v in zip(part, values)]
        return scores

    def _checked(self, window: Window) -> np.ndarray:
        if window.sample_rate != self.sample_rate or len(window.samples) != self.window_samples:
            raise ValueError(f"window of {len(window.samples)} samples at {window.sample_rate} Hz; "
                             f"model wants {self.window_samples} at {self.sample_rate} Hz")
        return window.samples

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self._fixed_batch and n < self._fixed_batch:
            batch = np.concatenate([batch, np.zeros((self._fixed_batch - n, batch.shape[1]), np.float32)])
        inputs = normalise(batch.astype(np.float32, copy=False), self.manifest.normalisation)
        logits = self.session.run([self.manifest.output_name], {self.manifest.input_name: inputs})[0][:n]
        return activate(logits.astype(np.float32), self.manifest.activation, self.sensitivity)
