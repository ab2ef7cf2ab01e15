"""Delivery QC on synthetic clips: black and frozen stretches with their times, the length against
the brief, silence where the brief has dialogue, and a report that is plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from media.measure import measure
from media.qc import Destination, check
from media.stretch import Stretch

SPEC = Destination(name="test", loudness_lufs=-20.0, loudness_tolerance_lu=1.0, true_peak_dbtp=-1.0,
                   max_black_seconds=0.5, max_frozen_seconds=0.5, fps=25, video_codec="h264",
                   audio_layout="stereo", audio_rate=48000)


def by_name(report):
    return {c.name: c for c in report.checks}


@pytest.fixture
def defects(clips):
    """5 s at 25 fps: moving, 1 s black (1.0-2.0 s), moving, 1 s of one frozen picture (3.0-4.0 s), moving."""
    frames = clips.moving_frames(125, 48, 64)
    frames[25:50] = 0
    frames[75:100] = frames[75]
    sound = clips.tone(0.1, 5.0)
    return clips.write("defects.mp4", frames, np.stack([sound, sound]))


def test_black_gap_and_freeze_are_found_with_their_times(defects):
    m = measure(defects)
    assert m.black == (Stretch(1.0, 2.0),)
    assert m.frozen == (Stretch(3.0, 4.0),)

    checks = by_name(check(m, SPEC, brief_seconds=5.0))
    assert not checks["black"].passed and checks["black"].measured == pytest.approx(1.0)
    assert checks["black"].stretches == (Stretch(1.0, 2.0),)
    assert not checks["frozen"].passed and checks["frozen"].stretches == (Stretch(3.0, 4.0),)
    relaxed = Destination(name="relaxed", loudness_lufs=-20.0, max_black_seconds=1.0, max_frozen_seconds=1.0)
    assert by_name(check(m, relaxed))["black"].passed and by_name(check(m, relaxed))["frozen"].passed


def test_clean_clip_passes_and_the_report_is_plain_json(clips):
    sound = clips.tone(0.1, 2.0)
    path = clips.write("clean.mp4", clips.moving_frames(50, 48, 64), np.stack([sound, sound]))
    m = measure(path)
    # Measured with its pictures, the file is opened without the probe's picture decode: the
    # decoder's facts (pixel format, colour tags) must still be the ones the probed open reads.
    assert m.video == measure(path, picture=False).video and m.video.pixel_format == "yuv420p"
    report = check(m, SPEC, brief_seconds=2.0, expects_speech=True)
    assert report.passed, report.failures()
    assert m.black == () and m.frozen == ()
    assert {"loudness", "true_peak", "loudness_meters_agree", "black", "frozen", "duration", "audio_length",
            "av_offset", "speech_present", "fps", "video_codec", "audio_layout", "audio_rate", "faststart"} == set(by_name(report))
    round_trip = json.loads(json.dumps({"qc": report.to_dict(), "measurements": m.to_dict()}, allow_nan=False))
    assert round_trip["qc"]["checks"][0] == {"name": "loudness", "passed": True, "measured": pytest.approx(-20.0, abs=0.2),
                                             "limit": "-20.0 ± 1 LUFS", "stretches": []}


def test_a_clip_one_second_short_fails_duration(clips):
    sound = clips.tone(0.1, 4.0)
    m = measure(clips.write("short.mp4", clips.moving_frames(100, 48, 64), np.stack([sound, sound])), picture=False)
    duration = by_name(check(m, SPEC, brief_seconds=5.0))["duration"]
    assert not duration.passed and duration.measured == 100 and duration.limit.startswith("125 ± 1 frames")
    assert by_name(check(m, SPEC, brief_seconds=4.04))["duration"].passed  # 101 frames: within one


def test_silence_fails_only_where_the_brief_has_dialogue(clips):
    sound = np.concatenate([clips.tone(0.1, 1.0), np.zeros(3 * 48_000, np.float32)])
    m = measure(clips.write("mute.mp4", clips.moving_frames(100, 48, 64), np.stack([sound, sound])), picture=False)
    speech = by_name(check(m, SPEC, expects_speech=True))["speech_present"]
    assert not speech.passed and speech.stretches == (Stretch(1.0, 4.0),)
    assert "speech_present" not in by_name(check(m, SPEC, expects_speech=False))


def test_unmeasured_picture_fails_rather_than_passing(clips):
    sound = clips.tone(0.1, 2.0)
    m = measure(clips.write("p.mp4", clips.moving_frames(50, 48, 64), np.stack([sound, sound])), picture=False)
    assert m.black is None
    assert by_name(check(m, SPEC))["black"].passed is False


def yuv_frame(luma: np.ndarray, index: int):
    """A decoded-like 8-bit 4:2:0 frame with this luma (grey chroma), shown at index / 25 s."""
    import av
    from fractions import Fraction

    h, w = luma.shape
    frame = av.VideoFrame.from_ndarray(np.concatenate([luma, np.full((h // 2, w), 128, np.uint8)]), format="yuv420p")
    frame.pts, frame.time_base = index, Fraction(1, 25)
    return frame


def test_the_scan_first_look_only_rules_out_and_the_whole_frame_decides_the_rest():
    """The scan grid is every 2nd row/column (64x96 -> 32x48 = 1536 points); its first look takes grid
    rows 0, 8, 16, 24 (picture rows 0, 16, 32, 48). Black: <= 2 % bright (30.7 points); frozen: summed
    difference <= 0.001 x 255 x 1536 = 391.7. What the first look sees is a lower bound, never an estimate."""
    from media.picture import PictureScan

    dark = np.full((64, 96), 16, np.uint8)
    few_seen = dark.copy()
    few_seen[0, 0:50:2] = 200  # 25 bright points, all on a first-look row: 1.6 %, still black
    many_unseen = dark.copy()
    many_unseen[2, 0:80:2] = 200  # 40 bright points (2.6 %) on a row the first look skips: not black
    grey = np.full((64, 96), 128, np.uint8)
    nudged = grey.copy()
    nudged[0, 0:80:2] = 136  # summed difference 40 x 8 = 320, all seen first: still frozen
    moved_unseen = grey.copy()
    moved_unseen[2, 0:80:2] = 148  # 40 x 20 = 800, none of it seen first: not frozen

    scan = PictureScan()
    for i, luma in enumerate([few_seen, many_unseen, grey, nudged, moved_unseen]):
        scan.add(yuv_frame(luma, i))
    assert scan.is_black == [True, False, False, False, False]
    assert scan.is_frozen == [False, False, True, True, False]  # grey's still includes its first frame
