import json

import numpy as np
import pytest

from conftest import T0, station_cli
from station.errors import ModelError
from station.inference import OnnxClassifier, activate, normalise
from station.model_folder import load_folder, sha256_of
from station.types import Window


def window(samples: np.ndarray) -> Window:
    return Window(samples.astype(np.float32), 16000, "t", 0.0, T0, len(samples) / 16000)


def test_exported_folder_is_complete_and_verified(tiny_model):
    folder = load_folder(tiny_model)
    m = folder.manifest
    assert (m.sample_rate, m.window_seconds, m.input_name, m.output_name) == (16000, 3.0, "input_values", "logits")
    assert (m.normalisation, m.activation) == ("zero_mean_unit_var", "softmax")
    assert len(folder.labels) == 50 and folder.labels[4].common_name == "Bartletts Tinamou"
    assert m.verification["max_abs_logit_diff"] < 1e-3 and m.verification["same_top1"]
    assert m.variants["int8"]["file"] == "model.int8.onnx"
    assert {"torch", "transformers", "optimum", "onnxruntime"} <= set(m.tools)
    for name, digest in m.files.items():
        assert sha256_of(tiny_model / name) == digest


def test_normalisation_matches_the_wav2vec2_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    batch = np.random.default_rng(0).standard_normal((3, 16000)).astype(np.float32) * [[0.01], [1], [5]]
    theirs = Wav2Vec2FeatureExtractor(do_normalize=True)(list(batch), sampling_rate=16000,
                                                          return_tensors="np")["input_values"]
    assert np.abs(theirs - normalise(batch.astype(np.float32), "zero_mean_unit_var")).max() < 1e-5


def test_sigmoid_with_sensitivity_is_birdnets():
    logits = np.array([[-20.0, -1.0, 0.0, 2.0, 30.0]], np.float32)
    for sensitivity in (0.5, 1.0, 1.25, 1.5):
        slope = max(0.5, min(2 - sensitivity, 1.5))
        expected = 1 / (1 + np.exp(-slope * np.clip(logits, -15, 15)))
        assert np.allclose(activate(logits, "sigmoid", sensitivity), expected)
    assert np.allclose(activate(logits, "softmax").sum(axis=1), 1.0)


def test_batched_and_single_window_scores_agree(tiny_model):
    rng = np.random.default_rng(3)
    windows = [window(rng.standard_normal(48000) * 0.1) for _ in range(5)]
    batched = OnnxClassifier.from_path(tiny_model, batch_size=8).classify(windows)
    single = OnnxClassifier.from_path(tiny_model, batch_size=1).classify(windows)
    for a, b in zip(batched, single):
        assert np.allclose(a.values, b.values, atol=1e-5)
        assert a.window is b.window


def test_int8_variant_loads_and_ranks_like_fp32(tiny_model):
    rng = np.random.default_rng(4)
    windows = [window(rng.standard_normal(48000) * 0.1) for _ in range(4)]
    fp32 = OnnxClassifier.from_path(tiny_model).classify(windows)
    int8 = OnnxClassifier.from_path(tiny_model, variant="int8")
    assert int8.model_name == "tiny-random:int8"
    agree = [a.top(1)[0][0] == b.top(1)[0][0] for a, b in zip(fp32, int8.classify(windows))]
    assert sum(agree) >= 3


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelError, match="no model folder here"):
        OnnxClassifier.from_path(tmp_path / "nothing")


def test_unknown_variant_is_refused(tiny_model):
    with pytest.raises(ModelError, match="no variant 'fp16'"):
        OnnxClassifier.from_path(tiny_model, variant="fp16")


def test_model_info_and_export_errors_on_the_command_line(tiny_model, tmp_path):
    info = station_cli("model", "info", str(tiny_model), cwd=tmp_path)
    assert info.returncode == 0 and json.loads(info.stdout)["label_count"] == 50
    missing = station_cli("model", "info", str(tmp_path / "none"), cwd=tmp_path)
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1
    export = station_cli("model", "export", str(tmp_path / "no-such-model-dir"), cwd=tmp_path)
    assert export.returncode == 3 and "cannot load" in export.stderr
    assert "Traceback" not in export.stderr


def test_export_on_the_command_line_records_int8_agreement_on_real_audio(gwwa, tmp_path):
    pytest.importorskip("torch", reason="the export extra is needed: pip install -e '.[dev]'")
    from station.random_model import build_random_wav2vec2

    hf = build_random_wav2vec2(tmp_path / "hf", size="tiny")
    export = station_cli("model", "export", str(hf), "--int8", "--agreement-audio", str(gwwa),
                         "--out", str(tmp_path / "m"), cwd=tmp_path, timeout=300)
    assert export.returncode == 0, export.stderr
    int8 = json.loads((tmp_path / "m" / "manifest.json").read_text())["variants"]["int8"]
    assert int8["agreement_on"] == "real audio windows from 1 recordings" and int8["windows"] > 0
    assert 0.0 <= int8["top1_agreement"] <= 1.0
