"""Everything delivery QC checks, measured from an encoded mp4 in one decoding pass.

    from media.measure import measure
    m = measure("clip.mp4")
    m.audio.loudness.integrated_lufs, m.black, m.video.frames, m.to_dict()

Picture and sound are decoded from one demux loop; sound is resampled to 48 kHz float for the
meters (both BS.1770 meters and the silence scan work on the same samples). The decoded AAC
tail carries encoder padding past the stream's duration (up to ~700 samples); it is cut off
before measuring.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from .loudness import RATE, Loudness, ffmpeg_loudness, reference_loudness, sample_peaks, silences
from .mp4 import moov_first
from .picture import PictureScan
from .stretch import Stretch

# FFmpeg's names for the colour tags (what ffprobe prints); anything else reads as its number.
PRIMARIES = {1: "bt709", 2: "unknown", 5: "bt470bg", 6: "smpte170m", 9: "bt2020"}
TRANSFERS = {1: "bt709", 2: "unknown", 6: "smpte170m", 13: "iec61966-2-1", 14: "bt2020-10", 16: "smpte2084", 18: "arib-std-b67"}
MATRICES = {0: "gbr", 1: "bt709", 2: "unknown", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc"}
RANGES = {0: "unknown", 1: "tv", 2: "pc"}


def _name(table: dict[int, str], value: Any) -> str:
    return table.get(int(value), str(int(value)))


@dataclass(frozen=True)
class VideoFacts:
    codec: str
    width: int
    height: int
    fps: str  # exact rate: "25" or "30000/1001"
    frames: int
    pixel_format: str
    color_primaries: str
    color_transfer: str
    color_matrix: str
    color_range: str
    start: float
    seconds: float


@dataclass(frozen=True)
class AudioFacts:
    codec: str
    sample_rate: int
    channels: int
    layout: str
    start: float
    seconds: float
    loudness: Loudness  # FFmpeg ebur128: the meter QC decides on
    loudness_reference: Loudness | None  # the independent second meter (mono and stereo)
    silences: tuple[Stretch, ...]


@dataclass(frozen=True)
class MeteredSound:
    """The samples `measure` metered: float32 (channels, samples) at 48 kHz in the file's layout
    (mono or stereo), and their true-peak interpolation (`sample_peaks`). Kept in memory with the
    measurements so that masters made from the file start from them instead of decoding and
    interpolating the same sound again (~45 ms of CPU per 5 s of stereo); never recorded."""

    samples: np.ndarray
    peaks: np.ndarray


@dataclass(frozen=True)
class Measurements:
    path: str
    bytes: int
    container: str  # "mp4" or "mov" (QuickTime) by the file's major brand; else the demuxer's name
    faststart: bool
    video: VideoFacts | None
    audio: AudioFacts | None
    # None: not measured (never "nothing found"). `picture_from` names the file whose decoded
    # frames gave them: a master that copies the clip's video packets inherits the clip's, once
    # its packets are read back identical (`measure(..., video_from=)`).
    black: tuple[Stretch, ...] | None
    frozen: tuple[Stretch, ...] | None
    picture_from: str | None
    sound: MeteredSound | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def av_offset(self) -> float | None:
        """Audio start minus video start, seconds."""
        return None if not (self.video and self.audio) else round(self.audio.start - self.video.start, 6)

    def to_dict(self) -> dict[str, Any]:
        """Every measured value, JSON-ready (the kept sound left out)."""
        found = dataclasses.asdict(dataclasses.replace(self, sound=None))
        del found["sound"]
        return found


# Opening a file probes it (avformat_find_stream_info), and the probe decodes the first picture to
# learn what only the decoder knows: pixel format, and colour range where the container does not
# say (a QuickTime colr box has none). ~20 ms of CPU for a 1080p H.264 frame. Where every picture
# is decoded anyway, the probe is told to skip pictures ("options" reach each stream's probe
# decoder) and those facts are read from the decoder after it has decoded them. Decoding itself
# is untouched: the decoders PyAV makes for demuxing are new ones, without the probe's options.
UNPROBED_PICTURES = {"skip_frame": "all"}


def open_unprobed(path: str) -> av.container.InputContainer:
    """`path` opened without the probe's picture decode: the video's pixel format (and, in a .mov,
    colour range) is unknown until a picture has been decoded from it."""
    return av.open(path, options=UNPROBED_PICTURES)


def measure(path: str | os.PathLike, *, picture: bool = True, video_from: Measurements | None = None) -> Measurements:
    """Measure `path`; with picture=False the video is not decoded (black/frozen stay None).

    `video_from`: the measurements, pictures decoded, of the file `path`'s video packets were
    copied from (a master that copies the clip's picture). Those packets are read back and compared
    with that file's: byte-identical, at the same times, with the same decoder setup (extradata),
    they decode to the same pictures, so the decoder's facts (pixel format, colour tags) and the
    black/frozen stretches are that file's (`picture_from` names it) and nothing is decoded. If
    they differ, the pictures are decoded and measured as with picture=True."""
    path = os.fspath(path)
    copied = video_from is not None and video_from.video is not None and video_from.black is not None
    with (open_unprobed(path) if picture or copied else av.open(path)) as box:
        video = box.streams.video[0] if box.streams.video else None
        audio = box.streams.audio[0] if box.streams.audio else None
        packets = [] if copied and video is not None else None  # (time, bytes) of each video packet
        scan = PictureScan() if video is not None and picture and packets is None else None
        demux = [s for s in (video if scan or packets is not None else None, audio) if s is not None]
        if video is not None:
            # One decoding thread: the same pictures for ~10 % less CPU than frame threads (their
            # hand-offs cost CPU), and QC runs on the actor beside other work, where CPU is what is
            # short; a 1080p clip still decodes at ~7x real time (benchmarks/qc.py).
            video.codec_context.thread_count = 1
        to_float = av.AudioResampler(format="fltp", layout=audio.layout.name, rate=RATE) if audio else None
        chunks: list[np.ndarray] = []
        audio_start = None
        for packet in box.demux(*demux):
            if packets is not None and packet.stream.type == "video":
                if packet.size:
                    packets.append((_time(packet), bytes(packet)))
                continue
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    scan.add(frame)
                else:
                    audio_start = float(frame.time) if audio_start is None else audio_start
                    chunks += _float(to_float, frame)

        pictures = video_from if packets is not None else None
        if pictures is not None and not _same_video(video, packets, pictures.path):
            return measure(path)
        video_facts = _video_facts(video, scan) if video is not None else None
        if pictures is not None:
            video_facts = dataclasses.replace(video_facts, **{k: getattr(pictures.video, k) for k in _DECODER_FACTS})
        audio_facts = sound = None
        if audio is not None:
            audio_facts, sound = _audio_facts(audio, _joined(audio, chunks + _float(to_float, None)), audio_start)
        end = video_facts.start + video_facts.seconds if video_facts else 0.0
        return Measurements(
            path=path,
            bytes=os.path.getsize(path),
            container=_container(box),
            faststart=moov_first(path),
            video=video_facts,
            audio=audio_facts,
            black=pictures.black if pictures else scan.black(end) if scan else None,
            frozen=pictures.frozen if pictures else scan.frozen(end) if scan else None,
            picture_from=pictures.picture_from if pictures else path if scan else None,
            sound=sound,
        )


# What only decoding the pictures tells for sure (the container may not say, or say otherwise).
_DECODER_FACTS = ("pixel_format", "color_primaries", "color_transfer", "color_matrix", "color_range")


def _time(packet) -> Fraction:
    return Fraction(packet.pts if packet.pts is not None else packet.dts or 0) * packet.time_base


def _same_video(video, packets: list[tuple[Fraction, bytes]], other_path: str) -> bool:
    """Whether `video`'s stream (its `packets` read) holds exactly the video packets of `other_path`."""
    with open_unprobed(other_path) as other:
        theirs = other.streams.video[0] if other.streams.video else None
        if theirs is None or theirs.codec_context.extradata != video.codec_context.extradata:
            return False
        return packets == [(_time(p), bytes(p)) for p in other.demux(theirs) if p.size]


def _container(box) -> str:
    if "mp4" not in box.format.name:
        return box.format.name.split(",")[0]
    return "mov" if box.metadata.get("major_brand", "").strip() == "qt" else "mp4"


def _seconds(stream) -> float | None:
    return float(stream.duration * stream.time_base) if stream.duration else None


def _video_facts(stream, scan: PictureScan | None) -> VideoFacts:
    cc = stream.codec_context
    rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
    frames = len(scan.times) if scan else stream.frames
    start = scan.times[0] if scan and scan.times else float((stream.start_time or 0) * stream.time_base)
    seconds = _seconds(stream) or (frames / rate if rate else 0.0)
    return VideoFacts(
        codec=cc.name,
        width=cc.width,
        height=cc.height,
        fps=str(rate),
        frames=frames,
        pixel_format=cc.pix_fmt or "unknown",
        color_primaries=_name(PRIMARIES, cc.color_primaries),
        color_transfer=_name(TRANSFERS, cc.color_trc),
        color_matrix=_name(MATRICES, cc.colorspace),
        color_range=_name(RANGES, cc.color_range),
        start=round(start, 6),
        seconds=round(float(seconds), 6),
    )


def _float(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> list[np.ndarray]:
    return [f.to_ndarray() for f in resampler.resample(frame)]


def _joined(stream, chunks: list[np.ndarray]) -> np.ndarray:
    """One (channels, samples) array, without the encoder's padding past the stream's duration."""
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((stream.codec_context.channels, 0), np.float32)
    seconds = _seconds(stream)
    return samples if seconds is None else samples[:, : round(seconds * RATE)]


def _audio_facts(stream, samples: np.ndarray, start: float | None) -> tuple[AudioFacts, MeteredSound | None]:
    cc = stream.codec_context
    peaks = sample_peaks(samples) if samples.shape[0] <= 2 else None  # the second meter's true peak
    facts = AudioFacts(
        codec=cc.name,
        sample_rate=cc.sample_rate,
        channels=cc.channels,
        layout=stream.layout.name,
        start=round(start or 0.0, 6),
        seconds=round(_seconds(stream) or samples.shape[1] / RATE, 6),
        loudness=ffmpeg_loudness(samples, layout=stream.layout.name),
        loudness_reference=reference_loudness(samples, peaks=peaks),
        silences=silences(samples),
    )
    return facts, None if peaks is None else MeteredSound(samples, peaks)


def decode_audio(path_or_box: str | os.PathLike | av.container.InputContainer, layout: str | None = None) -> np.ndarray:
    """The audio of a file (or an open one, read from its start) as float32 (channels, samples) at
    48 kHz, trimmed to the stream's duration (optionally remixed to `layout`, e.g. "stereo")."""
    if not isinstance(path_or_box, av.container.InputContainer):
        with av.open(os.fspath(path_or_box)) as box:
            return decode_audio(box, layout)
    box = path_or_box
    box.seek(0)
    stream = box.streams.audio[0]
    to_float = av.AudioResampler(format="fltp", layout=layout or stream.layout.name, rate=RATE)
    chunks = [chunk for frame in [*box.decode(stream), None] for chunk in _float(to_float, frame)]
    return _joined(stream, chunks)
