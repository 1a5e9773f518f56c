"""A clip's spectrogram as a PNG, cheap enough for a Raspberry Pi.

Pillow encodes the image and draws the axis labels: it is small (one wheel, no other
dependencies, built for every Pi), well kept, and imports in 0.04 s. matplotlib would draw
nicer axes but is the companion's (40 MB with its dependencies, 0.5-1 s to import), and
librosa, already a dependency, costs 2 s of import and numba's compiler for one STFT. The
STFT itself is a Hann-windowed numpy rfft: 10 ms per column, about 45 Hz per row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import StationError

COLUMNS_PER_SECOND = 100
TARGET_BIN_HZ = 45.0
DYNAMIC_RANGE_DB = 80.0
MARGIN_LEFT, MARGIN_BOTTOM = 34, 14
# 2.5 dB steps: a palette image a quarter of the size of RGB, and a fifth of that once compressed.
LEVELS = 32
WHITE, BLACK = LEVELS, LEVELS + 1
# Quiet to loud: near-black blue through purple and orange to pale yellow (our own stops).
COLOUR_STOPS = np.array([[8, 8, 24], [40, 20, 90], [130, 30, 110], [220, 90, 50], [250, 200, 80], [255, 255, 210]],
                        dtype=np.float64)


def stft_db(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int, int]:
    """Magnitudes in dB below the loudest bin, [frequency, time], low frequencies first; with n_fft and hop."""
    n_fft = 1 << max(6, round(np.log2(rate / TARGET_BIN_HZ)))
    hop = max(1, rate // COLUMNS_PER_SECOND)
    samples = np.asarray(samples, dtype=np.float32)
    padded = np.pad(samples, (n_fft // 2, n_fft // 2 + max(0, n_fft - len(samples))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)).T
    db = 20 * np.log10(np.maximum(magnitude, 1e-10))
    return np.maximum(db - db.max(), -DYNAMIC_RANGE_DB), n_fft, hop


def palette_indices(db: np.ndarray) -> np.ndarray:
    """dB in [-range, 0] -> one of LEVELS palette indices, high frequencies at the top."""
    return np.round((db[::-1] + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB * (LEVELS - 1)).astype(np.uint8)


def palette() -> bytes:
    """LEVELS colours from quiet to loud, then white and black for the axes."""
    stops = np.arange(len(COLOUR_STOPS))
    where = np.linspace(0, len(COLOUR_STOPS) - 1, LEVELS)
    colours = np.stack([np.interp(where, stops, COLOUR_STOPS[:, c]) for c in range(3)], axis=-1)
    return colours.round().astype(np.uint8).tobytes() + bytes([255, 255, 255, 0, 0, 0])


def spectrogram_png(samples: np.ndarray, rate: int, out_path: Path | str) -> Path:
    """Draw the spectrogram of `samples` (mono, at `rate`) to `out_path`, atomically."""
    from .clips import atomic_write

    image = spectrogram_image(samples, rate)
    out_path = Path(out_path)
    atomic_write(out_path, lambda f: image.save(f, format="PNG", optimize=False))
    return out_path


def spectrogram_of_clip(clip: Path | str, redraw: bool = False) -> Path:
    """The PNG beside a clip file, drawn now unless it is there already (`station clips show`)."""
    import soundfile as sf

    clip = Path(clip)
    png = clip.with_suffix(".png")
    if redraw or not png.exists():
        samples, rate = sf.read(clip, dtype="float32", always_2d=True)
        spectrogram_png(samples.mean(axis=1), rate, png)
    return png


def spectrogram_image(samples: np.ndarray, rate: int):
    """A PIL image: the spectrogram with kHz on the left and seconds below."""
    pil_image, pil_draw = _pillow()
    db, n_fft, hop = stft_db(samples, rate)
    plot = pil_image.fromarray(palette_indices(db), "P")
    canvas = pil_image.new("P", (plot.width + MARGIN_LEFT, plot.height + MARGIN_BOTTOM), WHITE)
    canvas.putpalette(palette())
    canvas.paste(plot, (MARGIN_LEFT, 0))
    draw = pil_draw.Draw(canvas)
    bin_hz = rate / n_fft
    for khz in range(0, int(rate / 2000) + 1, 2 if rate <= 32000 else 4):
        y = plot.height - 1 - round(khz * 1000 / bin_hz)
        if 0 <= y < plot.height:
            draw.line([(MARGIN_LEFT - 4, y), (MARGIN_LEFT - 1, y)], fill=BLACK)
            draw.text((2, max(0, y - 5)), f"{khz}k", fill=BLACK)
    seconds = len(samples) / rate
    for second in range(0, int(seconds) + 1):
        x = MARGIN_LEFT + round(second * rate / hop)
        if x < canvas.width:
            draw.line([(x, plot.height), (x, plot.height + 3)], fill=BLACK)
            draw.text((x + 2, plot.height + 1), f"{second}s", fill=BLACK)
    return canvas


def _pillow():
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise StationError("spectrograms need Pillow, which is not installed: pip install pillow") from None
    return Image, ImageDraw
