"""Destination masters: a rendered clip conformed to the brief's length and normalised to a destination.

    info, report = make_master("clip.mp4", broadcast_eu, "clip.broadcast-eu.mp4", brief_seconds=5.0)
    masters = make_masters("clip.mp4", [social, broadcast_eu], out_dir, brief_seconds=5.0)

Length. The picture sets the programme length: the master has exactly round(brief x fps) frames
(a short clip holds its last picture, a long one loses its tail), and the sound is cut or padded
with silence to exactly that picture length, so both end on the same sample. The model's
4(T-1)+1 frame rule makes a 2 s brief 49 frames at 25 fps; its 2.00 s of sound is right, the
picture is one frame short.

Video is copied packet for packet when the clip already has the destination's frame count, rate,
size, codec and pixel format. Otherwise it is re-encoded once (libx264, the render encoder's
settings) and shared by every destination in one `make_masters` call that wants the same picture.
Colour tags are never converted (that would need a gamut/transfer conversion): a clip whose tags
differ from the destination's is refused, as is a size of another aspect ratio.

Sound is always made anew at 48 kHz in the destination's codec: AAC in an .mp4, or uncompressed
24-bit PCM in a QuickTime .mov (`Destination.container`; what broadcasters take). It is measured,
gained to the target loudness, passed through a true-peak limiter at the ceiling, re-measured and
re-gained until it settles; the written file is measured again and, if AAC pushed the peak over
the ceiling, remade with the limit lowered by the overshoot. The sound is written interleaved with
the video packets, a video frame's worth at a time.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import av
import numpy as np

from .loudness import RATE, ffmpeg_loudness, limit_true_peak, sample_peaks
from .measure import Measurements, decode_audio, measure, open_unprobed
from .mp4 import MP4_OPTIONS, AudioFeed, add_audio_stream, add_video_stream
from .qc import Destination, QCReport, brief_frames, check

SETTLED_LU = 0.05  # stop re-gaining once the loudness is this close to the target
FIRST_LIMIT_MARGIN_DB = 0.3  # AAC adds a little to the true peak; start the limiter this far under
MAX_ATTEMPTS = 3
MAX_MAKEUP_DB = 6.0  # gain beyond the plain level change, to win back what the limiter takes
MAX_ASPECT_CHANGE = 0.01
_CONTAINER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder"}  # the muxer writes its own


class MasterError(ValueError):
    """The destination asks for something a master cannot honestly be made into."""


@dataclass(frozen=True)
class MasterInfo:
    path: str
    destination: str
    source: str
    video: str  # "copied" or "re-encoded"
    reencode_reasons: tuple[str, ...]
    frames_held: int  # pictures added by holding the clip's last one (0 when the rate changes)
    frames_cut: int  # pictures cut off the clip's tail (0 when the rate changes)
    gain_db: float  # overall gain before the limiter
    limited_db: float  # largest gain reduction by the true-peak limiter
    measurements: Measurements  # of the master as written

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(dataclasses.replace(self, measurements=None)),
                "measurements": self.measurements.to_dict()}


@dataclass(frozen=True)
class _Picture:
    fps: Fraction
    width: int
    height: int
    frames: int
    pixel_format: str


def make_master(
    path: str | os.PathLike, destination: Destination, out_path: str | os.PathLike, *,
    brief_seconds: float | None = None, expects_speech: bool = False, source: Measurements | None = None,
) -> tuple[MasterInfo, QCReport]:
    """One master of `path` for `destination` at `out_path` (name it with the extension
    `destination.container`), and its QC report. `source`: the clip's measurements if already taken
    with its picture (saves decoding it again)."""
    job = _Mastering(path, brief_seconds, expects_speech, source)
    try:
        return job.master(destination, out_path)
    finally:
        job.cleanup()


def make_masters(
    path: str | os.PathLike, destinations: Sequence[Destination], out_dir: str | os.PathLike, *,
    brief_seconds: float | None = None, expects_speech: bool = False, source: Measurements | None = None,
    refused: dict[str, str] | None = None,
) -> dict[str, tuple[MasterInfo, QCReport]]:
    """A master per destination as `out_dir/<destination>.<destination.container>`; the clip is measured once and a
    re-encoded picture is made once for all destinations that want the same one. A destination a
    master cannot be made for raises MasterError, or, when `refused` is given, is left out and
    recorded there (name -> reason) while the others are made."""
    job = _Mastering(path, brief_seconds, expects_speech, source)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    made = {}
    try:
        for d in destinations:
            try:
                made[d.name] = job.master(d, Path(out_dir) / f"{d.name}.{d.container}")
            except MasterError as exc:
                if refused is None:
                    raise
                refused[d.name] = str(exc)
        return made
    finally:
        job.cleanup()


class _Mastering:
    def __init__(self, path, brief_seconds, expects_speech, source):
        self.path = os.fspath(path)
        self.brief_seconds, self.expects_speech = brief_seconds, expects_speech
        self.source = source if source is not None and source.black is not None else measure(self.path)
        if self.source.video is None:
            raise MasterError(f"{self.path}: no video stream")
        # Opened once for all destinations, without the probe's picture decode (none of these needs
        # the decoder's facts: `source` has them): tags, sound and the video packets to copy are
        # read from here, each from the start.
        self._clip = open_unprobed(self.path)
        # render key, campaign, shot...: the master keeps them (not the clip's file-type brands)
        self._tags = {k: v for k, v in self._clip.metadata.items() if k not in _CONTAINER_TAGS}
        self._pictures: dict[_Picture, str] = {}  # re-encoded pictures, shared between destinations
        self._sounds: dict[str, np.ndarray] = {}  # the clip's decoded sound by layout
        self._conformed: dict[tuple[str, int], _Conformed] = {}  # by (layout, samples)
        self._tmp = None

    def cleanup(self) -> None:
        self._clip.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def master(self, d: Destination, out_path) -> tuple[MasterInfo, QCReport]:
        out_path = os.fspath(out_path)
        picture, reasons = self._plan(d)
        video_from = self._reencoded(picture) if reasons else self.path
        sound = self._conformed_sound(d, picture)
        # Aim at the target and just under the ceiling, then correct both by what the encoded file measures.
        aim, limit = d.loudness_lufs, d.true_peak_dbtp - FIRST_LIMIT_MARGIN_DB
        for _ in range(MAX_ATTEMPTS):
            audio, gain, limited = _normalised(sound.samples, aim, limit, sound.loudness, sound.peaks)
            self._write(out_path, video_from, audio, d)
            # A copied picture is read back and compared with the clip's packets, not decoded again.
            measured = measure(out_path, video_from=None if reasons else self.source)
            got = measured.audio.loudness if measured.audio else None
            if got is None or got.integrated_lufs is None:
                break
            over = (got.true_peak_dbtp or -np.inf) - d.true_peak_dbtp
            miss = d.loudness_lufs - got.integrated_lufs
            if over <= 0 and abs(miss) <= SETTLED_LU:
                break
            limit -= max(0.0, over + 0.1)
            aim += max(-0.5, min(0.5, miss))  # AAC moves loudness a little; a bigger miss is the limiter's
        added = picture.frames - self.source.video.frames if picture.fps == self._fps else 0
        info = MasterInfo(
            path=out_path, destination=d.name, source=self.path, video="re-encoded" if reasons else "copied",
            reencode_reasons=reasons, frames_held=max(0, added), frames_cut=max(0, -added),
            gain_db=gain, limited_db=limited, measurements=measured,
        )
        return info, check(measured, d, brief_seconds=self.brief_seconds, expects_speech=self.expects_speech)

    @property
    def _fps(self) -> Fraction:
        return Fraction(self.source.video.fps)

    def _plan(self, d: Destination) -> tuple[_Picture, tuple[str, ...]]:
        v = self.source.video
        for key in ("color_primaries", "color_transfer", "color_matrix", "color_range"):
            want = getattr(d, key)
            if want is not None and want != getattr(v, key):
                raise MasterError(f"{d.name}: {key} {getattr(v, key)} -> {want} needs a colour conversion masters do not do")
        fps = d.fps or self._fps
        width, height = d.width or v.width, d.height or v.height
        if abs((width / height) / (v.width / v.height) - 1) > MAX_ASPECT_CHANGE:
            raise MasterError(f"{d.name}: size {v.width}x{v.height} -> {width}x{height} changes the aspect ratio; "
                              "render that aspect ratio as its own variant")
        if self.brief_seconds is not None:
            frames = brief_frames(self.brief_seconds, fps)
        else:
            frames = round(Fraction(v.frames) / self._fps * fps)
        picture = _Picture(fps, width, height, frames, d.pixel_format or v.pixel_format)
        reasons = [
            f"{name} {have} -> {want}" for name, have, want in (
                ("frames", v.frames, frames), ("fps", v.fps, str(fps)), ("size", f"{v.width}x{v.height}", f"{width}x{height}"),
                ("codec", v.codec, d.video_codec or v.codec), ("pixel_format", v.pixel_format, picture.pixel_format),
            ) if str(have) != str(want)
        ]
        return picture, tuple(reasons)

    def _reencoded(self, picture: _Picture) -> str:
        """A video-only mp4 with `picture`'s frames; frame i shows the clip's frame at time i / fps."""
        if picture in self._pictures:
            return self._pictures[picture]
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="horse-master-")
        target = os.path.join(self._tmp.name, f"picture-{len(self._pictures)}.mp4")
        with open_unprobed(self.path) as box, av.open(target, "w", format="mp4", options=MP4_OPTIONS) as out:
            source = box.streams.video[0]
            source.thread_type = "AUTO"
            video = add_video_stream(out, picture.width, picture.height, picture.fps, pix_fmt=picture.pixel_format)
            frames, index, current = box.decode(source), -1, None
            for i in range(picture.frames):
                wanted = int(Fraction(i) / picture.fps * self._fps)
                while index < wanted:
                    nxt = next(frames, None)
                    if nxt is None:
                        break  # past the clip's end: hold its last picture
                    current, index = nxt, index + 1
                frame = current.reformat(width=picture.width, height=picture.height, format=picture.pixel_format,
                                         interpolation="BICUBIC")
                frame.pts, frame.time_base = i, Fraction(1) / picture.fps
                frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose frame types
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
        self._pictures[picture] = target
        return target

    def _conformed_sound(self, d: Destination, picture: _Picture) -> _Conformed:
        """The clip's sound at 48 kHz in the destination's layout, cut or padded to the picture's
        length; made once for every destination that wants the same."""
        audio = self.source.audio
        layout = d.audio_layout or (audio.layout if audio else "stereo")
        channels = 1 if layout == "mono" else 2
        samples = round(Fraction(picture.frames) / picture.fps * RATE)
        if (layout, samples) in self._conformed:
            return self._conformed[layout, samples]
        metered = self.source.sound if audio is not None and layout == audio.layout else None
        if metered is not None:  # the samples the clip's measurement decoded and metered
            sound = metered.samples
        else:
            if layout not in self._sounds:  # decoded once per layout for every destination
                self._sounds[layout] = decode_audio(self._clip, layout) if audio else np.zeros((channels, 0), np.float32)
            sound = self._sounds[layout]
        out = np.zeros((sound.shape[0], samples), np.float32)
        out[:, : min(samples, sound.shape[1])] = sound[:, :samples]
        # The very samples the clip's measurement metered (same decode, same layout, same length).
        same = audio is not None and layout == audio.layout in ("mono", "stereo") and sound.shape[1] == samples
        peaks = metered.peaks if metered is not None and same else sample_peaks(out)
        conformed = _Conformed(out, audio.loudness.integrated_lufs if same else None, peaks)
        self._conformed[layout, samples] = conformed
        return conformed

    def _write(self, out_path: str, video_from: str, audio: np.ndarray, d: Destination) -> None:
        if video_from == self.path:
            self._clip.seek(0)
            return self._write_from(self._clip, out_path, audio, d)
        with open_unprobed(video_from) as box:  # its packets are copied, not decoded
            return self._write_from(box, out_path, audio, d)

    def _write_from(self, box, out_path: str, audio: np.ndarray, d: Destination) -> None:
        with av.open(out_path, "w", format=d.container, options=MP4_OPTIONS) as out:
            out.metadata.update({**self._tags, "horse_destination": d.name})
            source = box.streams.video[0]
            video = out.add_stream_from_template(source)
            sound = AudioFeed(out, add_audio_stream(out, "mono" if audio.shape[0] == 1 else "stereo",
                                                    d.audio_codec or "aac"), audio, RATE)
            for packet in box.demux(source):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                end = float((packet.dts + (packet.duration or 0)) * source.time_base)
                packet.stream = video
                out.mux(packet)
                sound.until(round(end * RATE))  # the sound up to this packet's end, next to it in the file
            sound.close()


class _Conformed(NamedTuple):
    samples: np.ndarray  # float32 (channels, samples) at 48 kHz
    loudness: float | None  # integrated LUFS when it is the clip's measured one (the same samples), else None
    # Its true-peak interpolation (`sample_peaks`). The interpolator is linear, so the sound's peaks at
    # any gain are these times the gain: found once (~35 ms of CPU for 5 s of stereo), not once per
    # destination and gain tried.
    peaks: np.ndarray


class _Gained(NamedTuple):
    gain: float
    sound: np.ndarray
    limited: float
    loudness: float


def _normalised(sound: np.ndarray, target_lufs: float, ceiling_dbtp: float,
                measured_lufs: float | None = None, peaks: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """(sound at `target_lufs` with its true peak at most `ceiling_dbtp`, gain dB, limiter reduction dB).

    The plain level change is target - measured. Where the limiter then has to act it takes some
    loudness away, so up to MAX_MAKEUP_DB more gain is searched for (regula falsi on measured
    loudness, which only rises with gain); past that the limiter would be squashing the sound, and
    the master stays under its target for QC to report. Digital silence is returned as it is."""
    before = measured_lufs if measured_lufs is not None else ffmpeg_loudness(sound).integrated_lufs
    if before is None:
        return sound, 0.0, 0.0

    def at(gain: float) -> _Gained:
        scale = np.float32(10 ** (gain / 20))
        out, limited = limit_true_peak(sound * scale, ceiling_dbtp, peaks=None if peaks is None else peaks * scale)
        # Untouched by the limiter, loudness moves exactly with the gain: no need to measure it.
        loudness = ffmpeg_loudness(out).integrated_lufs if limited else before + gain
        return _Gained(gain, out, limited, loudness)

    low = best = at(target_lufs - before)
    if abs(target_lufs - low.loudness) > SETTLED_LU / 2:
        high = best = at(low.gain + MAX_MAKEUP_DB)
        for _ in range(6 if high.loudness > target_lufs else 0):
            gain = low.gain + (target_lufs - low.loudness) * (high.gain - low.gain) / (high.loudness - low.loudness)
            best = at(gain)
            if abs(target_lufs - best.loudness) <= SETTLED_LU / 2:
                break
            low, high = (best, high) if best.loudness < target_lufs else (low, best)
    return best.sound, round(best.gain, 3), best.limited
