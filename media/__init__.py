"""Horse media: mp4 encode and read-back, posters, contact sheets, reference inputs.

PyAV, numpy and Pillow only (no torch, Ray or Prefect), so it is usable alone in a script:

    from media import encode_mp4, probe_mp4
    info = encode_mp4(clip, "out.mp4", {"campaign": "spring"})

Delivery QC and destination masters live in submodules (they load scipy and pyloudnorm, which
encoding alone does not need): `media.qc` (measure, check, Destination), `media.master`
(make_master, make_masters).
"""

from .images import contact_sheet, line_chart_png, poster_jpeg
from .mp4 import AUDIO_BIT_RATE, AUDIO_RATE, EncodeCheckError, EncodeInfo, check_mp4, encode_mp4, probe_mp4
from .reference import load_audio, load_image

__all__ = [
    "AUDIO_BIT_RATE", "AUDIO_RATE", "EncodeCheckError", "EncodeInfo", "check_mp4", "contact_sheet", "encode_mp4",
    "line_chart_png", "load_audio", "load_image", "poster_jpeg", "probe_mp4",
]
