"""The speech API's response formats: whole responses, and the pieces of a streamed one."""

from __future__ import annotations

import numpy as np

from ..constants import SAMPLE_RATE
from ..output import encode, pcm16, wav_header

MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
PIECEWISE = ("wav", "pcm", "mp3")  # streamed as each chunk finishes (MP3 frames may be concatenated); others whole


def stream_start(fmt: str) -> bytes:
    return wav_header(SAMPLE_RATE) if fmt == "wav" else b""


def stream_piece(audio: np.ndarray, fmt: str) -> bytes:
    """One chunk of a streamed response (PIECEWISE formats)."""
    if fmt in ("wav", "pcm"):
        return pcm16(audio)
    return encode(audio, "mp3") if len(audio) else b""
