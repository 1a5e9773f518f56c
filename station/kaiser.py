"""librosa's `res_type="kaiser_fast"` resampling as a stream, as a polyphase FIR filter.

BirdNET and birdnetlib load audio with it, and BirdNET's scores depend on it (it rolls off
above ~14 kHz where soxr keeps going), so a BirdNET model folder asks for it. It is a
band-limited interpolation with a Kaiser-windowed sinc: 24 zero crossings tabulated at
512 steps each, rolloff 0.868, Kaiser beta 9.903 (resampy's "kaiser_fast" table, which
this formula reproduces to 2e-10).

For rates in_rate/out_rate = M/L in lowest terms, output k sits at input position k*M/L,
so its fractional part is one of L phases, and each phase's taps are fixed: they are
tabulated once, with resampy's own interpolation of the table, and applied with
scipy.signal.upfirdn. Phases come from exact integer arithmetic where resampy uses float
times; the two agree to ~1e-9. The sum runs in float64 where resampy rounds to float32
after each tap, so results differ from librosa's by that rounding (below 1e-6). An output
is computed once all its input taps have arrived, from the same taps in the same order
whatever the chunking, which makes the result independent of how the input is chunked.
"""
from __future__ import annotations

from math import gcd

import numpy as np

ZEROS = 24
STEPS = 512
ROLLOFF = 0.8682120388377784
BETA = 9.90322425665414
# Above this many tabulated weights (8 bytes each; upfirdn copies them once more), as for
# 44117 Hz -> 48 kHz with 48,000 phases, each phase's weights are computed when needed.
MAX_TABLE = 1 << 21
BLOCK = 8192  # outputs per step without a table, to bound the gathered taps in memory


def half_window() -> np.ndarray:
    n = STEPS * ZEROS
    sinc = ROLLOFF * np.sinc(ROLLOFF * np.linspace(0, ZEROS, num=n + 1, endpoint=True))
    return np.kaiser(2 * n + 1, BETA)[n:] * sinc


class KaiserFastStream:
    """Same use as soxr.ResampleStream: resample_chunk(samples, last) -> resampled samples."""

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in, self.rate_out = rate_in, rate_out
        common = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // common, rate_in // common
        self.ratio = float(rate_out) / rate_in
        self.scale = min(1.0, self.ratio)
        window = half_window() * (self.ratio if self.ratio < 1 else 1.0)
        self.window, self.delta = window, np.diff(window, append=window[-1])
        self.step = int(self.scale * STEPS)
        self.wing = len(window) // self.step  # most taps on each side of an output
        self._filter = self._polyphase_filter() if self.up * 2 * self.wing <= MAX_TABLE else None
        # upfirdn's outputs fall on our output grid when a segment starts at such an index
        self._aligned_to = (self.wing * self.up * pow(self.up, -1, self.down)) % self.down
        self._buffer = np.zeros(0, np.float32)
        self._start = 0  # input index of _buffer[0]
        self._received = 0
        self._next = 0  # next output index

    def resample_chunk(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.rate_in == self.rate_out:  # librosa leaves audio at the target rate untouched
            return np.asarray(samples, np.float32)
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float32)])
        self._received += len(samples)
        if last:
            # resampy's length, int(N * out / in); librosa then zero-pads to ceil(N * ratio)
            end = int(self._received * float(self.rate_out) / float(self.rate_in))
            padding = int(np.ceil(self._received * self.ratio)) - end
            out = self._compute(self._next, end)
            self._next = end
            return np.concatenate([out, np.zeros(max(0, padding), np.float32)])
        # otherwise: the outputs whose right wing lies wholly in what has arrived
        end = max(self._next, ((self._received - self.wing) * self.up - 1) // self.down + 1)
        out = self._compute(self._next, end)
        self._next = end
        keep_from = self._segment_start(self._next)
        if keep_from > self._start:
            self._buffer = self._buffer[keep_from - self._start:]
            self._start = keep_from
        return out

    def phase_weights(self, phases: np.ndarray) -> np.ndarray:
        """[len(phases), 2 * wing] weights on inputs n - wing + 1 ... n + wing of an output at n + phase/up.

        resampy's arithmetic: the left wing from the fractional position, the right wing
        from its complement, each linearly interpolated in the table; taps beyond the
        table's end are zero."""
        frac = self.scale * (np.asarray(phases, np.int64) / self.up)
        left = self._wing_weights(frac)
        right = self._wing_weights(self.scale - frac)
        return np.concatenate([left[:, ::-1], right], axis=1)

    def _wing_weights(self, frac: np.ndarray) -> np.ndarray:
        position = frac * STEPS
        offset = position.astype(np.int64)
        eta = (position - offset)[:, None]
        taps = np.arange(self.wing)
        index = offset[:, None] + taps * self.step
        valid = taps < ((len(self.window) - offset) // self.step)[:, None]
        index = np.where(valid, index, 0)
        return np.where(valid, self.window[index] + eta * self.delta[index], 0.0)

    def _polyphase_filter(self) -> np.ndarray:
        """The weights as one FIR filter at the up-sampled rate, laid out as upfirdn expects."""
        rows = self.phase_weights(np.arange(self.up))
        return np.ascontiguousarray(rows[:, ::-1].T).reshape(-1)

    def _segment_start(self, first: int) -> int:
        """The first input the outputs from `first` on need, moved back to an aligned index."""
        start = first * self.down // self.up - (self.wing - 1)
        return start - (start - self._aligned_to) % self.down

    def _compute(self, first: int, end: int) -> np.ndarray:
        if end <= first:
            return np.zeros(0, np.float32)
        start = self._segment_start(first)
        stop = (end - 1) * self.down // self.up + self.wing + 1
        segment = self._segment(start, stop)
        if self._filter is None:
            return self._compute_by_gathering(first, end, start, segment)
        from scipy.signal import upfirdn  # on first use: ~0.7 s and ~25 MB a station at the model's rate never needs
        lead = (self.wing * self.up - start * self.up) // self.down  # upfirdn's index of output 0
        return upfirdn(self._filter, segment, self.up, self.down)[first + lead:end + lead].astype(np.float32)

    def _segment(self, start: int, stop: int) -> np.ndarray:
        """Inputs [start, stop) as float64; zeros before the signal and after its end."""
        lo, hi = max(start, self._start), min(stop, self._received)
        inside = self._buffer[lo - self._start:hi - self._start].astype(np.float64)
        return np.concatenate([np.zeros(lo - start), inside, np.zeros(max(0, stop - max(hi, lo)))])

    def _compute_by_gathering(self, first: int, end: int, start: int, segment: np.ndarray) -> np.ndarray:
        taps = np.lib.stride_tricks.sliding_window_view(segment, 2 * self.wing)
        out = np.empty(end - first, np.float32)
        for lo in range(first, end, BLOCK):
            k = np.arange(lo, min(end, lo + BLOCK), dtype=np.int64)
            position, phases = np.divmod(k * self.down, self.up)
            rows = taps[position - (self.wing - 1) - start]
            out[lo - first:lo - first + len(k)] = (rows * self.phase_weights(phases)).sum(axis=1)
        return out
