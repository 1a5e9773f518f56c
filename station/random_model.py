"""Random-weight wav2vec2 classifiers for tests and benchmarks (no download; `export` extra).

The hub cannot be reached from every machine, so the export path is exercised on models
built here from a config: same architecture and labels as dima806/bird_sounds_classification,
random weights. `tiny` builds in a second; `base` has wav2vec2-base's size (~95M parameters).
"""
from __future__ import annotations

from pathlib import Path

from .names import DIMA806_SCIENTIFIC

# dima806/bird_sounds_classification's labels, in index order (alphabetical; see shared/MODELS.md).
DIMA806_LABELS = list(DIMA806_SCIENTIFIC)

SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16,
                 initializer_range=0.5),  # large random weights: scores that vary with the input
    "base": dict(),  # wav2vec2-base defaults: 12 layers, hidden 768, 7 conv layers
}


def build_random_wav2vec2(directory: Path, size: str = "tiny", seed: int = 0,
                          labels: list[str] = DIMA806_LABELS) -> Path:
    """Save a random-weight Wav2Vec2ForSequenceClassification + feature extractor to `directory`."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, **SIZES[size])
    torch.manual_seed(seed)
    model = Wav2Vec2ForSequenceClassification(config).eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                             return_attention_mask=False).save_pretrained(directory)
    return directory
