"""The exporter folds weight norm exactly and measures the int8 variant's agreement on real audio."""
import os

import numpy as np
import pytest

from station.errors import ModelError

pytest.importorskip("torch", reason="the export extra is needed: pip install -e '.[dev]'")
os.environ.setdefault("USE_TF", "0")


def test_folding_weight_norm_keeps_the_logits(tmp_path):
    import torch
    from transformers import AutoModelForAudioClassification

    from station.export import fold_weight_norm
    from station.random_model import build_random_wav2vec2

    hf = build_random_wav2vec2(tmp_path / "hf", size="tiny")
    published = AutoModelForAudioClassification.from_pretrained(hf).eval()
    folded = AutoModelForAudioClassification.from_pretrained(hf).eval()
    assert fold_weight_norm(folded) == 1  # the positional convolution's
    assert fold_weight_norm(folded) == 0
    audio = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 48000)).astype(np.float32))
    with torch.no_grad():
        before, after = published(audio).logits, folded(audio).logits
    assert float((before - after).abs().max()) < 1e-5
    assert torch.equal(before.argmax(1), after.argmax(1))


def test_exported_graph_holds_the_positional_weight_as_a_constant(tiny_model):
    import onnx

    graph = onnx.load(str(tiny_model / "model.onnx")).graph
    weights = {init.name for init in graph.initializer}
    (pos_conv,) = [n for n in graph.node if n.op_type == "Conv" and "pos_conv" in n.name]
    assert pos_conv.input[1] in weights
    assert not [n for n in graph.node if n.op_type == "ReduceL2"]


def test_int8_records_its_agreement_on_real_audio(tiny_model, shared_data, tmp_path):
    import soundfile as sf

    from station.export import _logits, parity_windows, quantize_int8, real_audio_windows
    from station.model_folder import load_folder

    sf.write(tmp_path / "zeros.wav", np.zeros(16000 * 4, np.float32), 16000)
    real = real_audio_windows((shared_data / "audio" / "birds_misc", tmp_path / "zeros.wav"), 16000, 3.0)
    assert real is not None and "zeros.wav" not in real.files  # digital silence has no top-1 to compare
    record = quantize_int8(tiny_model / "model.onnx", tmp_path / "int8.onnx", parity_windows(16000, 3.0),
                           "zero_mean_unit_var", real)
    assert record["windows"] == len(real.windows) > 8 and record["recordings"] == real.files
    assert record["agreement_on"] == f"real audio windows from {len(real.files)} recordings"
    fp32, int8 = (_logits(p, real.windows, "zero_mean_unit_var") for p in (tiny_model / "model.onnx",
                                                                          tmp_path / "int8.onnx"))
    assert record["top1_agreement"] == float((fp32.argmax(1) == int8.argmax(1)).mean())
    assert 0 < record["max_abs_logit_diff"] == float(np.abs(fp32 - int8).max())
    # A folder exported without recordings says what its figure was measured on.
    variant = load_folder(tiny_model).manifest.variants["int8"]
    assert variant["agreement_on"] == "synthetic windows" and variant["top1_agreement"] == variant[
        "top1_agreement_synthetic"]


def test_agreement_audio_without_recordings_is_one_clear_error(tmp_path):
    from station.export import real_audio_windows

    assert real_audio_windows((), 16000, 3.0) is None
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ModelError, match=r"no recordings \(.wav, .mp3, .ogg, .flac\) in "):
        real_audio_windows((tmp_path,), 16000, 3.0)
