"""Destination masters: conformed to the brief's length, normalised to the destination's loudness
under its true-peak ceiling, and re-measured from the written file."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

import media.master
from media.master import MasterError, make_master, make_masters
from media.measure import decode_audio, measure
from media.qc import Destination, check

EBU = Destination(name="broadcast-eu", loudness_lufs=-23.0, loudness_tolerance_lu=0.5, true_peak_dbtp=-1.0)
SOCIAL = Destination(name="social", loudness_lufs=-14.0, loudness_tolerance_lu=1.0, true_peak_dbtp=-1.0)


def video_packets(path):
    with av.open(path) as box:
        return [bytes(p) for p in box.demux(video=0) if p.size]


def test_hot_clip_becomes_a_23_lufs_master_conformed_to_the_brief(clips, tmp_path):
    """2 s brief -> 49 frames from the model (1.96 s) + 2.00 s of sound at about -4 LUFS, -0.9 dBTP."""
    t = np.arange(96_000) / 48_000
    hot = (0.6 * np.sin(2 * np.pi * 997 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    clip = clips.write("hot.mp4", clips.moving_frames(49, 48, 64), np.stack([hot, hot]))
    before = measure(clip)
    assert before.audio.loudness.integrated_lufs > -6 and before.video.frames == 49

    info, report = make_master(clip, EBU, tmp_path / "eu.mp4", brief_seconds=2.0, source=before)

    after = measure(tmp_path / "eu.mp4")  # measured afresh, not taken from the report
    assert after.audio.loudness.integrated_lufs == pytest.approx(-23.0, abs=0.1)
    assert after.audio.loudness_reference.integrated_lufs == pytest.approx(-23.0, abs=0.2)
    assert after.audio.loudness.true_peak_dbtp <= -1.0
    assert after.video.frames == 50 and after.video.seconds == pytest.approx(2.0)
    assert after.audio.seconds == pytest.approx(2.0, abs=1e-6) and after.av_offset == 0
    assert report.passed, report.failures()
    assert info.video == "re-encoded" and info.reencode_reasons == ("frames 49 -> 50",) and info.frames_held == 1
    assert after.frozen == () and after.black == ()  # one held frame is not a freeze
    assert json.loads(json.dumps(info.to_dict(), allow_nan=False))["measurements"]["video"]["frames"] == 50


def test_a_clip_of_the_right_length_keeps_its_video_packets_and_its_sound_is_cut_to_the_picture(clips, tmp_path):
    sound = clips.tone(0.05, 2.04)  # one frame longer than the picture (encode_mp4 allows 50 ms)
    clip = clips.write("fit.mp4", clips.moving_frames(50, 48, 64), np.stack([sound, sound]))
    # Masters start from the samples the clip's measurement metered: those a decode of its sound gives.
    np.testing.assert_array_equal(measure(clip).sound.samples, decode_audio(clip, "stereo"))
    info, report = make_master(clip, EBU, tmp_path / "eu.mp4", brief_seconds=2.0)
    assert info.video == "copied" and info.reencode_reasons == ()
    assert video_packets(clip) == video_packets(tmp_path / "eu.mp4")
    assert info.measurements.picture_from == clip  # same packets, so the clip's picture measurements
    # ...found the same by reading the master's packets back: its decoder facts are the probed file's,
    assert info.measurements.video == measure(tmp_path / "eu.mp4", picture=False).video
    # and against another clip's, the master's own pictures are decoded.
    other = measure(clips.write("other.mp4", clips.moving_frames(50, 48, 64, start=7), np.stack([sound, sound])))
    assert measure(tmp_path / "eu.mp4", video_from=other).picture_from == str(tmp_path / "eu.mp4")
    assert info.measurements.audio.seconds == pytest.approx(2.0, abs=1e-6)
    assert report.passed, report.failures()


def test_a_pcm_destination_gets_24_bit_pcm_in_a_mov_at_its_loudness_with_the_video_copied(clips, tmp_path, monkeypatch):
    """What broadcasters take: uncompressed 24-bit 48 kHz sound in a QuickTime file, the picture copied.
    The sound already has the picture's length, so it is the one the clip's QC metered: not metered again."""
    sound = clips.tone(0.3, 2.0)
    clip = clips.write("c.mp4", clips.moving_frames(50, 48, 64), np.stack([sound, sound]))
    pcm = Destination(name="tv", loudness_lufs=-23.0, true_peak_dbtp=-1.0, audio_codec="pcm_s24le", audio_rate=48000)
    metered = []
    real = media.master.ffmpeg_loudness
    monkeypatch.setattr(media.master, "ffmpeg_loudness", lambda *a, **k: metered.append(a) or real(*a, **k))
    masters = make_masters(clip, [pcm, SOCIAL], tmp_path / "out", brief_seconds=2.0, source=measure(clip))
    assert metered == [], "normalising starts from the clip's measured loudness"
    assert masters["social"][0].path.endswith("social.mp4") and video_packets(masters["social"][0].path) == video_packets(clip)
    info, report = masters["tv"]
    assert info.path.endswith("tv.mov") and info.video == "copied" and video_packets(clip) == video_packets(info.path)
    with av.open(info.path) as box:
        assert box.metadata["major_brand"].strip() == "qt"
        stream = box.streams.audio[0]
        assert (stream.codec_context.name, stream.codec_context.format.name, stream.rate) == ("pcm_s24le", "s32", 48_000)
    with av.open(info.path) as box:  # packed s32: 24-bit samples in the top bytes, channels interleaved
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in box.decode(audio=0)])
    assert samples.size == 2 * 96_000 and np.abs(samples).max() > 2**26  # 2.00 s of sound, not silence
    assert np.all(samples % 2**8 == 0) and np.any(samples % 2**16 != 0), "24 significant bits, not 16 or 32"
    after = measure(info.path, picture=False)
    assert (after.container, after.audio.codec) == ("mov", "pcm_s24le")
    assert after.audio.loudness.integrated_lufs == pytest.approx(-23.0, abs=0.05)
    assert report.passed, report.failures()
    checks = {c.name: c for c in report.checks}
    assert checks["container"].measured == "mov" and checks["audio_codec"].measured == "pcm_s24le"
    clip_report = {c.name: c for c in check(measure(clip, picture=False), pcm).checks}
    assert not clip_report["container"].passed and not clip_report["audio_codec"].passed, "an AAC mp4 is not it"


def test_peaky_quiet_clip_is_limited_under_the_ceiling_at_social_loudness(clips, tmp_path):
    """Quiet noise with loud clicks: +15 dB of gain would put the clicks at +13 dBTP without the limiter."""
    rng = np.random.default_rng(0)
    sound = 0.02 * rng.standard_normal(2 * 48_000)
    for start in range(0, sound.size, 12_000):
        sound[start : start + 48] += 0.9 * np.hanning(48)
    sound = sound.astype(np.float32)
    clip = clips.write("peaky.mp4", clips.moving_frames(50, 48, 64), np.stack([sound, sound]))

    info, report = make_master(clip, SOCIAL, tmp_path / "social.mp4", brief_seconds=2.0)
    after = measure(tmp_path / "social.mp4", picture=False).audio.loudness
    assert info.limited_db > 6
    assert after.true_peak_dbtp <= -1.0
    assert after.integrated_lufs == pytest.approx(-14.0, abs=0.2)
    assert report.passed, report.failures()


def test_destination_rate_and_size_are_made_by_reencoding_once_for_all(clips, tmp_path, monkeypatch):
    sound = clips.tone(0.1, 2.0)
    clip = clips.write("c.mp4", clips.moving_frames(50, 48, 64), np.stack([sound, sound]))
    encodes = []
    real = media.master.add_video_stream
    monkeypatch.setattr(media.master, "add_video_stream", lambda *a, **k: encodes.append(a) or real(*a, **k))
    us = Destination(name="us", loudness_lufs=-24.0, loudness_tolerance_lu=2.0, true_peak_dbtp=-2.0,
                     fps=Fraction(30000, 1001), width=96, height=72)
    us_too = Destination(name="us-too", loudness_lufs=-23.0, true_peak_dbtp=-2.0, fps=Fraction(30000, 1001), width=96, height=72)

    masters = make_masters(clip, [us, us_too], tmp_path / "out", brief_seconds=2.0)
    info, report = masters["us"]
    after = measure(info.path)
    v = after.video
    assert (v.fps, v.frames, v.width, v.height) == ("30000/1001", 60, 96, 72)
    # 25 -> 29.97 repeats one frame in six, spread out: no run of one picture long enough to be a freeze
    assert after.frozen == ()
    assert report.passed, report.failures()
    assert len(encodes) == 1 and video_packets(info.path) == video_packets(masters["us-too"][0].path)


def test_masters_refuse_what_they_cannot_honestly_make(clips, tmp_path):
    sound = clips.tone(0.1, 1.0)
    clip = clips.write("c.mp4", clips.moving_frames(25, 48, 64), np.stack([sound, sound]))
    portrait = Destination(name="portrait", loudness_lufs=-14.0, width=48, height=64)
    with pytest.raises(MasterError, match="aspect ratio"):
        make_master(clip, portrait, tmp_path / "p.mp4")
    hdr = Destination(name="hdr", loudness_lufs=-14.0, color_transfer="smpte2084")
    with pytest.raises(MasterError, match="color_transfer bt709 -> smpte2084"):
        make_master(clip, hdr, tmp_path / "h.mp4")
    refused = {}
    made = make_masters(clip, [portrait, Destination(name="web", loudness_lufs=-16.0), hdr], tmp_path / "all",
                        refused=refused)
    assert list(made) == ["web"] and made["web"][1].passed, "the others are still made"
    assert set(refused) == {"portrait", "hdr"} and "aspect ratio" in refused["portrait"]
