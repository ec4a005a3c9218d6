"""Typed results: a generated clip, the segments of a long text, and the chunks a stream yields."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .constants import SAMPLE_RATE
from .voices import Voice


@dataclass(frozen=True)
class Segment:
    """One chunk of a text: what was said, where it lies in the audio (seconds), and its semantic tokens."""

    text: str
    start: float
    end: float
    semantic_tokens: np.ndarray  # (n,)
    speaker: str | None = None  # a dialogue turn's speaker
    check: object | None = None  # longform.verify.Check: the chunk's verdict, when narration checks itself


@dataclass(frozen=True)
class Generation:
    """One generated clip: the waveform and the tokens of every stage.

    For a text spoken in several chunks the tokens are the chunks' tokens one after another, the
    audio is the joined audio (trimmed, faded, paused), and `segments` say where each chunk lies."""

    audio: np.ndarray  # float32 (n_samples,), 24 kHz
    semantic_tokens: np.ndarray  # (n,)
    coarse_tokens: np.ndarray  # (2, T)
    fine_tokens: np.ndarray  # (8, T)
    sample_rate: int = SAMPLE_RATE
    segments: tuple[Segment, ...] = ()
    check: object | None = None  # longform.verify.Check, for a chunk generated with verification

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def to_voice(self) -> Voice:
        """This clip as a voice prompt, to continue in the same voice."""
        return Voice(self.semantic_tokens, self.coarse_tokens, self.fine_tokens)

    def save_voice(self, path: str | os.PathLike) -> None:
        self.to_voice().save(path)


@dataclass(frozen=True)
class AudioChunk:
    """What `Bark.stream` yields, in order: this chunk's audio (its pause before it included), where its
    speech lies in the whole stream, and the chunk's own generation (its tokens, as a voice)."""

    audio: np.ndarray  # float32, 24 kHz
    segment: Segment
    index: int  # 0-based
    total: int  # chunks in the text
    generation: Generation
