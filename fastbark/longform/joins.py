"""Joining chunks of speech: trim each chunk's silent edges, fade them, and put a pause between chunks."""

from __future__ import annotations

import numpy as np

from ..constants import SAMPLE_RATE

FRAME = SAMPLE_RATE // 100  # 10 ms frames for the silence measure


def speech_bounds(audio: np.ndarray, threshold_db: float) -> tuple[int, int]:
    """(start, end) of `audio` without its leading and trailing 10 ms frames whose RMS is below
    `threshold_db` dBFS; (0, 0) if every frame is below it."""
    n = len(audio) // FRAME
    if n == 0:
        return 0, len(audio)
    frames = audio[: n * FRAME].astype(np.float64).reshape(n, FRAME)  # (n * FRAME,) -> (n, FRAME)
    loud = np.flatnonzero(np.sqrt((frames ** 2).mean(axis=1)) >= 10 ** (threshold_db / 20))
    if len(loud) == 0:
        return 0, 0
    end = len(audio) if loud[-1] == n - 1 else (loud[-1] + 1) * FRAME  # keep a partial last frame with speech
    return int(loud[0] * FRAME), int(end)


def fade_edges(audio: np.ndarray, n: int) -> np.ndarray:
    """A copy of `audio` with a raised-cosine fade over its first and last `n` samples (no clicks)."""
    out = audio.astype(np.float32, copy=True)
    n = min(n, len(out) // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)  # 0 -> 1
        out[:n] *= ramp
        out[len(out) - n:] *= ramp[::-1]
    return out


def join_piece(audio: np.ndarray, *, first: bool, trim: bool, threshold_db: float, fade_s: float,
               pause_s: float) -> tuple[np.ndarray, int, int]:
    """One chunk's contribution to the joined audio: a pause (except for the first chunk), then the chunk
    trimmed and faded. Returns (piece, start, end): where the speech lies within the piece."""
    start, end = speech_bounds(audio, threshold_db) if trim else (0, len(audio))
    speech = fade_edges(audio[start:end], int(round(fade_s * SAMPLE_RATE)))
    pause = 0 if first else int(round(pause_s * SAMPLE_RATE))
    return np.concatenate([np.zeros(pause, np.float32), speech]), pause, pause + len(speech)
