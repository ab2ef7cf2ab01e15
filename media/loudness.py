"""Loudness per ITU-R BS.1770-4 / EBU R128 by two independent meters, silence, and a true-peak limiter.

- `ffmpeg_loudness`: FFmpeg's `ebur128` filter (peak=true) run through PyAV's filter graph; the
  results come back as frame metadata (`lavfi.r128.*`). This is the meter QC decides on.
- `reference_loudness`: a second, independent meter: pyloudnorm's gated integrated loudness,
  our loudness range (EBU Tech 3342) and our true peak (4x oversampling, BS.1770-4 Annex 2).
  QC requires the two to agree on integrated loudness (`METERS_AGREE_LU`).

Audio is float32 (channels, samples) at 48 kHz, the rate `measure` decodes to. Values that do
not exist (silence has no integrated loudness) are None, never -inf, so results stay JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import av.filter
import numpy as np
import pyloudnorm
from scipy import ndimage, signal

from .stretch import Stretch, stretches

RATE = 48_000
METERS_AGREE_LU = 0.2
ABSOLUTE_GATE_LUFS = -70.0
SILENCE_DBFS = -60.0  # silencedetect's default noise floor
SILENCE_BLOCK_S = 0.05
MIN_SILENCE_S = 0.25
# Loudness range needs 3 s short-term windows; FFmpeg's percentile search also needs at least five
# of them (below that its 10th percentile rounds to the gate and LRA reads 20 LU), so both meters
# report None for audio under 3.5 s.
MIN_RANGE_S = 3.5

# BS.1770-4 K-weighting at 48 kHz: the head-effect shelf, then the RLB high-pass.
_K_SHELF = ([1.53512485958697, -2.69169618940638, 1.19839281085285], [1.0, -1.69065929318241, 0.73248077421585])
_K_HIGHPASS = ([1.0, -2.0, 1.0], [1.0, -1.99004745483398, 0.99007225036621])


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float | None
    range_lu: float | None
    true_peak_dbtp: float | None


def _db(linear: float) -> float | None:
    return round(float(20 * np.log10(linear)), 3) if linear > 0 else None


def ffmpeg_loudness(audio: np.ndarray, rate: int = RATE, layout: str | None = None) -> Loudness:
    """Integrated loudness, loudness range and true peak from FFmpeg's ebur128 filter. `layout`
    (e.g. "5.1") tells it which channels are surrounds (weighted 1.41) and LFE (left out)."""
    channels, samples = audio.shape
    layout = layout or {1: "mono", 2: "stereo"}.get(channels) or f"{channels}c"
    graph = av.filter.Graph()
    source = graph.add_abuffer(format="fltp", sample_rate=rate, layout=layout, time_base=Fraction(1, rate))
    meter = graph.add("ebur128", "peak=true:metadata=1")
    sink = graph.add("abuffersink")
    source.link_to(meter)
    meter.link_to(sink)
    graph.configure()

    last: dict[str, str] = {}

    def drain() -> None:
        while True:
            try:
                frame = sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            if "lavfi.r128.I" in frame.metadata:
                last.update(frame.metadata)

    chunk = rate // 10
    for start in range(0, samples, chunk):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[:, start : start + chunk], dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        source.push(frame)
        drain()
    source.push(None)
    drain()
    if not last:  # shorter than one 100 ms step: nothing measured
        return Loudness(None, None, None)
    integrated = float(last["lavfi.r128.I"])
    audible = integrated > ABSOLUTE_GATE_LUFS
    return Loudness(
        integrated_lufs=integrated if audible else None,
        range_lu=float(last["lavfi.r128.LRA"]) if audible and samples >= MIN_RANGE_S * rate else None,
        true_peak_dbtp=_db(float(last["lavfi.r128.true_peak"])),
    )


def reference_loudness(audio: np.ndarray, rate: int = RATE, peaks: np.ndarray | None = None) -> Loudness | None:
    """The second meter; None for more than two channels (channel weights need a known layout).
    `peaks`: the audio's `sample_peaks` when already known."""
    if audio.shape[0] > 2:
        return None
    integrated = None
    if audio.shape[1] >= 0.4 * rate:  # one gating block
        value = pyloudnorm.Meter(rate).integrated_loudness(audio.T.astype(np.float64))
        integrated = round(float(value), 3) if np.isfinite(value) and value > ABSOLUTE_GATE_LUFS else None
    return Loudness(integrated, loudness_range(audio, rate), true_peak(audio, rate, peaks))


def k_weighted(audio: np.ndarray, rate: int = RATE) -> np.ndarray:
    if rate != RATE:
        raise ValueError(f"K-weighting coefficients here are for {RATE} Hz, got {rate} Hz")
    return signal.lfilter(*_K_HIGHPASS, signal.lfilter(*_K_SHELF, audio.astype(np.float64), axis=1), axis=1)


def loudness_range(audio: np.ndarray, rate: int = RATE) -> float | None:
    """EBU Tech 3342: short-term loudness (3 s windows, every 100 ms), gated at -70 LUFS absolute
    and -20 LU below their power mean; LRA = 95th - 10th percentile. None under MIN_RANGE_S."""
    window, hop = 3 * rate, rate // 10
    if audio.shape[1] < MIN_RANGE_S * rate:
        return None
    power = np.square(k_weighted(audio, rate)).sum(axis=0)  # channel weights are 1 for L, R, C
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    ends = np.arange(window, audio.shape[1] + 1, hop)
    mean_square = (cumulative[ends] - cumulative[ends - window]) / window
    short_term = -0.691 + 10 * np.log10(np.maximum(mean_square, 1e-20))
    gated = short_term[short_term > ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return None
    relative = -0.691 + 10 * np.log10(np.mean(10 ** ((gated + 0.691) / 10))) - 20
    gated = gated[gated > relative]
    low, high = np.percentile(gated, [10, 95])
    return round(float(high - low), 3)


def true_peak(audio: np.ndarray, rate: int = RATE, peaks: np.ndarray | None = None) -> float | None:
    """Highest absolute sample of the 4x oversampled signal (192 kHz), in dBTP (from `peaks`, the
    audio's `sample_peaks`, when already known)."""
    return _db(float((sample_peaks(audio) if peaks is None else peaks).max(initial=0.0)))


# The 4x interpolator: scipy's resample_poly(x, 4, 1) low-pass (81-tap Kaiser-windowed sinc, gain 4),
# applied as its four polyphase branches: branch k gives the 192 kHz samples at k/4 past each input
# sample, so the zeros of the upsampled signal are never multiplied (a quarter of resample_poly's work).
_INTERPOLATOR = signal.firwin(81, 1 / 4, window=("kaiser", 5.0)) * 4
_BRANCHES = tuple(_INTERPOLATOR[k::4].astype(np.float32) for k in range(4))
_DELAY = 10  # the filter's centre (tap 40) in input samples


def sample_peaks(audio: np.ndarray) -> np.ndarray:
    """(samples,): per input sample, the largest |value| of the 4x oversampled signal over every
    channel and the four 192 kHz samples from it to the next one (float32: peaks to ~1e-6 dB)."""
    audio = np.asarray(audio, dtype=np.float32)
    samples = audio.shape[1]
    peaks = np.zeros(samples, np.float32)
    if samples == 0:
        return peaks
    for branch in _BRANCHES:
        phase = signal.oaconvolve(audio, branch[None, :], axes=1)[:, _DELAY : _DELAY + samples]
        np.maximum(peaks, np.abs(phase).max(axis=0), out=peaks)
    return peaks


def silences(audio: np.ndarray, rate: int = RATE, min_seconds: float = MIN_SILENCE_S) -> tuple[Stretch, ...]:
    """Stretches where no channel rises above SILENCE_DBFS, in 50 ms blocks."""
    block = int(rate * SILENCE_BLOCK_S)
    count = -(-audio.shape[1] // block)
    padded = np.zeros((audio.shape[0], count * block), np.float32)
    padded[:, : audio.shape[1]] = np.abs(audio)
    peaks = padded.reshape(audio.shape[0], count, block).max(axis=(0, 2))
    quiet = peaks <= 10 ** (SILENCE_DBFS / 20)
    starts = [i * SILENCE_BLOCK_S for i in range(count)]
    return stretches(quiet, starts, audio.shape[1] / rate, min_seconds)


def limit_true_peak(audio: np.ndarray, ceiling_dbtp: float, rate: int = RATE,
                    peaks: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """An offline look-ahead limiter: (audio with its true peak at most `ceiling_dbtp`, the largest
    gain reduction in dB). The gain needed at each sample is held for +-20 ms around it and then
    averaged over +-10 ms, so the applied gain is never above what any sample needs, and it ramps
    down before a peak and back up after it over ~20 ms instead of clipping. `peaks`: the audio's
    `sample_peaks` when already known."""
    ceiling = 10 ** (ceiling_dbtp / 20)
    peak = (sample_peaks(audio) if peaks is None else peaks).astype(np.float64)
    needed = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    if needed.min() >= 1.0:
        return audio, 0.0
    held = ndimage.minimum_filter1d(needed, size=2 * int(0.02 * rate) + 1, mode="nearest")
    gain = ndimage.uniform_filter1d(held, size=2 * int(0.01 * rate) + 1, mode="nearest")
    gain = np.minimum(gain, needed)  # float rounding in the average must not lift a peak
    return (audio * gain).astype(np.float32), round(float(-20 * np.log10(gain.min())), 3)
