"""Delivery QC: a clip's measurements checked against a destination's spec.

    from media.qc import check, measure
    m = measure("clip.mp4")
    report = check(m, destination, brief_seconds=5.0, expects_speech=True)
    report.passed, report.failures(), report.to_dict()   # plain data, JSON-ready

A `Destination` is the spec of one delivery target (`configs/destinations/*.yaml`, loaded and
validated by `flows.destinations`). Loudness limits are in LUFS/LU/dBTP, times in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

from .stretch import Stretch, longest

if TYPE_CHECKING:
    from .measure import Measurements


def __getattr__(name: str) -> Any:
    """`media.qc.measure` (the QC entry point) and `Measurements`, loaded on first use: measuring
    needs FFmpeg, numpy and scipy, and planning (which only reads Destination) must stay light."""
    if name in ("measure", "Measurements"):
        return getattr(import_module(".measure", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Destination:
    """Where a clip is going and what it must meet there. Required-format keys left None are not checked."""

    name: str
    loudness_lufs: float
    loudness_tolerance_lu: float = 0.5
    true_peak_dbtp: float = -1.0
    max_black_seconds: float = 0.5
    max_frozen_seconds: float = 1.0
    duration_tolerance_frames: int = 1
    max_av_offset_seconds: float = 0.02
    max_silence_seconds: float = 2.0  # only when the brief has dialogue
    fps: Fraction | None = None
    width: int | None = None
    height: int | None = None
    video_codec: Literal["h264"] | None = None
    pixel_format: str | None = None
    color_primaries: str | None = None
    color_transfer: str | None = None
    color_matrix: str | None = None
    color_range: Literal["tv", "pc"] | None = None
    # aac: AAC in an MP4 (platforms). pcm_s24le: uncompressed 24-bit PCM in a QuickTime .mov, what
    # broadcasters' delivery specs (EBU R128/DPP, US network specs under ATSC A/85) ask for.
    audio_codec: Literal["aac", "pcm_s24le"] | None = None
    audio_layout: Literal["mono", "stereo"] | None = None
    audio_rate: Literal[48000] | None = None  # masters are always made at 48 kHz
    faststart: bool = True
    description: str = ""

    __pydantic_config__ = {"extra": "forbid"}  # read by flows.destinations; media never imports pydantic

    @property
    def container(self) -> str:
        """The master's file format, which follows from its sound: QuickTime ("mov") for PCM (MP4 has
        no PCM that players and broadcasters read), else MP4. Also the master's file extension."""
        return "mov" if (self.audio_codec or "").startswith("pcm_") else "mp4"

    def __post_init__(self) -> None:
        rules = [
            ("loudness_lufs", not -70 < self.loudness_lufs < 0, "must be between -70 and 0 LUFS"),
            ("loudness_tolerance_lu", not self.loudness_tolerance_lu > 0, "must be > 0 LU"),
            ("true_peak_dbtp", not -20 <= self.true_peak_dbtp <= 0, "must be between -20 and 0 dBTP"),
            ("fps", self.fps is not None and not (self.fps > 0 and self.fps.denominator <= 1001),
             "must be > 0, exact (write 29.97 as 30000/1001)"),
            ("width", self.width is not None and (self.width < 2 or self.width % 2), "must be an even number >= 2"),
            ("height", self.height is not None and (self.height < 2 or self.height % 2), "must be an even number >= 2"),
            *((key, getattr(self, key) < 0, "must be >= 0") for key in (
                "max_black_seconds", "max_frozen_seconds", "duration_tolerance_frames",
                "max_av_offset_seconds", "max_silence_seconds")),
        ]
        for key, bad, reason in rules:
            if bad:
                raise ValueError(f"{key}: {reason} (got {getattr(self, key)})")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: float | int | str | None
    limit: str
    stretches: tuple[Stretch, ...] = ()


@dataclass(frozen=True)
class QCReport:
    destination: str
    passed: bool
    checks: tuple[Check, ...]

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def brief_frames(brief_seconds: float, fps: Fraction) -> int:
    """The frame count a brief of `brief_seconds` asks for at `fps`."""
    return round(Fraction(brief_seconds).limit_denominator(1000) * fps)


def check(
    m: Measurements, destination: Destination, *, brief_seconds: float | None = None, expects_speech: bool = False
) -> QCReport:
    """Every check the destination asks for. Without `brief_seconds` the length is not checked."""
    from .loudness import METERS_AGREE_LU

    d, video, audio = destination, m.video, m.audio
    checks: list[Check] = []
    add = checks.append

    # Sound: loudness, true peak, the two meters agreeing, speech present.
    low, high = d.loudness_lufs - d.loudness_tolerance_lu, d.loudness_lufs + d.loudness_tolerance_lu
    lufs = audio.loudness.integrated_lufs if audio else None
    add(Check("loudness", lufs is not None and low <= lufs <= high, lufs,
              f"{d.loudness_lufs:.1f} ± {d.loudness_tolerance_lu:g} LUFS"))
    peak = audio.loudness.true_peak_dbtp if audio else None
    add(Check("true_peak", audio is not None and (peak is None or peak <= d.true_peak_dbtp), peak,
              f"<= {d.true_peak_dbtp:.1f} dBTP"))
    if audio is not None:
        second = audio.loudness_reference.integrated_lufs if audio.loudness_reference else None
        gap = None if lufs is None or second is None else round(abs(lufs - second), 3)
        agree = (lufs is None and second is None and audio.loudness_reference is not None) or (
            gap is not None and gap <= METERS_AGREE_LU)
        add(Check("loudness_meters_agree", agree, gap, f"<= {METERS_AGREE_LU} LU between the two meters"))
    if expects_speech:
        silent = audio.silences if audio else ()
        quiet = longest(silent) if audio else None
        add(Check("speech_present", lufs is not None and quiet <= d.max_silence_seconds, quiet,
                  f"silences <= {d.max_silence_seconds:g} s (brief has dialogue)", tuple(silent)))

    # Picture: black and frozen stretches.
    for name, found, limit in (("black", m.black, d.max_black_seconds), ("frozen", m.frozen, d.max_frozen_seconds)):
        if found is None:
            add(Check(name, False, "not measured", f"<= {limit:g} s"))
        else:
            add(Check(name, longest(found) <= limit, round(longest(found), 6), f"<= {limit:g} s", found))

    # Length: picture against the brief, sound against the picture, and where each starts.
    if video is not None:
        fps = Fraction(video.fps)
        frame = float(1 / fps) if fps else 0.0
        if brief_seconds is not None and fps:
            want = brief_frames(brief_seconds, fps)
            add(Check("duration", abs(video.frames - want) <= d.duration_tolerance_frames, video.frames,
                      f"{want} ± {d.duration_tolerance_frames} frames ({brief_seconds:g} s at {video.fps} fps)"))
        if audio is not None:
            gap = round(audio.seconds - video.seconds, 6)
            add(Check("audio_length", abs(gap) <= d.duration_tolerance_frames * frame + 1e-6, gap,
                      f"audio - video within ± {d.duration_tolerance_frames} frames"))
            add(Check("av_offset", abs(m.av_offset) <= d.max_av_offset_seconds, m.av_offset,
                      f"audio start - video start within ± {d.max_av_offset_seconds:g} s"))

    # Format: each key the destination requires.
    required = {
        "fps": (d.fps, video and Fraction(video.fps)),
        "width": (d.width, video and video.width),
        "height": (d.height, video and video.height),
        "video_codec": (d.video_codec, video and video.codec),
        "pixel_format": (d.pixel_format, video and video.pixel_format),
        "color_primaries": (d.color_primaries, video and video.color_primaries),
        "color_transfer": (d.color_transfer, video and video.color_transfer),
        "color_matrix": (d.color_matrix, video and video.color_matrix),
        "color_range": (d.color_range, video and video.color_range),
        "audio_codec": (d.audio_codec, audio and audio.codec),
        "container": (d.audio_codec and d.container, m.container),  # checked with the codec it follows from
        "audio_layout": (d.audio_layout, audio and audio.layout),
        "audio_rate": (d.audio_rate, audio and audio.sample_rate),
        "faststart": (d.faststart or None, m.faststart),
    }
    for name, (want, got) in required.items():
        if want is not None:
            add(Check(name, got == want, str(got) if isinstance(got, Fraction) else got, str(want)))
    return QCReport(d.name, all(c.passed for c in checks), tuple(checks))
