"""Loudness of encoded mp4s: two independent BS.1770 meters against the analytic value of a tone.

BS.1770: a 997 Hz sine of amplitude A in one channel reads 20 log10(A) - 3.01 LUFS; the same sine
in both channels of a stereo pair reads 3.01 LU more. Its true peak is A (20 log10(A) dBTP).
The meters: FFmpeg's ebur128 filter, and pyloudnorm with our LRA and oversampled true peak.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from media.measure import measure


def analytic_lufs(amplitude: float, channels_with_tone: int) -> float:
    return 20 * math.log10(amplitude) - 3.01 + 10 * math.log10(channels_with_tone)


@pytest.mark.parametrize("case, amplitude", [("stereo-both", 0.1), ("stereo-left", 0.5), ("mono", 0.25)])
def test_tone_reads_its_analytic_loudness_on_both_meters(clips, case, amplitude):
    sound = clips.tone(amplitude, 3.0)
    frames = clips.moving_frames(75, 16, 16)
    if case == "mono":
        path, expected = clips.write_mono("mono.mp4", frames, sound), analytic_lufs(amplitude, 1)
    elif case == "stereo-left":
        path, expected = clips.write("left.mp4", frames, np.stack([sound, 0 * sound])), analytic_lufs(amplitude, 1)
    else:
        path, expected = clips.write("both.mp4", frames, np.stack([sound, sound])), analytic_lufs(amplitude, 2)

    audio = measure(path, picture=False).audio
    assert audio.channels == (1 if case == "mono" else 2)
    ffmpeg, second = audio.loudness, audio.loudness_reference
    assert ffmpeg.integrated_lufs == pytest.approx(expected, abs=0.2)
    assert second.integrated_lufs == pytest.approx(expected, abs=0.2)
    assert ffmpeg.integrated_lufs == pytest.approx(second.integrated_lufs, abs=0.2)
    # Both meters read the same decoded samples; AAC itself moves the peak of a tone by up to
    # ~0.3 dB near its onset (mono more than stereo), hence the looser bound to the analytic value.
    assert ffmpeg.true_peak_dbtp == pytest.approx(second.true_peak_dbtp, abs=0.2)
    assert ffmpeg.true_peak_dbtp == pytest.approx(20 * math.log10(amplitude), abs=0.5)


def test_loudness_range_of_a_10_lu_step_agrees_between_meters(clips):
    """4 s at -20 LUFS then 4 s at -30 LUFS: the short-term loudness spans 10 LU."""
    sound = np.concatenate([clips.tone(0.1, 4.0), clips.tone(0.1 / math.sqrt(10), 4.0)])
    path = clips.write("step.mp4", clips.moving_frames(200, 16, 16), np.stack([sound, sound]))
    audio = measure(path, picture=False).audio
    assert audio.loudness.range_lu == pytest.approx(10.0, abs=0.5)
    assert audio.loudness.range_lu == pytest.approx(audio.loudness_reference.range_lu, abs=0.2)
    assert audio.loudness.integrated_lufs == pytest.approx(audio.loudness_reference.integrated_lufs, abs=0.2)


def test_short_clips_have_no_loudness_range_and_silence_has_no_loudness(clips):
    """Under 3.5 s there are too few 3 s windows for a loudness range (FFmpeg's would read 20 LU)."""
    sound = clips.tone(0.1, 3.0)
    audio = measure(clips.write("short.mp4", clips.moving_frames(75, 16, 16), np.stack([sound, sound])), picture=False).audio
    assert audio.loudness.integrated_lufs is not None
    assert audio.loudness.range_lu is None and audio.loudness_reference.range_lu is None

    path = clips.write("quiet.mp4", clips.moving_frames(50, 16, 16), np.zeros((2, 96000), np.float32))
    audio = measure(path, picture=False).audio
    assert audio.loudness.integrated_lufs is None and audio.loudness_reference.integrated_lufs is None
    assert [(s.start, s.end) for s in audio.silences] == [(0.0, 2.0)]


def test_true_peak_interpolation_is_scipys_4x_resampler_sample_for_sample():
    """The limiter gains each sample by its own oversampled peak: the polyphase branches must line
    up with the samples, not just find the same overall maximum."""
    from scipy import signal

    from media.loudness import sample_peaks

    audio = np.random.default_rng(7).uniform(-1, 1, (2, 4_801)).astype(np.float32)
    oversampled = signal.resample_poly(audio.astype(np.float64), 4, 1, axis=1)
    expected = np.abs(oversampled).max(axis=0).reshape(-1, 4).max(axis=1)
    np.testing.assert_allclose(sample_peaks(audio), expected, atol=1e-5)
    # Linear: the peaks at any gain are the peaks times the gain (masters find them once per sound).
    np.testing.assert_allclose(sample_peaks(audio * np.float32(0.3)), sample_peaks(audio) * np.float32(0.3), rtol=1e-6)
